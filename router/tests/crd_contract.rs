//! The router reads InferenceServices as untyped JSON; this pins that what
//! the operator's own types serialise is what the router reads
//! (`spec.model.name`, `spec.limits.perTenant`, `status.traffic`), and that
//! the router's group, version, plural and label keys are the operator's.

use kube::api::DynamicObject;
use kube::{CustomResourceExt, Resource};
use steward_operator::crd::{self, InferenceService, InferenceServiceStatus, TrafficTarget};
use steward_router::discovery::convert::{self, service_view};

fn operator_object() -> InferenceService {
    let spec: crd::InferenceServiceSpec = serde_json::from_value(serde_json::json!({
        "model": {"name": "chat-small", "uri": "pvc://models/chat-small"},
        "limits": {"perTenant": {"requestsPerSecond": 20, "maxConcurrent": 8}}
    }))
    .expect("spec from the operator's schema");
    let mut isvc = InferenceService::new("chat", spec);
    isvc.metadata.namespace = Some("team-a".into());
    isvc.status = Some(InferenceServiceStatus {
        traffic: vec![
            TrafficTarget {
                revision: "7c9f1a0000".into(),
                weight: 75,
            },
            TrafficTarget {
                revision: "3b2d440000".into(),
                weight: 25,
            },
        ],
        ..Default::default()
    });
    isvc
}

#[test]
fn router_reads_what_the_operator_types_write() {
    let isvc = operator_object();
    let dynamic: DynamicObject =
        serde_json::from_value(serde_json::to_value(&isvc).expect("serialise"))
            .expect("as dynamic object");
    let view = service_view(&dynamic).expect("router reads the operator's object");
    assert_eq!(view.model, "chat-small");
    assert_eq!(view.key.namespace, "team-a");
    let weights: Vec<(String, u32)> = view
        .traffic
        .iter()
        .map(|t| (t.revision.clone(), t.weight))
        .collect();
    assert_eq!(
        weights,
        vec![("7c9f1a0000".into(), 75), ("3b2d440000".into(), 25)]
    );
    let limits = view.tenant_limits.expect("limits");
    assert_eq!(limits.requests_per_second, Some(20.0));
    let effective = isvc
        .spec
        .limits
        .per_tenant
        .as_ref()
        .map(|t| t.effective_burst());
    assert_eq!(
        limits.burst.map(|b| b as i32),
        effective,
        "same burst default as the operator"
    );
    assert_eq!(limits.max_concurrent, Some(8));
}

#[test]
fn router_and_operator_agree_on_resource_names_and_labels() {
    assert_eq!(InferenceService::group(&()), convert::GROUP);
    assert_eq!(InferenceService::version(&()), convert::VERSION);
    assert_eq!(InferenceService::kind(&()), convert::KIND);
    assert_eq!(InferenceService::plural(&()), convert::PLURAL);
    assert_eq!(
        InferenceService::crd_name(),
        format!("{}.{}", convert::PLURAL, convert::GROUP)
    );
    assert_eq!(crd::labels::SERVICE, convert::LABEL_SERVICE);
    assert_eq!(crd::labels::REVISION, convert::LABEL_REVISION);
    assert_eq!(crd::labels::ROTATION, convert::LABEL_ROTATION);
    assert_eq!(crd::labels::ROTATION_SERVING, convert::ROTATION_SERVING);
}
