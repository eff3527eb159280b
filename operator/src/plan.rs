//! The write plan: what to send to the API server, in what order.
//!
//! [`plan_writes`] compares the [`Desired`] state with what is observed and
//! lists only the writes that change something, so a pass over a converged
//! object plans none (unit-tested here, and counted on the cluster). The
//! order never leaves the data plane without endpoints:
//!
//! 1. **grow**: Deployments that are new, growing or changing template;
//! 2. **Services**: the main one and each revision's, so a Gateway knows a
//!    revision's Service before any weight points at it;
//! 3. **pod labels** (rotation), so pods are in rotation before weight
//!    rises onto them;
//! 4. **status**: the router follows `status.traffic`; then the HTTPRoute
//!    with the same weights (where the Gateway API is served), so both
//!    data planes move in the same pass; then the manual request
//!    annotations this pass acted on are removed (after status, so a
//!    request is never lost: one seen again is judged against the new
//!    status and ignored, see `rollout::manual`);
//! 5. **shrink**: Deployments losing pods, after their weight fell;
//! 6. **prune**: retired revisions beyond the kept history, and the
//!    Services of revisions without pods or traffic (after the route
//!    stopped naming them);
//! 7. **events**.
//!
//! The hand-off between passes (a revision keeps its pods for a while
//! after its weight fell) is the rollout's; this order is within one pass.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;

use crate::children::applied_hash;
use crate::crd::InferenceServiceStatus;
use crate::desired::{Desired, DesiredDeployment};
use crate::events::Note;
use crate::observe::{DeploymentView, Observed};
use crate::pool::RotationChange;
use crate::revision::{deployment_name, revision_service_name};
use crate::route;

/// One write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Server-side apply of the current spec's revision.
    ApplyDeployment {
        /// The Deployment's name.
        name: String,
        /// The object.
        object: Box<Deployment>,
    },
    /// A replicas-only patch of an older revision.
    ScaleDeployment {
        /// The Deployment's name.
        name: String,
        /// Its new size.
        replicas: i32,
    },
    /// Server-side apply of the main Service or a revision's.
    ApplyService(Box<Service>),
    /// Server-side apply of the HTTPRoute (`route::http_route`).
    ApplyRoute(Box<serde_json::Value>),
    /// Deletion of a revision's Service.
    DeleteService {
        /// The Service's name.
        name: String,
    },
    /// A pod's rotation label.
    LabelPod(RotationChange),
    /// Server-side apply of the status subresource.
    Status(Box<InferenceServiceStatus>),
    /// Removal of manual request annotations the pass has acted on.
    RemoveAnnotations(Vec<&'static str>),
    /// Deletion of a retired revision's Deployment.
    DeleteDeployment {
        /// The Deployment's name.
        name: String,
    },
    /// An event about the InferenceService.
    Event(Note),
}

impl Write {
    /// The object kind, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Write::ApplyDeployment { .. }
            | Write::ScaleDeployment { .. }
            | Write::DeleteDeployment { .. } => "Deployment",
            Write::ApplyService(_) | Write::DeleteService { .. } => "Service",
            Write::ApplyRoute(_) => "HTTPRoute",
            Write::LabelPod(_) => "Pod",
            Write::Status(_) => "InferenceService/status",
            Write::RemoveAnnotations(_) => "InferenceService",
            Write::Event(_) => "Event",
        }
    }

    /// The verb, for metrics and logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Write::ApplyDeployment { .. }
            | Write::ApplyService(_)
            | Write::ApplyRoute(_)
            | Write::Status(_) => "apply",
            Write::ScaleDeployment { .. } => "scale",
            Write::LabelPod(_) => "label",
            Write::RemoveAnnotations(_) => "annotate",
            Write::DeleteDeployment { .. } | Write::DeleteService { .. } => "delete",
            Write::Event(_) => "create",
        }
    }
}

/// The writes that bring what is observed to `desired`, in order.
pub fn plan_writes(desired: &Desired, observed: &Observed) -> Vec<Write> {
    let mut grow = Vec::new();
    let mut shrink = Vec::new();
    for (rev, want) in &desired.deployments {
        let current = observed.deployments.get(rev);
        let name = deployment_name(&desired.name, rev);
        let Some(write) = deployment_write(name, want, current) else {
            continue;
        };
        if current.is_some_and(|c| want.replicas < c.replicas) {
            shrink.push(write);
        } else {
            grow.push(write);
        }
    }
    let mut out = grow;
    let svc_hash = applied_hash(&desired.service.metadata);
    if observed.service.as_ref().map(|s| s.applied_hash.as_deref()) != Some(svc_hash) {
        out.push(Write::ApplyService(desired.service.clone()));
    }
    for (rev, svc) in &desired.revision_services {
        let current = observed.revision_services.get(rev);
        if current.map(|s| s.applied_hash.as_deref()) != Some(applied_hash(&svc.metadata)) {
            out.push(Write::ApplyService(svc.clone()));
        }
    }
    out.extend(desired.rotation.iter().cloned().map(Write::LabelPod));
    if *desired.status != observed.status {
        out.push(Write::Status(desired.status.clone()));
    }
    if let Some(r) = desired
        .route
        .as_ref()
        .filter(|r| route::needs_write(&observed.route, r))
    {
        out.push(Write::ApplyRoute(r.clone()));
    }
    if !desired.consumed.is_empty() {
        out.push(Write::RemoveAnnotations(desired.consumed.clone()));
    }
    out.extend(shrink);
    out.extend(desired.prune.iter().map(|rev| Write::DeleteDeployment {
        name: deployment_name(&desired.name, rev),
    }));
    out.extend(
        observed
            .revision_services
            .keys()
            .filter(|rev| !desired.revision_services.contains_key(*rev))
            .map(|rev| Write::DeleteService {
                name: revision_service_name(&desired.name, rev),
            }),
    );
    out.extend(desired.events.iter().cloned().map(Write::Event));
    out
}

/// The write for one revision's Deployment, if it differs. The current
/// spec's revision is applied whole (skipped when its applied hash and
/// size match); an older one only has its size patched.
fn deployment_write(
    name: String,
    want: &DesiredDeployment,
    current: Option<&DeploymentView>,
) -> Option<Write> {
    match &want.object {
        Some(object) => {
            let hash = applied_hash(&object.metadata);
            let same = current
                .is_some_and(|c| c.applied_hash.as_deref() == hash && c.replicas == want.replicas);
            (!same).then(|| Write::ApplyDeployment {
                name,
                object: object.clone(),
            })
        }
        None => current
            .filter(|c| c.replicas != want.replicas)
            .map(|_| Write::ScaleDeployment {
                name,
                replicas: want.replicas,
            }),
    }
}

#[cfg(test)]
mod tests;
