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
pub struct StatusLabel {
    pub class: String,
}

type FGauge = Gauge<f64, AtomicU64>;

pub struct EngineMetrics {
    registry: Registry,
    vllm: Option<Registry>,
    pub requests_running: Gauge,
    pub requests_waiting: Gauge,
    pub kv_cache_usage: FGauge,
    pub utilization: FGauge,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue_wait: Histogram,
    pub batch_size: Histogram,
    pub step_tokens: Histogram,
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
}

fn latency_hist() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
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
            kv_cache_usage: FGauge::default(),
            utilization: FGauge::default(),
            ttft: latency_hist(),
            itl: latency_hist(),
            e2e: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            queue_wait: latency_hist(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            step_tokens: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
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
            "kv_cache_usage_ratio",
            "Fraction of KV-cache blocks in use (0-1)",
            m.kv_cache_usage.clone(),
        );
        r.register(
            "executor_utilization_ratio",
            "Fraction of wall time the model step was busy over the last 5 s (0-1)",
            m.utilization.clone(),
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

    pub fn finish(&self, reason: &str) {
        self.finished
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
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
