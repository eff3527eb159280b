//! The API server refuses bad InferenceService manifests with a message that
//! names the problem: schema bounds and the CEL rules in the generated CRD,
//! checked against a real kube-apiserver (the shared local cluster).

mod support;

use serde_json::{json, Value};
use support::{apply, env, manifest};

#[tokio::test]
async fn invalid_manifests_are_refused_by_the_api_server_with_clear_messages() {
    let env = env("validation").await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "min above max",
            json!({"replicas": {"min": 3, "max": 2}}),
            "replicas.min must be less than or equal to replicas.max",
        ),
        (
            "negative warm",
            json!({"replicas": {"warm": -1}}),
            "spec.replicas.warm: Invalid value",
        ),
        (
            "step weight zero",
            json!({"rollout": {"steps": [{"weight": 0}]}}),
            "should be greater than or equal to 1",
        ),
        (
            "step weight 100",
            json!({"rollout": {"steps": [{"weight": 100}]}}),
            "should be less than or equal to 99",
        ),
        (
            "weights not increasing",
            json!({"rollout": {"steps": [{"weight": 25}, {"weight": 5}]}}),
            "rollout.steps weights must be strictly increasing",
        ),
        (
            "repeated weight",
            json!({"rollout": {"steps": [{"weight": 5}, {"weight": 5}]}}),
            "rollout.steps weights must be strictly increasing",
        ),
        (
            "utilization zero",
            json!({"autoscaling": {"targetUtilization": 0}}),
            "spec.autoscaling.targetUtilization: Invalid value",
        ),
        (
            "utilization 150",
            json!({"autoscaling": {"targetUtilization": 150}}),
            "should be less than or equal to 100",
        ),
        (
            "unknown autoscaling mode",
            json!({"autoscaling": {"mode": "keda"}}),
            "spec.autoscaling.mode: Unsupported value: \"keda\"",
        ),
        (
            "duration in words",
            json!({"autoscaling": {"scaleInAfter": "5 minutes"}}),
            "must be a positive duration such as 800ms",
        ),
        (
            "negative duration",
            json!({"draining": {"window": "-5s"}}),
            "spec.draining.window: Invalid value: \"string\": must be a positive duration",
        ),
        (
            "availability over 100",
            json!({"slo": {"availability": "120"}}),
            "slo.availability must be a percentage",
        ),
        (
            "availability not a number",
            json!({"slo": {"availability": "high"}}),
            "slo.availability must be a percentage",
        ),
        (
            "unsupported uri scheme",
            json!({"model": {"uri": "s3://bucket/model"}}),
            "model.uri must use a supported scheme",
        ),
        (
            "relative file uri",
            json!({"model": {"uri": "file://relative/dir"}}),
            "model.uri must use a supported scheme",
        ),
        (
            "missing model",
            json!({"model": null}),
            "spec.model: Required value",
        ),
        (
            "two keys in one alarm node",
            json!({"rollout": {"analysis": {"rollbackOn": {"slo": "ttftP99", "alarm": "errorRate"}}}}),
            "rollbackOn sets exactly one of",
        ),
        (
            "unknown alarm",
            json!({"rollout": {"analysis": {"rollbackOn": {"alarm": "vibes"}}}}),
            "Unsupported value: \"vibes\"",
        ),
        (
            "query above and below",
            json!({"rollout": {"analysis": {"rollbackOn": {"query": {"promql": "up", "above": 1, "below": 0}}}}}),
            "a query alarm sets exactly one of above or below",
        ),
        (
            "token cap above context",
            json!({"model": {"maxContextTokens": 1024}, "limits": {"maxTokensPerRequest": 2048}}),
            "limits.maxTokensPerRequest must not exceed model.maxContextTokens",
        ),
        (
            "burst below rate",
            json!({"limits": {"perTenant": {"requestsPerSecond": 20, "burst": 10}}}),
            "limits.perTenant.burst must be at least requestsPerSecond",
        ),
        (
            "min score above 1",
            json!({"rollout": {"analysis": {"quality": {"goldenSet": {"configMap": "g"}, "minScore": 1.5}}}}),
            "should be less than or equal to 1",
        ),
        (
            "too many gpus per pod",
            json!({"engine": {"gpus": 64}}),
            "should be less than or equal to 16",
        ),
        // Issue 13: manifests a new user got through that should be refused.
        (
            "zero drain window",
            json!({"draining": {"window": "0s"}}),
            "spec.draining.window: Invalid value: \"string\": must be between 1s and 1h",
        ),
        (
            "zero step pause",
            json!({"rollout": {"steps": [{"weight": 5, "pause": "0s"}]}}),
            "spec.rollout.steps[0].pause: Invalid value: \"string\": must be between 1s and 168h",
        ),
        (
            "zero analysis interval",
            json!({"rollout": {"analysis": {"interval": "0ms"}}}),
            "spec.rollout.analysis.interval: Invalid value: \"string\": must be between 1s and 1h",
        ),
        (
            "zero scale-in delay",
            json!({"autoscaling": {"scaleInAfter": "0s"}}),
            "spec.autoscaling.scaleInAfter: Invalid value: \"string\": must be between 1s and 24h",
        ),
        (
            "zero ttft objective",
            json!({"slo": {"ttftP99": "0s"}}),
            "spec.slo.ttftP99: Invalid value: \"string\": must be between 1ms and 10m",
        ),
        (
            "an hour of inter-token latency",
            json!({"slo": {"itlP99": "1h"}}),
            "spec.slo.itlP99: Invalid value: \"string\": must be between 1ms and 1m",
        ),
        (
            "zero query for",
            json!({"rollout": {"analysis": {"rollbackOn": {"query": {"promql": "up", "above": 1, "for": "0s"}}}}}),
            "spec.rollout.analysis.rollbackOn.query.for: Invalid value: \"string\": must be between 1s and 24h",
        ),
        (
            // Fault 0: this took the operator down.
            "drain window beyond Go's range",
            json!({"draining": {"window": "9999999999999999h"}}),
            "spec.draining.window: Invalid value",
        ),
        (
            "drain window of a year",
            json!({"draining": {"window": "8760h"}}),
            "spec.draining.window: Invalid value: \"string\": must be between 1s and 1h",
        ),
        (
            "memory in GB",
            json!({"engine": {"resources": {"memory": "16GB"}}}),
            "spec.engine.resources.memory: Invalid value: \"\": engine.resources.memory must be a positive Kubernetes quantity",
        ),
        (
            "negative cpu string",
            json!({"engine": {"resources": {"cpu": "-2"}}}),
            "engine.resources.cpu must be a positive Kubernetes quantity",
        ),
        (
            "negative cpu number",
            json!({"engine": {"resources": {"cpu": -2}}}),
            "engine.resources.cpu must be a positive Kubernetes quantity",
        ),
        (
            "zero memory",
            json!({"engine": {"resources": {"memory": "0"}}}),
            "engine.resources.memory must be a positive Kubernetes quantity",
        ),
        (
            "node selector key with a space",
            json!({"engine": {"nodeSelector": {"gpu type": "a100"}}}),
            "spec.engine.nodeSelector: Invalid value: \"object\": engine.nodeSelector keys must be label keys",
        ),
        (
            "node selector key with two slashes",
            json!({"engine": {"nodeSelector": {"a/b/c": "x"}}}),
            "engine.nodeSelector keys must be label keys",
        ),
        (
            "node selector value with a slash",
            json!({"engine": {"nodeSelector": {"gpu": "nvidia/a100"}}}),
            "spec.engine.nodeSelector: Invalid value: \"object\": engine.nodeSelector values must be label values",
        ),
        (
            "node selector value too long",
            json!({"engine": {"nodeSelector": {"gpu": "a".repeat(64)}}}),
            "spec.engine.nodeSelector.gpu: Too long",
        ),
        (
            "image with a leading space",
            json!({"engine": {"image": " steward-engine:0.1"}}),
            "spec.engine.image: Invalid value: \"string\": engine.image must be an image reference without whitespace",
        ),
        (
            "image with a trailing newline",
            json!({"engine": {"image": "steward-engine:0.1\n"}}),
            "engine.image must be an image reference without whitespace",
        ),
        (
            "golden set that is not a ConfigMap name",
            json!({"rollout": {"analysis": {"quality": {"goldenSet": {"configMap": "Chat_Golden"}}}}}),
            "spec.rollout.analysis.quality.goldenSet.configMap: Invalid value: \"string\": quality.goldenSet.configMap must be a ConfigMap name",
        ),
        (
            "gateway parent without a name",
            json!({"gateway": {"parentRefs": [{"namespace": "gw"}]}}),
            "spec.gateway.parentRefs[0].name: Required value",
        ),
        (
            "gateway parent name that is not a Gateway name",
            json!({"gateway": {"parentRefs": [{"name": "Public_GW"}]}}),
            "gateway.parentRefs[].name must be a Gateway name",
        ),
        (
            "gateway parent namespace that is not a namespace name",
            json!({"gateway": {"parentRefs": [{"name": "public", "namespace": "gateway.system"}]}}),
            "gateway.parentRefs[].namespace must be a namespace name",
        ),
        (
            "gateway listener that is not a listener name",
            json!({"gateway": {"parentRefs": [{"name": "public", "sectionName": "HTTPS"}]}}),
            "gateway.parentRefs[].sectionName must be a listener name",
        ),
        (
            "gateway parent port 0",
            json!({"gateway": {"parentRefs": [{"name": "public", "port": 0}]}}),
            "spec.gateway.parentRefs[0].port: Invalid value",
        ),
    ];
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    let mut check = |what: &str, result: Result<_, kube::Error>, expected: &str| match result {
        Ok(_) => failures.push(format!("{what}: accepted")),
        Err(kube::Error::Api(s)) if s.code == 422 => {
            if !s.message.contains(expected) {
                failures.push(format!(
                    "{what}: message {:?} lacks {expected:?}",
                    s.message
                ));
            }
        }
        Err(e) => failures.push(format!("{what}: unexpected error {e}")),
    };
    // metadata.name becomes the Service name and label values: a DNS-1035
    // label of at most 63 characters (operator/src/crd/names.rs).
    for (what, name) in [
        ("name of 64 characters", "a".repeat(64)),
        ("name starting with a digit", "1chat".to_owned()),
        ("name with a dot", "chat.small".to_owned()),
    ] {
        let obj = manifest(&env, &name, 1, json!({}));
        check(
            what,
            apply(&env, &obj).await,
            "metadata.name must be at most 63 characters",
        );
    }
    let longest = manifest(&env, &"a".repeat(63), 1, json!({}));
    apply(&env, &longest)
        .await
        .expect("a 63-character name is accepted");
    for (i, (what, patch, expected)) in cases.iter().enumerate() {
        let obj = manifest(&env, &format!("bad-{i}"), 1, patch.clone());
        check(what, apply(&env, &obj).await, expected);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // And the design sketch itself is accepted, with defaults filled in.
    let good = manifest(
        &env,
        "sketch",
        2,
        json!({
            "replicas": {"max": 16, "warm": 1},
            "rollout": {"steps": [{"weight": 5, "pause": "2m"}, {"weight": 25, "pause": "5m"}, {"weight": 50, "pause": "5m"}],
                "analysis": {"interval": "15s", "rollbackOn": {"any": [
                    {"slo": "ttftP99"}, {"alarm": "errorRate"},
                    {"all": [{"alarm": "latencySpike"}, {"alarm": "errorRise"}]},
                    {"query": {"promql": "up", "above": 0.2, "for": "1m"}}]},
                    "quality": {"goldenSet": {"configMap": "chat-golden"}, "minScore": 0.9, "perCategory": true}}},
            "limits": {"perTenant": {"requestsPerSecond": 20, "burst": 40, "maxConcurrent": 8}, "maxTokensPerRequest": 2048},
            "engine": {"gpus": 1, "maxBatchTokens": 8192, "kvCacheBlocks": 2048,
                "image": "steward-engine:0.1", "resources": {"cpu": "500m", "memory": "16Gi"},
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "tier": ""}},
            "gateway": {"parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https", "port": 443}]},
        }),
    );
    let created = apply(&env, &good).await.expect("design sketch is accepted");
    assert_eq!(created.spec.slo.availability, "99.9");
    assert_eq!(created.spec.autoscaling.target_utilization, 70);
    assert_eq!(created.spec.draining.window.to_string(), "2s");
}
