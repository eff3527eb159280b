//! The quality gate's I/O: reads the golden set's ConfigMap, asks one pod of
//! the canary and one of the stable revision for every golden answer and
//! for the references' log-likelihood, and hands both runs to the pure gate
//! (`quality::evaluate`).
//!
//! The rollout calls [`QualityRunner::poll`] at each pass of a canary step.
//! The first call for a [`RunKey`] (object, both revisions, step) starts the
//! run in the background and answers [`RunState::Running`]; later calls
//! answer the same [`RunState::Done`] report until the key changes, so a
//! step runs the golden set once. An undecided report (golden set missing
//! or malformed, a pod unreachable) is kept only for
//! `retry_unknown_after`, so fixing the ConfigMap or the pod unblocks the
//! step without a new revision. When a run ends the runner calls the waker,
//! so the object is reconciled at once instead of at the next requeue.
//!
//! Bounds: one semaphore caps requests in flight over all runs
//! (`concurrency`); each request has `request_timeout` and one retry on a
//! transient failure (connect error, timeout, 429, 5xx); each run has
//! `run_timeout`; the cache holds at most `max_cached` keys and keeps only
//! the newest key per object. Counted in `steward_operator_quality_*`
//! (docs/metrics-operator.md).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::quality::openai;
use crate::quality::{
    evaluate, Answer, Gate, GateSettings, GoldenEntry, GoldenSet, LogLikelihood, QualityReport,
    RevisionRun, UnknownReason,
};

/// Settings of the runner (operator flags, [`QualityArgs`]).
#[derive(Clone, Debug)]
pub struct QualityRunnerConfig {
    /// Golden-set requests in flight at once, over all runs.
    pub concurrency: usize,
    /// Limit of one request to an engine pod.
    pub request_timeout: Duration,
    /// Limit of one whole run (both revisions).
    pub run_timeout: Duration,
    /// How long an undecided report is kept before the run is tried again.
    pub retry_unknown_after: Duration,
    /// Most run keys cached.
    pub max_cached: usize,
}

impl Default for QualityRunnerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            request_timeout: Duration::from_secs(30),
            run_timeout: Duration::from_secs(300),
            retry_unknown_after: Duration::from_secs(30),
            max_cached: 256,
        }
    }
}

/// The runner's operator flags.
#[derive(clap::Args, Clone, Debug)]
pub struct QualityArgs {
    /// Golden-set requests in flight at once, over every rollout.
    #[arg(long, env = "STEWARD_QUALITY_CONCURRENCY", default_value_t = 4)]
    pub quality_concurrency: usize,
    /// Time limit of one golden-set request to an engine pod.
    #[arg(long, env = "STEWARD_QUALITY_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub quality_request_timeout: Duration,
    /// Time limit of one golden-set run (both revisions).
    #[arg(long, env = "STEWARD_QUALITY_RUN_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub quality_run_timeout: Duration,
    /// How long an undecided result (golden set missing or malformed, pod
    /// unreachable) stands before the run is tried again.
    #[arg(long, env = "STEWARD_QUALITY_RETRY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub quality_retry: Duration,
}

impl From<&QualityArgs> for QualityRunnerConfig {
    fn from(a: &QualityArgs) -> Self {
        Self {
            concurrency: a.quality_concurrency.max(1),
            request_timeout: a.quality_request_timeout,
            run_timeout: a.quality_run_timeout,
            retry_unknown_after: a.quality_retry,
            ..Self::default()
        }
    }
}

/// One golden-set run: an object's canary against its stable at a step.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    /// The InferenceService's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The canary revision.
    pub canary: String,
    /// The stable revision.
    pub stable: String,
    /// The canary step (1-based).
    pub step: i32,
}

/// One engine pod to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its revision.
    pub revision: String,
    /// `http://<pod ip>:<port>`.
    pub base_url: String,
}

/// The engine pod of `pod` as a [`Target`]: its IP and the container port
/// named `http` (the engine's), else the first declared port. `None` when
/// the pod has no IP yet.
pub fn target_of(pod: &Pod, revision: &str) -> Option<Target> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
    let ports: Vec<_> = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .or_else(|| ports.first())?
        .container_port;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Some(Target {
        revision: revision.to_string(),
        base_url: format!("http://{host}:{port}"),
    })
}

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// Which run.
    pub key: RunKey,
    /// The golden set's ConfigMap (in `key.namespace`).
    pub config_map: String,
    /// The gate's thresholds.
    pub settings: GateSettings,
    /// A ready pod of the canary.
    pub canary: Target,
    /// A ready pod of the stable revision.
    pub stable: Target,
}

/// What [`QualityRunner::poll`] answers.
#[derive(Clone, Debug)]
pub enum RunState {
    /// The run is under way; hold the step.
    Running,
    /// The report of this key's run.
    Done(Arc<QualityReport>),
}

/// Called with the key of each run that finishes.
pub type Waker = Arc<dyn Fn(&RunKey) + Send + Sync>;

enum Slot {
    Running,
    Done {
        report: Arc<QualityReport>,
        expires: Option<Instant>,
    },
}

#[derive(Default)]
struct Cache {
    slots: HashMap<RunKey, Slot>,
    order: VecDeque<RunKey>,
}

/// Labels of `quality_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `answer` or `likelihood`.
    pub kind: &'static str,
    /// `ok`, `refused` (4xx), `error` (connect, 5xx, timeout, shape).
    pub outcome: &'static str,
}

/// Labels of `quality_runs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// `pass`, `fail` or the unknown reason (`GoldenSetInvalid`, …).
    pub result: &'static str,
}

/// The runner's metrics, under `steward_operator_quality_`.
#[derive(Clone)]
pub struct QualityMetrics {
    requests: Family<RequestLabels, Counter>,
    runs: Family<RunLabels, Counter>,
    run_seconds: Histogram,
    evictions: Counter,
}

impl QualityMetrics {
    /// Registers the metrics in `registry` (the operator's).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        let sub = registry.sub_registry_with_prefix("quality");
        sub.register(
            "requests",
            "Golden-set requests to engine pods, by kind and outcome",
            m.requests.clone(),
        );
        sub.register(
            "runs",
            "Golden-set runs finished, by result",
            m.runs.clone(),
        );
        sub.register(
            "run_duration_seconds",
            "Time one golden-set run took (both revisions)",
            m.run_seconds.clone(),
        );
        sub.register(
            "cache_evictions",
            "Run results dropped because the cache was full",
            m.evictions.clone(),
        );
        m
    }

    /// Metrics that no registry exposes (tests, tools).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            runs: Family::default(),
            run_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            evictions: Counter::default(),
        }
    }

    fn request(&self, kind: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { kind, outcome })
            .inc();
    }

    /// Requests so far with this kind and outcome.
    pub fn requests(&self, kind: &'static str, outcome: &'static str) -> u64 {
        self.requests
            .get_or_create(&RequestLabels { kind, outcome })
            .get()
    }
}

/// Runs golden sets against engine pods; cheap to clone.
#[derive(Clone)]
pub struct QualityRunner {
    client: Client,
    http: reqwest::Client,
    cfg: QualityRunnerConfig,
    permits: Arc<Semaphore>,
    cache: Arc<Mutex<Cache>>,
    waker: Option<Waker>,
    metrics: QualityMetrics,
}

/// The HTTP client could not be built (TLS back-end initialisation).
#[derive(Debug, thiserror::Error)]
#[error("building the golden-set HTTP client: {0}")]
pub struct RunnerInitError(#[source] reqwest::Error);

impl QualityRunner {
    /// A runner reading ConfigMaps with `client`.
    pub fn new(
        client: Client,
        cfg: QualityRunnerConfig,
        metrics: QualityMetrics,
    ) -> Result<Self, RunnerInitError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
            // Pod IPs only; a proxy from the environment must not see them.
            .no_proxy()
            .build()
            .map_err(RunnerInitError)?;
        Ok(Self {
            client,
            http,
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            cfg,
            cache: Arc::default(),
            waker: None,
            metrics,
        })
    }

    /// Calls `waker` with the key of every run that finishes (e.g. to
    /// trigger a reconcile of that object).
    pub fn with_waker(mut self, waker: Waker) -> Self {
        self.waker = Some(waker);
        self
    }

    /// The report for `req.key`, or [`RunState::Running`] after starting
    /// the run if none is cached. Never blocks on I/O. Must be called from
    /// within a tokio runtime.
    pub fn poll(&self, req: RunRequest) -> RunState {
        let now = Instant::now();
        let Ok(mut cache) = self.cache.lock() else {
            return RunState::Running;
        };
        match cache.slots.get(&req.key) {
            Some(Slot::Running) => return RunState::Running,
            Some(Slot::Done { report, expires }) if expires.is_none_or(|e| now < e) => {
                return RunState::Done(report.clone())
            }
            _ => {}
        }
        // Only the newest step of an object matters: drop its older keys.
        let same_object = |k: &RunKey| k.namespace == req.key.namespace && k.name == req.key.name;
        cache.slots.retain(|k, _| !same_object(k));
        cache.order.retain(|k| !same_object(k));
        while cache.slots.len() >= self.cfg.max_cached {
            let Some(pos) = cache
                .order
                .iter()
                .position(|k| matches!(cache.slots.get(k), Some(Slot::Done { .. })))
            else {
                break;
            };
            if let Some(old) = cache.order.remove(pos) {
                cache.slots.remove(&old);
                self.metrics.evictions.inc();
            }
        }
        cache.slots.insert(req.key.clone(), Slot::Running);
        cache.order.push_back(req.key.clone());
        drop(cache);

        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let report = match tokio::time::timeout(this.cfg.run_timeout, this.run(&req)).await {
                Ok(r) => r,
                Err(_) => QualityReport::unknown(
                    UnknownReason::QualityUnavailable,
                    format!(
                        "the golden-set run did not finish within {}",
                        humantime::format_duration(this.cfg.run_timeout)
                    ),
                    &req.settings,
                ),
            };
            this.metrics
                .run_seconds
                .observe(started.elapsed().as_secs_f64());
            let result = match &report.gate {
                Gate::Pass => "pass",
                Gate::Fail(_) => "fail",
                Gate::Unknown(u) => u.reason.as_str(),
            };
            this.metrics.runs.get_or_create(&RunLabels { result }).inc();
            info!(
                namespace = %req.key.namespace, name = %req.key.name,
                canary = %req.key.canary, stable = %req.key.stable, step = req.key.step,
                result, took_ms = started.elapsed().as_millis() as u64,
                "golden-set run finished"
            );
            let expires = matches!(report.gate, Gate::Unknown(_))
                .then(|| Instant::now() + this.cfg.retry_unknown_after);
            let stored = match this.cache.lock() {
                Ok(mut cache) => match cache.slots.get_mut(&req.key) {
                    Some(slot @ Slot::Running) => {
                        *slot = Slot::Done {
                            report: Arc::new(report),
                            expires,
                        };
                        true
                    }
                    // Superseded by a newer step while running.
                    _ => false,
                },
                Err(_) => false,
            };
            if stored {
                if let Some(w) = &this.waker {
                    w(&req.key);
                }
            }
        });
        RunState::Running
    }

    /// Forgets every run of an object (call when it is deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            let same = |k: &RunKey| k.namespace == namespace && k.name == name;
            cache.slots.retain(|k, _| !same(k));
            cache.order.retain(|k| !same(k));
        }
    }

    /// Runs the golden set now, uncached (what `poll` runs in the
    /// background; tests call it directly).
    pub async fn run(&self, req: &RunRequest) -> QualityReport {
        let set = match self.golden_set(&req.key.namespace, &req.config_map).await {
            Ok(s) => s,
            Err((reason, message)) => {
                return QualityReport::unknown(reason, message, &req.settings)
            }
        };
        let (canary, stable) = tokio::join!(
            self.run_revision(&set, &req.canary),
            self.run_revision(&set, &req.stable)
        );
        match (canary, stable) {
            (Ok(c), Ok(s)) => evaluate(&set, &c, &s, &req.settings),
            (Err(m), _) | (_, Err(m)) => {
                QualityReport::unknown(UnknownReason::QualityUnavailable, m, &req.settings)
            }
        }
    }

    async fn golden_set(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<GoldenSet, (UnknownReason, String)> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let cm = match tokio::time::timeout(self.cfg.request_timeout, api.get_opt(name)).await {
            Ok(Ok(Some(cm))) => cm,
            Ok(Ok(None)) => {
                return Err((
                    UnknownReason::GoldenSetNotFound,
                    format!("golden set ConfigMap {namespace}/{name} does not exist"),
                ))
            }
            Ok(Err(e)) => {
                return Err((
                    UnknownReason::QualityUnavailable,
                    format!("reading golden set ConfigMap {namespace}/{name}: {e}"),
                ))
            }
            Err(_) => {
                return Err((
                    UnknownReason::QualityUnavailable,
                    format!("reading golden set ConfigMap {namespace}/{name} timed out"),
                ))
            }
        };
        GoldenSet::parse(&cm.data.unwrap_or_default()).map_err(|e| {
            (
                UnknownReason::GoldenSetInvalid,
                format!("ConfigMap {namespace}/{name}: {e}"),
            )
        })
    }

    /// Every answer and the likelihood of one revision; `Err` names what
    /// could not be asked.
    async fn run_revision(&self, set: &GoldenSet, t: &Target) -> Result<RevisionRun, String> {
        let at = |what: String| format!("revision {} at {}: {what}", t.revision, t.base_url);
        let model = self.model_of(t).await.map_err(at)?;
        let answers = join_all(set.entries().iter().map(|e| self.answer(t, &model, e)));
        let likelihoods = join_all(
            set.entries()
                .iter()
                .filter_map(|e| e.perplexity_text().map(|pt| (e, pt)))
                .map(|(e, (p, r))| self.likelihood(t, &model, e, p, r)),
        );
        let (answers, likelihoods) = tokio::join!(answers, likelihoods);
        let mut run = RevisionRun {
            revision: t.revision.clone(),
            ..RevisionRun::default()
        };
        for (e, a) in set.entries().iter().zip(answers) {
            let a = a.map_err(|m| at(format!("golden entry `{}`: {m}", e.id)))?;
            run.answers.insert(e.id.clone(), a);
        }
        let mut total = LogLikelihood::default();
        let mut unscored = None;
        for l in likelihoods {
            match l.map_err(at)? {
                Ok(l) => total.add(l),
                Err(why) => unscored = unscored.or(Some(why)),
            }
        }
        if unscored.is_none() && total.tokens > 0 {
            run.likelihood = Some(total);
        }
        run.unscored = unscored;
        Ok(run)
    }

    async fn model_of(&self, t: &Target) -> Result<String, String> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("{}/v1/models", t.base_url),
                None,
            )
            .await
            .map_err(|e| format!("GET /v1/models: {e}"))?;
        openai::model_ids(&v)
            .into_iter()
            .next()
            .ok_or_else(|| "GET /v1/models lists no model".to_string())
    }

    async fn answer(&self, t: &Target, model: &str, e: &GoldenEntry) -> Result<Answer, String> {
        let (path, body) = openai::answer_request(model, e);
        let out = match self
            .call(
                reqwest::Method::POST,
                &format!("{}{path}", t.base_url),
                Some(&body),
            )
            .await
        {
            Ok(v) => openai::answer_text(&v)
                .map(Answer::Text)
                .map_err(|e| e.to_string()),
            Err(CallError::Refused(m)) => Ok(Answer::Refused(m)),
            Err(CallError::Failed(m)) => Err(m),
        };
        self.metrics.request(
            "answer",
            match &out {
                Ok(Answer::Text(_)) => "ok",
                Ok(Answer::Refused(_)) => "refused",
                Err(_) => "error",
            },
        );
        debug!(revision = %t.revision, entry = %e.id, ok = out.is_ok(), "golden answer");
        out
    }

    /// `Ok(Err(why))` when the engine refuses or cannot score (an engine
    /// without logprobs): the perplexity is then unknown, the answers still
    /// count. `Err` for a transient failure, which makes the run unknown.
    async fn likelihood(
        &self,
        t: &Target,
        model: &str,
        e: &GoldenEntry,
        prompt: &str,
        reference: &str,
    ) -> Result<Result<LogLikelihood, String>, String> {
        let body = openai::likelihood_request(model, prompt, reference);
        let out = match self
            .call(
                reqwest::Method::POST,
                &format!("{}/v1/completions", t.base_url),
                Some(&body),
            )
            .await
        {
            Ok(v) => match openai::reference_likelihood(&v, prompt, reference) {
                Ok(l) => Ok(Ok(l)),
                Err(err) => {
                    warn!(revision = %t.revision, entry = %e.id, error = %err, "reference not scored");
                    Ok(Err(format!("golden entry `{}`: {err}", e.id)))
                }
            },
            Err(CallError::Refused(m)) => {
                warn!(revision = %t.revision, entry = %e.id, error = %m, "reference scoring refused");
                Ok(Err(format!(
                    "golden entry `{}`: scoring refused: {m}",
                    e.id
                )))
            }
            Err(CallError::Failed(m)) => Err(format!("golden entry `{}` likelihood: {m}", e.id)),
        };
        self.metrics.request(
            "likelihood",
            match &out {
                Ok(Ok(_)) => "ok",
                Ok(Err(_)) => "refused",
                Err(_) => "error",
            },
        );
        out
    }

    /// One JSON request with a permit, the client's timeout and one retry
    /// of a transient failure.
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let mut last = None;
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let Ok(_permit) = self.permits.acquire().await else {
                return Err(CallError::Failed("runner shut down".into()));
            };
            let mut rb = self.http.request(method.clone(), url);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            match one_call(rb).await {
                Ok(v) => return Ok(v),
                Err(CallError::Refused(m)) => return Err(CallError::Refused(m)),
                Err(CallError::Failed(m)) => last = Some(m),
            }
        }
        Err(CallError::Failed(last.unwrap_or_default()))
    }
}

enum CallError {
    /// A 4xx other than 408 / 429: the request is at fault, retrying will
    /// not help.
    Refused(String),
    /// Connect error, timeout, 408, 429, 5xx, unreadable body.
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused(m) | CallError::Failed(m) => f.write_str(m),
        }
    }
}

async fn one_call(rb: reqwest::RequestBuilder) -> Result<Value, CallError> {
    let resp = rb
        .send()
        .await
        .map_err(|e| CallError::Failed(error_chain(&e)))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| CallError::Failed(format!("reading the body: {}", error_chain(&e))))?;
    if status.is_success() {
        return serde_json::from_str(&text)
            .map_err(|e| CallError::Failed(format!("the body is not JSON: {e}")));
    }
    let msg = format!("HTTP {}: {}", status.as_u16(), openai::error_message(&text));
    let transient = status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
    Err(if transient {
        CallError::Failed(msg)
    } else {
        CallError::Refused(msg)
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: Option<&str>, ports: &[(Option<&str>, i32)]) -> Pod {
        let ports: Vec<_> = ports
            .iter()
            .map(|(n, p)| serde_json::json!({"name": n, "containerPort": p}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "engine", "ports": ports}]},
            "status": {"podIP": ip}
        }))
        .unwrap()
    }

    #[test]
    fn target_uses_the_pod_ip_and_the_http_port() {
        let t = target_of(
            &pod(
                Some("127.16.0.9"),
                &[(Some("metrics"), 9090), (Some("http"), 8000)],
            ),
            "abc",
        )
        .unwrap();
        assert_eq!(t.base_url, "http://127.16.0.9:8000");
        assert_eq!(t.revision, "abc");
        let t = target_of(&pod(Some("fd00::1"), &[(None, 8001)]), "abc").unwrap();
        assert_eq!(t.base_url, "http://[fd00::1]:8001");
        assert_eq!(target_of(&pod(None, &[(Some("http"), 8000)]), "abc"), None);
        assert_eq!(target_of(&pod(Some("127.0.0.2"), &[]), "abc"), None);
    }

    #[test]
    fn flags_map_to_the_runner_config() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            q: QualityArgs,
        }
        let cli = Cli::parse_from([
            "x",
            "--quality-concurrency",
            "0",
            "--quality-run-timeout",
            "90s",
        ]);
        let cfg = QualityRunnerConfig::from(&cli.q);
        assert_eq!(cfg.concurrency, 1, "at least one request in flight");
        assert_eq!(cfg.run_timeout, Duration::from_secs(90));
        assert_eq!(cfg.request_timeout, Duration::from_secs(30));
        assert_eq!(cfg.retry_unknown_after, Duration::from_secs(30));
    }
}
