//! The committed CRD YAML must be exactly what the Rust types generate, and
//! a minimal manifest must pick up the documented defaults.

use std::path::Path;

use steward_operator::crd::{self, InferenceServiceSpec};

#[test]
fn committed_crd_yaml_and_chart_copy_match_the_rust_types() {
    let generated = crd::crd_yaml().expect("CRD serialises");
    for file in [
        "crds/inferenceservice.yaml",
        "charts/steward/crds/inferenceservice.yaml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{file} is stale; run `cargo run --release -p steward-operator --bin steward-crdgen`"
        );
    }
}

#[test]
fn minimal_manifest_gets_the_documented_defaults() {
    let spec: InferenceServiceSpec =
        serde_yaml::from_str("model: { name: chat-small, uri: 'file:///models/chat-small' }")
            .expect("minimal spec parses");
    assert_eq!(spec.model.max_context_tokens, 4096);
    assert_eq!(spec.engine.image, "steward-engine:0.1");
    assert_eq!(spec.engine.gpus, 1);
    assert_eq!(spec.replicas.min, 1);
    assert_eq!(spec.replicas.effective_max(), 1);
    assert_eq!(spec.autoscaling.target_utilization, 70);
    assert_eq!(spec.slo.ttft_p99.to_string(), "800ms");
    assert_eq!(spec.slo.availability, "99.9");
    assert_eq!(spec.draining.window.to_string(), "45s");
    assert_eq!(spec.rollout.steps.len(), 3);
    assert!(steward_operator::alarm::compile(&spec).is_ok());
    assert!(spec.limits.per_tenant.is_none());
}

#[test]
fn design_sketch_manifest_parses() {
    let spec: InferenceServiceSpec = serde_yaml::from_str(
        r#"
model: { name: chat-small, uri: "pvc://models/chat-small", maxContextTokens: 4096 }
engine: { image: steward-engine:0.1, gpus: 1, maxBatchTokens: 8192, kvCacheBlocks: 2048 }
replicas: { min: 2, max: 16, warm: 1 }
autoscaling: { targetUtilization: 70, scaleInAfter: 5m }
slo: { ttftP99: 800ms, itlP99: 80ms, availability: "99.9" }
rollout:
  steps: [ { weight: 5, pause: 2m }, { weight: 25, pause: 5m }, { weight: 50, pause: 5m } ]
  analysis:
    interval: 15s
    rollbackOn:
      any:
        - slo: ttftP99
        - slo: itlP99
        - alarm: errorRate
        - alarm: kvCacheSaturation
        - all: [ { alarm: latencySpike }, { alarm: errorRise } ]
        - query: { promql: "sum(rate(x[1m]))", above: 0.2, for: 1m }
    quality: { goldenSet: { configMap: chat-golden }, minScore: 0.9, perCategory: true }
draining: { window: 45s }
limits: { perTenant: { requestsPerSecond: 20, burst: 40, maxConcurrent: 8 }, maxTokensPerRequest: 2048 }
"#,
    )
    .expect("design sketch parses");
    assert_eq!(spec.replicas.effective_max(), 16);
    assert_eq!(spec.rollout.steps[1].pause.to_string(), "5m");
    let limits = spec.limits.per_tenant.expect("per-tenant limits");
    assert_eq!(limits.effective_burst(), 40);
}

#[test]
fn every_example_manifest_parses_into_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    // examples/ and its folders (examples/tutorial/, examples/keda/).
    let mut paths: Vec<std::path::PathBuf> = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).expect("readable folder") {
                paths.push(inner.expect("entry").path());
            }
        } else {
            paths.push(path);
        }
    }
    for path in paths {
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .expect("readable")
            .replace("${STEWARD_MODELS}", "/models");
        // Other kinds beside an example (examples/keda/'s ScaledObject) are
        // checked against their own CRDs by the cluster test that uses them.
        let kind: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        if kind["kind"].as_str() != Some("InferenceService") {
            continue;
        }
        let obj: steward_operator::crd::InferenceService =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(obj.spec.replicas.min <= obj.spec.replicas.effective_max());
        seen += 1;
    }
    assert!(seen >= 3, "the sample and the tutorial's two manifests");
}
