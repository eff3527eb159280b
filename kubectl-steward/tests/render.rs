//! `kubectl steward status` drawing, pinned on a fixture: the object and
//! pods in tests/fixtures/chat.yaml drawn at a fixed time must equal
//! tests/golden/status.txt. `UPDATE_GOLDEN=1` rewrites the golden file
//! (review the diff).

use std::path::Path;

use chrono::{TimeZone, Utc};
use kubectl_steward::render::{render, PodLine, Pods, RolloutMemory};
use serde::Deserialize;
use steward_operator::crd::InferenceService;

#[derive(Deserialize)]
struct PodFixture {
    name: String,
    revision: String,
    role: Option<String>,
    ready: bool,
    terminating: bool,
}

fn fixture() -> (InferenceService, RolloutMemory, Vec<PodLine>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = std::fs::read_to_string(dir.join("chat.yaml")).unwrap();
    let mut docs = serde_yaml::Deserializer::from_str(&text);
    let raw = serde_json::Value::deserialize(docs.next().unwrap()).unwrap();
    let pods = Vec::<PodFixture>::deserialize(docs.next().unwrap()).unwrap();
    let memory = RolloutMemory::from_object(&raw);
    let svc: InferenceService = serde_json::from_value(raw).unwrap();
    let pods = pods
        .into_iter()
        .map(|p| PodLine {
            name: p.name,
            revision: p.revision,
            role: p.role,
            ready: p.ready,
            terminating: p.terminating,
        })
        .collect();
    (svc, memory, pods)
}

#[test]
fn status_tree_matches_the_golden_text() {
    let (svc, memory, pods) = fixture();
    // 3m30s into the 5m pause of step 2.
    let now = Utc.with_ymd_and_hms(2026, 11, 27, 22, 3, 30).unwrap();
    let text = render(&svc, &memory, &Pods::Listed(pods), now);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/status.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(text, want, "drawn:\n{text}");
}

#[test]
fn paused_rollouts_and_missing_pods_are_said_plainly() {
    let (mut svc, memory, _) = fixture();
    svc.spec.rollout.paused = true;
    let now = Utc.with_ymd_and_hms(2026, 11, 27, 22, 3, 30).unwrap();
    let text = render(
        &svc,
        &memory,
        &Pods::Unavailable("no permission to list pods".into()),
        now,
    );
    assert!(
        text.contains("Step:         2/3  weight 25%  PAUSED\n"),
        "{text}"
    );
    assert!(
        text.contains("(pods not shown: no permission to list pods)"),
        "{text}"
    );
    assert!(
        !text.contains("pause left"),
        "a paused step has no countdown: {text}"
    );
}

#[test]
fn an_object_without_status_draws_without_panicking() {
    let svc: InferenceService = serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.steward.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "new", "namespace": "default"},
        "spec": {"model": {"name": "m", "uri": "file:///m"}}
    }))
    .unwrap();
    let text = render(
        &svc,
        &RolloutMemory::default(),
        &Pods::Listed(vec![]),
        Utc::now(),
    );
    assert!(
        text.contains("Phase:") && text.contains("Pending"),
        "{text}"
    );
    assert!(text.contains("(none yet)"), "{text}");
}
