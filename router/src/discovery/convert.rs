//! API objects → index views.
//!
//! InferenceServices are read as untyped JSON and only the fields the
//! router routes on are parsed (`spec.model.name`, `spec.limits.perTenant`,
//! `status.traffic`), so a spec field the router does not use can never
//! stop it from routing. The field names are the contract in
//! docs/architecture.md and the operator's `crd` types; a test in
//! `tests/` checks them against objects the operator's types serialise.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use serde::Deserialize;

use crate::index::{ObjKey, PodView, ServiceView, TenantLimits, TrafficWeight};

/// API group of InferenceService.
pub const GROUP: &str = "serving.steward.dev";
/// API version of InferenceService.
pub const VERSION: &str = "v1alpha1";
/// Kind.
pub const KIND: &str = "InferenceService";
/// Plural resource name.
pub const PLURAL: &str = "inferenceservices";

/// Pod label keys (docs/architecture.md).
pub const LABEL_SERVICE: &str = "serving.steward.dev/service";
pub const LABEL_REVISION: &str = "serving.steward.dev/revision";
pub const LABEL_ROTATION: &str = "serving.steward.dev/rotation";
pub const ROTATION_SERVING: &str = "serving";
/// The engine's container port name, and the port when none is named.
pub const PORT_NAME: &str = "http";
pub const DEFAULT_PORT: u16 = 8000;

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("object has no namespace or name")]
    NoKey,
    #[error("object does not match the InferenceService fields the router reads: {0}")]
    Shape(#[source] serde_json::Error),
    #[error("pod lacks label {0}")]
    MissingLabel(&'static str),
    #[error("pod IP {0:?} is not an IP address")]
    BadIp(String),
}

impl ConvertError {
    /// Stable reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoKey => "no_key",
            Self::Shape(_) => "shape",
            Self::MissingLabel(_) => "missing_label",
            Self::BadIp(_) => "bad_ip",
        }
    }
}

#[derive(Deserialize)]
struct IsvcData {
    spec: IsvcSpec,
    #[serde(default)]
    status: Option<IsvcStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IsvcSpec {
    model: IsvcModel,
    #[serde(default)]
    limits: Option<IsvcLimits>,
}

#[derive(Deserialize)]
struct IsvcModel {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IsvcLimits {
    #[serde(default)]
    per_tenant: Option<IsvcTenantLimits>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IsvcTenantLimits {
    requests_per_second: Option<f64>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    max_concurrent: Option<u32>,
}

#[derive(Deserialize)]
struct IsvcStatus {
    #[serde(default)]
    traffic: Vec<IsvcTraffic>,
}

#[derive(Deserialize)]
struct IsvcTraffic {
    revision: String,
    weight: i64,
}

/// Reads an InferenceService.
pub fn service_view(obj: &DynamicObject) -> Result<ServiceView, ConvertError> {
    let key = ObjKey::new(
        obj.metadata.namespace.clone().ok_or(ConvertError::NoKey)?,
        obj.metadata.name.clone().ok_or(ConvertError::NoKey)?,
    );
    let data: IsvcData = serde_json::from_value(obj.data.clone()).map_err(ConvertError::Shape)?;
    let traffic = data
        .status
        .map(|s| s.traffic)
        .unwrap_or_default()
        .into_iter()
        .map(|t| TrafficWeight {
            revision: t.revision,
            weight: u32::try_from(t.weight.max(0)).unwrap_or(u32::MAX),
        })
        .collect();
    let tenant_limits = data
        .spec
        .limits
        .and_then(|l| l.per_tenant)
        .map(|t| TenantLimits {
            requests_per_second: t.requests_per_second,
            // The operator's default: twice the rate.
            burst: t
                .burst
                .or_else(|| t.requests_per_second.map(|r| (2.0 * r).ceil() as u32)),
            max_concurrent: t.max_concurrent,
        });
    Ok(ServiceView {
        key,
        created: obj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        model: data.spec.model.name,
        traffic,
        tenant_limits,
    })
}

/// Reads a pod of an InferenceService.
pub fn pod_view(pod: &Pod) -> Result<PodView, ConvertError> {
    let key = ObjKey::new(
        pod.metadata.namespace.clone().ok_or(ConvertError::NoKey)?,
        pod.metadata.name.clone().ok_or(ConvertError::NoKey)?,
    );
    let labels = pod.metadata.labels.as_ref();
    let label = |k: &'static str| {
        labels
            .and_then(|l| l.get(k))
            .cloned()
            .ok_or(ConvertError::MissingLabel(k))
    };
    let service = label(LABEL_SERVICE)?;
    let revision = label(LABEL_REVISION)?;
    let serving = labels
        .and_then(|l| l.get(LABEL_ROTATION))
        .is_some_and(|r| r == ROTATION_SERVING);
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let port = pod
        .spec
        .as_ref()
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(DEFAULT_PORT);
    let addr = match status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
    {
        None => None,
        Some(ip) => Some(SocketAddr::new(
            ip.parse::<IpAddr>()
                .map_err(|_| ConvertError::BadIp(ip.to_string()))?,
            port,
        )),
    };
    // The API server always sets a UID; without one, the pod's name stands in.
    let uid = pod
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| key.to_string());
    Ok(PodView {
        key,
        uid,
        service,
        revision,
        serving,
        ready,
        terminating,
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn isvc(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).expect("dynamic object")
    }

    #[test]
    fn service_view_reads_model_traffic_and_limits() {
        let o = isvc(json!({
            "apiVersion": "serving.steward.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "chat", "namespace": "team-a"},
            "spec": {"model": {"name": "chat-small", "uri": "pvc://x"}, "engine": {"gpus": 1},
                     "limits": {"perTenant": {"requestsPerSecond": 20, "maxConcurrent": 8}}},
            "status": {"phase": "Progressing", "traffic": [{"revision": "7c9f1a", "weight": 75}, {"revision": "3b2d44", "weight": 25}]}
        }));
        let v = service_view(&o).expect("valid");
        assert_eq!(v.key, ObjKey::new("team-a", "chat"));
        assert_eq!(v.created, None);
        assert_eq!(v.model, "chat-small");
        assert_eq!(v.traffic.len(), 2);
        assert_eq!(v.traffic[1].weight, 25);
        let l = v.tenant_limits.expect("limits");
        assert_eq!(l.requests_per_second, Some(20.0));
        assert_eq!(l.burst, Some(40));
        assert_eq!(l.max_concurrent, Some(8));
    }

    #[test]
    fn service_view_reads_the_creation_timestamp_as_the_age_of_its_claim() {
        let o = isvc(json!({
            "metadata": {"name": "a", "namespace": "n", "creationTimestamp": "2026-11-27T10:00:01Z"},
            "spec": {"model": {"name": "m"}}
        }));
        assert_eq!(
            service_view(&o).expect("valid").created,
            Some(1_795_773_601)
        );
    }

    #[test]
    fn service_without_status_has_no_traffic_yet() {
        let o = isvc(
            json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"model": {"name": "m"}}}),
        );
        assert!(service_view(&o).expect("valid").traffic.is_empty());
    }

    #[test]
    fn malformed_service_is_an_error_not_a_panic() {
        let o =
            isvc(json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"model": "oops"}}));
        assert_eq!(service_view(&o).expect_err("malformed").reason(), "shape");
        let o = isvc(
            json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"model": {"name": "m"}},
                            "status": {"traffic": [{"revision": 5}]}}),
        );
        assert!(service_view(&o).is_err());
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn pod_view_reads_labels_readiness_deletion_and_named_port() {
        let p = pod(json!({
            "metadata": {"name": "chat-7c9f1a-x", "namespace": "team-a", "uid": "u-1",
                "labels": {"serving.steward.dev/service": "chat", "serving.steward.dev/revision": "7c9f1a", "serving.steward.dev/rotation": "serving"}},
            "spec": {"containers": [{"name": "engine", "ports": [{"name": "metrics", "containerPort": 9000}, {"name": "http", "containerPort": 8001}]}]},
            "status": {"podIP": "127.0.1.5", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let v = pod_view(&p).expect("valid");
        assert!(v.routable());
        assert_eq!(v.uid, "u-1");
        assert_eq!(v.addr, Some(SocketAddr::from(([127, 0, 1, 5], 8001))));
        assert_eq!(v.revision, "7c9f1a");
    }

    #[test]
    fn warm_unready_or_deleting_pods_are_read_but_not_routable() {
        let base = json!({
            "metadata": {"name": "p", "namespace": "n",
                "labels": {"serving.steward.dev/service": "s", "serving.steward.dev/revision": "r", "serving.steward.dev/rotation": "warm"}},
            "spec": {"containers": [{"name": "engine"}]},
            "status": {"podIP": "127.0.1.5", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let v = pod_view(&pod(base.clone())).expect("valid");
        assert!(!v.serving && !v.routable());
        assert_eq!(v.addr.map(|a| a.port()), Some(DEFAULT_PORT));
        let mut deleting = base.clone();
        deleting["metadata"]["labels"]["serving.steward.dev/rotation"] = json!("serving");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
        assert!(!pod_view(&pod(deleting)).expect("valid").routable());
        let mut unready = base;
        unready["metadata"]["labels"]["serving.steward.dev/rotation"] = json!("serving");
        unready["status"]["conditions"][0]["status"] = json!("False");
        assert!(!pod_view(&pod(unready)).expect("valid").routable());
    }

    #[test]
    fn pod_without_revision_label_or_with_bad_ip_is_skipped() {
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "n", "labels": {"serving.steward.dev/service": "s"}}}),
        );
        assert_eq!(
            pod_view(&p).expect_err("no revision").reason(),
            "missing_label"
        );
        let p = pod(json!({"metadata": {"name": "p", "namespace": "n",
            "labels": {"serving.steward.dev/service": "s", "serving.steward.dev/revision": "r"}},
            "status": {"podIP": "not-an-ip"}}));
        assert_eq!(pod_view(&p).expect_err("bad ip").reason(), "bad_ip");
    }
}
