//! Executes the planned writes, in order, under the one field manager:
//! server-side apply for the target revision, the Service and status; a
//! replicas-only patch for older revisions; a label patch for pod rotation;
//! deletes for pruned revisions; events last.
//!
//! Every write has a timeout (`--write-timeout`); a write that runs out is
//! counted in `steward_operator_api_write_timeouts_total` and fails the
//! pass, which the controller retries with per-object back-off. Each write
//! that reaches the API server counts itself in
//! `steward_operator_api_writes_total`.

use std::future::Future;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::Resource;
use serde_json::json;
use tracing::{info, warn};

use super::gateway;
use super::rules::RuleTarget;
use super::{Context, ReconcileError, FIELD_MANAGER};
use crate::crd::{labels, InferenceService};
use crate::events::{Note, Severity};
use crate::plan::Write;
use crate::pool::Rotation;

/// Parameters of the non-apply patches (scale, pod rotation), under the
/// same field manager.
pub(super) fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Executes `writes` in order; stops at the first failure (the rest waits
/// for the retry, which plans again from what it then observes).
pub(crate) async fn execute(
    ctx: &Context,
    ns: &str,
    name: &str,
    reference: &ObjectReference,
    writes: Vec<Write>,
) -> Result<(), ReconcileError> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let (apply, merge) = (apply_params(), field_manager());
    for write in writes {
        let (kind, verb) = (write.kind(), write.verb());
        match write {
            Write::ApplyDeployment { name, object } => {
                let body = Patch::Apply(&*object);
                let call = deployments.patch(&name, &apply, &body);
                timed(ctx, kind, verb, &name, call).await?;
                info!(deployment = %name, "applied revision");
            }
            Write::ScaleDeployment { name, replicas } => {
                let body = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
                let call = deployments.patch(&name, &merge, &body);
                timed(ctx, kind, verb, &name, call).await?;
                info!(deployment = %name, replicas, "scaled revision");
            }
            Write::ApplyService(svc) => {
                let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
                let svc_name = svc.metadata.name.clone().unwrap_or_else(|| name.to_owned());
                let body = Patch::Apply(&*svc);
                let call = api.patch(&svc_name, &apply, &body);
                timed(ctx, kind, verb, &svc_name, call).await?;
                info!(service = %svc_name, "applied service");
            }
            Write::DeleteService { name } => {
                let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
                let params = DeleteParams::background();
                if tolerate_missing(
                    timed(ctx, kind, verb, &name, api.delete(&name, &params)).await,
                )? {
                    info!(service = %name, "deleted the Service of a revision without pods or traffic");
                }
            }
            Write::ApplyRoute(route) => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), ns, &gateway::resource());
                let body = Patch::Apply(&*route);
                let call = api.patch(name, &apply, &body);
                match tolerate_missing(timed(ctx, kind, verb, name, call).await)? {
                    true => info!(route = %name, "applied HTTPRoute weights"),
                    // An apply creates a missing object, so a 404 means the
                    // resource itself is gone: stop writing routes until
                    // discovery finds it again.
                    false => ctx.gateway.lost(),
                }
            }
            Write::LabelPod(change) => {
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
                let rotation = change.rotation.as_label();
                let body = if change.rotation == Rotation::Draining {
                    // When it left rotation (the autoscaler removes it a
                    // hand-off later), and the cost that makes the
                    // ReplicaSet remove exactly this pod when the
                    // Deployment shrinks.
                    Patch::Merge(json!({ "metadata": {
                        "labels": { labels::ROTATION: rotation },
                        "annotations": {
                            labels::DRAINING_SINCE: Timestamp::now().to_string(),
                            labels::POD_DELETION_COST: labels::DRAINING_DELETION_COST,
                        },
                    } }))
                } else {
                    // A warm pod goes first when the Deployment shrinks
                    // (the warm pool got smaller); a pod back in rotation
                    // loses that cost.
                    let cost =
                        (change.rotation == Rotation::Warm).then_some(labels::WARM_DELETION_COST);
                    Patch::Merge(json!({ "metadata": {
                        "labels": { labels::ROTATION: rotation },
                        "annotations": { labels::POD_DELETION_COST: cost },
                    } }))
                };
                let call = api.patch(&change.pod, &merge, &body);
                // A pod that went away meanwhile is not an error; the next
                // pass sees it gone.
                if tolerate_missing(timed(ctx, kind, verb, &change.pod, call).await)? {
                    info!(pod = %change.pod, rotation, "pod rotation changed");
                }
            }
            Write::Status(status) => {
                let api: Api<InferenceService> = Api::namespaced(ctx.client.clone(), ns);
                let body = Patch::Apply(json!({
                    "apiVersion": InferenceService::api_version(&()),
                    "kind": InferenceService::kind(&()),
                    "status": status,
                }));
                timed(ctx, kind, verb, name, api.patch_status(name, &apply, &body)).await?;
                info!(
                    phase = status.phase.as_str(),
                    stable = ?status.stable_revision,
                    canary = ?status.canary_revision,
                    "status updated"
                );
            }
            Write::RemoveAnnotations(keys) => {
                let api: Api<InferenceService> = Api::namespaced(ctx.client.clone(), ns);
                let nulls: serde_json::Map<String, serde_json::Value> = keys
                    .iter()
                    .map(|k| ((*k).to_owned(), serde_json::Value::Null))
                    .collect();
                let body = Patch::Merge(json!({ "metadata": { "annotations": nulls } }));
                timed(ctx, kind, verb, name, api.patch(name, &merge, &body)).await?;
                info!(annotations = ?keys, "manual requests consumed");
            }
            Write::DeleteDeployment { name } => {
                let params = DeleteParams::background();
                let call = deployments.delete(&name, &params);
                if tolerate_missing(timed(ctx, kind, verb, &name, call).await)? {
                    info!(deployment = %name, "pruned revision");
                }
            }
            Write::Event(note) => publish(ctx, reference, &note).await,
        }
    }
    Ok(())
}

/// Brings the object's PrometheusRule up to date (the writer probes the
/// API and skips an unchanged rule), under the write timeout; it counts
/// its own writes.
pub(crate) async fn sync_rules(
    ctx: &Context,
    target: RuleTarget<'_>,
) -> Result<(), ReconcileError> {
    let (kind, verb) = ("PrometheusRule", "apply");
    let name = format!("{}-slo", target.name);
    let after = ctx.cfg.write_timeout;
    match tokio::time::timeout(after, ctx.rules.sync(&ctx.client, &ctx.metrics, target)).await {
        Ok(Ok(wrote)) => {
            if wrote {
                info!(rule = %name, "applied PrometheusRule");
            }
            Ok(())
        }
        Ok(Err(source)) => Err(ReconcileError::Write {
            verb,
            kind,
            name,
            source,
        }),
        Err(_) => {
            ctx.metrics.write_timed_out(kind, verb);
            Err(ReconcileError::TimedOut {
                verb,
                kind,
                name,
                after,
            })
        }
    }
}

/// Runs one API call under the write timeout, counting it.
pub(super) async fn timed<T>(
    ctx: &Context,
    kind: &'static str,
    verb: &'static str,
    name: &str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ReconcileError> {
    let after = ctx.cfg.write_timeout;
    match tokio::time::timeout(after, call).await {
        Ok(Ok(v)) => {
            ctx.metrics.write(kind, verb);
            Ok(v)
        }
        Ok(Err(source)) => Err(ReconcileError::Write {
            verb,
            kind,
            name: name.to_owned(),
            source,
        }),
        Err(_) => {
            ctx.metrics.write_timed_out(kind, verb);
            Err(ReconcileError::TimedOut {
                verb,
                kind,
                name: name.to_owned(),
                after,
            })
        }
    }
}

/// `Ok(true)` when the write happened, `Ok(false)` when its object was
/// already gone (404).
fn tolerate_missing<T>(r: Result<T, ReconcileError>) -> Result<bool, ReconcileError> {
    match r {
        Ok(_) => Ok(true),
        Err(ReconcileError::Write {
            source: kube::Error::Api(s),
            ..
        }) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Publishes one event; a failure or timeout is logged and counted, never
/// fatal (the decision stands).
pub(super) async fn publish(ctx: &Context, reference: &ObjectReference, note: &Note) {
    let event = Event {
        type_: match note.severity {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        },
        reason: note.reason.as_str().into(),
        note: Some(note.message.clone()),
        action: note.action.into(),
        secondary: None,
    };
    let call = ctx.recorder.publish(&event, reference);
    if let Err(e) = timed(ctx, "Event", "create", note.reason.as_str(), call).await {
        warn!(error = %e, reason = note.reason.as_str(), "could not publish event");
    }
}
