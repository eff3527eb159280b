//! The rollout gate against the real control plane and the local node
//! (stand-in engines, see `support`): manual control through the same
//! merge patches `kubectl patch` / `kubectl annotate` send, and the quality
//! gate's undecided verdict holding a ready canary.
//!
//! One service walks: first revision (not gated) → a spec change whose
//! golden set's ConfigMap is missing (held, `GoldenSetNotFound`, the stable
//! revision keeps 100%) → pause (held, `RolloutPaused`) → abort (rolled
//! back: canary to zero, `RolledBack` condition, annotation consumed, the
//! metric) → retry and resume (the canary comes back, held again) →
//! promote (takes the traffic, skipping the undecided gate) → a stale
//! abort (ignored with an event, consumed). The golden set's scoring
//! against real engines is `tests/quality.rs`; the stand-in cannot answer
//! completions, so this file pins the wiring, not the scores.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use steward_operator::crd::{InferenceService, Phase};
use steward_operator::reason::Reason;
use support::{apply, env, manifest, ready_and_current, wait_for, Operator, TestEnv};

const LIMIT: Duration = Duration::from_secs(90);

fn condition(o: &InferenceService, type_: &str) -> Option<(String, String, String)> {
    o.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    })
}

fn progressing_reason(o: &InferenceService) -> String {
    condition(o, "Progressing").map(|c| c.1).unwrap_or_default()
}

fn traffic(o: &InferenceService) -> Vec<(String, i32)> {
    o.status
        .as_ref()
        .map(|s| {
            s.traffic
                .iter()
                .map(|t| (t.revision.clone(), t.weight))
                .collect()
        })
        .unwrap_or_default()
}

fn canary(o: &InferenceService) -> Option<String> {
    o.status.as_ref().and_then(|s| s.canary_revision.clone())
}

async fn deployment_replicas(env: &TestEnv, name: &str, rev: &str) -> Option<i32> {
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    api.get_opt(&format!("{name}-{rev}"))
        .await
        .ok()
        .flatten()
        .and_then(|d| d.spec.and_then(|s| s.replicas))
}

async fn patch(env: &TestEnv, name: &str, body: Value) {
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .expect("merge patch");
}

async fn annotate(env: &TestEnv, name: &str, key: &str, value: &str) {
    patch(
        env,
        name,
        json!({"metadata": {"annotations": {key: value}}}),
    )
    .await;
}

async fn events(env: &TestEnv, reason: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_control_and_an_undecided_quality_gate_steer_the_rollout() {
    let t0 = Instant::now();
    let env = env("gate").await;
    let op = Operator::start(&env);
    let name = "chat";
    let quality = json!({"rollout": {"analysis": {"quality": {
        "goldenSet": {"configMap": "chat-golden"}, "minScore": 0.9
    }}}});
    apply(&env, &manifest(&env, name, 1, quality.clone()))
        .await
        .expect("apply");
    let first = wait_for(&env, name, LIMIT, "first revision ready", ready_and_current).await;
    let r1 = first
        .status
        .as_ref()
        .and_then(|s| s.stable_revision.clone())
        .expect("stable revision");
    eprintln!("first revision {r1} ready after {:?}", t0.elapsed());

    // A spec change: the canary comes up, the gate cannot run (no golden
    // set) and holds it; r1 keeps all traffic.
    let mut spec2 = quality.clone();
    support::merge(&mut spec2, json!({"engine": {"maxBatchTokens": 4096}}));
    apply(&env, &manifest(&env, name, 1, spec2))
        .await
        .expect("apply r2");
    let held = wait_for(&env, name, LIMIT, "held at the gate", |o| {
        progressing_reason(o) == "GoldenSetNotFound"
    })
    .await;
    let r2 = canary(&held).expect("canary named while held");
    assert_ne!(r2, r1);
    assert_eq!(traffic(&held), [(r1.clone(), 100)]);
    let (_, _, msg) = condition(&held, "Progressing").expect("Progressing");
    assert!(msg.contains("chat-golden"), "{msg}");
    let q = held
        .status
        .as_ref()
        .and_then(|s| s.quality.clone())
        .expect("status.quality");
    assert_eq!(q.canary_revision, r2);
    assert_eq!(q.state, steward_operator::crd::QualityState::Unknown);
    assert_eq!(deployment_replicas(&env, name, &r2).await, Some(1));
    eprintln!("held on the golden set after {:?}", t0.elapsed());

    // Pause (kubectl patch ... spec.rollout.paused=true).
    patch(&env, name, json!({"spec": {"rollout": {"paused": true}}})).await;
    wait_for(&env, name, LIMIT, "paused", |o| {
        progressing_reason(o) == "RolloutPaused"
    })
    .await;

    // Abort (kubectl annotate ... serving.steward.dev/abort=<canary>).
    annotate(&env, name, "serving.steward.dev/abort", &r2).await;
    let rolled = wait_for(&env, name, LIMIT, "rolled back", |o| {
        condition(o, "RolledBack").is_some_and(|c| c.0 == "True" && c.1 == "Aborted")
            && !o.annotations().contains_key("serving.steward.dev/abort")
    })
    .await;
    assert_eq!(traffic(&rolled), [(r1.clone(), 100)]);
    assert_eq!(canary(&rolled), None);
    assert_eq!(
        rolled
            .status
            .as_ref()
            .and_then(|s| s.rollout.rolled_back_revision.clone()),
        Some(r2.clone())
    );
    assert_eq!(deployment_replicas(&env, name, &r2).await, Some(0));
    let done = wait_for(&env, name, LIMIT, "rolled back and drained", |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.phase == Phase::RolledBack)
    })
    .await;
    assert_eq!(traffic(&done), [(r1.clone(), 100)]);
    assert_eq!(op.metrics.rollbacks(Reason::Aborted), 1);
    let notes = events(&env, "Aborted").await;
    assert!(
        notes.iter().any(|n| n.contains(&r2) && n.contains(&r1)),
        "{notes:?}"
    );
    eprintln!("aborted and drained after {:?}", t0.elapsed());

    // Still rolled back a while later: not tried again by itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let later = api.get(name).await.expect("get");
    assert_eq!(canary(&later), None);
    assert_eq!(deployment_replicas(&env, name, &r2).await, Some(0));

    // Retry and resume: the canary comes back and is held by the gate.
    annotate(&env, name, "serving.steward.dev/retry", &r2).await;
    patch(&env, name, json!({"spec": {"rollout": {"paused": false}}})).await;
    let again = wait_for(&env, name, LIMIT, "retried", |o| {
        canary(o).as_deref() == Some(r2.as_str())
            && condition(o, "RolledBack").is_none()
            && progressing_reason(o) == "GoldenSetNotFound"
            && !o.annotations().contains_key("serving.steward.dev/retry")
    })
    .await;
    assert_eq!(traffic(&again), [(r1.clone(), 100)]);
    assert!(!events(&env, "Retried").await.is_empty());

    // Promote (kubectl annotate ... serving.steward.dev/promote=<canary>):
    // takes the traffic although the gate is undecided.
    annotate(&env, name, "serving.steward.dev/promote", &r2).await;
    let promoted = wait_for(&env, name, LIMIT, "promoted", |o| {
        traffic(o) == [(r2.clone(), 100)]
            && !o.annotations().contains_key("serving.steward.dev/promote")
    })
    .await;
    assert_eq!(
        promoted
            .status
            .as_ref()
            .and_then(|s| s.stable_revision.clone()),
        Some(r2.clone())
    );
    wait_for(&env, name, LIMIT, "ready on r2", ready_and_current).await;
    eprintln!("promoted after {:?}", t0.elapsed());

    // A stale abort (r2 is stable now) is ignored, said so, and consumed.
    annotate(&env, name, "serving.steward.dev/abort", &r2).await;
    wait_for(&env, name, LIMIT, "stale request consumed", |o| {
        !o.annotations().contains_key("serving.steward.dev/abort")
    })
    .await;
    let ignored = events(&env, "ManualRequestIgnored").await;
    assert!(
        ignored.iter().any(|n| n.contains("is not the canary")),
        "{ignored:?}"
    );
    assert_eq!(traffic(&api.get(name).await.expect("get")), [(r2, 100)]);
    assert_eq!(op.metrics.rollbacks(Reason::Aborted), 1);
    op.stop().await;
    eprintln!("scenario took {:?}", t0.elapsed());
}
