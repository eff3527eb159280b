//! One reconcile pass over one InferenceService: observe from the stores,
//! decide with the pure modules (`desired`, `plan`), then execute the
//! planned writes in their order (see `plan` for why that order).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::writes;
use super::{caches_ready, owned_by, Context, ReconcileError};
use crate::children::Parent;
use crate::crd::{labels, InferenceService};
use crate::desired::{desired, PassInput};
use crate::observe::Observed;
use crate::plan::plan_writes;

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
        obj.status.as_ref(),
    );

    // Decide.
    let want = desired(&PassInput {
        parent: &parent,
        spec: &obj.spec,
        generation: obj.metadata.generation,
        observed: &observed,
        template: &ctx.cfg.template,
        now: Timestamp::now(),
        handoff: ctx.cfg.handoff,
    })?;
    let plan = plan_writes(&want, &observed);

    // Act.
    writes::execute(ctx, &ns, &name, &obj.object_ref(&()), plan).await?;

    let next = if want.settled {
        ctx.cfg.resync
    } else {
        ctx.cfg.progress_requeue
    };
    // A pending hand-off is due sooner than the periodic look.
    let next = want
        .requeue_after
        .map_or(next, |d| next.min(d + Duration::from_millis(100)));
    Ok(Action::requeue(next))
}
