//! The I/O layer: watches, the reconcile pass, and the writes.
//!
//! One reconcile = observe (from reflector stores, no API reads, and the
//! latest signal snapshot kept by the object's poller) → decide
//! (`desired::desired` and `plan::plan_writes`, pure) → execute the planned
//! writes in their order, each with a timeout (`writes`), then the
//! object's PrometheusRule (`rules`). A failed pass is retried with
//! per-object exponential back-off (`backoff`). This module wires the
//! watches, the signal pollers (whose snapshot changes wake the object
//! through `reconcile_on`) and the controller; `reconcile` holds the pass
//! itself.

mod backoff;
pub mod gateway;
pub mod poller;
pub mod prometheus;
pub mod quality;
mod reconcile;
mod recorders;
mod rejected;
pub mod rules;
mod writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Future, FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, error, instrument, warn};

use self::backoff::Backoff;
use self::gateway::{GatewayApi, GatewayConfig};
use self::poller::Pollers;
use self::prometheus::{Prometheus, PrometheusConfig};
use self::quality::{QualityRunner, QualityRunnerConfig};
use self::rules::RuleWriter;
use crate::children::{TemplateConfig, UnsupportedUri, MANAGED_BY};
use crate::crd::{labels, UncheckedInferenceService};
use crate::metrics::Metrics;
use crate::reason::Reason;
use crate::rules::RuleOptions;

/// The one field manager of every write.
pub const FIELD_MANAGER: &str = "steward-operator";

/// Errors of one reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A write was refused or failed.
    #[error("{verb} {kind} {name}: {source}")]
    Write {
        /// `apply`, `scale`, `label` or `delete`.
        verb: &'static str,
        /// The object kind.
        kind: &'static str,
        /// The object name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A read the pass needs (one not served by a watch) failed.
    #[error("get {kind} {name}: {source}")]
    Read {
        /// The object kind.
        kind: &'static str,
        /// The object name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A write did not finish within the write timeout.
    #[error("{verb} {kind} {name}: no answer within {after:?}")]
    TimedOut {
        /// The verb.
        verb: &'static str,
        /// The object kind.
        kind: &'static str,
        /// The object name.
        name: String,
        /// The timeout.
        after: Duration,
    },
    /// The object lacks a namespace or uid (never true for a real object).
    #[error("InferenceService is missing {0}")]
    Incomplete(&'static str),
    /// The model uri cannot be placed in a pod.
    #[error(transparent)]
    Uri(#[from] UnsupportedUri),
    /// The child caches did not finish their first list in time.
    #[error("child caches are not ready yet")]
    CachesNotReady,
    /// The pass panicked; caught so one object cannot stop the others.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

impl ReconcileError {
    /// The stable reason, for metrics and logs.
    pub fn reason(&self) -> Reason {
        match self {
            ReconcileError::Write { .. } => Reason::WriteFailed,
            ReconcileError::Read { .. } => Reason::ReadFailed,
            ReconcileError::TimedOut { .. } => Reason::WriteTimedOut,
            ReconcileError::Incomplete(_) => Reason::IncompleteObject,
            ReconcileError::Uri(_) => Reason::UnsupportedModelUri,
            ReconcileError::CachesNotReady => Reason::CachesNotReady,
            ReconcileError::Panicked(_) => Reason::Panicked,
        }
    }
}

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Pod template settings.
    pub template: TemplateConfig,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Requeue interval of a settled object (a safety net; watches drive
    /// everything else).
    pub resync: Duration,
    /// Requeue interval while a rollout is under way.
    pub progress_requeue: Duration,
    /// This replica's name, on events.
    pub identity: String,
    /// How long one API write may take before the pass gives up on it.
    pub write_timeout: Duration,
    /// How long the router's views get to catch up around a traffic change
    /// (see `rollout`).
    pub handoff: Duration,
    /// First retry delay of a failed pass; doubles per failure in a row.
    pub backoff_base: Duration,
    /// Longest retry delay of a failed pass.
    pub backoff_max: Duration,
    /// The golden-set runner's bounds.
    pub quality: QualityRunnerConfig,
    /// Where signals come from and whether alert rules are written.
    pub signals: SignalsConfig,
    /// HTTPRoutes where the Gateway API is served (`gateway`).
    pub gateway: GatewayConfig,
}

/// Signals and SLO alert rules.
#[derive(Clone, Debug)]
pub struct SignalsConfig {
    /// The Prometheus to query; `None`: signals unavailable (every alarm
    /// reads NoData, the objects get `SignalsUnavailable`).
    pub prometheus: Option<PrometheusConfig>,
    /// Write a PrometheusRule per InferenceService where the
    /// prometheus-operator API exists.
    pub prometheus_rules: bool,
    /// Settings of the generated rules.
    pub rules: RuleOptions,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self {
            prometheus: None,
            prometheus_rules: true,
            rules: RuleOptions::default(),
        }
    }
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            template: TemplateConfig::default(),
            concurrency: 8,
            resync: Duration::from_secs(300),
            progress_requeue: Duration::from_secs(30),
            identity: "steward-operator".into(),
            write_timeout: Duration::from_secs(10),
            handoff: Duration::from_secs(2),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            quality: QualityRunnerConfig::default(),
            signals: SignalsConfig::default(),
            gateway: GatewayConfig::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) recorder: recorders::Recorders,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) cfg: OperatorConfig,
    pub(crate) deployments: Store<Deployment>,
    pub(crate) pods: Store<Pod>,
    pub(crate) services: Store<Service>,
    pub(crate) backoff: Backoff,
    pub(crate) quality: QualityRunner,
    /// The controller's own store of InferenceServices (a poller ends when
    /// its object leaves it).
    pub(crate) objects: Store<UncheckedInferenceService>,
    pub(crate) pollers: Arc<Pollers>,
    pub(crate) rules: RuleWriter,
    /// Every InferenceService of the watch scope, for model-name claims.
    pub(crate) claims: Store<UncheckedInferenceService>,
    /// Whether HTTPRoutes are served.
    pub(crate) gateway: GatewayApi,
    /// The operator's HTTPRoutes (empty until the API is served).
    pub(crate) routes: Store<kube::api::DynamicObject>,
}

/// The claims of the objects in `store`.
pub(crate) fn claims_of(store: &Store<UncheckedInferenceService>) -> Vec<crate::claims::Claim> {
    store
        .state()
        .iter()
        .filter_map(|o| crate::claims::Claim::of(&o.metadata, &o.spec, o.status.as_ref()))
        .collect()
}

/// The objects whose model-name ownership a change of `changed` may alter.
fn claims_to_wake(
    store: &Store<UncheckedInferenceService>,
    changed: &UncheckedInferenceService,
) -> Vec<ObjectRef<UncheckedInferenceService>> {
    let Some(claim) =
        crate::claims::Claim::of(&changed.metadata, &changed.spec, changed.status.as_ref())
    else {
        return Vec::new();
    };
    crate::claims::affected(&claim, &claims_of(store))
        .into_iter()
        .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
        .collect()
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    cfg: OperatorConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = cfg.namespace.as_deref();
    let children = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"))
        .any_semantic();
    let (deployments, dep_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let (services, svc_writer) = reflector::store();
    let dep_stream = watcher(api::<Deployment>(&client, ns), children.clone())
        .default_backoff()
        .reflect(dep_writer)
        .touched_objects();
    let pod_stream = watcher(api::<Pod>(&client, ns), children.clone())
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects();
    let svc_stream = watcher(api::<Service>(&client, ns), children)
        .default_backoff()
        .reflect(svc_writer)
        .touched_objects();

    // The Gateway API is optional: probed now and then, its routes watched
    // once it is found (`gateway`).
    let (gateway, _prober) = gateway::start(client.clone(), &cfg.gateway);
    let (routes, route_stream) = gateway::route_stream(client.clone(), ns, &gateway);
    let found = gateway.found();

    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(cfg.identity.clone()),
    };
    let quality = match QualityRunner::new(client.clone(), cfg.quality.clone(), metrics.quality()) {
        Ok(q) => q,
        Err(e) => {
            // Without an HTTP client no golden set can run; nothing else
            // can either (the TLS back-end is shared), so stop here.
            error!(error = %e, "cannot start the quality gate runner");
            return;
        }
    };
    let prometheus = cfg.signals.prometheus.as_ref().and_then(|p| {
        Prometheus::new(p, metrics.clone())
            .map(Arc::new)
            .map_err(|e| error!(error = %e, "signals unavailable: bad Prometheus address"))
            .ok()
    });
    let (pollers, wake) = Pollers::new(prometheus, metrics.clone());
    let wake = futures::stream::unfold(wake, |mut rx| async move {
        rx.recv().await.map(|key| (key, rx))
    });
    let controller = Controller::new(
        api::<UncheckedInferenceService>(&client, ns),
        watcher::Config::default().any_semantic(),
    );
    // Model-name claims (`claims`): their own store, updated before a
    // change wakes the claims it may affect, so the woken pass sees it.
    let (claims, claims_writer) = reflector::store();
    let claims_stream = watcher(
        api::<UncheckedInferenceService>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(claims_writer)
    .touched_objects();
    let claims_seen = claims.clone();
    let wake_claims =
        move |changed: UncheckedInferenceService| claims_to_wake(&claims_seen, &changed);
    let ctx = Arc::new(Context {
        recorder: recorders::Recorders::new(client.clone(), reporter),
        client: client.clone(),
        metrics,
        cfg: cfg.clone(),
        deployments,
        pods,
        services,
        backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max),
        quality,
        objects: controller.store(),
        pollers,
        rules: RuleWriter::new(cfg.signals.prometheus_rules),
        claims,
        gateway,
        routes,
    });
    let map_by_label = |meta: &kube::api::ObjectMeta| {
        let name = meta.labels.as_ref()?.get(labels::SERVICE)?.clone();
        let ns = meta.namespace.clone()?;
        Some(ObjectRef::<UncheckedInferenceService>::new(&name).within(&ns))
    };
    // The raw form: one object that does not parse must not fail the
    // watch of all of them (crd::check).
    controller
        .owns_stream(dep_stream)
        .owns_stream(svc_stream)
        .watches_stream(pod_stream, move |pod: Pod| map_by_label(&pod.metadata))
        .watches_stream(claims_stream, wake_claims)
        .watches_stream_with(
            route_stream,
            move |route: kube::api::DynamicObject| map_by_label(&route.metadata),
            gateway::resource(),
        )
        .reconcile_all_on(found)
        .reconcile_on(wake)
        .with_config(ControllerConfig::default().concurrency(cfg.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// A failed pass is retried after a delay that doubles with each failure
/// of the same object in a row (and resets on its next success), so one
/// broken object neither hot-loops nor slows the others.
fn error_policy(
    obj: Arc<UncheckedInferenceService>,
    err: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let delay = ctx.backoff.failed(&backoff_key(&obj));
    warn!(
        name = %obj.name_any(),
        namespace = ?obj.namespace(),
        reason = err.reason().as_str(),
        error = %err,
        retry_in = ?delay,
        "reconcile failed"
    );
    ctx.metrics.reconcile_failed(err.reason());
    Action::requeue(delay)
}

fn backoff_key(obj: &UncheckedInferenceService) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

#[instrument(skip_all, fields(namespace = obj.namespace().unwrap_or_default(), name = %obj.name_any()))]
async fn reconcile(
    obj: Arc<UncheckedInferenceService>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    ctx.metrics.reconcile_started();
    let started = Instant::now();
    // A panic in one pass must not take the process (and every other
    // object's reconciliation) down with it.
    let pass = async {
        match obj.check() {
            Ok(typed) => reconcile::reconcile(&typed, &ctx).await,
            Err(problem) => rejected::report(&obj, &problem, &ctx).await,
        }
    };
    let out = std::panic::AssertUnwindSafe(pass)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(panic = %what, "reconcile panicked");
            Err(ReconcileError::Panicked(what))
        });
    ctx.metrics.reconcile_finished(started.elapsed());
    if out.is_ok() {
        ctx.backoff.succeeded(&backoff_key(&obj));
    }
    out
}

pub(crate) async fn caches_ready(ctx: &Context) -> Result<(), ReconcileError> {
    let all = async {
        ctx.deployments.wait_until_ready().await.ok();
        ctx.pods.wait_until_ready().await.ok();
        ctx.services.wait_until_ready().await.ok();
        ctx.claims.wait_until_ready().await.ok();
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .map_err(|_| ReconcileError::CachesNotReady)
}

pub(crate) fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}
