//! Revisions: a revision is the hash of everything in the spec that shapes
//! the engine pods.
//!
//! Two specs with the same [`PodShape`] run the same pods, so they are the
//! same revision; a change outside it (SLO numbers, replica bounds, rollout
//! policy, per-tenant limits) never restarts a pod. The hash is the first 10
//! hex characters of SHA-256 over the shape's JSON (field order is fixed by
//! the struct, maps are `BTreeMap`s), so it is stable across processes and
//! operator restarts.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::{DrainingSpec, EngineSpec, InferenceServiceSpec, ModelSpec};

/// Length of a revision name in hex characters (docs/architecture.md).
pub const REVISION_LEN: usize = 10;

/// The part of the spec that shapes pods.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodShape<'a> {
    model: &'a ModelSpec,
    engine: &'a EngineSpec,
    draining: &'a DrainingSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens_per_request: Option<i32>,
}

impl<'a> PodShape<'a> {
    /// Picks the pod-shaping fields out of a spec.
    pub fn of(spec: &'a InferenceServiceSpec) -> Self {
        Self {
            model: &spec.model,
            engine: &spec.engine,
            draining: &spec.draining,
            max_tokens_per_request: spec.limits.max_tokens_per_request,
        }
    }
}

/// The revision name of a spec.
pub fn revision_of(spec: &InferenceServiceSpec) -> String {
    short_hash(&PodShape::of(spec))
}

/// First [`REVISION_LEN`] hex chars of SHA-256 over `value`'s JSON. Also used
/// to fingerprint the objects the operator applies.
pub fn short_hash<T: Serialize>(value: &T) -> String {
    // Serialising plain structs of strings, numbers and BTreeMaps cannot
    // fail; an empty input still hashes to a stable value.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let mut out = hex::encode(digest);
    out.truncate(REVISION_LEN);
    out
}

/// The Deployment name of a revision.
pub fn deployment_name(service: &str, revision: &str) -> String {
    format!("{service}-{revision}")
}

/// The longest Service name (a DNS-1035 label).
const MAX_SERVICE_NAME: usize = 63;

/// The Service name of one revision: `<service>-<revision>` (the
/// Deployment's name). An InferenceService name longer than 52 characters
/// would make it longer than a Service name may be; it is then cut to 45
/// characters and followed by 6 hex characters of its own hash, so two
/// long names with the same beginning still get different Services.
pub fn revision_service_name(service: &str, revision: &str) -> String {
    let full = deployment_name(service, revision);
    if full.len() <= MAX_SERVICE_NAME {
        return full;
    }
    let mut tag = short_hash(&service);
    tag.truncate(6);
    // Names are ASCII (DNS-1035), so any byte index is a char boundary.
    let keep = MAX_SERVICE_NAME - revision.len() - tag.len() - 2;
    let head = service.get(..keep).unwrap_or(service).trim_end_matches('-');
    format!("{head}-{tag}-{revision}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::GoDuration;

    fn spec() -> InferenceServiceSpec {
        serde_yaml::from_str("model: { name: m, uri: 'file:///models/m' }").unwrap()
    }

    #[test]
    fn revision_is_ten_hex_chars_and_stable() {
        let r = revision_of(&spec());
        assert_eq!(r.len(), REVISION_LEN);
        assert!(r.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(r, revision_of(&spec()));
    }

    #[test]
    fn pod_shaping_changes_make_a_new_revision() {
        let base = revision_of(&spec());
        let mut s = spec();
        s.engine.image = "steward-engine:0.2".into();
        assert_ne!(revision_of(&s), base);
        let mut s = spec();
        s.model.uri = "file:///models/other".into();
        assert_ne!(revision_of(&s), base);
        let mut s = spec();
        s.draining.window = GoDuration::from_secs(90);
        assert_ne!(revision_of(&s), base);
        let mut s = spec();
        s.limits.max_tokens_per_request = Some(100);
        assert_ne!(revision_of(&s), base);
    }

    #[test]
    fn revision_service_names_fit_a_dns_label_and_stay_distinct() {
        assert_eq!(
            revision_service_name("chat", "0123456789"),
            "chat-0123456789"
        );
        let long_a = format!("a{}", "b".repeat(62));
        let long_b = format!("a{}c", "b".repeat(61));
        let a = revision_service_name(&long_a, "0123456789");
        let b = revision_service_name(&long_b, "0123456789");
        assert_eq!(a.len(), 63, "{a}");
        assert!(a.ends_with("-0123456789") && a.starts_with("ab"), "{a}");
        assert_ne!(a, b, "a shared prefix must not share a Service");
        // A cut that ends on '-' does not leave a double dash behind.
        let dashed = format!("{}-{}", "x".repeat(44), "y".repeat(18));
        let d = revision_service_name(&dashed, "0123456789");
        assert!(!d.contains("--") && d.len() <= 63, "{d}");
    }

    #[test]
    fn gateway_parents_keep_the_revision() {
        let base = revision_of(&spec());
        let mut s = spec();
        s.gateway = serde_yaml::from_str("parentRefs: [ { name: public } ]").unwrap();
        assert_eq!(revision_of(&s), base);
    }

    #[test]
    fn slo_replica_and_rollout_changes_keep_the_revision() {
        let base = revision_of(&spec());
        let mut s = spec();
        s.slo.ttft_p99 = GoDuration::from_millis(300);
        s.slo.availability = "99.99".into();
        s.replicas.min = 5;
        s.replicas.warm = 2;
        s.autoscaling.target_utilization = 50;
        s.rollout.steps.clear();
        assert_eq!(revision_of(&s), base);
    }
}
