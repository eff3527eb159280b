//! The I/O layer: watches, the reconcile pass, and the writes.
//!
//! One reconcile = observe (from reflector stores, no API reads) → decide
//! (`rollout::decide`, `roles::assign`, `status::compute`, pure) → write
//! only what differs (`writes`) → tell people (`events`). This module wires
//! the watches and the controller; `reconcile` holds the pass itself.

mod events;
pub mod poller;
pub mod prometheus;
mod reconcile;
pub mod rules;
mod writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Future, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, instrument, warn};

use crate::children::{TemplateConfig, UnsupportedUri, MANAGED_BY};
use crate::crd::{labels, InferenceService};
use crate::metrics::Metrics;

/// The one field manager of every write.
pub const FIELD_MANAGER: &str = "steward-operator";

/// Errors of one reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A write was refused or failed.
    #[error("{verb} {kind} {name}: {source}")]
    Write {
        /// `apply` or `delete`.
        verb: &'static str,
        /// The object kind.
        kind: &'static str,
        /// The object name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
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
}

impl ReconcileError {
    /// A stable reason string for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Write { .. } => "WriteFailed",
            ReconcileError::Incomplete(_) => "IncompleteObject",
            ReconcileError::Uri(_) => "UnsupportedModelUri",
            ReconcileError::CachesNotReady => "CachesNotReady",
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
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) cfg: OperatorConfig,
    pub(crate) deployments: Store<Deployment>,
    pub(crate) pods: Store<Pod>,
    pub(crate) services: Store<Service>,
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

    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(cfg.identity.clone()),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        metrics,
        cfg: cfg.clone(),
        deployments,
        pods,
        services,
    });
    let map_by_label = |meta: &kube::api::ObjectMeta| {
        let name = meta.labels.as_ref()?.get(labels::SERVICE)?.clone();
        let ns = meta.namespace.clone()?;
        Some(ObjectRef::<InferenceService>::new(&name).within(&ns))
    };
    Controller::new(
        api::<InferenceService>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .owns_stream(dep_stream)
    .owns_stream(svc_stream)
    .watches_stream(pod_stream, move |pod: Pod| map_by_label(&pod.metadata))
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

fn error_policy(obj: Arc<InferenceService>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    warn!(name = %obj.name_any(), namespace = ?obj.namespace(), reason = err.reason(), error = %err, "reconcile failed");
    ctx.metrics.reconcile_failed(err.reason());
    Action::requeue(Duration::from_secs(5))
}

#[instrument(skip_all, fields(namespace = obj.namespace().unwrap_or_default(), name = %obj.name_any()))]
async fn reconcile(
    obj: Arc<InferenceService>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    ctx.metrics.reconcile_started();
    let started = Instant::now();
    let out = reconcile::reconcile(&obj, &ctx).await;
    ctx.metrics.reconcile_finished(started.elapsed());
    out
}

pub(crate) async fn caches_ready(ctx: &Context) -> Result<(), ReconcileError> {
    let all = async {
        ctx.deployments.wait_until_ready().await.ok();
        ctx.pods.wait_until_ready().await.ok();
        ctx.services.wait_until_ready().await.ok();
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
