//! The engine's Prometheus metrics, under the prefix `steward_engine_` and
//! labelled with the served model name (`model`). With `--vllm-metrics` the
//! same metric objects are also exposed under the names vLLM uses (labelled
//! `model_name`), so dashboards, KEDA triggers and the Gateway API inference
//! extension's endpoint picker work unchanged. Every name is documented in
//! docs/metrics-engine.md.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabel {
    pub fault: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// What a step computed: only single-token decodes, only prompt chunks, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Decode,
    Prefill,
    Mixed,
}

impl StepKind {
    pub fn of(prefill_tokens: usize, decode_tokens: usize) -> Self {
        match (prefill_tokens > 0, decode_tokens > 0) {
            (true, true) => StepKind::Mixed,
            (true, false) => StepKind::Prefill,
            _ => StepKind::Decode,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Decode => "decode",
            StepKind::Prefill => "prefill",
            StepKind::Mixed => "mixed",
        }
    }
}

/// This process's resident set size, from /proc/self/statm.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Where one step's time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTimes {
    /// Planning, building the batch's input tensors, and the loop's own
    /// bookkeeping (intake, cancellation, gauges).
    pub schedule: std::time::Duration,
    /// The forward pass, logits copied to the host included.
    pub forward: std::time::Duration,
    /// Sampling, detokenising, stop sequences and sending the deltas.
    pub sample: std::time::Duration,
}

type FGauge = Gauge<f64, AtomicU64>;

pub struct EngineMetrics {
    registry: Registry,
    vllm: Option<Registry>,
    pub requests_running: Gauge,
    pub requests_waiting: Gauge,
    pub prefill_chunk: Gauge,
    pub kv_cache_usage: FGauge,
    pub utilization: FGauge,
    pub busy: FGauge,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue_wait: Histogram,
    pub batch_size: Histogram,
    pub step_tokens: Histogram,
    pub step_prefill_tokens: Histogram,
    pub step_phase: Family<PhaseLabel, Histogram>,
    pub step_duration: Family<KindLabel, Histogram>,
    pub torch_threads: Gauge,
    pub memory_resident: Gauge,
    pub memory_weights: Gauge,
    pub memory_kv_cache: Gauge,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub finished: Family<ReasonLabel, Counter>,
    pub responses: Family<StatusLabel, Counter>,
    pub refusals: Family<ReasonLabel, Counter>,
    pub preemptions: Counter,
    pub prefix_hits: Counter,
    pub prefix_lookups: Counter,
    pub cancelled: Counter,
    pub load_seconds: FGauge,
    pub warmup_seconds: FGauge,
    pub startup_seconds: FGauge,
    pub draining: Gauge,
    pub drain_cut_streams: Counter,
    pub fault_injection_enabled: Gauge,
    pub faults_injected: Family<FaultLabel, Counter>,
    pub connections_open: Gauge,
    pub connections_limited: Counter,
}

fn latency_hist() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Step times: 0.1 ms to about 10 s in steps of 30%, fine enough to read a
/// decode step's median off the buckets.
fn step_hist() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 1.3, 45))
}

impl EngineMetrics {
    pub fn new(model: &str, vllm_names: bool) -> Self {
        let labels = std::iter::once((Cow::Borrowed("model"), Cow::Owned(model.to_string())));
        let mut r = Registry::with_prefix_and_labels("steward_engine", labels);
        let m = Self {
            registry: Registry::default(),
            vllm: None,
            requests_running: Gauge::default(),
            requests_waiting: Gauge::default(),
            prefill_chunk: Gauge::default(),
            kv_cache_usage: FGauge::default(),
            utilization: FGauge::default(),
            busy: FGauge::default(),
            ttft: latency_hist(),
            itl: latency_hist(),
            e2e: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            queue_wait: latency_hist(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            step_tokens: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            step_prefill_tokens: Histogram::new(
                std::iter::once(0.0).chain(exponential_buckets(1.0, 2.0, 14)),
            ),
            step_phase: Family::new_with_constructor(step_hist),
            step_duration: Family::new_with_constructor(step_hist),
            torch_threads: Gauge::default(),
            memory_resident: Gauge::default(),
            memory_weights: Gauge::default(),
            memory_kv_cache: Gauge::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            finished: Family::default(),
            responses: Family::default(),
            refusals: Family::default(),
            preemptions: Counter::default(),
            prefix_hits: Counter::default(),
            prefix_lookups: Counter::default(),
            cancelled: Counter::default(),
            load_seconds: FGauge::default(),
            warmup_seconds: FGauge::default(),
            startup_seconds: FGauge::default(),
            draining: Gauge::default(),
            drain_cut_streams: Counter::default(),
            fault_injection_enabled: Gauge::default(),
            faults_injected: Family::default(),
            connections_open: Gauge::default(),
            connections_limited: Counter::default(),
        };
        r.register(
            "requests_running",
            "Requests in the running batch",
            m.requests_running.clone(),
        );
        r.register(
            "requests_waiting",
            "Requests queued for the running batch",
            m.requests_waiting.clone(),
        );
        r.register(
            "prefill_chunk_tokens",
            "Most prompt tokens a step beside the running decodes may take now (from the learned step times, --prefill-step-ratio)",
            m.prefill_chunk.clone(),
        );
        r.register(
            "kv_cache_usage_ratio",
            "Fraction of KV-cache blocks in use (0-1)",
            m.kv_cache_usage.clone(),
        );
        r.register(
            "executor_utilization_ratio",
            "Share of the executor's step capacity used over the last 5 s: busy time weighted by how full each step was (0-1)",
            m.utilization.clone(),
        );
        r.register(
            "executor_busy_ratio",
            "Fraction of wall time the model step was busy over the last 5 s, however full the steps (0-1)",
            m.busy.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Arrival to first generated token",
            m.ttft.clone(),
        );
        r.register(
            "inter_token_latency_seconds",
            "Time between consecutive generated tokens",
            m.itl.clone(),
        );
        r.register(
            "e2e_request_latency_seconds",
            "Arrival to last token",
            m.e2e.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Arrival to first scheduled step",
            m.queue_wait.clone(),
        );
        r.register(
            "batch_size",
            "Sequences per model step",
            m.batch_size.clone(),
        );
        r.register(
            "step_tokens",
            "Tokens per model step",
            m.step_tokens.clone(),
        );
        r.register(
            "step_prefill_tokens",
            "Prompt tokens per model step (0 for decode-only steps)",
            m.step_prefill_tokens.clone(),
        );
        r.register(
            "step_phase_seconds",
            "Time of one step's phase: schedule, sample, or the forward pass of a decode, prefill or mixed step",
            m.step_phase.clone(),
        );
        r.register(
            "step_duration_seconds",
            "Wall time of one model step by kind (decode, prefill, mixed)",
            m.step_duration.clone(),
        );
        r.register(
            "torch_threads",
            "libtorch intra-op threads chosen at start",
            m.torch_threads.clone(),
        );
        r.register(
            "memory_resident_bytes",
            "Resident set size of the process (refreshed at most once a second)",
            m.memory_resident.clone(),
        );
        r.register(
            "memory_weights_bytes",
            "Bytes of model weights as stored",
            m.memory_weights.clone(),
        );
        r.register(
            "memory_kv_cache_bytes",
            "Bytes of the KV-cache tensors",
            m.memory_kv_cache.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens of admitted requests",
            m.prompt_tokens.clone(),
        );
        r.register(
            "generation_tokens",
            "Generated tokens",
            m.generation_tokens.clone(),
        );
        r.register(
            "requests_finished",
            "Finished generations by finish reason",
            m.finished.clone(),
        );
        r.register(
            "responses",
            "HTTP responses by status class",
            m.responses.clone(),
        );
        r.register(
            "requests_refused",
            "Requests refused by admission, by reason",
            m.refusals.clone(),
        );
        r.register(
            "preemptions",
            "Sequences preempted for KV blocks (recomputed later)",
            m.preemptions.clone(),
        );
        r.register(
            "prefix_cache_hits",
            "Prefix-cache block lookups that hit",
            m.prefix_hits.clone(),
        );
        r.register(
            "prefix_cache_lookups",
            "Prefix-cache block lookups",
            m.prefix_lookups.clone(),
        );
        r.register(
            "requests_cancelled",
            "Generations cancelled because the client went away",
            m.cancelled.clone(),
        );
        r.register(
            "cold_start_load_seconds",
            "Time to load weights and tokenizer",
            m.load_seconds.clone(),
        );
        r.register(
            "cold_start_warmup_seconds",
            "Time of the warm-up step",
            m.warmup_seconds.clone(),
        );
        r.register(
            "cold_start_seconds",
            "Process start to ready",
            m.startup_seconds.clone(),
        );
        r.register("draining", "1 while draining", m.draining.clone());
        r.register(
            "drain_cut_streams",
            "Streams cut because the drain window ended",
            m.drain_cut_streams.clone(),
        );
        r.register(
            "fault_injection_enabled",
            "1 when --enable-fault-injection is on (a test replica)",
            m.fault_injection_enabled.clone(),
        );
        r.register(
            "faults_injected",
            "Faults injected by the --fault-* test aids, by fault",
            m.faults_injected.clone(),
        );
        r.register(
            "http_connections",
            "Open HTTP connections",
            m.connections_open.clone(),
        );
        r.register(
            "http_connections_limited",
            "Times the accept loop waited because --max-connections were open",
            m.connections_limited.clone(),
        );
        let vllm = vllm_names.then(|| {
            let labels =
                std::iter::once((Cow::Borrowed("model_name"), Cow::Owned(model.to_string())));
            let mut v = Registry::with_labels(labels);
            v.register(
                "vllm:num_requests_running",
                "Requests in the running batch",
                m.requests_running.clone(),
            );
            v.register(
                "vllm:num_requests_waiting",
                "Requests waiting",
                m.requests_waiting.clone(),
            );
            v.register(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage (0-1)",
                m.kv_cache_usage.clone(),
            );
            v.register(
                "vllm:gpu_cache_usage_perc",
                "KV-cache usage (0-1)",
                m.kv_cache_usage.clone(),
            );
            v.register(
                "vllm:time_to_first_token_seconds",
                "Time to first token",
                m.ttft.clone(),
            );
            v.register(
                "vllm:inter_token_latency_seconds",
                "Inter-token latency",
                m.itl.clone(),
            );
            v.register(
                "vllm:time_per_output_token_seconds",
                "Inter-token latency",
                m.itl.clone(),
            );
            v.register(
                "vllm:e2e_request_latency_seconds",
                "End-to-end latency",
                m.e2e.clone(),
            );
            v.register(
                "vllm:prompt_tokens",
                "Prompt tokens",
                m.prompt_tokens.clone(),
            );
            v.register(
                "vllm:generation_tokens",
                "Generated tokens",
                m.generation_tokens.clone(),
            );
            v.register("vllm:num_preemptions", "Preemptions", m.preemptions.clone());
            v
        });
        Self {
            registry: r,
            vllm,
            ..m
        }
    }

    pub fn refuse(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn response(&self, status: u16) {
        let class = format!("{}xx", status / 100);
        self.responses.get_or_create(&StatusLabel { class }).inc();
    }

    pub fn fault(&self, f: crate::faults::Fault) {
        self.faults_injected
            .get_or_create(&FaultLabel { fault: f.as_str() })
            .inc();
    }

    pub fn finish(&self, reason: &str) {
        self.finished
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records one step: its phases, its total and its token mix.
    pub fn step(&self, kind: StepKind, t: StepTimes, prefill_tokens: usize, tokens: usize) {
        let phase = |p: &'static str, d: std::time::Duration| {
            self.step_phase
                .get_or_create(&PhaseLabel { phase: p })
                .observe(d.as_secs_f64())
        };
        phase("schedule", t.schedule);
        phase(kind.as_str(), t.forward);
        phase("sample", t.sample);
        self.step_duration
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .observe((t.schedule + t.forward + t.sample).as_secs_f64());
        self.step_tokens.observe(tokens as f64);
        self.step_prefill_tokens.observe(prefill_tokens as f64);
    }

    /// Prometheus text (OpenMetrics) of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode_registry(&mut out, &self.registry);
        if let Some(v) = &self.vllm {
            let _ = encode_registry(&mut out, v);
        }
        let _ = encode_eof(&mut out);
        out
    }
}
