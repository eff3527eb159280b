//! `steward-engine serve`: flags, start-up and drain.
//!
//! Start-up binds the port first (so `/health` answers and `/ready` says
//! "loading" during a cold start), then loads weights and tokenizer, runs a
//! warm-up step, starts the engine actor and only then turns ready. Load and
//! warm-up times are logged and exported.
//!
//! Drain (`POST /drain` or SIGTERM): `/ready` fails at once, new requests get
//! 503 + Retry-After, in-flight streams run to their end; the server exits
//! when nothing is in flight or when the drain window ends, cutting and
//! counting what is left.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::admission::{AdmissionLimits, TenantSlots};
use crate::api::routes::{router, AppState, BodyLimits, Loaded};
use crate::api::validate::Limits;
use crate::executor::{spawn, ActorConfig, EngineCore};
use crate::faults::{Fault, FaultArgs, FaultPlan};
use crate::health::HealthLimits;
use crate::listen::ListenConfig;
use crate::metrics::EngineMetrics;
use crate::model::{pick_device, DType, Llama, WeightLayout};
use crate::sched::SchedulerConfig;
use crate::threads::WaitPolicy;
use crate::tokenizer::TextCodec;

#[derive(Debug, Clone, clap::Args)]
pub struct SchedArgs {
    /// Token budget of one model step (prefill chunks + decodes).
    #[arg(long, env = "STEWARD_MAX_BATCH_TOKENS", default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Most prompt tokens one step computes while streams are decoding
    /// (decode-first: bounds the stall an arriving prompt causes running
    /// streams; larger values trade inter-token latency for TTFT).
    #[arg(
        long,
        env = "STEWARD_PREFILL_CHUNK_WHILE_DECODING",
        default_value_t = 64
    )]
    pub prefill_chunk_while_decoding: usize,
    /// With decodes in the step, at most the prompt tokens that keep the
    /// step within this many times the decodes alone, by the step times
    /// the engine has measured (never fewer than 16, never more than the
    /// chunk above): bounds the inter-token tail on any device; 0 turns it
    /// off.
    #[arg(
        long,
        env = "STEWARD_PREFILL_STEP_RATIO",
        default_value_t = 1.5,
        value_parser = step_ratio
    )]
    pub prefill_step_ratio: f64,
    /// With decodes in the step, also at most this many prompt tokens per
    /// decode (never fewer than 16); 0 (default) turns it off.
    #[arg(long, env = "STEWARD_PREFILL_TOKENS_PER_DECODE", default_value_t = 0)]
    pub prefill_tokens_per_decode: usize,
    /// Number of KV-cache blocks.
    #[arg(long, env = "STEWARD_KV_CACHE_BLOCKS", default_value_t = 1024)]
    pub kv_cache_blocks: usize,
    /// Tokens per KV-cache block.
    #[arg(long, env = "STEWARD_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// Most sequences in the running batch.
    #[arg(long, env = "STEWARD_MAX_NUM_SEQS", default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Turn prefix caching off.
    #[arg(long, env = "STEWARD_NO_PREFIX_CACHING")]
    pub no_prefix_caching: bool,
}

/// `--prefill-step-ratio`: 0 (off) or a finite ratio of at least 1 (a step
/// with a chunk cannot cost less than the decodes alone).
fn step_ratio(v: &str) -> Result<f64, String> {
    let r: f64 = v
        .trim()
        .parse()
        .map_err(|e| format!("{v:?} is not a number ({e}); give 0 (off) or a ratio such as 2.5"))?;
    if r == 0.0 || (r.is_finite() && r >= 1.0) {
        Ok(r)
    } else {
        Err(format!(
            "{v} is not a step ratio: give 0 (off) or a number of at least 1 (2.5: a step with a prompt chunk takes at most 2.5x the decodes alone)"
        ))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Context window; defaults to the model's max_position_embeddings
    /// (and never more than the KV cache holds).
    #[arg(long, env = "STEWARD_MAX_CONTEXT_TOKENS")]
    pub max_context_tokens: Option<usize>,
    /// Cap on max_tokens; larger requests are clamped (and told so in usage).
    #[arg(long, env = "STEWARD_MAX_TOKENS_CAP", default_value_t = 4096)]
    pub max_tokens_cap: usize,
    /// Cap on prompt + max_tokens per request; defaults to the context window.
    #[arg(long, env = "STEWARD_MAX_REQUEST_TOKENS")]
    pub max_request_tokens: Option<usize>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionArgs {
    /// Most requests waiting for the running batch; beyond it, 503.
    #[arg(long, env = "STEWARD_MAX_WAITING", default_value_t = 256)]
    pub max_waiting: usize,
    /// Most concurrent requests per tenant (`x-tenant` header); beyond it, 429.
    #[arg(long, env = "STEWARD_TENANT_MAX_CONCURRENT", default_value_t = 64)]
    pub tenant_max_concurrent: usize,
    /// KV-cache usage (0-1) above which new requests are shed...
    #[arg(long, env = "STEWARD_SHED_KV_USAGE", default_value_t = 0.95)]
    pub shed_kv_usage: f64,
    /// ...once it has stayed above that level this long.
    #[arg(long, env = "STEWARD_SHED_AFTER", default_value = "2s", value_parser = humantime::parse_duration)]
    pub shed_after: Duration,
    /// Retry-After seconds on 429/503 refusals.
    #[arg(long, env = "STEWARD_RETRY_AFTER_SECS", default_value_t = 1)]
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Largest request body in bytes (413 request_too_large beyond it);
    /// the router's default, so both answer alike.
    #[arg(long, env = "STEWARD_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Longest time to receive a request body (408 request_timeout).
    #[arg(long, env = "STEWARD_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// Longest time to receive a request's headers; the connection is
    /// closed after it (slow clients cannot hold connections).
    #[arg(long, env = "STEWARD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Most open HTTP connections; more wait to be accepted.
    #[arg(long, env = "STEWARD_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// /ready and /health fail when the engine loop has not come around for
    /// this long (a hung step).
    #[arg(long, env = "STEWARD_STEP_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub step_timeout: Duration,
    /// /ready fails after this many model steps failed in a row (until a
    /// step or a probe step succeeds).
    #[arg(long, env = "STEWARD_UNREADY_AFTER_STEP_FAILURES", default_value_t = 3)]
    pub unready_after_step_failures: u32,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Hugging Face-style model directory.
    #[arg(long, env = "STEWARD_MODEL")]
    pub model: PathBuf,
    /// Name clients use in `model`; defaults to the directory's name.
    #[arg(long, env = "STEWARD_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    #[arg(long, env = "STEWARD_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, env = "STEWARD_PORT", default_value_t = 8000)]
    pub port: u16,
    #[command(flatten)]
    pub sched: SchedArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub admission: AdmissionArgs,
    /// Longest a drain waits for in-flight streams before cutting them.
    #[arg(long, env = "STEWARD_DRAIN_WINDOW", default_value = "45s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,
    /// File holding the secret `POST /drain` must carry as
    /// `Authorization: Bearer <secret>`. Without it, draining over HTTP is
    /// off; SIGTERM (the pod's own lifecycle) always drains.
    #[arg(long, env = "STEWARD_DRAIN_TOKEN_FILE")]
    pub drain_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Also expose the core metrics under vLLM's names.
    #[arg(long, env = "STEWARD_VLLM_METRICS")]
    pub vllm_metrics: bool,
    /// Interval of SSE comment keep-alives while a stream waits.
    #[arg(long, env = "STEWARD_SSE_KEEP_ALIVE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub sse_keep_alive: Duration,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// Weight and KV-cache dtype: f32, or bf16 (half the bytes read per
    /// step; logits within the tolerance in docs/engine.md).
    #[arg(long, env = "STEWARD_DTYPE", value_enum, default_value_t = DType::F32)]
    pub dtype: DType,
    /// How projection weights are laid out at load: auto (CUDA: plain; CPU
    /// f32: both, i.e. plain for batch 1 and oneDNN-packed otherwise, twice
    /// the weight memory; CPU bf16: packed), plain, packed or both.
    #[arg(long, env = "STEWARD_WEIGHT_LAYOUT", value_enum, default_value_t = WeightLayout::Auto)]
    pub weight_layout: WeightLayout,
    #[command(flatten)]
    pub faults: FaultArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ThreadArgs {
    /// libtorch intra-op threads; default: sized from the CPU allotment
    /// (cgroup quota or --cpu-limit, else the visible cores).
    #[arg(long, env = "STEWARD_TORCH_THREADS")]
    pub torch_threads: Option<usize>,
    /// The pod's CPU limit as a Kubernetes quantity (`2`, `500m`); the
    /// operator passes `resources.cpu` here through the downward API.
    #[arg(long, env = "STEWARD_CPU_LIMIT")]
    pub cpu_limit: Option<String>,
    /// OpenMP wait policy of idle threads; default: an OMP_WAIT_POLICY or
    /// GOMP_SPINCOUNT already set in the environment, else bounded (spin
    /// briefly, then sleep). Applied by re-executing the process once at
    /// start.
    #[arg(long, env = "STEWARD_OMP_WAIT_POLICY", value_enum)]
    pub omp_wait_policy: Option<WaitPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("loading the tokenizer: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("warm-up step: {0}")]
    Warmup(#[from] tch::TchError),
    #[error("starting the engine thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("http server: {0}")]
    Http(#[source] std::io::Error),
    #[error("the loader task panicked")]
    LoaderPanicked,
    #[error("fault injection: {0}")]
    Faults(#[from] crate::faults::FaultError),
    #[error("reading the drain token file {path}: {reason}")]
    DrainToken { path: PathBuf, reason: String },
}

fn read_drain_token(path: &std::path::Path) -> Result<String, ServeError> {
    let err = |reason: String| ServeError::DrainToken {
        path: path.to_path_buf(),
        reason,
    };
    let t = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let t = t.trim();
    if t.len() < 16 {
        return Err(err("the token must be at least 16 characters".into()));
    }
    Ok(t.to_string())
}

/// Runs the server until it has drained, with libtorch's pools sized by
/// `threads` (`threads::plan` of `args.threads`, worked out once in main).
/// `process_start` is when main began.
pub async fn run(
    args: ServeArgs,
    threads: crate::threads::ThreadPlan,
    process_start: Instant,
) -> Result<(), ServeError> {
    let faults = FaultPlan::from_args(&args.faults)?;
    let drain_token = match &args.drain_token_file {
        Some(p) => Some(read_drain_token(p)?),
        None => None,
    };
    crate::threads::apply(&threads);
    let served = args.served_model_name.clone().unwrap_or_else(|| {
        args.model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let metrics = Arc::new(EngineMetrics::new(&served, args.vllm_metrics));
    if args.faults.enable_fault_injection {
        metrics.fault_injection_enabled.set(1);
        tracing::warn!(faults = %faults.describe(), "FAULT INJECTION ENABLED: this replica is a test aid and misbehaves on purpose");
    }
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Http)?;
    tracing::info!(%local, model = %args.model.display(), served_model = %served, "listening; loading model");
    tracing::info!(
        intra_op = threads.intra_op,
        inter_op = threads.inter_op,
        source = threads.source.as_str(),
        allotment_cores = threads.allotment,
        omp_wait_policy = crate::threads::wait_policy_in_effect(),
        "threads chosen"
    );
    metrics.torch_threads.set(threads.intra_op as i64);

    let state = Arc::new(AppState {
        loaded: OnceLock::new(),
        served_model: served.clone(),
        admission: AdmissionLimits {
            max_waiting: args.admission.max_waiting,
            tenant_max_concurrent: args.admission.tenant_max_concurrent,
            shed_after: args.admission.shed_after,
        },
        metrics: metrics.clone(),
        tenants: TenantSlots::default(),
        draining: AtomicBool::new(false),
        drain_notify: Notify::new(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        retry_after_secs: args.admission.retry_after_secs,
        keep_alive: args.sse_keep_alive,
        drain_token,
        health: HealthLimits {
            step_timeout: args.health.step_timeout,
            max_consecutive_failures: args.health.unready_after_step_failures,
        },
        body: BodyLimits {
            max_bytes: args.http.max_body_bytes,
            read_timeout: args.http.body_read_timeout,
        },
        prep_permits: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
        )),
        faults: faults.clone(),
        fault_rng: std::sync::Mutex::new(fault_rng(faults.seed, 0)),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    // Serve from the start: /health answers and /ready says "loading"
    // during the cold start.
    let shutdown = Arc::new(Notify::new());
    let shutdown2 = shutdown.clone();
    let app = router(state.clone());
    let listen_cfg = ListenConfig {
        header_read_timeout: args.http.header_read_timeout,
        max_connections: args.http.max_connections,
        max_header_bytes: 64 << 10,
    };
    let mut server = tokio::spawn(crate::listen::serve(
        listener,
        app,
        listen_cfg,
        metrics.clone(),
        async move { shutdown2.notified().await },
        FLUSH_WINDOW,
    ));
    spawn_sigterm(state.clone());

    let (device, cuda_backend) = pick_device();
    tracing::info!(
        ?device,
        dtype = args.dtype.as_str(),
        cuda_backend,
        "device chosen"
    );
    let t_load = Instant::now();
    let model_dir = args.model.clone();
    let dtype = args.dtype;
    let layout = args.weight_layout;
    let (model, codec) = on_own_thread(
        "engine-load",
        move || -> Result<(Llama, TextCodec), ServeError> {
            let model = Llama::load_as(&model_dir, device, dtype, layout)?;
            let codec = TextCodec::load(&model_dir)?;
            Ok((model, codec))
        },
    )
    .await
    .map_err(|_| ServeError::LoaderPanicked)??;
    if !faults.load_delay.is_zero() {
        tracing::warn!(delay = ?faults.load_delay, "fault injection: model load delayed");
        tokio::time::sleep(faults.load_delay).await;
        metrics.fault(Fault::LoadDelay);
    }
    let load_time = t_load.elapsed();
    let cfg = model.cfg.clone();
    let bs = args.sched.block_size.max(1);
    let kv_tokens = args.sched.kv_cache_blocks * bs;
    let max_context = args
        .limits
        .max_context_tokens
        .unwrap_or(cfg.max_position_embeddings)
        .min(cfg.max_position_embeddings)
        .min(kv_tokens);
    let limits = Limits {
        served_model: served.clone(),
        max_context,
        max_tokens_cap: args.limits.max_tokens_cap.max(1),
        max_request_tokens: args.limits.max_request_tokens.unwrap_or(max_context),
    };
    tracing::info!(
        params = model.num_params(),
        layers = cfg.num_hidden_layers,
        vocab = cfg.vocab_size,
        max_context,
        dtype = args.dtype.as_str(),
        weight_layout = model.layout.as_str(),
        bf16_dot_product = model.layout == crate::model::linear::WeightLayout::Panel
            && model.kind == tch::Kind::BFloat16
            && crate::model::linear::bf16_dot_available(),
        weight_bytes = model.weight_bytes(),
        load_seconds = load_time.as_secs_f64(),
        "weights loaded"
    );
    metrics.load_seconds.set(load_time.as_secs_f64());
    metrics.memory_weights.set(model.weight_bytes() as i64);
    metrics
        .memory_kv_cache
        .set((crate::model::KvCache::bytes_per_token(&cfg, model.kind) * kv_tokens) as i64);

    let sched_cfg = SchedulerConfig {
        num_blocks: args.sched.kv_cache_blocks,
        block_size: bs,
        max_batch_tokens: args.sched.max_batch_tokens.max(1),
        prefill_chunk_while_decoding: args.sched.prefill_chunk_while_decoding.max(1),
        prefill_tokens_per_decode: args.sched.prefill_tokens_per_decode,
        prefill_step_ratio: args.sched.prefill_step_ratio,
        max_running: args.sched.max_num_seqs.max(1),
        prefix_caching: !args.sched.no_prefix_caching,
    };
    let eos_ids = cfg.eos_ids();
    let (core, warm) = on_own_thread("engine-warmup", move || -> Result<_, ServeError> {
        let mut core = EngineCore::new(model, sched_cfg);
        let warm = core.warm_up()?;
        Ok((core, warm))
    })
    .await
    .map_err(|_| ServeError::LoaderPanicked)??;
    metrics.warmup_seconds.set(warm.as_secs_f64());
    let codec = Arc::new(codec);
    let handle = spawn(
        core,
        codec.clone(),
        metrics.clone(),
        ActorConfig {
            eos_ids,
            shed_kv_usage: args.admission.shed_kv_usage,
            command_queue: args.admission.max_waiting.max(1) * 2,
            faults: faults.clone(),
        },
    )
    .map_err(ServeError::Thread)?;

    let _ = state.loaded.set(Loaded {
        handle,
        codec,
        limits,
    });
    if state.draining.load(Ordering::SeqCst) {
        if let Some(l) = state.loaded.get() {
            l.handle
                .shared
                .refuse_unstarted
                .store(true, Ordering::SeqCst);
        }
    }
    let startup = process_start.elapsed();
    metrics.startup_seconds.set(startup.as_secs_f64());
    tracing::info!(
        load_seconds = load_time.as_secs_f64(),
        warmup_seconds = warm.as_secs_f64(),
        startup_seconds = startup.as_secs_f64(),
        "ready"
    );

    // Wait for a drain to start (or the server to fail).
    let drained = state.drain_notify.notified();
    tokio::pin!(drained);
    if !state.draining.load(Ordering::SeqCst) {
        tokio::select! {
            _ = &mut drained => {}
            _ = &mut server => {
                return Err(ServeError::Http(std::io::Error::other(
                    "the HTTP server stopped",
                )));
            }
        }
    }
    let t_drain = Instant::now();
    tracing::info!(
        in_flight = state.in_flight.load(Ordering::SeqCst),
        window_seconds = args.drain_window.as_secs_f64(),
        "draining"
    );
    loop {
        let n = state.in_flight.load(Ordering::SeqCst);
        if n == 0 {
            tracing::info!(
                drain_seconds = t_drain.elapsed().as_secs_f64(),
                cut_streams = 0,
                "drained; exiting"
            );
            // Stop accepting; wait until every connection has written its
            // last bytes (final chunks and [DONE]) and closed.
            shutdown.notify_one();
            let _ = tokio::time::timeout(FLUSH_WINDOW + Duration::from_secs(1), &mut server).await;
            stop_engine(&state).await;
            return Ok(());
        }
        if t_drain.elapsed() >= args.drain_window {
            metrics.drain_cut_streams.inc_by(n as u64);
            tracing::warn!(
                cut_streams = n,
                "drain window ended; cutting streams and exiting"
            );
            // Stopping the engine ends every stream with a `stream_cut`
            // event; let those go out before exiting.
            stop_engine(&state).await;
            shutdown.notify_one();
            let _ = tokio::time::timeout(CUT_FLUSH_WINDOW, &mut server).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Longest the server waits, after a drain, for connections to finish
/// writing their last responses.
const FLUSH_WINDOW: Duration = Duration::from_secs(5);
/// The same after the drain window cut streams (only error events to send).
const CUT_FLUSH_WINDOW: Duration = Duration::from_secs(2);

/// The RNG of fault decisions: seeded when `--fault-seed` is given (each
/// user of it gets its own stream), else from the OS.
pub fn fault_rng(seed: Option<u64>, stream: u64) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    match seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s.wrapping_add(stream)),
        None => rand::rngs::StdRng::from_os_rng(),
    }
}

/// Stops the engine loop and waits for it, so no tensor work runs while the
/// process exits (libtorch's globals are torn down then).
async fn stop_engine(state: &AppState) {
    if let Some(l) = state.loaded.get() {
        l.handle.shared.stop_requested.store(true, Ordering::SeqCst);
        let t = Instant::now();
        while !l.handle.shared.stopped.load(Ordering::SeqCst)
            && t.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn spawn_sigterm(state: Arc<AppState>) {
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            tracing::warn!("cannot listen for SIGTERM");
            return;
        };
        if term.recv().await.is_some() && state.start_drain() {
            tracing::info!(
                in_flight = state.in_flight.load(Ordering::SeqCst),
                "SIGTERM: draining"
            );
        }
    });
}

/// Runs `f` on a thread of its own that exits when `f` returns. libtorch
/// work (loading, warm-up) is kept off tokio's blocking pool on purpose: an
/// OS thread that runs a parallel libtorch operation keeps an OpenMP team
/// for as long as it lives, and once libgomp manages more threads than there
/// are CPUs it cuts every team's spin-wait to a few iterations (its
/// "throttled" spin count), so the engine thread's own team would sleep and
/// wake at every parallel region of every step. A pooled thread lives on;
/// this one takes its team with it.
async fn on_own_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::sync::oneshot::error::RecvError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        });
    match spawned {
        // A failed spawn drops the sender: the caller sees it as a loader failure.
        Err(e) => tracing::error!(error = %e, thread = name, "could not start a thread"),
        Ok(handle) => {
            let out = rx.await;
            // The thread has sent (or panicked); wait for it to exit so its
            // OpenMP team is gone before the engine thread starts stepping.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            return out;
        }
    }
    rx.await
}

#[cfg(test)]
mod tests {
    use super::step_ratio;

    #[test]
    fn step_ratio_takes_zero_or_at_least_one() {
        assert_eq!(step_ratio("0"), Ok(0.0));
        assert_eq!(step_ratio("2.5"), Ok(2.5));
        assert_eq!(step_ratio(" 1 "), Ok(1.0));
        for bad in ["0.5", "-1", "inf", "NaN", "two"] {
            let e = step_ratio(bad).expect_err(bad);
            assert!(e.contains("0 (off)"), "{bad}: {e}");
        }
    }
}
