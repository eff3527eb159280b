//! The writes: server-side apply with the one field manager, replicas-only
//! patches for older revisions, pod role labels, status, deletes. Each
//! counts itself in `steward_operator_api_writes_total`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::Event;
use kube::Resource;
use serde_json::json;
use tracing::{info, warn};

use super::{Context, ReconcileError, FIELD_MANAGER};
use crate::children::{self, Parent};
use crate::crd::{labels, InferenceService, InferenceServiceSpec, InferenceServiceStatus};
use crate::observe::DeploymentView;
use crate::revision::deployment_name;
use crate::roles::RoleChange;

/// Parameters of the non-apply patches (scale, pod role), under the same
/// field manager.
pub(crate) fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// What to size: one revision of one parent.
pub(crate) struct Sizing<'a> {
    pub parent: &'a Parent,
    pub spec: &'a InferenceServiceSpec,
    pub revision: &'a str,
    /// The current spec's revision.
    pub target: &'a str,
    pub replicas: i32,
}

/// Sizes each `(revision, replicas)` in order, with `base`'s parent, spec
/// and target.
pub(crate) async fn size_revisions(
    ctx: &Context,
    api: &Api<Deployment>,
    base: &Sizing<'_>,
    current: &std::collections::BTreeMap<String, DeploymentView>,
    revisions: &[(&String, &i32)],
) -> Result<(), ReconcileError> {
    for (rev, &replicas) in revisions {
        let sizing = Sizing {
            revision: rev.as_str(),
            replicas,
            ..*base
        };
        size_revision(ctx, api, &sizing, current.get(*rev)).await?;
    }
    Ok(())
}

/// Brings one revision's Deployment to its size. The current spec's
/// revision is applied whole (skipped when its applied hash and size
/// match); an older revision's template cannot be rebuilt from the current
/// spec, so only its size is patched, leaving the template as it was.
pub(crate) async fn size_revision(
    ctx: &Context,
    api: &Api<Deployment>,
    s: &Sizing<'_>,
    current: Option<&DeploymentView>,
) -> Result<(), ReconcileError> {
    let name = deployment_name(&s.parent.name, s.revision);
    let replicas = s.replicas;
    if s.revision == s.target {
        let obj = children::revision_deployment(
            s.parent,
            s.spec,
            s.revision,
            replicas,
            &ctx.cfg.template,
        )?;
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

/// Sets one pod's serving/warm label. A pod that went away meanwhile is
/// not an error; the next pass sees it gone.
pub(crate) async fn set_role(
    ctx: &Context,
    api: &Api<Pod>,
    change: &RoleChange,
) -> Result<(), ReconcileError> {
    let role = if change.warm {
        labels::ROLE_WARM
    } else {
        labels::ROLE_SERVING
    };
    let patch = json!({ "metadata": { "labels": { labels::ROLE: role } } });
    match api
        .patch(&change.pod, &field_manager(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            ctx.metrics.write("Pod", "label");
            info!(pod = %change.pod, role, "pod role changed");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Write {
            verb: "label",
            kind: "Pod",
            name: change.pod.clone(),
            source,
        }),
    }
}

/// Applies the status subresource.
pub(crate) async fn status(
    ctx: &Context,
    api: &Api<InferenceService>,
    name: &str,
    status: &InferenceServiceStatus,
) -> Result<(), ReconcileError> {
    let body = json!({
        "apiVersion": InferenceService::api_version(&()),
        "kind": InferenceService::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| ReconcileError::Write {
        verb: "apply",
        kind: "InferenceService/status",
        name: name.to_owned(),
        source,
    })?;
    ctx.metrics.write("InferenceService/status", "apply");
    info!(
        phase = status.phase.as_str(),
        stable = ?status.stable_revision,
        canary = ?status.canary_revision,
        "status updated"
    );
    Ok(())
}

/// Deletes a retired revision's Deployment.
pub(crate) async fn prune(
    ctx: &Context,
    api: &Api<Deployment>,
    service: &str,
    revision: &str,
) -> Result<(), ReconcileError> {
    let name = deployment_name(service, revision);
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {
            ctx.metrics.write("Deployment", "delete");
            info!(deployment = %name, "pruned revision");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Write {
            verb: "delete",
            kind: "Deployment",
            name,
            source,
        }),
    }
}

/// Publishes events; a failure is logged, never fatal (the decision stands).
pub(crate) async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    events: impl IntoIterator<Item = Event>,
) {
    for event in events {
        match ctx.recorder.publish(&event, reference).await {
            Ok(()) => ctx.metrics.write("Event", "create"),
            Err(e) => warn!(error = %e, reason = %event.reason, "could not publish event"),
        }
    }
}

pub(crate) async fn apply<K>(
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
