//! The operator's edge: an `InferenceService` as the API server hands it
//! over ([`UncheckedInferenceService`]: typed metadata, raw spec and
//! status) becomes a typed [`InferenceService`] only through [`check`],
//! which names the first field it cannot accept.
//!
//! Why the controller watches the raw form: a typed watch fails its whole
//! list when one object does not deserialize, so one tenant's object would
//! stop reconciliation of every InferenceService (issue 13, fault 0). The
//! schema refuses bad manifests at apply time, but objects stored before a
//! rule existed (a CRD upgrade), or values the schema cannot see, still
//! arrive. Here each one is judged alone: the good ones are reconciled, the
//! bad one gets a condition naming the field.
//!
//! [`check`]: UncheckedInferenceService::check

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::Resource;
use serde::{Deserialize, Serialize};

use super::names;
use super::spec::{InferenceService, InferenceServiceSpec};
use super::status::InferenceServiceStatus;

/// An InferenceService whose spec has not been checked yet. Serializes
/// with its `apiVersion` and `kind`, as the API server wants.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct UncheckedInferenceService {
    /// Typed metadata (the API server guarantees its shape).
    pub metadata: ObjectMeta,
    /// The spec as stored.
    #[serde(default)]
    pub spec: serde_json::Value,
    /// The status as stored.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

impl Serialize for UncheckedInferenceService {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("apiVersion", &InferenceService::api_version(&()))?;
        m.serialize_entry("kind", &InferenceService::kind(&()))?;
        m.serialize_entry("metadata", &self.metadata)?;
        m.serialize_entry("spec", &self.spec)?;
        if let Some(status) = &self.status {
            m.serialize_entry("status", status)?;
        }
        m.end()
    }
}

impl Resource for UncheckedInferenceService {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        InferenceService::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        InferenceService::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        InferenceService::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        InferenceService::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The first field of an object the operator cannot act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// The field's path, `spec.draining.window`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Longest message kept: serde quotes the offending value, which a user
/// controls; events and conditions stay small.
const MAX_MESSAGE: usize = 512;

fn truncated(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: truncated(field.into()),
        message: truncated(message.into()),
    }
}

impl UncheckedInferenceService {
    /// The typed object, or the first field that prevents acting on it.
    /// A status that does not parse is dropped (logged by the caller) and
    /// recomputed: status is the operator's own output.
    pub fn check(&self) -> Result<InferenceService, SpecError> {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        if !names::is_valid_name(name) {
            return Err(problem("metadata.name", names::NAME_MESSAGE));
        }
        let spec: InferenceServiceSpec =
            serde_path_to_error::deserialize(&self.spec).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." || path.is_empty() {
                    "spec".to_owned()
                } else {
                    format!("spec.{path}")
                };
                problem(field, e.into_inner().to_string())
            })?;
        semantic_problems(&spec)?;
        let status = self
            .status
            .as_ref()
            .and_then(|s| InferenceServiceStatus::deserialize(s).ok());
        Ok(InferenceService {
            metadata: self.metadata.clone(),
            spec,
            status,
        })
    }

    /// The stored status, if it parses.
    pub fn parsed_status(&self) -> Option<InferenceServiceStatus> {
        self.status
            .as_ref()
            .and_then(|s| InferenceServiceStatus::deserialize(s).ok())
    }
}

/// The rules of the schema that a stored object may predate and that would
/// otherwise fail later, at a child's write, with a less useful message.
fn semantic_problems(spec: &InferenceServiceSpec) -> Result<(), SpecError> {
    if !names::is_model_name(&spec.model.name) {
        return Err(problem(
            "spec.model.name",
            "model.name must start with a letter or digit and contain only letters, digits and . _ : / -",
        ));
    }
    if !names::is_model_uri(&spec.model.uri) {
        return Err(problem(
            "spec.model.uri",
            "model.uri must use a supported scheme: file:///absolute/path or pvc://claim/path",
        ));
    }
    let e = &spec.engine;
    if let Some(i) = e
        .extra_args
        .iter()
        .position(|a| a.len() > names::MAX_ARG_LEN)
    {
        return Err(problem(
            format!("spec.engine.extraArgs[{i}]"),
            format!("longer than {} bytes", names::MAX_ARG_LEN),
        ));
    }
    if e.extra_args.len() > 32 {
        return Err(problem("spec.engine.extraArgs", "more than 32 arguments"));
    }
    if !names::is_image(&e.image) {
        return Err(problem("spec.engine.image", names::IMAGE_MESSAGE));
    }
    for (k, v) in &e.node_selector {
        if !names::is_label_key(k) {
            return Err(problem(
                format!("spec.engine.nodeSelector[{k:?}]"),
                names::LABEL_KEYS_MESSAGE,
            ));
        }
        if !names::is_label_value(v) {
            return Err(problem(
                format!("spec.engine.nodeSelector[{k:?}]"),
                names::LABEL_VALUES_MESSAGE,
            ));
        }
    }
    if let Some(r) = &e.resources {
        for (field, q) in [("cpu", &r.cpu), ("memory", &r.memory)] {
            if let Some(q) = q {
                if !names::is_positive_quantity(&q.0) {
                    return Err(problem(
                        format!("spec.engine.resources.{field}"),
                        names::quantity_message(field),
                    ));
                }
            }
        }
    }
    if let Some(max) = spec.replicas.max {
        if spec.replicas.min > max {
            return Err(problem(
                "spec.replicas",
                "replicas.min must be less than or equal to replicas.max",
            ));
        }
    }
    if spec.replicas.min < 0 || spec.replicas.warm < 0 {
        return Err(problem("spec.replicas", "replicas must not be negative"));
    }
    if let Some(q) = &spec.rollout.analysis.quality {
        if !names::is_dns_subdomain(&q.golden_set.config_map) {
            return Err(problem(
                "spec.rollout.analysis.quality.goldenSet.configMap",
                names::GOLDEN_SET_MESSAGE,
            ));
        }
    }
    let parents = spec.gateway.iter().flat_map(|g| g.parent_refs.iter());
    for (i, p) in parents.enumerate() {
        let field = |f: &str| format!("spec.gateway.parentRefs[{i}].{f}");
        if !names::is_dns_subdomain(&p.name) {
            return Err(problem(field("name"), names::PARENT_NAME_MESSAGE));
        }
        if p.namespace
            .as_deref()
            .is_some_and(|n| !names::is_dns_label(n))
        {
            return Err(problem(field("namespace"), names::PARENT_NAMESPACE_MESSAGE));
        }
        if p.section_name
            .as_deref()
            .is_some_and(|n| !names::is_dns_subdomain(n))
        {
            return Err(problem(field("sectionName"), names::PARENT_SECTION_MESSAGE));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn unchecked(name: &str, spec: serde_json::Value) -> UncheckedInferenceService {
        UncheckedInferenceService {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec,
            status: Some(json!({"phase": "NotAPhase", "traffic": 7})),
        }
    }

    fn base() -> serde_json::Value {
        json!({"model": {"name": "m", "uri": "file:///m"}})
    }

    fn with(patch: serde_json::Value) -> serde_json::Value {
        let mut s = base();
        if let (Some(a), Some(b)) = (s.as_object_mut(), patch.as_object()) {
            for (k, v) in b {
                a.insert(k.clone(), v.clone());
            }
        }
        s
    }

    #[test]
    fn a_good_spec_checks_and_a_garbled_status_is_dropped() {
        let obj = unchecked("chat", base()).check().expect("valid");
        assert_eq!(obj.spec.model.name, "m");
        assert!(obj.status.is_none());
    }

    /// Fault 0 of issue 13: the operator panicked on this value; now it is
    /// a named field.
    #[test]
    fn a_huge_drain_window_names_its_field() {
        let err = unchecked(
            "chat",
            with(json!({"draining": {"window": "9999999999999999h"}})),
        )
        .check()
        .unwrap_err();
        assert_eq!(err.field, "spec.draining.window");
        assert!(err.message.contains("longer than a Go duration"), "{err}");
    }

    #[test]
    fn hostile_specs_name_the_first_bad_field() {
        let cases = [
            (
                json!({"draining": {"window": "0s"}}),
                "spec.draining.window",
            ),
            (json!({"slo": {"ttftP99": "1h"}}), "spec.slo.ttftP99"),
            (
                json!({"rollout": {"steps": [{"weight": 5, "pause": "0s"}]}}),
                "spec.rollout.steps[0].pause",
            ),
            (
                json!({"rollout": {"analysis": {"rollbackOn": {"query": {"promql": "up", "above": 1, "for": "99999999999h"}}}}}),
                "spec.rollout.analysis.rollbackOn.query.for",
            ),
            (json!({"replicas": {"min": "three"}}), "spec.replicas.min"),
            (json!({"replicas": {"min": 3, "max": 2}}), "spec.replicas"),
            (json!({"engine": {"image": " x"}}), "spec.engine.image"),
            (
                json!({"engine": {"resources": {"memory": "16GB"}}}),
                "spec.engine.resources.memory",
            ),
            (
                json!({"engine": {"resources": {"cpu": -2}}}),
                "spec.engine.resources.cpu",
            ),
            (
                json!({"engine": {"nodeSelector": {"bad key": "x"}}}),
                "spec.engine.nodeSelector[\"bad key\"]",
            ),
            (
                json!({"rollout": {"analysis": {"quality": {"goldenSet": {"configMap": "Not_A_Name"}}}}}),
                "spec.rollout.analysis.quality.goldenSet.configMap",
            ),
            (
                json!({"gateway": {"parentRefs": [{"name": "ok"}, {"name": "gw", "namespace": "Not_A_Namespace"}]}}),
                "spec.gateway.parentRefs[1].namespace",
            ),
            (
                json!({"gateway": {"parentRefs": [{"name": "gw", "sectionName": "HTTPS"}]}}),
                "spec.gateway.parentRefs[0].sectionName",
            ),
            (json!({"model": 7}), "spec.model"),
        ];
        for (patch, field) in cases {
            let err = unchecked("chat", with(patch.clone())).check().unwrap_err();
            assert_eq!(err.field, field, "{patch}: {err}");
        }
        let err = unchecked("chat", json!(null)).check().unwrap_err();
        assert_eq!(err.field, "spec");
        let err = unchecked(&"a".repeat(64), base()).check().unwrap_err();
        assert_eq!(err.field, "metadata.name");
    }
}
