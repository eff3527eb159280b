//! The children an `InferenceService` owns, built as values: one Deployment
//! per revision (`<name>-<rev>`), one Service selecting the serving pods of
//! every revision, and one Service per revision that has pods or traffic
//! (`<name>-<rev>`, see `revision::revision_service_name`), selecting that
//! revision's serving pods: the backends of the HTTPRoute (`route`).
//!
//! Pure: no client. Each built object carries an annotation with the hash of
//! its own content ([`APPLIED_HASH`]); the apply step compares it with the
//! observed object's annotation and skips the write when they match, which
//! is what makes a converged reconcile write nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe,
    ResourceFieldSelector, ResourceRequirements, Service, ServicePort, ServiceSpec, SleepAction,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{labels, InferenceServiceSpec};
use crate::revision::{deployment_name, revision_service_name, short_hash};
use crate::security;

/// Annotation holding the hash of what the operator last applied.
pub const APPLIED_HASH: &str = "serving.steward.dev/applied-hash";
/// `app.kubernetes.io/managed-by` value on every child.
pub const MANAGED_BY: &str = "steward-operator";
/// Name of the engine container and its port.
pub const ENGINE_CONTAINER: &str = "engine";
/// Name of the engine's container port.
pub const HTTP_PORT_NAME: &str = "http";
/// Where `pvc://claim/...` models are mounted.
pub const MODELS_ROOT: &str = "/models";
/// preStop sleep before the kubelet's SIGTERM starts the engine's drain.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 2;

/// Knobs of the pod template that are operator settings, not spec fields.
#[derive(Clone, Debug)]
pub struct TemplateConfig {
    /// Added to `draining.window` for `terminationGracePeriodSeconds`.
    pub drain_margin: Duration,
    /// The engine executable inside the image.
    pub engine_command: String,
    /// The non-root user (and group) engine containers run as.
    pub run_as_user: i64,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        Self {
            drain_margin: Duration::from_secs(15),
            engine_command: "steward-engine".into(),
            run_as_user: security::DEFAULT_ENGINE_UID,
        }
    }
}

/// Where the model directory is inside the pod, and the volume that holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelLocation {
    /// `--model` argument.
    pub path: String,
    /// A read-only PVC to mount, `(claim, mount path)`.
    pub claim: Option<(String, String)>,
}

/// Why a model uri cannot be placed (only for objects that bypassed the API
/// server's validation).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("model uri {0:?} is neither file:///path nor pvc://claim/path")]
pub struct UnsupportedUri(pub String);

/// Maps `file:///abs/path` and `pvc://claim/sub/path` to a path in the pod.
pub fn model_location(uri: &str) -> Result<ModelLocation, UnsupportedUri> {
    if let Some(path) = uri.strip_prefix("file://") {
        if path.starts_with('/') {
            return Ok(ModelLocation {
                path: path.to_owned(),
                claim: None,
            });
        }
    }
    if let Some(rest) = uri.strip_prefix("pvc://") {
        let (claim, sub) = rest.split_once('/').unwrap_or((rest, ""));
        if !claim.is_empty() {
            let mount = format!("{MODELS_ROOT}/{claim}");
            let path = if sub.is_empty() {
                mount.clone()
            } else {
                format!("{mount}/{}", sub.trim_end_matches('/'))
            };
            return Ok(ModelLocation {
                path,
                claim: Some((claim.to_owned(), mount)),
            });
        }
    }
    Err(UnsupportedUri(uri.to_owned()))
}

/// Identity of the parent, for names, labels and the owner reference.
#[derive(Clone, Debug)]
pub struct Parent {
    /// The InferenceService's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Owner reference pointing at it (controller = true).
    pub owner: OwnerReference,
}

fn child_labels(service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::SERVICE.to_owned(), service.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (
            "app.kubernetes.io/name".to_owned(),
            "steward-engine".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), service.to_owned()),
    ])
}

/// Stamps the content hash annotation onto an object's metadata.
fn stamp<T: serde::Serialize>(obj: &T, meta: &mut ObjectMeta) {
    let hash = short_hash(obj);
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH.to_owned(), hash);
}

/// The engine's command-line arguments for a spec.
pub fn engine_args(spec: &InferenceServiceSpec, model_path: &str) -> Vec<String> {
    let e = &spec.engine;
    let mut args = vec![
        "serve".to_owned(),
        "--model".to_owned(),
        model_path.to_owned(),
        "--served-model-name".to_owned(),
        spec.model.name.clone(),
        "--host".to_owned(),
        "$(POD_IP)".to_owned(),
        "--port".to_owned(),
        e.port.to_string(),
        "--max-batch-tokens".to_owned(),
        e.max_batch_tokens.to_string(),
        "--kv-cache-blocks".to_owned(),
        e.kv_cache_blocks.to_string(),
        "--max-context-tokens".to_owned(),
        spec.model.max_context_tokens.to_string(),
        "--drain-window".to_owned(),
        spec.draining.window.to_string(),
    ];
    if let Some(cap) = spec.limits.max_tokens_per_request {
        args.push("--max-tokens-cap".to_owned());
        args.push(cap.to_string());
    }
    if e.vllm_metrics {
        args.push("--vllm-metrics".to_owned());
    }
    args.extend(e.extra_args.iter().cloned());
    args
}

/// The engine's environment: its pod IP, and with a CPU limit the limit
/// itself (downward API), from which the engine sizes its thread pools.
fn engine_env(cpu_limited: bool) -> Vec<EnvVar> {
    let mut env = vec![EnvVar {
        name: "POD_IP".to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }];
    if cpu_limited {
        env.push(EnvVar {
            name: "STEWARD_CPU_LIMIT".to_owned(),
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some(ENGINE_CONTAINER.to_owned()),
                    resource: "limits.cpu".to_owned(),
                    divisor: None,
                }),
                ..EnvVarSource::default()
            }),
            value: None,
        });
    }
    env
}

fn http_probe(path: &str, period: i32, failure: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(HTTP_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The pod template of one revision.
pub fn pod_template(
    parent: &Parent,
    spec: &InferenceServiceSpec,
    revision: &str,
    cfg: &TemplateConfig,
) -> Result<PodTemplateSpec, UnsupportedUri> {
    let location = model_location(&spec.model.uri)?;
    let e = &spec.engine;
    let mut pod_labels = child_labels(&parent.name);
    pod_labels.insert(labels::REVISION.to_owned(), revision.to_owned());
    pod_labels.insert(
        labels::ROTATION.to_owned(),
        labels::ROTATION_SERVING.to_owned(),
    );
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), e.port.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);

    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    if e.gpus > 0 {
        limits.insert("nvidia.com/gpu".to_owned(), Quantity(e.gpus.to_string()));
        requests.insert("nvidia.com/gpu".to_owned(), Quantity(e.gpus.to_string()));
    }
    if let Some(r) = &e.resources {
        for (key, q) in [("cpu", &r.cpu), ("memory", &r.memory)] {
            if let Some(q) = q {
                limits.insert(key.to_owned(), q.clone());
                requests.insert(key.to_owned(), q.clone());
            }
        }
    }
    let resources = (!limits.is_empty()).then(|| ResourceRequirements {
        limits: Some(limits),
        requests: Some(requests),
        ..ResourceRequirements::default()
    });

    let (volumes, mounts) = match &location.claim {
        Some((claim, mount)) => (
            Some(vec![Volume {
                name: "model".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            }]),
            Some(vec![VolumeMount {
                name: "model".to_owned(),
                mount_path: mount.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
        ),
        None => (None, None),
    };
    // The root filesystem is read-only; /tmp is scratch space.
    let (tmp, tmp_mount) = security::tmp_volume();
    let volumes = Some(volumes.into_iter().flatten().chain([tmp]).collect());
    let mounts = Some(mounts.into_iter().flatten().chain([tmp_mount]).collect());

    let window = spec.draining.window.get();
    // Checked: neither the window (bounded by the schema) nor the flag can
    // overflow the pod's int64 seconds.
    let grace = i64::try_from(window.saturating_add(cfg.drain_margin).as_secs())
        .unwrap_or(i64::MAX)
        .max(1);
    let container = Container {
        name: ENGINE_CONTAINER.to_owned(),
        image: Some(e.image.clone()),
        image_pull_policy: e.image_pull_policy.map(|p| p.as_str().to_owned()),
        command: Some(vec![cfg.engine_command.clone()]),
        args: Some(engine_args(spec, &location.path)),
        env: Some(engine_env(
            e.resources.as_ref().is_some_and(|r| r.cpu.is_some()),
        )),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.to_owned()),
            container_port: e.port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/ready", 2, 1)),
        liveness_probe: Some(Probe {
            // Loading weights can take a while; liveness only checks that
            // the HTTP server answers, so it may start early.
            initial_delay_seconds: Some(5),
            ..http_probe("/health", 10, 6)
        }),
        lifecycle: Some(Lifecycle {
            // The engine drains on SIGTERM (refuses new work with 503, finishes
            // its streams, exits), bounded by the grace period below; nobody
            // else can drain it (its /drain needs a token this pod does not
            // carry). The short sleep first lets the router and Endpoints see
            // the pod terminating, so new requests stop arriving before it
            // starts refusing them.
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources,
        volume_mounts: mounts,
        security_context: Some(security::container()),
        ..Container::default()
    };
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            termination_grace_period_seconds: Some(grace),
            volumes,
            security_context: Some(security::pod(cfg.run_as_user)),
            // The engine never calls the API server.
            automount_service_account_token: Some(false),
            node_selector: (!e.node_selector.is_empty()).then(|| e.node_selector.clone()),
            ..PodSpec::default()
        }),
    })
}

/// The selector of a revision's Deployment (not the rotation: pods move between
/// serving and warm without leaving their ReplicaSet).
pub fn revision_selector(service: &str, revision: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::SERVICE.to_owned(), service.to_owned()),
        (labels::REVISION.to_owned(), revision.to_owned()),
    ])
}

/// The Deployment of one revision at a replica count.
pub fn revision_deployment(
    parent: &Parent,
    spec: &InferenceServiceSpec,
    revision: &str,
    replicas: i32,
    cfg: &TemplateConfig,
) -> Result<Deployment, UnsupportedUri> {
    let mut meta_labels = child_labels(&parent.name);
    meta_labels.insert(labels::REVISION.to_owned(), revision.to_owned());
    let mut d = Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(&parent.name, revision)),
            namespace: Some(parent.namespace.clone()),
            labels: Some(meta_labels),
            owner_references: Some(vec![parent.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(revision_selector(&parent.name, revision)),
                match_expressions: None,
            },
            template: pod_template(parent, spec, revision, cfg)?,
            revision_history_limit: Some(1),
            progress_deadline_seconds: Some(600),
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    let copy = d.clone();
    stamp(&copy, &mut d.metadata);
    Ok(d)
}

/// The labels of the serving pods of every revision.
fn serving_labels(service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::SERVICE.to_owned(), service.to_owned()),
        (
            labels::ROTATION.to_owned(),
            labels::ROTATION_SERVING.to_owned(),
        ),
    ])
}

/// [`serving_labels`] as a label-selector string (`status.selector`, read
/// through the scale subresource by an HPA or KEDA).
pub fn serving_selector(service: &str) -> String {
    serving_labels(service)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The Service selecting the serving pods of every revision.
pub fn service(parent: &Parent, spec: &InferenceServiceSpec) -> Service {
    let selector = serving_labels(&parent.name);
    let mut s = Service {
        metadata: ObjectMeta {
            name: Some(parent.name.clone()),
            namespace: Some(parent.namespace.clone()),
            labels: Some(child_labels(&parent.name)),
            owner_references: Some(vec![parent.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(http_ports(spec)),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let copy = s.clone();
    stamp(&copy, &mut s.metadata);
    s
}

fn http_ports(spec: &InferenceServiceSpec) -> Vec<ServicePort> {
    vec![ServicePort {
        name: Some(HTTP_PORT_NAME.to_owned()),
        port: spec.engine.port,
        target_port: Some(IntOrString::String(HTTP_PORT_NAME.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }]
}

/// The Service of one revision: its serving pods only (warm and draining
/// pods are not endpoints), on the same port as the main Service. A
/// Gateway sends a backendRef's share of requests to it.
pub fn revision_service(parent: &Parent, spec: &InferenceServiceSpec, revision: &str) -> Service {
    let mut selector = serving_labels(&parent.name);
    selector.insert(labels::REVISION.to_owned(), revision.to_owned());
    let mut meta_labels = child_labels(&parent.name);
    meta_labels.insert(labels::REVISION.to_owned(), revision.to_owned());
    let mut s = Service {
        metadata: ObjectMeta {
            name: Some(revision_service_name(&parent.name, revision)),
            namespace: Some(parent.namespace.clone()),
            labels: Some(meta_labels),
            owner_references: Some(vec![parent.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(http_ports(spec)),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let copy = s.clone();
    stamp(&copy, &mut s.metadata);
    s
}

/// The hash an observed object was applied with, if any.
pub fn applied_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH))
        .map(String::as_str)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The test parent `team-a/chat` (also used by `route`'s tests).
    pub(crate) fn parent() -> Parent {
        Parent {
            name: "chat".into(),
            namespace: "team-a".into(),
            owner: OwnerReference {
                api_version: "serving.steward.dev/v1alpha1".into(),
                kind: "InferenceService".into(),
                name: "chat".into(),
                uid: "u-1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        }
    }

    /// A minimal spec plus `extra` YAML (also used by `route`'s tests).
    pub(crate) fn spec(extra: &str) -> InferenceServiceSpec {
        serde_yaml::from_str(&format!(
            "model: {{ name: chat-small, uri: 'file:///m/chat' }}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn model_uris_map_to_paths_and_claims() {
        assert_eq!(model_location("file:///m/x").unwrap().path, "/m/x");
        let l = model_location("pvc://models/chat-small").unwrap();
        assert_eq!(l.path, "/models/models/chat-small");
        assert_eq!(l.claim, Some(("models".into(), "/models/models".into())));
        assert!(model_location("s3://bucket/x").is_err());
        assert!(model_location("file://relative").is_err());
    }

    #[test]
    fn pod_template_runs_the_engine_with_spec_args_probes_and_drain() {
        let s = spec("engine: { gpus: 2, maxBatchTokens: 1024 }\ndraining: { window: 30s }\nlimits: { maxTokensPerRequest: 256 }");
        let d = revision_deployment(&parent(), &s, "abcdef0123", 3, &TemplateConfig::default())
            .unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("chat-abcdef0123"));
        let ds = d.spec.unwrap();
        assert_eq!(ds.replicas, Some(3));
        let pod = ds.template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(45));
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap().join(" ");
        assert!(
            args.starts_with(
                "serve --model /m/chat --served-model-name chat-small --host $(POD_IP) --port 8000"
            ),
            "{args}"
        );
        assert!(args.contains("--max-batch-tokens 1024"));
        assert!(args.contains("--drain-window 30s"));
        assert!(args.contains("--max-tokens-cap 256"));
        let env = &c.env.as_ref().unwrap()[0];
        assert_eq!(env.name, "POD_IP");
        assert_eq!(
            env.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "status.podIP"
        );
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/ready"));
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/health"));
        // Regression (issue 13, fault 2): no hook calls /drain over HTTP;
        // the engine drains on the kubelet's SIGTERM after a short sleep.
        let pre = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        assert!(pre.http_get.is_none() && pre.exec.is_none());
        assert_eq!(pre.sleep.as_ref().unwrap().seconds, PRE_STOP_SLEEP_SECONDS);
        let gpus = &c.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"];
        assert_eq!(gpus.0, "2");
        let labels = ds.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels[labels::SERVICE], "chat");
        assert_eq!(labels[labels::REVISION], "abcdef0123");
        assert_eq!(labels[labels::ROTATION], "serving");
        assert!(!ds
            .selector
            .match_labels
            .unwrap()
            .contains_key(labels::ROTATION));
    }

    #[test]
    fn cpu_only_spec_requests_no_gpus() {
        let d = revision_deployment(
            &parent(),
            &spec("engine: { gpus: 0 }"),
            "r",
            1,
            &TemplateConfig::default(),
        )
        .unwrap();
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        assert!(c.resources.is_none());
        let env = c.env.as_ref().unwrap();
        assert!(env.iter().all(|e| e.name != "STEWARD_CPU_LIMIT"));
    }

    #[test]
    fn cpu_limit_reaches_the_engine_through_the_downward_api() {
        let d = revision_deployment(
            &parent(),
            &spec("engine: { gpus: 0, resources: { cpu: 500m } }"),
            "r",
            1,
            &TemplateConfig::default(),
        )
        .unwrap();
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        let env = c.env.as_ref().unwrap();
        let cpu = env
            .iter()
            .find(|e| e.name == "STEWARD_CPU_LIMIT")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.resource_field_ref.as_ref())
            .expect("STEWARD_CPU_LIMIT from a resourceFieldRef");
        assert_eq!(cpu.resource, "limits.cpu");
        assert_eq!(cpu.container_name.as_deref(), Some(ENGINE_CONTAINER));
        assert_eq!(
            c.resources.as_ref().unwrap().limits.as_ref().unwrap()["cpu"].0,
            "500m"
        );
    }

    #[test]
    fn applied_hash_changes_with_content_only() {
        let cfg = TemplateConfig::default();
        let a = revision_deployment(&parent(), &spec(""), "r", 1, &cfg).unwrap();
        let b = revision_deployment(&parent(), &spec(""), "r", 1, &cfg).unwrap();
        let c = revision_deployment(&parent(), &spec(""), "r", 2, &cfg).unwrap();
        assert_eq!(applied_hash(&a.metadata), applied_hash(&b.metadata));
        assert_ne!(applied_hash(&a.metadata), applied_hash(&c.metadata));
    }

    #[test]
    fn revision_service_selects_only_that_revisions_serving_pods_on_the_same_port() {
        let s = spec("engine: { port: 9000 }");
        let main = service(&parent(), &s);
        let rev = revision_service(&parent(), &s, "abcdef0123");
        assert_eq!(rev.metadata.name.as_deref(), Some("chat-abcdef0123"));
        assert_eq!(
            rev.metadata.owner_references,
            main.metadata.owner_references
        );
        assert_eq!(
            rev.metadata.labels.as_ref().unwrap()[labels::REVISION],
            "abcdef0123"
        );
        let sel = rev.spec.as_ref().unwrap().selector.clone().unwrap();
        assert_eq!(
            sel,
            BTreeMap::from([
                (labels::SERVICE.to_owned(), "chat".to_owned()),
                (labels::REVISION.to_owned(), "abcdef0123".to_owned()),
                (labels::ROTATION.to_owned(), "serving".to_owned()),
            ])
        );
        assert_eq!(rev.spec.unwrap().ports, main.spec.unwrap().ports);
        assert!(applied_hash(&rev.metadata).is_some());
    }

    #[test]
    fn service_selects_serving_pods_of_every_revision() {
        let s = service(&parent(), &spec(""));
        let sel = s.spec.unwrap().selector.unwrap();
        assert_eq!(sel.len(), 2);
        assert_eq!(sel[labels::ROTATION], "serving");
    }
}
