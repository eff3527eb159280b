//! The pass for an object whose spec cannot be acted on: write the
//! `InvalidSpec` status ([`crate::invalid`]) when it differs, send one
//! warning event when the problem is new, and wait for the next change of
//! the object. No child is touched: a revision that served before keeps
//! serving until the spec is fixed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::{writes, Context, ReconcileError};
use crate::crd::{SpecError, UncheckedInferenceService};
use crate::events::{Note, Severity};
use crate::invalid;

pub(crate) async fn report(
    obj: &UncheckedInferenceService,
    problem: &SpecError,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = obj.name_any();
    warn!(field = %problem.field, problem = %problem.message, "spec cannot be acted on");
    ctx.metrics.reconcile_failed(invalid::REASON);
    let Some(ns) = obj.namespace() else {
        return Err(ReconcileError::Incomplete("namespace"));
    };
    let stored = obj.parsed_status();
    let previous = stored.clone().unwrap_or_default();
    let new = invalid::status(
        &previous,
        obj.metadata.generation,
        problem,
        Time(Timestamp::now()),
    );
    if stored.as_ref() != Some(&new) {
        // A JSON merge patch, not server-side apply: apply converts the live
        // object to the schema's types first and fails on exactly the
        // objects that end up here. Keys of a stored status we do not
        // write are nulled, so a garbled status is replaced whole.
        let mut status = serde_json::to_value(&new).unwrap_or_default();
        if let (Some(stored), Some(ours)) = (
            obj.status.as_ref().and_then(|s| s.as_object()),
            status.as_object_mut(),
        ) {
            for key in stored.keys() {
                ours.entry(key.clone()).or_insert(serde_json::Value::Null);
            }
        }
        let api: Api<UncheckedInferenceService> = Api::namespaced(ctx.client.clone(), &ns);
        let body = Patch::Merge(json!({ "status": status }));
        let params = writes::field_manager();
        let call = api.patch_status(&name, &params, &body);
        match writes::timed(ctx, "InferenceService/status", "patch", &name, call).await {
            Ok(_) => {}
            // The API server refuses any update of an object that breaks a
            // rule on its root (metadata.name): the event below is all that
            // can be said, and retrying would only repeat the refusal.
            Err(ReconcileError::Write {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 422 => {
                warn!(error = %s.message, "the API server refuses status updates of this object");
            }
            Err(e) => return Err(e),
        }
    }
    if invalid::is_news(&previous, &new) {
        let note = Note {
            severity: Severity::Warning,
            reason: invalid::REASON,
            action: "Reconcile",
            message: problem.to_string(),
        };
        writes::publish(ctx, &obj.object_ref(&()), &note).await;
    }
    Ok(Action::await_change())
}
