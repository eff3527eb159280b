//! One reconcile pass over one InferenceService: observe from the stores,
//! decide with the pure modules, then write in an order that never takes
//! pods from a revision that still has traffic: the revisions that will
//! serve and the Service first, pod roles, then status (so the router moves
//! traffic), then revisions going to zero, then pruning, then events.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::events::{decision_events, transition_events};
use super::writes;
use super::{caches_ready, owned_by, Context, ReconcileError};
use crate::children::{self, Parent};
use crate::crd::{labels, InferenceService};
use crate::observe::Observed;
use crate::revision::revision_of;
use crate::roles;
use crate::rollout::{decide, Progress, RolloutInput};
use crate::status::{self, StatusInput};

pub(crate) async fn reconcile(
    obj: &InferenceService,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
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

    // Act: growing revisions, the Service and pod roles; then status; then
    // shrinking revisions and pruning; then events.
    let dep_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let (shrinking, growing): (Vec<_>, Vec<_>) = plan.replicas.iter().partition(|(rev, want)| {
        observed
            .deployments
            .get(*rev)
            .is_some_and(|d| **want < d.replicas)
    });
    let base = writes::Sizing {
        parent: &parent,
        spec,
        revision: &target,
        target: &target,
        replicas: 0,
    };
    writes::size_revisions(ctx, &dep_api, &base, &observed.deployments, &growing).await?;
    let svc = children::service(&parent, spec);
    let svc_hash = children::applied_hash(&svc.metadata).map(str::to_owned);
    if observed.service_hash.as_ref() != Some(&svc_hash) {
        let svc_api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        writes::apply(ctx, &svc_api, "Service", &name, &svc).await?;
    }
    if let Some(serving) = plan.traffic.first() {
        let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let r = &spec.replicas;
        for change in roles::assign(&observed, &serving.revision, r.min, r.warm) {
            writes::set_role(ctx, &pod_api, &change).await?;
        }
    }
    if new_status != previous {
        let is_api: Api<InferenceService> = Api::namespaced(ctx.client.clone(), &ns);
        writes::status(ctx, &is_api, &name, &new_status).await?;
    }
    writes::size_revisions(ctx, &dep_api, &base, &observed.deployments, &shrinking).await?;
    for rev in &plan.prune {
        writes::prune(ctx, &dep_api, &name, rev).await?;
    }
    let transitions = status::transitions(&previous, &new_status);
    let events = decision_events(&plan.decisions)
        .into_iter()
        .chain(transition_events(&transitions));
    writes::publish(ctx, &obj.object_ref(&()), events).await;

    Ok(match plan.progress {
        Progress::Settled => Action::requeue(ctx.cfg.resync),
        _ => Action::requeue(ctx.cfg.progress_requeue),
    })
}
