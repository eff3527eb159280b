//! The I/O layer: watches, the reconcile pass, and the writes.
//!
//! One reconcile = observe (from reflector stores, no API reads) → decide
//! (`rollout::decide`, `status::compute`, pure) → write only what differs:
//! server-side apply with one field manager for children and status,
//! deletes for pruned revisions, and an event per decision. The order of
//! writes matters: the revisions that will serve are applied first, then
//! status (so the router moves traffic), then revisions going to zero, so a
//! revision never loses pods while it still has traffic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Future, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::children::{self, Parent, TemplateConfig, UnsupportedUri, MANAGED_BY};
use crate::crd::{labels, InferenceService};
use crate::metrics::Metrics;
use crate::observe::Observed;
use crate::revision::{deployment_name, revision_of};
use crate::roles;
use crate::rollout::{decide, Decision, RolloutInput};
use crate::status::{self, StatusInput, Transition};

/// The one field manager of every write.
pub const FIELD_MANAGER: &str = "steward-operator";

/// Parameters of the non-apply patches (scale, pod role), under the same
/// field manager.
fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

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
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    cfg: OperatorConfig,
    deployments: Store<Deployment>,
    pods: Store<Pod>,
    services: Store<Service>,
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
    let out = reconcile_inner(&obj, &ctx).await;
    ctx.metrics.reconcile_finished(started.elapsed());
    out
}

async fn caches_ready(ctx: &Context) -> Result<(), ReconcileError> {
    let all = async {
        ctx.deployments.wait_until_ready().await.ok();
        ctx.pods.wait_until_ready().await.ok();
        ctx.services.wait_until_ready().await.ok();
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .map_err(|_| ReconcileError::CachesNotReady)
}

fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

async fn reconcile_inner(obj: &InferenceService, ctx: &Context) -> Result<Action, ReconcileError> {
    if obj.metadata.deletion_timestamp.is_some() {
        // Owner references make the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    caches_ready(ctx).await?;
    let ns = obj
        .namespace()
        .ok_or(ReconcileError::Incomplete("namespace"))?;
    let uid = obj.uid().ok_or(ReconcileError::Incomplete("uid"))?;
    let name = obj.name_any();
    let owner = obj
        .controller_owner_ref(&())
        .ok_or(ReconcileError::Incomplete("owner reference"))?;
    let parent = Parent {
        name: name.clone(),
        namespace: ns.clone(),
        owner,
    };

    // Observe.
    let deployments: Vec<Arc<Deployment>> = ctx.deployments.state_filter(|d| {
        d.metadata.namespace.as_deref() == Some(ns.as_str()) && owned_by(&d.metadata, &uid)
    });
    let pods: Vec<Arc<Pod>> = ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && p.labels().get(labels::SERVICE) == Some(&name)
    });
    let service = ctx
        .services
        .get(&ObjectRef::new(&name).within(&ns))
        .filter(|s| owned_by(&s.metadata, &uid));
    let observed = Observed::from_objects(
        deployments.iter().map(AsRef::as_ref),
        pods.iter().map(AsRef::as_ref),
        service.as_deref(),
    );

    // Decide.
    let spec = &obj.spec;
    let target = revision_of(spec);
    let desired = spec.replicas.min.saturating_add(spec.replicas.warm);
    let previous = obj.status.clone().unwrap_or_default();
    let plan = decide(&RolloutInput {
        target: &target,
        desired_replicas: desired,
        previous_stable: previous.stable_revision.as_deref(),
        observed: &observed,
    });
    let new_status = status::compute(&StatusInput {
        plan: &plan,
        observed: &observed,
        desired_replicas: desired,
        generation: obj.metadata.generation,
        previous: &previous,
        now: Time(Timestamp::now()),
    });

    // Act: growing revisions and the Service, then status, then shrinking
    // revisions and pruning.
    let dep_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut shrinking = Vec::new();
    for (rev, &replicas) in &plan.replicas {
        let current = observed.deployments.get(rev);
        if current.is_some_and(|d| replicas < d.replicas) {
            shrinking.push((rev.clone(), replicas));
            continue;
        }
        size_revision(
            ctx,
            &dep_api,
            &parent,
            spec,
            (rev, &target),
            replicas,
            current,
        )
        .await?;
    }
    // Serving vs warm among the serving revision's ready pods.
    if let Some(serving) = plan.traffic.first() {
        let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        for change in roles::assign(
            &observed,
            &serving.revision,
            spec.replicas.min,
            spec.replicas.warm,
        ) {
            let role = if change.warm {
                labels::ROLE_WARM
            } else {
                labels::ROLE_SERVING
            };
            let patch = json!({ "metadata": { "labels": { labels::ROLE: role } } });
            match pod_api
                .patch(&change.pod, &field_manager(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    ctx.metrics.write("Pod", "label");
                    info!(pod = %change.pod, role, "pod role changed");
                }
                // The pod went away meanwhile; the next pass sees that.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(ReconcileError::Write {
                        verb: "label",
                        kind: "Pod",
                        name: change.pod,
                        source,
                    })
                }
            }
        }
    }
    let svc = children::service(&parent, spec);
    let svc_hash = children::applied_hash(&svc.metadata).map(str::to_owned);
    if observed.service_hash.as_ref() != Some(&svc_hash) {
        let svc_api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        apply(ctx, &svc_api, "Service", &name, &svc).await?;
    }
    if new_status != previous {
        let is_api: Api<InferenceService> = Api::namespaced(ctx.client.clone(), &ns);
        let body = json!({
            "apiVersion": InferenceService::api_version(&()),
            "kind": InferenceService::kind(&()),
            "status": new_status,
        });
        is_api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|source| ReconcileError::Write {
                verb: "apply",
                kind: "InferenceService/status",
                name: name.clone(),
                source,
            })?;
        ctx.metrics.write("InferenceService/status", "apply");
        info!(phase = new_status.phase.as_str(), stable = ?new_status.stable_revision, canary = ?new_status.canary_revision, "status updated");
    }
    for (rev, replicas) in shrinking {
        let current = observed.deployments.get(&rev);
        size_revision(
            ctx,
            &dep_api,
            &parent,
            spec,
            (&rev, &target),
            replicas,
            current,
        )
        .await?;
    }
    for rev in &plan.prune {
        let dname = deployment_name(&name, rev);
        match dep_api.delete(&dname, &DeleteParams::background()).await {
            Ok(_) => ctx.metrics.write("Deployment", "delete"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ReconcileError::Write {
                    verb: "delete",
                    kind: "Deployment",
                    name: dname,
                    source,
                })
            }
        }
    }

    // Tell people.
    let reference = obj.object_ref(&());
    for event in decision_events(&plan.decisions)
        .into_iter()
        .chain(transition_events(&status::transitions(
            &previous,
            &new_status,
        )))
    {
        match ctx.recorder.publish(&event, &reference).await {
            Ok(()) => ctx.metrics.write("Event", "create"),
            Err(e) => warn!(error = %e, reason = %event.reason, "could not publish event"),
        }
    }

    Ok(match plan.progress {
        crate::rollout::Progress::Settled => Action::requeue(ctx.cfg.resync),
        _ => Action::requeue(ctx.cfg.progress_requeue),
    })
}

/// Brings one revision's Deployment to `replicas`. The current spec's
/// revision is applied whole (skipped when its applied hash and size
/// match); an older revision's template cannot be rebuilt from the current
/// spec, so only its size is patched, leaving the template as it was.
async fn size_revision(
    ctx: &Context,
    api: &Api<Deployment>,
    parent: &Parent,
    spec: &crate::crd::InferenceServiceSpec,
    (revision, target): (&str, &str),
    replicas: i32,
    current: Option<&crate::observe::DeploymentView>,
) -> Result<(), ReconcileError> {
    let name = deployment_name(&parent.name, revision);
    if revision == target {
        let obj =
            children::revision_deployment(parent, spec, revision, replicas, &ctx.cfg.template)?;
        let hash = children::applied_hash(&obj.metadata).map(str::to_owned);
        if current.is_some_and(|c| c.applied_hash == hash && c.replicas == replicas) {
            return Ok(());
        }
        return apply(ctx, api, "Deployment", &name, &obj).await;
    }
    if current.is_none_or(|c| c.replicas == replicas) {
        return Ok(());
    }
    let patch = json!({ "spec": { "replicas": replicas } });
    api.patch(&name, &field_manager(), &Patch::Merge(&patch))
        .await
        .map_err(|source| ReconcileError::Write {
            verb: "scale",
            kind: "Deployment",
            name: name.clone(),
            source,
        })?;
    ctx.metrics.write("Deployment", "scale");
    info!(deployment = %name, replicas, "scaled revision");
    Ok(())
}

async fn apply<K>(
    ctx: &Context,
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    obj: &K,
) -> Result<(), ReconcileError>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| ReconcileError::Write {
        verb: "apply",
        kind,
        name: name.to_owned(),
        source,
    })?;
    ctx.metrics.write(kind, "apply");
    info!(kind, name, "applied");
    Ok(())
}

fn normal(reason: &str, action: &str, note: String) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    }
}

fn decision_events(decisions: &[Decision]) -> Vec<Event> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::RevisionCreated { revision, replicas } => normal(
                "RevisionCreated",
                "CreateRevision",
                format!("created revision {revision} with {replicas} pods"),
            ),
            Decision::Scaled { revision, from, to } => normal(
                "RevisionScaled",
                "ScaleRevision",
                format!("scaled revision {revision} from {from} to {to} pods"),
            ),
            Decision::Promoted {
                from: Some(from),
                to,
            } => normal(
                "RevisionPromoted",
                "Promote",
                format!("revision {to} takes 100% of traffic from {from}"),
            ),
            Decision::Promoted { from: None, to } => normal(
                "RevisionPromoted",
                "Promote",
                format!("revision {to} is ready and stable"),
            ),
            Decision::Pruned { revision } => normal(
                "RevisionPruned",
                "PruneRevision",
                format!("deleted retired revision {revision}"),
            ),
        })
        .collect()
}

fn transition_events(transitions: &[Transition]) -> Vec<Event> {
    transitions
        .iter()
        .map(|t| match t {
            Transition::BecameReady { message } => normal("Ready", "Reconcile", message.clone()),
            Transition::BecameDegraded { reason, message } => Event {
                type_: EventType::Warning,
                reason: "Degraded".into(),
                note: Some(format!("{reason}: {message}")),
                action: "Reconcile".into(),
                secondary: None,
            },
            Transition::Recovered => normal(
                "Recovered",
                "Reconcile",
                "the desired revision is no longer stuck".into(),
            ),
        })
        .collect()
}
