//! The engine actor: one OS thread owns the `EngineCore` (tensors are not
//! shared) and loops: take new requests from a bounded command channel,
//! cancel sequences whose client went away (their event receiver was
//! dropped), run one step, sample, stream deltas, finish sequences. Gauges
//! the HTTP side needs (running, waiting, KV usage, utilisation) are
//! published through `Shared` atomics after each step.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use tokio::sync::mpsc::UnboundedSender;

use super::core::EngineCore;
use super::score::{logprobs_of, TokenLogprob};
use crate::admission::Refusal;
use crate::faults::{Fault, FaultPlan};
use crate::health::{HealthSample, PROBE_INTERVAL};
use crate::metrics::{EngineMetrics, StepKind, StepTimes};
use crate::sampling::{Sampler, SamplingParams};
use crate::sched::SeqId;
use crate::stop::StopMatcher;
use crate::tokenizer::{IncrementalDecoder, TextCodec};

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop sequence.
    Stop,
    /// `max_tokens` (possibly clamped) reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the engine streams back for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The request entered the running batch (its first step ran). Until
    /// then it has sent nothing to its client and can still be refused.
    Started,
    /// Refused before it started (the replica began draining): the client
    /// gets a 503 it can retry elsewhere, never a cut stream.
    Refused(Refusal),
    /// Log-probabilities of prompt tokens (positions 1..), in order, for a
    /// request that asked for them (`echo` with `logprobs`); all of them
    /// come before the first generated token.
    PromptLogprobs(Vec<TokenLogprob>),
    /// The log-probability of the next generated token (before its text).
    Logprob(TokenLogprob),
    Delta(String),
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// A validated request ready for the engine.
#[derive(Debug)]
pub struct Submission {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Top-k log-probabilities wanted for each generated token.
    pub logprobs: Option<usize>,
    /// Top-k log-probabilities wanted for each prompt token (scoring).
    pub prompt_logprobs: Option<usize>,
    pub arrived: Instant,
    /// Unbounded on purpose: the engine thread must never block on a slow
    /// client; a sequence sends at most `max_tokens + 1` events, so the
    /// buffer is bounded by the request itself.
    pub events: UnboundedSender<Event>,
}

pub enum Command {
    Submit(Box<Submission>),
}

/// Gauges and health shared with the HTTP side.
#[derive(Debug)]
pub struct Shared {
    pub running: AtomicUsize,
    /// Submitted but not yet taken in by the actor.
    pub waiting: AtomicUsize,
    /// Waiting in the scheduler.
    pub queued: AtomicUsize,
    pub kv_usage_bits: AtomicU64,
    pub utilization_bits: AtomicU64,
    /// Milliseconds KV usage has stayed above the shedding level (0 = not above).
    pub kv_high_for_ms: AtomicU64,
    pub blocks_used: AtomicUsize,
    /// Set by the server to stop the loop (drain window ended).
    pub stop_requested: AtomicBool,
    /// Set by the loop when it has stopped and dropped every stream.
    pub stopped: AtomicBool,
    /// Set by the server when a drain begins: requests that have not
    /// started are refused (503 `draining`) instead of being run.
    pub refuse_unstarted: AtomicBool,
    /// True while the engine thread runs (cleared by a guard on exit or
    /// panic).
    pub alive: AtomicBool,
    /// When the loop last came around, in ms since `epoch`.
    pub beat_ms: AtomicU64,
    /// Model steps failed in a row (0 after any successful step).
    pub consecutive_failures: AtomicU32,
    epoch: Instant,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            kv_usage_bits: AtomicU64::new(0),
            utilization_bits: AtomicU64::new(0),
            kv_high_for_ms: AtomicU64::new(0),
            blocks_used: AtomicUsize::new(0),
            stop_requested: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            refuse_unstarted: AtomicBool::new(false),
            alive: AtomicBool::new(false),
            beat_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Shared {
    pub fn kv_usage(&self) -> f64 {
        f64::from_bits(self.kv_usage_bits.load(Ordering::Relaxed))
    }
    /// Requests not yet in the running batch.
    pub fn waiting_total(&self) -> usize {
        self.waiting.load(Ordering::Relaxed) + self.queued.load(Ordering::Relaxed)
    }
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
    pub fn utilization(&self) -> f64 {
        f64::from_bits(self.utilization_bits.load(Ordering::Relaxed))
    }

    /// Records that the loop came around now.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.beat_ms.store(ms, Ordering::Relaxed);
    }

    /// What the health verdict (`crate::health::judge`) looks at.
    pub fn health_sample(&self) -> HealthSample {
        let now = self.epoch.elapsed().as_millis() as u64;
        HealthSample {
            alive: self.alive.load(Ordering::SeqCst),
            stopped_on_purpose: self.stop_requested.load(Ordering::SeqCst),
            since_beat: Duration::from_millis(
                now.saturating_sub(self.beat_ms.load(Ordering::Relaxed)),
            ),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
        }
    }
}

/// Clears `Shared::alive` when the engine thread ends, however it ends.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
        if std::thread::panicking() {
            tracing::error!("the engine thread panicked; this replica can no longer serve");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the engine's command queue is full")]
    QueueFull,
    #[error("the engine has stopped")]
    Stopped,
}

/// The HTTP side's handle on the engine actor.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Command>,
    pub shared: Arc<Shared>,
}

impl EngineHandle {
    pub fn submit(&self, sub: Submission) -> Result<(), SubmitError> {
        self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Command::Submit(Box::new(sub))) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ActorConfig {
    pub eos_ids: Vec<u32>,
    /// KV usage above which the shedding clock runs.
    pub shed_kv_usage: f64,
    pub command_queue: usize,
    /// Test aids (`--fault-*`); empty in production.
    pub faults: FaultPlan,
}

struct Active {
    sub: Submission,
    sampler: Sampler,
    detok: IncrementalDecoder,
    stop: StopMatcher,
    generated: usize,
    scheduled: bool,
    last_token_at: Option<Instant>,
}

struct Actor {
    core: EngineCore,
    codec: Arc<TextCodec>,
    metrics: Arc<EngineMetrics>,
    shared: Arc<Shared>,
    cfg: ActorConfig,
    active: HashMap<SeqId, Active>,
    next_id: SeqId,
    /// Per step in the window: when it ended, its busy time, and that time
    /// weighted by how full the step was ([`step_fill`]).
    busy_window: VecDeque<(Instant, Duration, Duration)>,
    started: Instant,
    kv_high_since: Option<Instant>,
    seen_preemptions: u64,
    seen_hits: u64,
    seen_lookups: u64,
    rss_read_at: Instant,
    fault_rng: StdRng,
    last_probe: Option<Instant>,
}

const UTIL_WINDOW: Duration = Duration::from_secs(5);

/// How full a step was, 0-1: the larger of its sequences against
/// `max_running` (`--max-num-seqs`) and its tokens against
/// `max_batch_tokens`. Utilisation is
/// busy time weighted by this, so a pod stepping one stream back to back
/// (100% busy, as a GPU does at batch 1) reads as the small share of its
/// capacity that it is, and a full batch or a full prefill reads 100%.
pub(crate) fn step_fill(
    seqs: usize,
    tokens: usize,
    max_running: usize,
    max_batch_tokens: usize,
) -> f64 {
    let part = |n: usize, max: usize| n as f64 / max.max(1) as f64;
    part(seqs, max_running)
        .max(part(tokens, max_batch_tokens))
        .clamp(0.0, 1.0)
}

/// Starts the actor thread; returns its handle.
pub fn spawn(
    core: EngineCore,
    codec: Arc<TextCodec>,
    metrics: Arc<EngineMetrics>,
    cfg: ActorConfig,
) -> std::io::Result<EngineHandle> {
    let (tx, rx) = mpsc::sync_channel(cfg.command_queue.max(1));
    let shared = Arc::new(Shared::default());
    let cfg_seed = cfg.faults.seed;
    let mut core = core;
    core.logit_noise = cfg.faults.logit_noise;
    let mut actor = Actor {
        core,
        codec,
        metrics,
        shared: shared.clone(),
        cfg,
        active: HashMap::new(),
        next_id: 1,
        busy_window: VecDeque::new(),
        started: Instant::now(),
        kv_high_since: None,
        seen_preemptions: 0,
        seen_hits: 0,
        seen_lookups: 0,
        rss_read_at: Instant::now()
            .checked_sub(Duration::from_secs(2))
            .unwrap_or_else(Instant::now),
        fault_rng: crate::server::fault_rng(cfg_seed, 1),
        last_probe: None,
    };
    shared.beat();
    shared.alive.store(true, Ordering::SeqCst);
    let guard = AliveGuard(shared.clone());
    std::thread::Builder::new()
        .name("engine-step".into())
        .spawn(move || {
            let _alive = guard;
            actor.run(rx)
        })?;
    Ok(EngineHandle { tx, shared })
}

impl Actor {
    fn run(&mut self, rx: Receiver<Command>) {
        loop {
            self.shared.beat();
            if self.shared.stop_requested.load(Ordering::Relaxed) {
                tracing::info!(cut = self.active.len(), "engine loop stopping");
                self.active.clear();
                break;
            }
            if self.active.is_empty() {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(cmd) => self.intake(cmd),
                    Err(RecvTimeoutError::Timeout) => {
                        self.probe_if_failing();
                        self.publish();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let t_iter = Instant::now();
            while let Ok(cmd) = rx.try_recv() {
                self.intake(cmd);
            }
            self.cancel_gone();
            if self.shared.refuse_unstarted.load(Ordering::SeqCst) {
                self.refuse_unstarted();
            }
            let result = self.step();
            match result {
                Ok(out) => {
                    let ran = !out.plan.items.is_empty();
                    if ran {
                        self.shared.consecutive_failures.store(0, Ordering::Relaxed);
                        self.core.sched.observe_step(out.tokens, out.busy);
                        self.metrics.batch_size.observe(out.plan.items.len() as f64);
                        let cfg = self.core.sched.config();
                        let tokens: usize = out.plan.items.iter().map(|i| i.len).sum();
                        let fill = step_fill(
                            out.plan.items.len(),
                            tokens,
                            cfg.max_running,
                            cfg.max_batch_tokens,
                        );
                        self.busy_window.push_back((
                            Instant::now(),
                            out.busy,
                            out.busy.mul_f64(fill),
                        ));
                        // Gauges before events: a client that sees its first
                        // token and asks /load finds itself running.
                        self.publish();
                    }
                    let t_sample = Instant::now();
                    let now = t_sample;
                    for it in &out.plan.items {
                        if let Some(a) = self.active.get_mut(&it.seq) {
                            if !a.scheduled {
                                a.scheduled = true;
                                self.metrics
                                    .queue_wait
                                    .observe(now.duration_since(a.sub.arrived).as_secs_f64());
                                let _ = a.sub.events.send(Event::Started);
                            }
                        }
                    }
                    for (seq, lps) in out.prompt_logprobs {
                        if self.cfg.faults.logit_noise > 0.0 {
                            for _ in &lps {
                                self.metrics.fault(Fault::LogitNoise);
                            }
                        }
                        if let Some(a) = self.active.get(&seq) {
                            let _ = a.sub.events.send(Event::PromptLogprobs(lps));
                        }
                    }
                    let produced = !out.logits.is_empty();
                    for (seq, mut logits) in out.logits {
                        self.on_logits(seq, &mut logits);
                    }
                    if ran {
                        let sample = t_sample.elapsed();
                        self.publish();
                        let total = t_iter.elapsed();
                        let times = StepTimes {
                            schedule: total.saturating_sub(out.busy + sample),
                            forward: out.busy,
                            sample,
                        };
                        let kind =
                            StepKind::of(out.prefill_tokens, out.tokens - out.prefill_tokens);
                        self.metrics
                            .step(kind, times, out.prefill_tokens, out.tokens);
                        // Test aid: a slower accelerator, after the gauges
                        // were published and outside the step's own times.
                        if produced {
                            if let Some(pause) = self.cfg.faults.token_pause(&mut self.fault_rng) {
                                self.metrics.fault(Fault::TokenDelay);
                                std::thread::sleep(pause);
                            }
                        }
                        continue;
                    }
                }
                Err(e) => {
                    let n = self
                        .shared
                        .consecutive_failures
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    tracing::error!(error = %e, consecutive_failures = n, "model step failed; failing its requests");
                    let ids: Vec<SeqId> = self.active.keys().copied().collect();
                    for id in ids {
                        if let Some(a) = self.active.remove(&id) {
                            let _ = a.sub.events.send(Event::Failed(e.to_string()));
                        }
                        self.core.sched.remove(id);
                    }
                }
            }
            self.publish();
        }
        self.shared.stopped.store(true, Ordering::Relaxed);
    }

    /// Drain began: every request that has not started yet is refused, so
    /// its client gets a 503 to retry elsewhere instead of a stream cut at
    /// the end of the window.
    fn refuse_unstarted(&mut self) {
        let unstarted: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| !a.scheduled)
            .map(|(id, _)| *id)
            .collect();
        for id in unstarted {
            if let Some(a) = self.active.remove(&id) {
                let _ = a.sub.events.send(Event::Refused(Refusal::Draining));
            }
            self.core.sched.remove(id);
        }
    }

    /// While idle after failed steps, tries a small probe step every
    /// `PROBE_INTERVAL`, so a replica that recovered turns ready again even
    /// though, unready, it gets no traffic to prove it.
    fn probe_if_failing(&mut self) {
        if self.shared.consecutive_failures.load(Ordering::Relaxed) == 0
            || self
                .last_probe
                .is_some_and(|t| t.elapsed() < PROBE_INTERVAL)
        {
            return;
        }
        self.last_probe = Some(Instant::now());
        let injected = self.cfg.faults.fail_step(&mut self.fault_rng);
        let core = &mut self.core;
        let ok = !injected
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.warm_up()))
                .is_ok_and(|r| r.is_ok());
        // A failed warm-up may leave its probe sequence behind.
        self.core.sched.remove(SeqId::MAX);
        if injected {
            self.metrics.fault(Fault::StepError);
        }
        if ok {
            self.shared.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::info!("probe step succeeded; the engine is healthy again");
        } else {
            let n = self
                .shared
                .consecutive_failures
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            tracing::warn!(consecutive_failures = n, "probe step failed");
        }
    }

    /// One model step; a panic inside it is an error, not a dead thread.
    /// The step-error test aid fails the step before it runs.
    fn step(&mut self) -> Result<super::core::StepOutput, tch::TchError> {
        if !self.active.is_empty() && self.cfg.faults.fail_step(&mut self.fault_rng) {
            self.metrics.fault(Fault::StepError);
            tracing::info!(fault = Fault::StepError.as_str(), "injected fault");
            return Err(tch::TchError::Torch(
                "injected fault (--fault-step-error-rate)".into(),
            ));
        }
        let core = &mut self.core;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.step())).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "model step panicked".into());
            Err(tch::TchError::Torch(msg))
        })
    }

    fn intake(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(sub) => {
                let id = self.next_id;
                self.next_id += 1;
                self.metrics.prompt_tokens.inc_by(sub.prompt.len() as u64);
                match sub.prompt_logprobs {
                    Some(k) => self.core.add_scored(id, sub.prompt.clone(), k),
                    None => self.core.sched.add(id, sub.prompt.clone()),
                }
                // Count it as queued before it stops counting as submitted,
                // so admission never sees a gap.
                self.shared
                    .queued
                    .store(self.core.sched.num_waiting(), Ordering::SeqCst);
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                let sampler = Sampler::new(sub.sampling.clone());
                let stop = StopMatcher::new(sub.stop.clone());
                self.active.insert(
                    id,
                    Active {
                        sub: *sub,
                        sampler,
                        detok: IncrementalDecoder::default(),
                        stop,
                        generated: 0,
                        scheduled: false,
                        last_token_at: None,
                    },
                );
            }
        }
    }

    /// A dropped receiver means the client disconnected: stop generating
    /// and free the blocks now, before the next step.
    fn cancel_gone(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.sub.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.active.remove(&id);
            self.core.sched.remove(id);
            self.metrics.cancelled.inc();
            self.metrics.finish("cancelled");
            tracing::debug!(seq = id, "client gone; generation cancelled");
        }
    }

    fn on_logits(&mut self, seq: SeqId, logits: &mut [f32]) {
        let Some(a) = self.active.get_mut(&seq) else {
            return;
        };
        let now = Instant::now();
        if a.sub.max_tokens == 0 {
            // Scoring only (`echo` with `max_tokens: 0`): the prompt is
            // done, nothing is generated.
            self.metrics
                .e2e
                .observe(now.duration_since(a.sub.arrived).as_secs_f64());
            self.metrics.finish(FinishReason::Length.as_str());
            let _ = a.sub.events.send(Event::Done {
                finish: FinishReason::Length,
                prompt_tokens: a.sub.prompt.len(),
                completion_tokens: 0,
            });
            self.active.remove(&seq);
            self.core.sched.remove(seq);
            return;
        }
        let faults = &self.cfg.faults;
        if faults.perturb_logits(logits, &mut self.fault_rng) {
            self.metrics.fault(Fault::LogitNoise);
        }
        let mut tok = a.sampler.sample(logits);
        if let Some(t) =
            faults.corrupt_token(tok, logits.len(), &self.cfg.eos_ids, &mut self.fault_rng)
        {
            self.metrics.fault(Fault::CorruptToken);
            tok = t;
        }
        let is_eos = !a.sub.ignore_eos && self.cfg.eos_ids.contains(&tok);
        if let (Some(k), false) = (a.sub.logprobs, is_eos) {
            let _ = a
                .sub
                .events
                .send(Event::Logprob(logprobs_of(logits, tok, k)));
        }
        match a.last_token_at {
            None => self
                .metrics
                .ttft
                .observe(now.duration_since(a.sub.arrived).as_secs_f64()),
            Some(prev) => self
                .metrics
                .itl
                .observe(now.duration_since(prev).as_secs_f64()),
        }
        a.last_token_at = Some(now);
        let finish = if is_eos {
            a.generated += 1;
            let rest = a.stop.flush();
            if !rest.is_empty() {
                let _ = a.sub.events.send(Event::Delta(rest));
            }
            Some(FinishReason::Stop)
        } else {
            a.generated += 1;
            let text = a.detok.push(&self.codec, tok);
            let out = a.stop.push(&text);
            if !out.emit.is_empty() {
                let _ = a.sub.events.send(Event::Delta(out.emit));
            }
            if out.stopped {
                Some(FinishReason::Stop)
            } else if a.generated >= a.sub.max_tokens {
                let rest = a.stop.flush();
                if !rest.is_empty() {
                    let _ = a.sub.events.send(Event::Delta(rest));
                }
                Some(FinishReason::Length)
            } else {
                None
            }
        };
        self.metrics.generation_tokens.inc();
        match finish {
            None => self.core.sched.append_token(seq, tok),
            Some(reason) => {
                // Metrics first, so a client that scrapes right after its
                // response sees them.
                self.metrics
                    .e2e
                    .observe(now.duration_since(a.sub.arrived).as_secs_f64());
                self.metrics.finish(reason.as_str());
                let _ = a.sub.events.send(Event::Done {
                    finish: reason,
                    prompt_tokens: a.sub.prompt.len(),
                    completion_tokens: a.generated,
                });
                self.active.remove(&seq);
                self.core.sched.remove(seq);
            }
        }
    }

    fn publish(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.rss_read_at) >= Duration::from_secs(1) {
            self.rss_read_at = now;
            if let Some(b) = crate::metrics::resident_bytes() {
                self.metrics.memory_resident.set(b as i64);
            }
        }
        while let Some((t, _, _)) = self.busy_window.front() {
            if now.duration_since(*t) > UTIL_WINDOW {
                self.busy_window.pop_front();
            } else {
                break;
            }
        }
        let busy: Duration = self.busy_window.iter().map(|(_, d, _)| *d).sum();
        let used: Duration = self.busy_window.iter().map(|(_, _, w)| *w).sum();
        let span = now.duration_since(self.started).min(UTIL_WINDOW);
        let share = |d: Duration| {
            if span.is_zero() {
                0.0
            } else {
                (d.as_secs_f64() / span.as_secs_f64()).min(1.0)
            }
        };
        let util = share(used);
        self.metrics.busy.set(share(busy));
        let s = &self.core.sched;
        let usage = s.kv_usage();
        let waiting_sched = s.num_waiting();
        self.shared
            .running
            .store(s.num_running(), Ordering::Relaxed);
        self.shared.queued.store(waiting_sched, Ordering::Relaxed);
        self.shared
            .blocks_used
            .store(s.blocks_used(), Ordering::Relaxed);
        self.shared
            .kv_usage_bits
            .store(usage.to_bits(), Ordering::Relaxed);
        self.shared
            .utilization_bits
            .store(util.to_bits(), Ordering::Relaxed);
        if usage > self.cfg.shed_kv_usage {
            let since = *self.kv_high_since.get_or_insert(now);
            self.shared.kv_high_for_ms.store(
                now.duration_since(since).as_millis().max(1) as u64,
                Ordering::Relaxed,
            );
        } else {
            self.kv_high_since = None;
            self.shared.kv_high_for_ms.store(0, Ordering::Relaxed);
        }
        let pending = self.shared.waiting.load(Ordering::Relaxed);
        self.metrics.requests_running.set(s.num_running() as i64);
        self.metrics
            .requests_waiting
            .set((waiting_sched + pending) as i64);
        self.metrics.kv_cache_usage.set(usage);
        self.metrics.utilization.set(util);
        self.metrics
            .prefill_chunk
            .set(s.prefill_chunk_now(s.num_running().max(1)) as i64);
        if s.preemptions > self.seen_preemptions {
            self.metrics
                .preemptions
                .inc_by(s.preemptions - self.seen_preemptions);
            self.seen_preemptions = s.preemptions;
        }
        let ps = s.prefix_stats();
        if ps.hits > self.seen_hits {
            self.metrics.prefix_hits.inc_by(ps.hits - self.seen_hits);
            self.seen_hits = ps.hits;
        }
        if ps.lookups > self.seen_lookups {
            self.metrics
                .prefix_lookups
                .inc_by(ps.lookups - self.seen_lookups);
            self.seen_lookups = ps.lookups;
        }
    }
}

#[cfg(test)]
mod fill_tests {
    use super::step_fill;

    #[test]
    fn a_step_is_as_full_as_its_fuller_dimension() {
        // One decode of 16 possible sequences: 1/16 of the capacity.
        assert_eq!(step_fill(1, 1, 16, 256), 1.0 / 16.0);
        // A full batch of decodes.
        assert_eq!(step_fill(16, 16, 16, 256), 1.0);
        // One long prefill chunk fills the token budget.
        assert_eq!(step_fill(1, 256, 16, 256), 1.0);
        // Half the sequences, a quarter of the tokens: half full.
        assert_eq!(step_fill(8, 64, 16, 256), 0.5);
        // Never above 1, never a division by zero.
        assert_eq!(step_fill(40, 9000, 16, 256), 1.0);
        assert_eq!(step_fill(1, 1, 0, 0), 1.0);
        assert_eq!(step_fill(0, 0, 16, 256), 0.0);
    }
}
