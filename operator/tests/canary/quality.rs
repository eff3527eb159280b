//! Phase 8 (issue 11 scenario 4): a canary whose answers are wrong while
//! its latency and errors are fine (`--fault-corrupt-token-rate 0.5`:
//! sampled tokens replaced by random ones, nothing slower, no error) is
//! rolled back by the quality gate, under streaming load through the
//! router, and status names the failing category.
//!
//! The golden set is captured through the router from the stable
//! revision's own greedy answers (a random-weight model has no "right"
//! answers otherwise), the way a team seeds one from its stable revision:
//! a `facts` category scored `exact`, and a `smoke` category whose regex
//! any answer matches, so the message must name `facts` and only `facts`.
//! The gate runs before step 1, so the canary never carries user traffic:
//! no user sees a wrong answer.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use steward_e2e::testing::eventually;
use steward_operator::crd::{Phase, QualityState};
use steward_operator::reason::Reason;

use super::{canary_weight, load, no_loss, revision_with, status_of, watch_steps, System, NAME};
use crate::support::{apply, wait_for, TestEnv};

/// The golden set's ConfigMap.
pub const GOLDEN: &str = "canary-golden";
/// How long the phase's load runs; the rollback and the drain fit in it.
const LOAD_SECS: u64 = 18;

/// Prompts of the `facts` category (references: the stable's answers).
const FACTS: &[&str] = &[
    "The capital of France is",
    "Water boils at",
    "Once upon a time",
    "The weather today is",
];

/// The stable revision's greedy answer to `prompt`, through the router
/// (while only the stable revision has weight).
async fn stable_answer(http: &reqwest::Client, sys: &System, prompt: &str) -> String {
    let body = json!({ "model": format!("{NAME}-model"), "prompt": prompt, "max_tokens": 8, "temperature": 0 });
    let v: Value = http
        .post(format!("{}/v1/completions", sys.router_url))
        .json(&body)
        .send()
        .await
        .expect("the router answers a completion")
        .json()
        .await
        .expect("a completion body");
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {v}"))
        .to_owned()
}

/// Writes the golden set ConfigMap from the current stable revision's
/// answers (server-side apply: a rerun replaces it).
pub async fn put_golden_set(sys: &System) {
    let http = reqwest::Client::new();
    let mut entries = Vec::new();
    for (i, prompt) in FACTS.iter().enumerate() {
        let reference = stable_answer(&http, sys, prompt).await;
        entries.push(
            json!({ "id": format!("fact-{i}"), "category": "facts", "prompt": prompt,
            "scorer": "exact", "reference": reference, "maxTokens": 8 }),
        );
    }
    // Any answer passes: a category that must not be named.
    for (i, prompt) in ["Hello, world", "In the beginning"].iter().enumerate() {
        entries.push(
            json!({ "id": format!("smoke-{i}"), "category": "smoke", "prompt": prompt,
            "scorer": "regex", "reference": "(?s).*", "maxTokens": 8 }),
        );
    }
    let golden = serde_yaml::to_string(&entries).expect("yaml");
    let cm = json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": GOLDEN, "namespace": sys.env.ns },
        "data": { "golden.yaml": golden } });
    Api::<ConfigMap>::namespaced(sys.env.client.clone(), &sys.env.ns)
        .patch(
            GOLDEN,
            &PatchParams::apply("test-user").force(),
            &Patch::Apply(&cm),
        )
        .await
        .expect("the golden set ConfigMap applies");
}

/// A revision that answers wrong (one sampled token in two replaced) and
/// is as fast and error-free as the stable one; analysis watches TTFT and
/// errors too, and the quality gate runs the golden set per category.
pub fn wrong_answers(env: &TestEnv, blocks: i32) -> Value {
    revision_with(
        env,
        blocks,
        &[
            "--enable-fault-injection",
            "--fault-corrupt-token-rate",
            "0.5",
        ],
        json!({ "rollout": { "analysis": {
            "interval": "2s",
            "rollbackOn": { "any": [ { "slo": "ttftP99" }, { "alarm": "errorRate" } ] },
            "quality": { "goldenSet": { "configMap": GOLDEN }, "minScore": 0.9, "perCategory": true },
        } } }),
    )
}

/// Phase 8: wrong answers are rolled back by the quality gate, naming the
/// category; `stable` keeps the traffic.
pub async fn wrong_answers_are_rolled_back_by_the_quality_gate(sys: &System, stable: &str) {
    let env = &sys.env;
    put_golden_set(sys).await;
    let t = Instant::now();
    let (lg, report) = load(sys, "quality", LOAD_SECS);
    apply(env, &wrong_answers(env, 152))
        .await
        .expect("the wrong-answer revision applies");
    let (o, seen) = watch_steps(
        sys,
        Duration::from_secs(LOAD_SECS),
        "the wrong-answer canary rolled back",
        |o| {
            status_of(o)
                .rollout
                .rolled_back_revision
                .is_some_and(|r| r != stable)
        },
    )
    .await;
    let s = status_of(&o);
    let bad = s.rollout.rolled_back_revision.clone().unwrap_or_default();
    let msg = s.rollout.rollback_message.clone().unwrap_or_default();
    eprintln!(
        "[canary] wrong-answer canary {bad}: rolled back {:.1}s after apply (steps seen {seen:?}): {msg}",
        t.elapsed().as_secs_f64()
    );
    assert!(
        seen.iter().all(|(_, w, _)| *w == 0),
        "the gate decides before step 1: no user traffic on wrong answers: {seen:?}"
    );
    assert_eq!(canary_weight(&o), 0);
    assert_eq!(s.stable_revision.as_deref(), Some(stable));
    assert_eq!(
        s.rollout.rollback_reason.as_deref(),
        Some(Reason::QualityGateFailed.as_str())
    );
    let cond = s
        .conditions
        .iter()
        .find(|c| c.type_ == "RolledBack")
        .expect("a RolledBack condition");
    assert_eq!(cond.reason, Reason::QualityGateFailed.as_str());
    for part in ["category `facts`", bad.as_str(), stable] {
        assert!(cond.message.contains(part), "{part} in {:?}", cond.message);
    }
    assert!(
        !cond.message.contains("smoke"),
        "only the failing category is named: {:?}",
        cond.message
    );
    let q = s.quality.clone().expect("status.quality");
    assert_eq!(
        (q.canary_revision.as_str(), q.state),
        (bad.as_str(), QualityState::Fail)
    );
    let state = |name: &str| {
        q.categories
            .iter()
            .find(|c| c.name == name)
            .map(|c| (c.state, c.canary, c.stable))
    };
    assert!(
        matches!(state("facts"), Some((QualityState::Fail, c, st)) if c < st),
        "facts fails, the canary below the stable: {:?}",
        q.categories
    );
    assert!(
        matches!(state("smoke"), Some((QualityState::Pass, _, _))),
        "smoke passes: {:?}",
        q.categories
    );
    // The metric is counted after the pass's status write: it may lag the
    // status read above by a moment.
    let metrics = &sys.operator.metrics;
    let counted = eventually(Duration::from_secs(10), || async {
        (metrics.rollbacks(Reason::QualityGateFailed) > 0).then_some(())
    })
    .await;
    assert!(
        counted.is_ok() && metrics.rollbacks(Reason::QualityGateFailed) == 1,
        "steward_operator_rollbacks_total{{reason=\"QualityGateFailed\"}} is 1, not {}",
        metrics.rollbacks(Reason::QualityGateFailed)
    );
    wait_for(
        env,
        NAME,
        Duration::from_secs(30),
        "the wrong-answer canary at zero",
        |o| {
            let s = status_of(o);
            s.phase == Phase::RolledBack && s.revisions.iter().all(|r| r.name != bad || r.pods == 0)
        },
    )
    .await;
    let settled = t.elapsed();
    no_loss(lg, &report, "quality").await;
    assert!(
        settled < Duration::from_secs(LOAD_SECS),
        "the load covered the rollback and the drain ({settled:?})"
    );
}
