//! A container's environment, built as the kubelet builds it: the
//! downward-API values the local node always sets (POD_IP, POD_NAME,
//! POD_NAMESPACE, NODE_NAME, HOSTNAME), then the container's `env` in order,
//! each value expanded against those defined before it. A few host
//! variables pass through (PATH, HOME, LD_LIBRARY_PATH and the names given
//! to the node), since these "containers" are host processes.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::expand::expand;

/// Host variables every container inherits.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LD_LIBRARY_PATH",
    "TMPDIR",
    "RUST_BACKTRACE",
];

/// The environment for `container`, or a message saying which source is not
/// supported here (reported as CreateContainerConfigError).
pub fn container_env(
    pod: &Pod,
    container: &Container,
    ip: Ipv4Addr,
    pass: &[String],
) -> Result<HashMap<String, String>, String> {
    let mut env: HashMap<String, String> = HashMap::new();
    for k in DEFAULT_PASS_ENV
        .iter()
        .map(|s| s.to_string())
        .chain(pass.iter().cloned())
    {
        if let Ok(v) = std::env::var(&k) {
            env.insert(k, v);
        }
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    env.insert("HOSTNAME".into(), name.clone());
    env.insert("POD_IP".into(), ip.to_string());
    env.insert("POD_NAME".into(), name);
    env.insert("POD_NAMESPACE".into(), ns);
    env.insert("NODE_NAME".into(), node);
    if container.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(format!(
            "container {}: envFrom is not supported by the local node; use env with value or fieldRef",
            container.name
        ));
    }
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, None) => String::new(),
            (None, Some(src)) => {
                if let Some(f) = &src.field_ref {
                    field_value(pod, &f.field_path, ip).ok_or_else(|| {
                        format!("env {}: unsupported fieldRef {:?}", e.name, f.field_path)
                    })?
                } else if let Some(r) = &src.resource_field_ref {
                    resource_value(container, &r.resource)
                } else {
                    return Err(format!(
                        "env {}: configMapKeyRef/secretKeyRef are not supported by the local node",
                        e.name
                    ));
                }
            }
        };
        env.insert(e.name.clone(), value);
    }
    Ok(env)
}

fn field_value(pod: &Pod, path: &str, ip: Ipv4Addr) -> Option<String> {
    let m = &pod.metadata;
    let label = |map: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default()
    };
    Some(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone().unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()?
            .service_account_name
            .clone()
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
        p if p.starts_with("metadata.labels['") && p.ends_with("']") => {
            label(&m.labels, &p["metadata.labels['".len()..p.len() - 2])
        }
        p if p.starts_with("metadata.annotations['") && p.ends_with("']") => label(
            &m.annotations,
            &p["metadata.annotations['".len()..p.len() - 2],
        ),
        _ => return None,
    })
}

fn resource_value(c: &Container, resource: &str) -> String {
    let (kind, key) = resource.split_once('.').unwrap_or(("limits", resource));
    let r = c.resources.as_ref();
    let map = if kind == "requests" {
        r.and_then(|r| r.requests.as_ref())
    } else {
        r.and_then(|r| r.limits.as_ref())
    };
    map.and_then(|m| m.get(key))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p1", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}
        }))
        .expect("pod")
    }

    #[test]
    fn downward_api_and_ordered_expansion() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "env": [
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "URL", "value": "http://$(MY_IP):8000/$(LATER)"},
                {"name": "LATER", "value": "x"},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}
            ]
        }))
        .expect("container");
        let env = container_env(&pod(), &c, "127.16.0.9".parse().expect("ip"), &[]).expect("env");
        assert_eq!(env["POD_IP"], "127.16.0.9");
        assert_eq!(env["POD_NAME"], "p1");
        assert_eq!(env["POD_NAMESPACE"], "ns");
        assert_eq!(env["URL"], "http://127.16.0.9:8000/$(LATER)");
        assert_eq!(env["APP"], "x");
    }

    #[test]
    fn unsupported_sources_are_reported_not_ignored() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
        }))
        .expect("container");
        let err = container_env(&pod(), &c, "127.16.0.9".parse().expect("ip"), &[]).unwrap_err();
        assert!(err.contains("secretKeyRef"));
    }
}
