//! The reconcile loop against a real control plane and the local node:
//! revisions become Deployments with ready pods, status and printer columns
//! follow, spec changes roll out and drain, deletion cascades, hand-deleted
//! children come back, unservable specs show as Degraded with the pods'
//! reasons, and a converged object costs no writes.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use steward_e2e::testing::eventually;
use steward_operator::crd::{labels, InferenceService, Phase};
use support::{
    apply, env, manifest, ready_and_current, run_cmd, tool, wait_for, Operator, TestEnv,
};

const LIMIT: Duration = Duration::from_secs(120);

async fn deployments(env: &TestEnv, name: &str) -> Vec<Deployment> {
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    api.list(&ListParams::default().labels(&format!("{}={name}", labels::SERVICE)))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn pods_of(env: &TestEnv, name: &str, rev: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    api.list(&ListParams::default().labels(&format!(
        "{}={name},{}={rev}",
        labels::SERVICE,
        labels::REVISION
    )))
    .await
    .map(|l| l.items)
    .unwrap_or_default()
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1)
}

fn stable(o: &InferenceService) -> String {
    o.status
        .as_ref()
        .and_then(|s| s.stable_revision.clone())
        .unwrap_or_default()
}

fn degraded_reason(o: &InferenceService) -> Option<String> {
    o.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
            .map(|c| c.reason.clone())
    })
}

/// Lets the operator run reconcile passes over the object (touching an
/// annotation triggers one) and returns the writes it made meanwhile.
async fn writes_during_passes(env: &TestEnv, op: &Operator, name: &str) -> u64 {
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let before_writes = op.metrics.writes();
    let before = op.metrics.reconciles();
    let patch =
        json!({"metadata": {"annotations": {"test/touch": format!("{:?}", Instant::now())}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("touch");
    eventually(Duration::from_secs(30), || async {
        (op.metrics.reconciles() > before).then_some(())
    })
    .await
    .expect("a reconcile pass ran");
    // Give any write the pass decided on time to be counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    op.metrics.writes() - before_writes
}

#[tokio::test]
async fn apply_creates_a_ready_revision_with_service_status_printer_columns_and_events() {
    let env = env("op-apply").await;
    let op = Operator::start(&env);
    apply(&env, &manifest(&env, "chat", 2, json!({})))
        .await
        .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "Ready", ready_and_current).await;
    let st = o.status.clone().expect("status");
    let rev = stable(&o);
    assert_eq!(rev.len(), 10);
    assert_eq!(st.traffic.len(), 1);
    assert_eq!(
        (st.traffic[0].revision.as_str(), st.traffic[0].weight),
        (rev.as_str(), 100)
    );
    assert_eq!(st.replicas.ready, 2);
    assert_eq!(st.replicas.serving, 2);
    assert_eq!(st.replicas.desired, 2);
    assert!(st
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));

    let deps = deployments(&env, "chat").await;
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].name_any(), format!("chat-{rev}"));
    assert_eq!(deps[0].owner_references()[0].kind, "InferenceService");
    let pods = pods_of(&env, "chat", &rev).await;
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(p.labels()[labels::ROLE], "serving");
        assert!(p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .is_some_and(|ip| ip.starts_with("127.")));
    }
    let svc: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    let svc = svc.get("chat").await.expect("service exists");
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector[labels::ROLE], "serving");

    // Printer columns as the API server renders them.
    let (ok, out) = run_cmd(
        std::process::Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&env.kubeconfig)
            .args(["get", "llmsvc", "chat", "-n", &env.ns]),
    );
    assert!(ok, "{out}");
    let header = out.lines().next().unwrap_or_default();
    for col in [
        "READY",
        "SERVING/WARM",
        "STABLE",
        "CANARY",
        "WEIGHT",
        "PHASE",
        "TTFT-P99",
        "AGE",
    ] {
        assert!(header.contains(col), "column {col} missing: {out}");
    }
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("2/2") && row.contains(&rev) && row.contains("Ready"),
        "{out}"
    );

    // Events for the decisions, visible to `kubectl describe`.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let reasons: Vec<String> = eventually(Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let r: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("chat"))
            .filter_map(|e| e.reason.clone())
            .collect();
        r.iter().any(|x| x == "Ready").then_some(r)
    })
    .await
    .expect("events");
    for want in ["RevisionCreated", "RevisionPromoted", "Ready"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} event in {reasons:?}"
        );
    }

    // Idempotence: further passes over the converged object write nothing.
    let writes = writes_during_passes(&env, &op, "chat").await;
    assert_eq!(writes, 0, "a converged reconcile made {writes} writes");
    op.stop().await;
}

#[tokio::test]
async fn spec_change_rolls_out_a_new_revision_then_drains_the_old_one() {
    let env = env("op-rollout").await;
    let op = Operator::start(&env);
    apply(&env, &manifest(&env, "chat", 2, json!({})))
        .await
        .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "Ready", ready_and_current).await;
    let rev1 = stable(&o);

    // SLO numbers do not shape pods: same revision, nothing restarted.
    apply(
        &env,
        &manifest(&env, "chat", 2, json!({"slo": {"ttftP99": "300ms"}})),
    )
    .await
    .expect("apply slo");
    let o = wait_for(
        &env,
        "chat",
        LIMIT,
        "Ready after SLO change",
        ready_and_current,
    )
    .await;
    assert_eq!(stable(&o), rev1);
    assert_eq!(
        deployments(&env, "chat").await.len(),
        1,
        "an SLO change made a revision"
    );

    // A pod-shaping change makes a second revision that takes over.
    let changed = manifest(
        &env,
        "chat",
        2,
        json!({"slo": {"ttftP99": "300ms"}, "engine": {"maxBatchTokens": 4096}}),
    );
    apply(&env, &changed).await.expect("apply engine change");
    // While the new revision is not fully ready, the old one keeps all traffic.
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let deadline = Instant::now() + LIMIT;
    let rev2 = loop {
        assert!(Instant::now() < deadline, "rollout did not finish");
        let o = api.get("chat").await.expect("get");
        let st = o.status.clone().unwrap_or_default();
        if let Some(t) = st.traffic.first() {
            if t.revision != rev1 {
                // Traffic moved: the new revision must have had all pods ready.
                let ready = pods_of(&env, "chat", &t.revision)
                    .await
                    .iter()
                    .filter(|p| {
                        p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count();
                assert!(
                    ready >= 2,
                    "traffic moved to {} with {ready} ready pods",
                    t.revision
                );
            }
        }
        if ready_and_current(&o) {
            break stable(&o);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(rev2, rev1);
    let o = api.get("chat").await.expect("get");
    let st = o.status.expect("status");
    assert_eq!(st.traffic.len(), 1);
    assert_eq!(
        (st.traffic[0].revision.as_str(), st.traffic[0].weight),
        (rev2.as_str(), 100)
    );
    // Ready is only reported once the old revision is drained and at zero.
    let deps = deployments(&env, "chat").await;
    let old = deps
        .iter()
        .find(|d| d.name_any() == format!("chat-{rev1}"))
        .expect("old revision kept at zero");
    assert_eq!(replicas(old), 0);
    assert!(
        pods_of(&env, "chat", &rev1).await.is_empty(),
        "old pods left after Ready"
    );
    assert_eq!(pods_of(&env, "chat", &rev2).await.len(), 2);
    op.stop().await;
}

#[tokio::test]
async fn deleting_the_inference_service_garbage_collects_its_children() {
    let env = env("op-delete").await;
    let op = Operator::start(&env);
    apply(&env, &manifest(&env, "chat", 1, json!({})))
        .await
        .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "Ready", ready_and_current).await;
    let rev = stable(&o);
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    api.delete("chat", &DeleteParams::foreground())
        .await
        .expect("delete");
    let svc: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(LIMIT, || async {
        let gone = deployments(&env, "chat").await.is_empty()
            && svc.get_opt("chat").await.ok()?.is_none()
            && pods_of(&env, "chat", &rev).await.is_empty()
            && api.get_opt("chat").await.ok()?.is_none();
        gone.then_some(())
    })
    .await
    .expect("children garbage-collected");
    op.stop().await;
}

#[tokio::test]
async fn children_deleted_by_hand_are_recreated() {
    let env = env("op-recreate").await;
    let op = Operator::start(&env);
    apply(&env, &manifest(&env, "chat", 1, json!({})))
        .await
        .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "Ready", ready_and_current).await;
    let rev = stable(&o);
    let deps: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    let dname = format!("chat-{rev}");
    let old_dep = deps.get(&dname).await.expect("deployment").uid();
    let old_svc = svcs.get("chat").await.expect("service").uid();
    deps.delete(&dname, &DeleteParams::background())
        .await
        .expect("delete deployment");
    svcs.delete("chat", &DeleteParams::default())
        .await
        .expect("delete service");
    eventually(LIMIT, || async {
        let d = deps.get_opt(&dname).await.ok()??;
        let s = svcs.get_opt("chat").await.ok()??;
        (d.uid() != old_dep && s.uid() != old_svc).then_some(())
    })
    .await
    .expect("deployment and service recreated");
    let o = wait_for(&env, "chat", LIMIT, "Ready again", |o| {
        ready_and_current(o) && o.status.as_ref().is_some_and(|s| s.replicas.ready == 1)
    })
    .await;
    assert_eq!(stable(&o), rev);
    op.stop().await;
}

#[tokio::test]
async fn unservable_specs_are_degraded_with_the_pods_reason_and_the_newest_spec_wins() {
    let env = env("op-degraded").await;
    let op = Operator::start(&env);
    apply(&env, &manifest(&env, "chat", 1, json!({})))
        .await
        .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "Ready", ready_and_current).await;
    let rev1 = stable(&o);
    let degraded_with = |reason: &'static str| {
        move |o: &InferenceService| {
            o.status.as_ref().is_some_and(|s| {
                s.phase == Phase::Degraded && s.observed_generation == o.metadata.generation
            }) && degraded_reason(o).as_deref() == Some(reason)
        }
    };

    // An image the node cannot pull.
    apply(
        &env,
        &manifest(
            &env,
            "chat",
            1,
            json!({"engine": {"image": "no-such-image:1"}}),
        ),
    )
    .await
    .expect("apply");
    let o = wait_for(
        &env,
        "chat",
        LIMIT,
        "Degraded by ErrImagePull",
        degraded_with("ErrImagePull"),
    )
    .await;
    let st = o.status.clone().expect("status");
    assert_eq!(
        st.stable_revision.as_deref(),
        Some(rev1.as_str()),
        "stable keeps serving"
    );
    assert_eq!(st.traffic[0].revision, rev1);
    assert!(st.canary_revision.is_some());
    // No hot loop: a stuck object costs no writes pass after pass.
    let writes = writes_during_passes(&env, &op, "chat").await;
    assert_eq!(
        writes, 0,
        "a degraded object made {writes} writes in a pass"
    );

    // More GPUs than any node has: the scheduler's reason; the unfinished
    // canary before it goes to zero.
    apply(
        &env,
        &manifest(&env, "chat", 1, json!({"engine": {"gpus": 8}})),
    )
    .await
    .expect("apply");
    let o = wait_for(
        &env,
        "chat",
        LIMIT,
        "Degraded by Unschedulable",
        degraded_with("Unschedulable"),
    )
    .await;
    let msg = o
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Degraded")
                .map(|c| c.message.clone())
        })
        .unwrap_or_default();
    assert!(msg.contains("nvidia.com/gpu"), "{msg}");

    // A model path that does not exist: the engine exits, the pod crash-loops.
    let missing = json!({"model": {"uri": "file:///nonexistent/steward-model"}});
    apply(&env, &manifest(&env, "chat", 1, missing))
        .await
        .expect("apply");
    wait_for(&env, "chat", LIMIT, "Degraded by CrashLoopBackOff", |o| {
        o.status.as_ref().is_some_and(|s| {
            s.phase == Phase::Degraded && s.observed_generation == o.metadata.generation
        }) && matches!(
            degraded_reason(o).as_deref(),
            Some("CrashLoopBackOff" | "Error")
        )
    })
    .await;

    // Back to a good spec: ready, and every abandoned revision at zero.
    apply(
        &env,
        &manifest(&env, "chat", 1, json!({"engine": {"maxBatchTokens": 2048}})),
    )
    .await
    .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "Ready after fix", ready_and_current).await;
    let last = stable(&o);
    assert_ne!(last, rev1);
    for d in deployments(&env, "chat").await {
        if d.name_any() != format!("chat-{last}") {
            assert_eq!(replicas(&d), 0, "{} left half-scaled", d.name_any());
        }
    }
    assert!(degraded_reason(&o).is_none());
    op.stop().await;
}

#[tokio::test]
async fn warm_pods_are_labelled_out_of_rotation_and_counted() {
    let env = env("op-warm").await;
    let op = Operator::start(&env);
    apply(
        &env,
        &manifest(&env, "chat", 2, json!({"replicas": {"warm": 1}})),
    )
    .await
    .expect("apply");
    let o = wait_for(
        &env,
        "chat",
        LIMIT,
        "Ready with 2 serving and 1 warm",
        |o| {
            ready_and_current(o)
                && o.status
                    .as_ref()
                    .is_some_and(|s| s.replicas.serving == 2 && s.replicas.warm == 1)
        },
    )
    .await;
    let st = o.status.clone().expect("status");
    assert_eq!(st.serving_warm.as_deref(), Some("2/1"));
    assert_eq!(st.replicas.desired, 3);
    let pods = pods_of(&env, "chat", &stable(&o)).await;
    let warm = pods
        .iter()
        .filter(|p| p.labels()[labels::ROLE] == labels::ROLE_WARM)
        .count();
    assert_eq!((pods.len(), warm), (3, 1));
    let writes = writes_during_passes(&env, &op, "chat").await;
    assert_eq!(writes, 0, "a settled warm pool made {writes} writes");
    op.stop().await;
}
