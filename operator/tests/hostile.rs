//! The operator survives any object the API server accepts (issue 13,
//! fault 0): objects it cannot act on get a `Degraded`/`InvalidSpec`
//! condition naming the field, while the others keep being reconciled.
//!
//! How objects the schema refuses get into the cluster: the way they do in
//! production, through a CRD upgrade. The test installs a permissive
//! version of the CRD (spec and status free-form), stores the hostile
//! objects, then installs the real CRD again; stored objects are not
//! re-validated, so the operator meets them. Its own test binary (its own
//! cluster), because it swaps the CRD that other tests rely on.
//!
//! The same run covers a hostile claim (issue 13, fault 1): its operator
//! watches every namespace (the only operator of this binary's cluster),
//! and a newer InferenceService in a namespace that sorts first claims a
//! model name another namespace holds. It gets `ModelNameConflict` naming
//! the owner, is not Ready and gets a Warning event; the owner is left
//! alone; when the owner goes, the claim takes the name over.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{json, Value};
use steward_e2e::testing::eventually;
use steward_operator::claims::CONDITION as CONFLICT;
use steward_operator::crd::{InferenceService, Phase, UncheckedInferenceService};
use support::{apply, env, manifest, ready_and_current, wait_for, Operator, TestEnv};

const CRD_NAME: &str = "inferenceservices.serving.steward.dev";
/// Longer than the 63 characters the schema allows.
const LONG_NAME: &str = "a-name-that-is-much-longer-than-sixty-three-characters-allow-it-to-be";

async fn install_crd(env: &TestEnv, crd: &CustomResourceDefinition) {
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.patch(
        CRD_NAME,
        &PatchParams::apply("steward-tests").force(),
        &Patch::Apply(crd),
    )
    .await
    .expect("CRD applies");
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(crds, CRD_NAME, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established in time")
    .expect("CRD watch");
    // The API server swaps the schema asynchronously after Established.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// The real CRD with every schema rule removed.
fn permissive(real: &CustomResourceDefinition) -> CustomResourceDefinition {
    let mut v = serde_json::to_value(real).expect("CRD as JSON");
    let free = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = json!({
        "type": "object",
        "properties": {"spec": free, "status": free},
    });
    // An older CRD had no scale subresource either (with it, the API server
    // itself refuses a `replicas.min` that is not an int32).
    if let Some(sub) = v["spec"]["versions"][0]["subresources"].as_object_mut() {
        sub.remove("scale");
    }
    serde_json::from_value(v).expect("permissive CRD")
}

/// (name, spec, the field the condition must name)
fn hostile(env: &TestEnv) -> Vec<(String, Value, &'static str)> {
    let good = manifest(env, "x", 1, json!({}))["spec"].clone();
    let with = |patch: Value| {
        let mut s = good.clone();
        support::merge(&mut s, patch);
        s
    };
    vec![
        // The manifest that took the operator down (fault 0).
        (
            "huge-window".into(),
            with(json!({"draining": {"window": "9999999999999999h"}})),
            "spec.draining.window",
        ),
        (
            "zero-window".into(),
            with(json!({"draining": {"window": "0s"}})),
            "spec.draining.window",
        ),
        (
            "huge-pause".into(),
            with(
                json!({"rollout": {"steps": [{"weight": 5, "pause": "99999999999999999999999h"}]}}),
            ),
            "spec.rollout.steps[0].pause",
        ),
        (
            "nan-pause".into(),
            with(json!({"rollout": {"steps": [{"weight": 5, "pause": "NaNs"}]}})),
            "spec.rollout.steps[0].pause",
        ),
        (
            "model-is-a-string".into(),
            with(json!({"model": "hello"})),
            "spec.model",
        ),
        ("spec-is-empty".into(), json!({}), "spec"),
        (
            "min-is-a-word".into(),
            with(json!({"replicas": {"min": "three"}})),
            "spec.replicas.min",
        ),
        (
            "min-overflows".into(),
            with(json!({"replicas": {"min": 1u64 << 40}})),
            "spec.replicas.min",
        ),
        (
            "memory-in-gb".into(),
            with(json!({"engine": {"resources": {"memory": "16GB"}}})),
            "spec.engine.resources.memory",
        ),
        (
            "bad-selector".into(),
            with(json!({"engine": {"nodeSelector": {"gpu type": "a100"}}})),
            "spec.engine.nodeSelector",
        ),
        (
            "spaced-image".into(),
            with(json!({"engine": {"image": " steward-engine:0.1"}})),
            "spec.engine.image",
        ),
        (
            "bad-uri".into(),
            with(json!({"model": {"uri": "s3://bucket/m"}})),
            "spec.model.uri",
        ),
        (
            "huge-args".into(),
            with(json!({"engine": {"extraArgs": ["x".repeat(200_000)]}})),
            "spec.engine.extraArgs",
        ),
    ]
}

#[tokio::test]
async fn hostile_objects_get_a_condition_and_the_operator_keeps_reconciling_others() {
    let t0 = Instant::now();
    let env = env("hostile").await;
    let real = steward_operator::crd::crd();
    install_crd(&env, &permissive(&real)).await;
    let raw: Api<UncheckedInferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let cases = hostile(&env);
    let long = (
        LONG_NAME.to_owned(),
        manifest(&env, "x", 1, json!({}))["spec"].clone(),
    );
    for (name, spec) in cases
        .iter()
        .map(|(n, s, _)| (n, s))
        .chain([(&long.0, &long.1)])
    {
        let obj: UncheckedInferenceService = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": env.ns},
            "spec": spec,
        }))
        .expect("object");
        raw.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{name}: the permissive CRD stores it: {e}"));
    }
    // A status nobody should have written.
    raw.patch_status(
        "zero-window",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Bogus", "traffic": "all of it"}})),
    )
    .await
    .expect("garbage status stored");
    install_crd(&env, &real).await;
    eprintln!(
        "hostile objects stored in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // Every namespace: the model-name phase below spans two more.
    let op = Operator::start_with(&env, |cfg| cfg.namespace = None);
    apply(&env, &manifest(&env, "good", 1, json!({})))
        .await
        .expect("a good object applies");

    // Every hostile object: phase Failed, a Degraded condition naming the
    // field. Meanwhile the good one becomes Ready.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut pending: Vec<&(String, Value, &str)> = cases.iter().collect();
    let mut last = String::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for case in pending {
            let (name, _, field) = case;
            let o = raw.get_opt(name).await.ok().flatten();
            let cond = o
                .as_ref()
                .and_then(|o| o.status.as_ref())
                .and_then(|s| s["conditions"].as_array().cloned())
                .unwrap_or_default()
                .into_iter()
                .find(|c| c["type"] == "Degraded");
            let ok = o
                .as_ref()
                .and_then(|o| o.status.as_ref())
                .is_some_and(|s| s["phase"] == "Failed")
                && cond.as_ref().is_some_and(|c| {
                    c["status"] == "True"
                        && c["reason"] == "InvalidSpec"
                        && c["message"].as_str().is_some_and(|m| m.contains(field))
                });
            if !ok {
                last = format!("{name}: {:?}", o.and_then(|o| o.status));
                still.push(case);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        pending.is_empty(),
        "{} hostile objects lack their condition; e.g. {last}",
        pending.len()
    );
    eprintln!(
        "all {} hostile objects marked in {:.1}s",
        cases.len(),
        t0.elapsed().as_secs_f64()
    );

    // A name the current schema refuses: the API server refuses every
    // update of that object, status included, so a Warning event is what
    // names the field.
    let named = event_within(&env, Duration::from_secs(30), |e| {
        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(LONG_NAME)
            && e.reason.as_deref() == Some("InvalidSpec")
            && e.note
                .as_deref()
                .is_some_and(|n| n.contains("metadata.name"))
    })
    .await;
    assert!(named, "no InvalidSpec event names metadata.name");

    wait_for(
        &env,
        "good",
        Duration::from_secs(90),
        "Ready beside hostile objects",
        ready_and_current,
    )
    .await;

    // Still alive and still reconciling: a second good object after all of
    // that, and a hostile object fixed by its owner recovers.
    apply(&env, &manifest(&env, "good-later", 1, json!({})))
        .await
        .expect("applies");
    wait_for(
        &env,
        "good-later",
        Duration::from_secs(90),
        "Ready",
        ready_and_current,
    )
    .await;
    apply(
        &env,
        &manifest(
            &env,
            "huge-window",
            1,
            json!({"draining": {"window": "3s"}}),
        ),
    )
    .await
    .expect("the fix applies");
    wait_for(
        &env,
        "huge-window",
        Duration::from_secs(90),
        "Ready once fixed",
        ready_and_current,
    )
    .await;
    assert!(op.is_running(), "the operator stopped");
    let exposition = op.metrics.encode().expect("metrics encode");
    assert!(
        !exposition.contains("reason=\"Panicked\""),
        "a reconcile panicked:\n{exposition}"
    );
    // No child was made for an object that could not be acted on.
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(env.client.clone(), &env.ns);
    let names: Vec<String> = deps
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    for (name, _, _) in &cases {
        if name != "huge-window" {
            assert!(
                !names.iter().any(|d| d.starts_with(&format!("{name}-"))),
                "{name} got a Deployment: {names:?}"
            );
        }
    }
    model_name_takeover_is_refused_and_reported(&env).await;
    assert!(op.is_running(), "the operator stopped");
    op.stop().await;
    eprintln!("hostile test done in {:.1}s", t0.elapsed().as_secs_f64());
}

/// True once an event of the test's namespace matches `pred` within `limit`.
async fn event_within(
    env: &TestEnv,
    limit: Duration,
    pred: impl Fn(&k8s_openapi::api::events::v1::Event) -> bool,
) -> bool {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.ns);
    let pred = &pred;
    eventually(limit, || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.iter().any(pred).then_some(())
        }
    })
    .await
    .is_ok()
}

/// The test's view of another namespace.
async fn other_namespace(env: &TestEnv, prefix: &str) -> TestEnv {
    let ns = steward_e2e::testing::unique_ns(prefix);
    steward_e2e::create_namespace(&env.client, &ns)
        .await
        .expect("namespace");
    TestEnv {
        client: env.client.clone(),
        ns,
        kubeconfig: env.kubeconfig.clone(),
        model_uri: env.model_uri.clone(),
    }
}

fn condition(o: &InferenceService, type_: &str) -> Option<Condition> {
    o.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// An older claim in `team-a-*` keeps its model name against a newer one
/// in `aaa-*` (whose namespace sorts first: the rule is age, not order).
async fn model_name_takeover_is_refused_and_reported(env: &TestEnv) {
    let t0 = Instant::now();
    let owner_env = other_namespace(env, "team-a").await;
    let rival_env = other_namespace(env, "aaa").await;
    let shared = json!({"model": {"name": "shared-chat"}});
    apply(&owner_env, &manifest(&owner_env, "chat", 1, shared.clone()))
        .await
        .expect("the owner applies");
    wait_for(
        &owner_env,
        "chat",
        Duration::from_secs(90),
        "the owner Ready",
        ready_and_current,
    )
    .await;
    apply(&rival_env, &manifest(&rival_env, "grab", 1, shared))
        .await
        .expect("the newer claim applies (the API server cannot know)");
    let owner_ref = format!("{}/chat", owner_env.ns);
    let o = wait_for(
        &rival_env,
        "grab",
        Duration::from_secs(60),
        "the newer claim gets ModelNameConflict",
        |o| {
            condition(o, CONFLICT).is_some_and(|c| c.status == "True")
                && o.status
                    .as_ref()
                    .is_some_and(|s| s.observed_generation == o.metadata.generation)
        },
    )
    .await;
    let c = condition(&o, CONFLICT).expect("condition");
    assert_eq!(c.reason, "ModelNameTaken");
    assert!(
        c.message.contains(&owner_ref) && c.message.contains("shared-chat"),
        "the message names the owner and the model: {}",
        c.message
    );
    let ready = condition(&o, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ModelNameTaken"),
        "a claim the router sends nothing to is not Ready"
    );
    assert_ne!(o.status.as_ref().map(|s| s.phase), Some(Phase::Ready));
    let warned = event_within(&rival_env, Duration::from_secs(20), |e| {
        e.type_.as_deref() == Some("Warning")
            && e.reason.as_deref() == Some("ModelNameTaken")
            && e.note.as_deref().is_some_and(|n| n.contains(&owner_ref))
    })
    .await;
    assert!(warned, "a Warning event names {owner_ref}");
    // The owner is left alone.
    let owner: Api<InferenceService> = Api::namespaced(env.client.clone(), &owner_env.ns);
    let held = owner.get("chat").await.expect("the owner");
    assert!(ready_and_current(&held), "the owner stays Ready");
    assert!(
        condition(&held, CONFLICT).is_none(),
        "the owner never carries the condition"
    );
    eprintln!(
        "model-name conflict reported {:.1}s after the owner was Ready",
        t0.elapsed().as_secs_f64()
    );

    // The owner goes: the remaining claim owns the name and becomes Ready.
    owner
        .delete("chat", &Default::default())
        .await
        .expect("the owner deletes");
    let t1 = Instant::now();
    let o = wait_for(
        &rival_env,
        "grab",
        Duration::from_secs(60),
        "the remaining claim owns the name",
        |o| {
            ready_and_current(o)
                && condition(o, CONFLICT)
                    .is_some_and(|c| c.status == "False" && c.reason == "ModelNameOwned")
        },
    )
    .await;
    assert_eq!(
        condition(&o, "Ready").map(|c| c.status),
        Some("True".into())
    );
    eprintln!(
        "the name passed to the remaining claim {:.1}s after the owner's deletion",
        t1.elapsed().as_secs_f64()
    );
}
