//! The reconcile loop against a real control plane and the local node:
//! revisions become Deployments with ready pods, status and printer columns
//! follow, spec changes roll out and drain, deletion cascades, hand-deleted
//! children come back, unservable specs show as Degraded with the pods'
//! reasons, and a converged object costs no writes. Where the Gateway API
//! CRDs appear (installed mid-run by the gateway test), an HTTPRoute per
//! InferenceService carries the revisions' weights.

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
        assert_eq!(p.labels()[labels::ROTATION], "serving");
        assert!(p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .is_some_and(|ip| ip.starts_with("127.")));
    }
    let svc: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    let svc = svc.get("chat").await.expect("service exists");
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector[labels::ROTATION], "serving");

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
    for col in ["UTIL", "ALARM"] {
        assert!(!header.contains(col), "{col} only with -o wide: {out}");
    }
    let (ok, wide) = run_cmd(
        std::process::Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&env.kubeconfig)
            .args(["get", "llmsvc", "chat", "-n", &env.ns, "-o", "wide"]),
    );
    assert!(ok, "{wide}");
    let header = wide.lines().next().unwrap_or_default();
    for col in ["UTIL", "ALARM", "TTFT-P99"] {
        assert!(header.contains(col), "-o wide column {col} missing: {wide}");
    }

    // The scale subresource, as an HPA or KEDA reads it.
    let (ok, scale) = run_cmd(
        std::process::Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&env.kubeconfig)
            .args(["get", "--raw"])
            .arg(format!(
                "/apis/serving.steward.dev/v1alpha1/namespaces/{}/inferenceservices/chat/scale",
                env.ns
            )),
    );
    assert!(ok, "{scale}");
    let scale: serde_json::Value = serde_json::from_str(&scale).expect("a Scale object");
    assert_eq!(scale["kind"], "Scale", "{scale}");
    assert_eq!(scale["spec"]["replicas"], 2, "spec.replicas.min: {scale}");
    assert_eq!(scale["status"]["replicas"], 2, "serving pods: {scale}");
    assert_eq!(
        scale["status"]["selector"],
        "serving.steward.dev/rotation=serving,serving.steward.dev/service=chat",
        "{scale}"
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
    // Each revision's creation and promotion is an event with its own
    // words, not a second count on the first one's (kube's recorder folds
    // events by reason alone).
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let notes: Vec<(String, String)> = eventually(Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let notes: Vec<(String, String)> = list
            .items
            .into_iter()
            .filter_map(|e| Some((e.reason?, e.note?)))
            .collect();
        notes
            .iter()
            .any(|(r, n)| r == "RevisionPromoted" && n.contains(&rev2))
            .then_some(notes)
    })
    .await
    .expect("a RevisionPromoted event naming the second revision");
    for (reason, rev) in [
        ("RevisionCreated", &rev1),
        ("RevisionCreated", &rev2),
        ("RevisionPromoted", &rev1),
    ] {
        assert!(
            notes
                .iter()
                .any(|(r, n)| r == reason && n.contains(rev.as_str())),
            "a {reason} event naming {rev}: {notes:?}"
        );
    }
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
    // No hot loop: a stuck object costs no writes pass after pass. The
    // kubelet may still move the pod on (ErrImagePull -> ImagePullBackOff)
    // right after the first Degraded status, and that one change is
    // written; a hot loop writes on every pass, so three passes that all
    // write fail the test.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let writes = writes_during_passes(&env, &op, "chat").await;
        seen.push(writes);
        if writes == 0 {
            break;
        }
    }
    assert_eq!(
        seen.last(),
        Some(&0),
        "a degraded object kept writing pass after pass: {seen:?} writes"
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
        .filter(|p| p.labels()[labels::ROTATION] == labels::ROTATION_WARM)
        .count();
    assert_eq!((pods.len(), warm), (3, 1));
    let writes = writes_during_passes(&env, &op, "chat").await;
    assert_eq!(writes, 0, "a settled warm pool made {writes} writes");
    op.stop().await;
}

/// Issue 13, fault 9: `replicas {min: 0, warm: 1}` reported Ready while the
/// router answered 503 (the only pod is warm, nothing is in rotation).
#[tokio::test]
async fn a_service_with_no_pod_in_rotation_is_never_ready() {
    let env = env("op-warm-only").await;
    let op = Operator::start(&env);
    apply(
        &env,
        &manifest(&env, "chat", 0, json!({"replicas": {"warm": 1}})),
    )
    .await
    .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "the warm pod up and labelled", |o| {
        o.status.as_ref().is_some_and(|s| {
            s.observed_generation == o.metadata.generation
                && s.stable_revision.is_some()
                && s.replicas.warm == 1
        })
    })
    .await;
    let st = o.status.clone().expect("status");
    assert_eq!(st.serving_warm.as_deref(), Some("0/1"));
    assert_ne!(st.phase, Phase::Ready, "{st:?}");
    assert_eq!(st.phase, Phase::Degraded);
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NoServingPods")
    );
    assert_eq!(degraded_reason(&o).as_deref(), Some("NoServingPods"));
    let pods = pods_of(&env, "chat", &stable(&o)).await;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].labels()[labels::ROTATION], labels::ROTATION_WARM);
    op.stop().await;
}

/// What a router sees at one moment: the weights from status and the pods
/// it may send to, per revision.
mod router_view {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::Api;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    use kube::ResourceExt;
    use steward_operator::crd::{labels, InferenceService};

    /// Revision → weight, or revision → routable pods.
    pub type Snapshot = BTreeMap<String, i64>;
    /// Snapshots by the time the watch delivered them.
    pub type Timeline = Arc<Mutex<Vec<(Instant, Snapshot)>>>;

    fn routable(p: &Pod) -> bool {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let has_ip = p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some();
        ready
            && has_ip
            && p.metadata.deletion_timestamp.is_none()
            && p.labels().get(labels::ROTATION).map(String::as_str)
                == Some(labels::ROTATION_SERVING)
    }

    /// Watches the object's status weights and its pods, as the router
    /// does, recording a snapshot per delivered change.
    pub fn record(
        objects: Api<InferenceService>,
        pods: Api<Pod>,
        name: &str,
    ) -> (Timeline, Timeline, tokio::task::JoinHandle<()>) {
        let weights: Timeline = Arc::default();
        let endpoints: Timeline = Arc::default();
        let (w, e) = (weights.clone(), endpoints.clone());
        let obj_cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let pod_cfg = watcher::Config::default().labels(&format!("{}={name}", labels::SERVICE));
        let task = tokio::spawn(async move {
            let (obj_store, obj_writer) = reflector::store::<InferenceService>();
            let (pod_store, pod_writer) = reflector::store::<Pod>();
            let objs = reflector(obj_writer, watcher(objects, obj_cfg)).default_backoff();
            let pods = reflector(pod_writer, watcher(pods, pod_cfg)).default_backoff();
            let objs = objs.map(|_| {
                let snap: Snapshot = obj_store
                    .state()
                    .iter()
                    .flat_map(|o| o.status.iter().flat_map(|s| s.traffic.clone()))
                    .map(|t| (t.revision, i64::from(t.weight)))
                    .collect();
                w.lock().expect("lock").push((Instant::now(), snap));
            });
            let pods = pods.map(|_| {
                let mut snap = Snapshot::new();
                for p in pod_store.state().iter().filter(|p| routable(p)) {
                    if let Some(rev) = p.labels().get(labels::REVISION) {
                        *snap.entry(rev.clone()).or_default() += 1;
                    }
                }
                e.lock().expect("lock").push((Instant::now(), snap));
            });
            futures::stream::select(objs, pods)
                .for_each(|()| async {})
                .await;
        });
        (weights, endpoints, task)
    }

    fn as_of(timeline: &[(Instant, Snapshot)], t: Option<Instant>) -> Option<&Snapshot> {
        let t = t?;
        timeline
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, s)| s)
    }

    /// Moments when a router whose weight view lags by `weight_lag` and
    /// whose pod view lags by `pod_lag` has no pod to send to, from `from`
    /// on: every weighted revision without a routable pod.
    pub fn gaps(
        weights: &[(Instant, Snapshot)],
        endpoints: &[(Instant, Snapshot)],
        from: Instant,
        weight_lag: Duration,
        pod_lag: Duration,
    ) -> Vec<(Duration, Snapshot, Snapshot)> {
        let mut moments: Vec<Instant> = weights
            .iter()
            .map(|(t, _)| *t + weight_lag)
            .chain(endpoints.iter().map(|(t, _)| *t + pod_lag))
            .filter(|t| *t >= from)
            .collect();
        moments.sort();
        let mut out = Vec::new();
        for t in moments {
            let (Some(w), Some(e)) = (
                as_of(weights, t.checked_sub(weight_lag)),
                as_of(endpoints, t.checked_sub(pod_lag)),
            ) else {
                continue;
            };
            let served = w
                .iter()
                .filter(|(_, weight)| **weight > 0)
                .any(|(rev, _)| e.get(rev).copied().unwrap_or(0) > 0);
            if !served {
                out.push((t - from, w.clone(), e.clone()));
            }
        }
        out
    }
}

/// Issue 13, fault 10: status (weights) and the old revision's scale-down
/// were written in one pass, so a router that saw the old pods terminate
/// before the new weights (or the new weights before the new pods) had no
/// endpoint. Replays a rollout through a router view whose weight watch,
/// or pod watch, lags the other by one second: with a 3 s hand-off there
/// is never a moment without a pod to send to. With `--traffic-handoff 0`
/// (the old ordering) this fails.
#[tokio::test]
async fn traffic_switch_leaves_no_gap_for_a_lagging_router() {
    let handoff = std::env::var("STEWARD_TEST_HANDOFF_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_millis);
    let env = env("op-handoff").await;
    let op = Operator::start_with(&env, |cfg| cfg.handoff = handoff);
    apply(&env, &manifest(&env, "chat", 2, json!({})))
        .await
        .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "Ready", ready_and_current).await;
    let rev1 = stable(&o);

    let objects: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let (weights, endpoints, recorder) = router_view::record(objects, pods, "chat");
    // Both views have their initial state before anything moves.
    eventually(Duration::from_secs(30), || async {
        let w = weights.lock().expect("lock").len();
        let e = endpoints.lock().expect("lock").len();
        (w > 0 && e > 0).then_some(())
    })
    .await
    .expect("router views started");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = Instant::now();

    let started = Instant::now();
    apply(
        &env,
        &manifest(&env, "chat", 2, json!({"engine": {"maxBatchTokens": 4096}})),
    )
    .await
    .expect("apply engine change");
    let o = wait_for(&env, "chat", LIMIT, "rolled out", |o| {
        ready_and_current(o) && stable(o) != rev1
    })
    .await;
    let rev2 = stable(&o);
    // Let the views see the last pods go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    recorder.abort();
    eprintln!(
        "rollout {rev1} -> {rev2} with a {handoff:?} hand-off took {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let weights = weights.lock().expect("lock").clone();
    let endpoints = endpoints.lock().expect("lock").clone();
    let lag = Duration::from_secs(1);
    for (what, w_lag, p_lag) in [
        ("weights lag pods", lag, Duration::ZERO),
        ("pods lag weights", Duration::ZERO, lag),
        ("no lag", Duration::ZERO, Duration::ZERO),
    ] {
        let gaps = router_view::gaps(&weights, &endpoints, from, w_lag, p_lag);
        assert!(
            gaps.is_empty(),
            "{what}: the router had no endpoint at {} moment(s); first: {:?}",
            gaps.len(),
            gaps.first()
        );
    }
    // The views did see the switch.
    assert!(weights
        .iter()
        .any(|(_, w)| w.get(&rev2).copied().unwrap_or(0) == 100));
    assert!(endpoints
        .iter()
        .any(|(_, e)| e.get(&rev2).copied().unwrap_or(0) == 2 && !e.contains_key(&rev1)));
    op.stop().await;
}

fn condition(o: &InferenceService, type_: &str) -> Option<(String, String, String)> {
    o.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    })
}

/// `autoscaling.mode: external`: `kubectl scale` (the scale subresource, as
/// an HPA or KEDA writes it) sets the serving count and the operator
/// follows it without fighting; scale-in goes one draining pod at a time.
/// With pods asking for 2 GPUs each on the test node's 4, the third pod
/// cannot be scheduled: `CapacityShortfall` names the GPUs and a further
/// scale-out is held instead of piling up Pending pods.
#[tokio::test]
async fn external_mode_follows_kubectl_scale_and_a_gpu_shortfall_holds_scale_out() {
    let env = env("op-external").await;
    let op = Operator::start(&env);
    let name = "ext";
    apply(
        &env,
        &manifest(
            &env,
            name,
            1,
            json!({ "autoscaling": { "mode": "external" }, "engine": { "gpus": 2 } }),
        ),
    )
    .await
    .expect("apply");
    let o = wait_for(&env, name, LIMIT, "Ready", ready_and_current).await;
    let rev = stable(&o);
    let kubectl_scale = |n: u32| {
        let (ok, out) = run_cmd(
            std::process::Command::new(tool("kubectl"))
                .arg("--kubeconfig")
                .arg(&env.kubeconfig)
                .args(["scale", "llmsvc", name, "-n", &env.ns])
                .arg(format!("--replicas={n}")),
        );
        assert!(ok, "kubectl scale --replicas={n}: {out}");
    };
    let serving = |o: &InferenceService| o.status.as_ref().map_or(-1, |s| s.replicas.serving);

    // Up to 2 (4 of 4 GPUs): both serve, and the count stays where the
    // external autoscaler put it.
    kubectl_scale(2);
    let o = wait_for(&env, name, LIMIT, "2 serving", |o| serving(o) == 2).await;
    assert_eq!(
        condition(&o, "MetricsUnavailable"),
        None,
        "external mode reads no signal for scaling"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let o = wait_for(&env, name, LIMIT, "still 2", |o| serving(o) == 2).await;
    assert_eq!(
        o.spec.replicas.min, 2,
        "the operator never writes the count"
    );

    // 3 asked: the third pod needs 2 more GPUs, none are free.
    kubectl_scale(3);
    let o = wait_for(&env, name, LIMIT, "a GPU shortfall", |o| {
        condition(o, "CapacityShortfall").is_some_and(|c| c.0 == "True")
    })
    .await;
    let (_, reason, message) = condition(&o, "CapacityShortfall").expect("condition");
    assert_eq!(reason, "InsufficientGpu");
    assert!(
        message.contains("nvidia.com/gpu") && message.contains("1 pod(s)"),
        "{message}"
    );
    // 5 asked: held; no pile of Pending pods.
    kubectl_scale(5);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let deps = deployments(&env, name).await;
    assert_eq!(deps.len(), 1);
    assert_eq!(replicas(&deps[0]), 3, "scale-out held at the shortfall");
    let pending = pods_of(&env, name, &rev)
        .await
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
        .count();
    assert_eq!(pending, 1, "one Pending pod, not three");

    // Back to 1: the pending pod goes, then one draining pod at a time.
    // A draining pod is still part of the plan (desired) until it is gone,
    // so `desired` reaches 1 after `serving` does, not with it.
    kubectl_scale(1);
    let o = wait_for(
        &env,
        name,
        LIMIT,
        "1 serving and desired, no shortfall",
        |o| {
            serving(o) == 1
                && o.status.as_ref().map(|s| s.replicas.desired) == Some(1)
                && condition(o, "CapacityShortfall").is_some_and(|c| c.0 == "False")
        },
    )
    .await;
    assert_eq!(
        o.spec.replicas.min, 1,
        "the operator never writes the count"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().filter_map(|e| e.reason).collect())
        .unwrap_or_default();
    assert!(
        reasons.iter().any(|r| r == "InsufficientGpu"),
        "a Warning event names the GPU shortfall: {reasons:?}"
    );
    op.stop().await;
}

/// The route's (Service, weight) pairs.
fn route_weights(r: &kube::api::DynamicObject) -> Vec<(String, i64)> {
    steward_operator::route::backend_weights(&r.data)
}

/// Asserts that a revision's own Service exists and selects exactly the
/// serving pods of that revision.
async fn assert_revision_service(env: &TestEnv, name: &str, rev: &str) {
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    let svc = svcs
        .get(&format!("{name}-{rev}"))
        .await
        .unwrap_or_else(|e| panic!("the Service of revision {rev}: {e}"));
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(
        selector,
        std::collections::BTreeMap::from([
            (labels::SERVICE.to_owned(), name.to_owned()),
            (labels::REVISION.to_owned(), rev.to_owned()),
            (
                labels::ROTATION.to_owned(),
                labels::ROTATION_SERVING.to_owned()
            ),
        ]),
        "selector of {name}-{rev}"
    );
    assert_eq!(
        svc.metadata.owner_references.unwrap_or_default()[0].kind,
        "InferenceService"
    );
}

/// Issue 11, Gateway API. The operator starts on a cluster without the
/// Gateway API: the revision gets its own Service and nothing else
/// changes. The CRDs are installed (from the gateway-api Go module): the
/// next discovery probe finds them and an HTTPRoute appears with the
/// stable revision at 100. A canary at step weight 30 splits it 70/30
/// (both revisions' Services selecting their serving pods), promotion
/// leaves one backendRef at 100 and deletes the old revision's Service,
/// an abort puts the canary's backendRef at 0 (then removes it with its
/// Service), a hand edit of the weights is put back, and a route of the
/// same name that someone else made is left alone with a condition naming
/// it.
#[tokio::test]
async fn gateway_api_routes_carry_the_revisions_weights_once_the_crds_appear() {
    use kube::api::DynamicObject;
    use steward_operator::controller::gateway::resource;
    use steward_operator::rollout::manual::{ABORT, PROMOTE};

    let test_started = Instant::now();
    let env = env("op-gateway").await;
    let op = Operator::start_with(&env, |cfg| {
        cfg.gateway.enabled = true;
        cfg.gateway.recheck = Duration::from_secs(1);
    });
    let parents =
        json!([{ "name": "public", "namespace": "gateway-system", "sectionName": "http" }]);
    let spec = |engine: serde_json::Value| {
        json!({
            "rollout": { "steps": [ { "weight": 30, "pause": "1h" } ] },
            "gateway": { "parentRefs": parents.clone() },
            "engine": engine,
        })
    };
    let objects: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let annotate = |key: &'static str, rev: String| {
        let objects = objects.clone();
        async move {
            let patch = json!({ "metadata": { "annotations": { key: rev } } });
            objects
                .patch("chat", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("annotate");
        }
    };
    apply(&env, &manifest(&env, "chat", 1, spec(json!({}))))
        .await
        .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "Ready", ready_and_current).await;
    let rev1 = stable(&o);
    assert_revision_service(&env, "chat", &rev1).await;
    assert_eq!(
        condition(&o, "GatewayRoute"),
        None,
        "no route condition without the Gateway API"
    );

    // The CRDs appear; the operator finds them without a restart.
    steward_e2e::parts::install_gateway_crds(&env.kubeconfig).expect("Gateway API CRDs install");
    let installed = Instant::now();
    let routes: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &resource());
    let route_is = |want: Vec<(String, i64)>| {
        let routes = routes.clone();
        async move {
            eventually(Duration::from_secs(30), || async {
                let r = routes.get_opt("chat").await.ok()??;
                (route_weights(&r) == want).then_some(r)
            })
            .await
            .unwrap_or_else(|e| panic!("the route never had {want:?}: {e}"))
        }
    };
    let svc = |rev: &str| format!("chat-{rev}");
    let r = route_is(vec![(svc(&rev1), 100)]).await;
    eprintln!(
        "[gateway] route written {:.1}s after the CRDs were established",
        installed.elapsed().as_secs_f64()
    );
    // The API server fills in the defaults (group, kind Gateway).
    let stored = &r.data["spec"]["parentRefs"][0];
    assert_eq!(
        (
            &stored["name"],
            &stored["namespace"],
            &stored["sectionName"],
            &stored["kind"]
        ),
        (
            &parents[0]["name"],
            &parents[0]["namespace"],
            &parents[0]["sectionName"],
            &json!("Gateway")
        ),
        "{r:?}"
    );
    assert_eq!(
        r.metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].kind.as_str()),
        Some("InferenceService")
    );
    let o = wait_for(&env, "chat", LIMIT, "GatewayRoute condition", |o| {
        condition(o, "GatewayRoute").is_some_and(|c| c.0 == "True")
    })
    .await;
    let (_, reason, message) = condition(&o, "GatewayRoute").expect("condition");
    assert_eq!(reason, "RouteApplied");
    assert!(message.contains("gateway-system/public.http"), "{message}");

    // A canary at step weight 30: 70/30 in the route, each revision's
    // Service selecting its own serving pods.
    apply(
        &env,
        &manifest(&env, "chat", 1, spec(json!({"maxBatchTokens": 4096}))),
    )
    .await
    .expect("apply canary");
    let o = wait_for(&env, "chat", LIMIT, "canary at 30%", |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.canary_weight == Some(30))
    })
    .await;
    let rev2 = o
        .status
        .as_ref()
        .and_then(|s| s.canary_revision.clone())
        .expect("canary");
    route_is(vec![(svc(&rev1), 70), (svc(&rev2), 30)]).await;
    assert_revision_service(&env, "chat", &rev1).await;
    assert_revision_service(&env, "chat", &rev2).await;

    // Promotion: one backendRef at 100; the old revision's Service goes
    // once it is at zero.
    annotate(PROMOTE, rev2.clone()).await;
    wait_for(&env, "chat", LIMIT, "promoted and drained", |o| {
        ready_and_current(o) && stable(o) == rev2
    })
    .await;
    route_is(vec![(svc(&rev2), 100)]).await;
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(Duration::from_secs(30), || async {
        svcs.get_opt(&svc(&rev1))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .expect("the old revision's Service deleted");
    assert_revision_service(&env, "chat", &rev2).await;

    // Rollback: the canary's backendRef goes to 0 with status, then leaves
    // the route with its Service.
    apply(
        &env,
        &manifest(&env, "chat", 1, spec(json!({"maxBatchTokens": 2048}))),
    )
    .await
    .expect("apply second canary");
    let o = wait_for(&env, "chat", LIMIT, "second canary at 30%", |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.canary_weight == Some(30))
    })
    .await;
    let rev3 = o
        .status
        .as_ref()
        .and_then(|s| s.canary_revision.clone())
        .expect("canary");
    route_is(vec![(svc(&rev2), 70), (svc(&rev3), 30)]).await;
    annotate(ABORT, rev3.clone()).await;
    let mut seen: Vec<Vec<(String, i64)>> = Vec::new();
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the canary never left the route: {seen:?}"
        );
        if let Ok(Some(r)) = routes.get_opt("chat").await {
            let w = route_weights(&r);
            if seen.last() != Some(&w) {
                seen.push(w.clone());
            }
            if w == vec![(svc(&rev2), 100)] {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.contains(&vec![(svc(&rev2), 100), (svc(&rev3), 0)]),
        "the rolled-back canary was not at weight 0 in the route: {seen:?}"
    );
    assert!(
        seen.iter().all(|w| w
            .iter()
            .all(|(s, weight)| *s != svc(&rev3) || *weight == 0 || *weight == 30)),
        "{seen:?}"
    );
    let o = wait_for(&env, "chat", LIMIT, "rolled back", |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.rollout.rolled_back_revision.as_deref() == Some(rev3.as_str()))
    })
    .await;
    assert_eq!(stable(&o), rev2);
    eventually(Duration::from_secs(30), || async {
        svcs.get_opt(&svc(&rev3))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .expect("the rolled-back revision's Service deleted");

    // A hand edit of the weights is put back (the route watch wakes the
    // object).
    let edit = json!({ "spec": { "rules": [ { "backendRefs": [
        { "name": svc(&rev2), "port": 8000, "weight": 1 },
        { "name": "elsewhere", "port": 8000, "weight": 99 },
    ] } ] } });
    routes
        .patch("chat", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("hand edit");
    route_is(vec![(svc(&rev2), 100)]).await;

    // Someone else's route of the same name: left as it is, named in a
    // condition; once it is deleted, the operator writes its own.
    let theirs = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": "rogue", "namespace": env.ns },
        "spec": { "rules": [ { "backendRefs": [ { "name": "mine", "port": 80 } ] } ] },
    });
    routes
        .patch(
            "rogue",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&theirs),
        )
        .await
        .expect("a route of someone else's");
    apply(&env, &manifest(&env, "rogue", 0, json!({})))
        .await
        .expect("apply rogue");
    let o = wait_for(&env, "rogue", LIMIT, "RouteNotOwned", |o| {
        condition(o, "GatewayRoute").is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = condition(&o, "GatewayRoute").expect("condition");
    assert_eq!(reason, "RouteNotOwned");
    assert!(
        message.contains(&format!("HTTPRoute {}/rogue", env.ns))
            && message.contains("someone-else"),
        "{message}"
    );
    let r = routes.get("rogue").await.expect("their route");
    assert_eq!(route_weights(&r), vec![("mine".to_owned(), 1)]);
    assert!(r.metadata.owner_references.is_none(), "adopted: {r:?}");
    routes
        .delete("rogue", &DeleteParams::default())
        .await
        .expect("delete their route");
    wait_for(
        &env,
        "rogue",
        LIMIT,
        "RouteApplied after the foreign route went",
        |o| condition(o, "GatewayRoute").is_some_and(|c| c.0 == "True"),
    )
    .await;
    let r = eventually(Duration::from_secs(30), || async {
        let r = routes.get_opt("rogue").await.ok()??;
        r.metadata.owner_references.is_some().then_some(r)
    })
    .await
    .expect("the operator's own route");
    assert!(
        route_weights(&r)
            .iter()
            .all(|(s, _)| s.starts_with("rogue-")),
        "{r:?}"
    );
    eprintln!(
        "[gateway] test took {:.1}s",
        test_started.elapsed().as_secs_f64()
    );
    op.stop().await;
}
