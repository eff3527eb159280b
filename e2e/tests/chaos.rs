//! The chaos suite (issue 13): faults injected into the real local system
//! under continuous streaming load, one after another on one cluster, each
//! bounded in time, each ending with the system converged again.
//!
//! The system: the upstream control plane and the local node
//! (`LocalCluster`), Prometheus (`LocalPrometheus`, 1 s scrapes), two
//! `steward-operator` processes with leader election (4 s lease, 1 s
//! renewal; one that exits is started again, as its Deployment would), two
//! `steward-router` replicas, and one InferenceService of two real
//! `steward-engine` pods (`make-model --size tiny`, `--torch-threads 1`).
//! Load: `steward_e2e::streams`, eight streaming clients split over the two
//! routers, a failed or cut attempt tried once more on the other router.
//!
//! Scenarios, and what must hold (each asserted):
//! 1. **router SIGKILLed** (started again after 3 s): only streams on that
//!    replica are cut (at most one per client), every cut or refused
//!    request succeeds on the other replica, no 5xx;
//! 2. **engine pod SIGKILLed mid-stream**: at most its own streams are cut,
//!    no 5xx (the router retries refused connects elsewhere), no request
//!    lost; the node restarts the container and the pod serves again;
//! 3. **API server stopped 30 s**: the data plane keeps serving (0 failed,
//!    0 cut); after it returns an operator leads again and a spec change
//!    made afterwards converges;
//! 4. **Prometheus stopped 60 s**: 0 failed, 0 cut; `MetricsUnavailable`
//!    and `SignalsUnavailable` turn True; no scale or rollback decision
//!    while it is down; both clear after it returns;
//! 5. **operator leader SIGKILLed** with a spec change in flight: the
//!    standby holds the Lease within lease + 2 renewals and converges the
//!    change; 0 failed, 0 cut;
//! 6. **local node agent restarted** (every pod process dies with it on
//!    this local node; a real kubelet would keep containers running): the
//!    pods return to serving, and once they do no request fails.
//!
//! After each: status converges (Ready, current generation, 2 serving),
//! one Deployment (the stable revision's, owned by the object), every pod
//! labelled serving is Ready, each router routes to exactly the ready
//! serving pods (`steward_router_endpoints`). A table of figures is
//! printed at the end (scenario, requests, failed, cut, lost, recovery).
//! Folder kept on failure (`STEWARD_KEEP_TEST_CLUSTER` keeps it always).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::Client;
use serde_json::{json, Value};
use steward_e2e::parts::{
    install_crd, pod_pids, tiny_model, OperatorOptions, OperatorProc, Router,
};
use steward_e2e::prometheus::{LocalPrometheus, PrometheusOptions};
use steward_e2e::streams::{LoadOptions, StreamLoad, Tally};
use steward_e2e::testing::{default_images, eventually, wait_for_node_ready, TestFolder};
use steward_e2e::{create_namespace, ClusterOptions, LocalCluster, LocalNode, NodeOptions};

const NS: &str = "chaos";
const NAME: &str = "chat";
const MODEL: &str = "chaos-tiny";
const LEASE_NS: &str = "default";
const LEASE: Duration = Duration::from_secs(4);
const RENEW: Duration = Duration::from_secs(1);
const WORKERS: usize = 8;
const SERVING: usize = 2;

fn node_options() -> NodeOptions {
    NodeOptions {
        images: default_images(),
        restart_backoff: Duration::from_millis(500),
        ..NodeOptions::default()
    }
}

/// One row of the table.
struct Row {
    scenario: &'static str,
    tally: Tally,
    /// Seconds from the fault to the state (and data plane) being whole again.
    recovery_s: f64,
    note: String,
}

struct System {
    cluster: LocalCluster,
    node: LocalNode,
    client: Client,
    prometheus: LocalPrometheus,
    operators: Arc<Mutex<Vec<OperatorProc>>>,
    operator_restarts: Arc<AtomicUsize>,
    routers: Vec<Router>,
    isvc: Api<DynamicObject>,
}

fn isvc_api(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("serving.steward.dev", "v1alpha1", "InferenceService");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "inferenceservices");
    Api::namespaced_with(client.clone(), NS, &ar)
}

fn manifest(model_dir: &Path, ttft: &str) -> Value {
    json!({
        "apiVersion": "serving.steward.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": { "name": NAME, "namespace": NS },
        "spec": {
            "model": { "name": MODEL, "uri": format!("file://{}", model_dir.display()), "maxContextTokens": 256 },
            "engine": {
                "image": "steward-engine:0.1",
                "gpus": 0,
                "maxBatchTokens": 256,
                "kvCacheBlocks": 64,
                "extraArgs": ["--torch-threads", "1"],
            },
            // max > min: the autoscaler runs (and must hold without
            // Prometheus); utilisation can never be 10% above a 100% target.
            "replicas": { "min": SERVING, "max": SERVING + 1 },
            "autoscaling": { "targetUtilization": 100, "scaleInAfter": "10m" },
            "limits": { "maxTokensPerRequest": 64 },
            "slo": { "ttftP99": ttft },
            "draining": { "window": "5s" },
            "rollout": { "steps": [], "analysis": { "interval": "2s" } },
        },
    })
}

async fn start(dir: &Path) -> (System, PathBuf) {
    let t0 = Instant::now();
    let cluster = LocalCluster::start(ClusterOptions {
        dir: Some(dir.join("cluster")),
    })
    .await
    .expect("the local cluster starts");
    let node = cluster
        .start_node(node_options())
        .expect("the local node starts");
    wait_for_node_ready(&cluster, "local-node-1")
        .await
        .expect("the node is Ready");
    let client = cluster.client().await.expect("client");
    install_crd(&client).await.expect("the CRD installs");
    create_namespace(&client, NS).await.expect("namespace");
    let model = tiny_model(dir);
    let prometheus = LocalPrometheus::start(
        Some(client.clone()),
        PrometheusOptions::in_dir(dir.join("prometheus")),
    )
    .await
    .expect("Prometheus starts");
    let operators: Vec<OperatorProc> = ["op-a", "op-b"]
        .iter()
        .map(|id| {
            OperatorProc::start(OperatorOptions {
                kubeconfig: cluster.kubeconfig_path().to_path_buf(),
                identity: (*id).to_owned(),
                lease_namespace: LEASE_NS.into(),
                namespace: None,
                lease: (LEASE, RENEW),
                prometheus_url: Some(prometheus.url()),
                log: dir.join(format!("{id}.log")),
            })
            .expect("steward-operator starts")
        })
        .collect();
    let mut routers = Vec::new();
    for i in 0..2 {
        routers.push(
            Router::start(
                cluster.kubeconfig_path(),
                Some(NS),
                &dir.join(format!("router-{i}.log")),
            )
            .await
            .expect("steward-router starts"),
        );
    }
    let operators = Arc::new(Mutex::new(operators));
    let operator_restarts = Arc::new(AtomicUsize::new(0));
    tokio::spawn(supervise(operators.clone(), operator_restarts.clone()));
    let isvc = isvc_api(&client);
    eprintln!(
        "[chaos] cluster, node, Prometheus, 2 operators, 2 routers up in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    (
        System {
            cluster,
            node,
            client,
            prometheus,
            operators,
            operator_restarts,
            routers,
            isvc,
        },
        model,
    )
}

/// Starts an operator process that exited on its own again (a crashed
/// one, see `OperatorProc::crash`, stays down until the test starts it).
async fn supervise(ops: Arc<Mutex<Vec<OperatorProc>>>, restarts: Arc<AtomicUsize>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(mut ops) = ops.lock() else { return };
        for op in ops.iter_mut() {
            if op.exited() {
                eprintln!("[chaos] {} exited; starting it again", op.opts.identity);
                restarts.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = op.restart() {
                    eprintln!("[chaos] restarting {} failed: {e:#}", op.opts.identity);
                }
            }
        }
    }
}

fn status(o: &DynamicObject) -> &Value {
    &o.data["status"]
}

fn condition<'a>(o: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    status(o)["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn condition_is(o: &DynamicObject, type_: &str, value: &str) -> bool {
    condition(o, type_).is_some_and(|c| c["status"] == value)
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn label<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

async fn router_endpoints(url: &str) -> Option<u64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("steward_router_endpoints "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Whether the whole system is as it should be; `Err` says what is not.
async fn converged(sys: &System) -> Result<(), String> {
    let o = sys.isvc.get(NAME).await.map_err(|e| format!("get: {e}"))?;
    let s = status(&o);
    if s["phase"] != "Ready" {
        return Err(format!("phase {}", s["phase"]));
    }
    if s["observedGeneration"].as_i64() != o.metadata.generation {
        return Err("status is behind the generation".into());
    }
    if !condition_is(&o, "Ready", "True") {
        return Err(format!("Ready: {:?}", condition(&o, "Ready")));
    }
    let stable = s["stableRevision"].as_str().unwrap_or_default().to_owned();
    let uid = o.metadata.uid.clone().unwrap_or_default();
    let deps: Api<Deployment> = Api::namespaced(sys.client.clone(), NS);
    let deps = deps
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("list deployments: {e}"))?;
    let names: Vec<String> = deps
        .items
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    if names != [format!("{NAME}-{stable}")] {
        return Err(format!("Deployments {names:?}, want only {NAME}-{stable}"));
    }
    let owned = deps.items.iter().all(|d| {
        d.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid)
    });
    if !owned {
        return Err("a Deployment is not owned by the InferenceService".into());
    }
    let pods: Api<Pod> = Api::namespaced(sys.client.clone(), NS);
    let pods = pods
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("list pods: {e}"))?;
    let live: Vec<&Pod> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let serving: Vec<&&Pod> = live
        .iter()
        .filter(|p| label(p, "serving.steward.dev/rotation") == Some("serving"))
        .collect();
    if serving.iter().any(|p| !pod_ready(p)) {
        return Err("a pod labelled serving is not Ready".into());
    }
    if live.len() != SERVING || serving.len() != SERVING {
        return Err(format!(
            "{} pods, {} serving; want {SERVING} and {SERVING}",
            live.len(),
            serving.len()
        ));
    }
    if s["replicas"]["serving"].as_u64() != Some(SERVING as u64) {
        return Err(format!("status.replicas {}", s["replicas"]));
    }
    for (i, r) in sys.routers.iter().enumerate() {
        let n = router_endpoints(&r.url()).await;
        if n != Some(SERVING as u64) {
            return Err(format!("router {i} routes to {n:?} endpoints"));
        }
    }
    Ok(())
}

/// Waits until [`converged`]; returns how long it took.
async fn converge(sys: &System, limit: Duration, what: &str) -> Duration {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < limit {
        match converged(sys).await {
            Ok(()) => return t0.elapsed(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not converged within {limit:?}: {last}");
}

async fn ready_serving_pods(sys: &System) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(sys.client.clone(), NS);
    pods.list(&ListParams::default())
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| pod_ready(p) && label(p, "serving.steward.dev/rotation") == Some("serving"))
        .collect()
}

async fn lease_holder(sys: &System) -> Option<String> {
    steward_e2e::parts::lease_holder(&sys.client, LEASE_NS, "steward-operator").await
}

/// Waits until `MetricsUnavailable` and `SignalsUnavailable` both read
/// `value`.
async fn signal_conditions(
    sys: &System,
    value: &str,
    limit: Duration,
) -> Result<(), steward_e2e::testing::Elapsed> {
    eventually(limit, || async {
        let o = sys.isvc.get(NAME).await.ok()?;
        (condition_is(&o, "MetricsUnavailable", value)
            && condition_is(&o, "SignalsUnavailable", value))
        .then_some(())
    })
    .await
}

/// Scale and rollback events of the object since `since`.
async fn decision_events(sys: &System, since: Instant) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(sys.client.clone(), NS);
    let age = since.elapsed().as_secs() as i64 + 1;
    let now = k8s_openapi::jiff::Timestamp::now();
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            let when = e
                .last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0));
            when.is_some_and(|t| now.as_second() - t.as_second() <= age)
        })
        .filter_map(|e| e.reason)
        .filter(|r| {
            ["ScaledOut", "ScaledIn", "AlarmFiring", "QualityGateFailed"].contains(&r.as_str())
        })
        .collect()
}

/// Applies the manifest with a new TTFT objective (a change that makes
/// no new revision) and returns the generation it made.
async fn change_spec(sys: &System, model: &Path, ttft: &str) -> i64 {
    let o = sys
        .isvc
        .patch(
            NAME,
            &PatchParams::apply("chaos-test").force(),
            &Patch::Apply(manifest(model, ttft)),
        )
        .await
        .expect("the spec change applies");
    o.metadata.generation.expect("generation")
}

fn assert_quiet(scenario: &str, t: &Tally) {
    assert!(t.requests > 0, "{scenario}: no request ended in the window");
    assert_eq!(
        (t.failed, t.cut, t.lost),
        (0, 0, 0),
        "{scenario}: the data plane must not notice: {:?}",
        t.examples
    );
}

fn push(rows: &mut Vec<Row>, row: Row) {
    let t = &row.tally;
    eprintln!(
        "[chaos] {}: requests {}, attempts {}, failed {} ({} 5xx), cut {}, lost {}, recovery {:.1}s; {}",
        row.scenario, t.requests, t.attempts, t.failed, t.failed_5xx, t.cut, t.lost, row.recovery_s, row.note
    );
    rows.push(row);
}

fn print_table(rows: &[Row], total: Duration) {
    let (load1, _) = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .unwrap_or_default();
    eprintln!();
    eprintln!("[chaos] | scenario | requests | attempts | failed (5xx) | streams cut | lost | recovery s | note |");
    eprintln!("[chaos] |---|---|---|---|---|---|---|---|");
    for r in rows {
        let t = &r.tally;
        eprintln!(
            "[chaos] | {} | {} | {} | {} ({}) | {} | {} | {:.1} | {} |",
            r.scenario,
            t.requests,
            t.attempts,
            t.failed,
            t.failed_5xx,
            t.cut,
            t.lost,
            r.recovery_s,
            r.note
        );
    }
    eprintln!(
        "[chaos] whole suite {:.0}s; {WORKERS} streaming clients; load average (1 min) {load1}",
        total.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_system_survives_each_fault_under_streaming_load_and_converges() {
    let t_all = Instant::now();
    // Declared first, so it is dropped last: removed on a pass, kept on a failure.
    let folder = TestFolder::new("steward-chaos-").expect("tempdir");
    let dir = folder.path().to_path_buf();
    let (mut sys, model) = start(&dir).await;
    let mut rows: Vec<Row> = Vec::new();

    sys.isvc
        .patch(
            NAME,
            &PatchParams::apply("chaos-test").force(),
            &Patch::Apply(manifest(&model, "5s")),
        )
        .await
        .expect("the InferenceService applies");
    let took = converge(&sys, Duration::from_secs(180), "first rollout").await;
    eprintln!(
        "[chaos] {SERVING} engines serving {:.1}s after apply",
        took.as_secs_f64()
    );

    let load = StreamLoad::start(LoadOptions {
        urls: sys.routers.iter().map(Router::url).collect(),
        model: MODEL.into(),
        workers: WORKERS,
        max_tokens: 48,
        timeout: Duration::from_secs(30),
    })
    .expect("load starts");

    // 0. Baseline: nothing injected.
    let mark = load.mark();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = load.since(mark);
    assert_quiet("baseline", &t);
    push(
        &mut rows,
        Row {
            scenario: "baseline (5 s)",
            tally: t,
            recovery_s: 0.0,
            note: String::new(),
        },
    );

    // 1. One router replica SIGKILLed, started again 3 s later.
    let mark = load.mark();
    sys.routers[0].crash();
    tokio::time::sleep(Duration::from_secs(3)).await;
    sys.routers[0]
        .restart()
        .await
        .expect("router 0 starts again");
    let back = mark.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    converge(&sys, Duration::from_secs(30), "after the router crash").await;
    let t = load.since(mark);
    assert_eq!(
        t.lost, 0,
        "router kill: every request succeeds on the other replica: {:?}",
        t.examples
    );
    assert_eq!(t.failed_5xx, 0, "router kill: no 5xx: {:?}", t.examples);
    assert!(
        t.cut <= WORKERS,
        "router kill: at most one cut stream per client: {t:?}"
    );
    assert!(
        t.cut_on.keys().all(|r| *r == 0) && t.failed_on.keys().all(|r| *r == 0),
        "router kill: only the killed replica's streams are cut or refused: {t:?}"
    );
    push(
        &mut rows,
        Row {
            scenario: "router replica SIGKILL",
            recovery_s: back.as_secs_f64(),
            note: "restarted after 3 s; recovery = replica back".into(),
            tally: t,
        },
    );

    // 2. An engine pod SIGKILLed mid-stream.
    let victim = ready_serving_pods(&sys)
        .await
        .into_iter()
        .next()
        .expect("a serving pod");
    let victim_name = victim.metadata.name.clone().unwrap_or_default();
    let pids = pod_pids(NS, &victim_name);
    assert!(
        !pids.is_empty(),
        "the engine process of {victim_name} is found"
    );
    let pods: Api<Pod> = Api::namespaced(sys.client.clone(), NS);
    let restarts_of = |p: Pod| {
        p.status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.first().map(|c| c.restart_count))
            .unwrap_or(0)
    };
    let restarts_before = restarts_of(victim.clone());
    let mark = load.mark();
    for pid in &pids {
        // SAFETY: kill(2) on a pid of a pod process this test's node started.
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    let noticed = eventually(Duration::from_secs(30), || async {
        let p = pods.get(&victim_name).await.ok()?;
        (restarts_of(p) > restarts_before).then_some(())
    })
    .await;
    assert!(
        noticed.is_ok(),
        "the node restarts the killed container of {victim_name}"
    );
    converge(&sys, Duration::from_secs(90), "after the engine kill").await;
    let recovered = mark.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = load.since(mark);
    assert_eq!(
        t.failed_5xx, 0,
        "engine kill: no 5xx beyond its streams: {:?}",
        t.examples
    );
    assert_eq!(
        t.lost, 0,
        "engine kill: retried requests succeed: {:?}",
        t.examples
    );
    assert!(
        t.cut <= WORKERS,
        "engine kill: only its own streams are cut: {t:?}"
    );
    let restarts = restarts_of(pods.get(&victim_name).await.expect("the pod is kept"));
    push(
        &mut rows,
        Row {
            scenario: "engine pod SIGKILL mid-stream",
            recovery_s: recovered.as_secs_f64(),
            note: format!("container restarted ({restarts}); recovery = pod back in rotation"),
            tally: t,
        },
    );

    // 3. The API server stopped for 30 s.
    let mark = load.mark();
    sys.cluster
        .stop_component("kube-apiserver")
        .expect("stop the API server");
    tokio::time::sleep(Duration::from_secs(30)).await;
    sys.cluster
        .start_component("kube-apiserver")
        .await
        .expect("the API server starts again");
    let up = Instant::now();
    let generation = change_spec(&sys, &model, "6s").await;
    let converged_in = {
        let t0 = Instant::now();
        let o = eventually(Duration::from_secs(90), || async {
            let o = sys.isvc.get(NAME).await.ok()?;
            (status(&o)["observedGeneration"].as_i64() == Some(generation)).then_some(o)
        })
        .await;
        assert!(
            o.is_ok(),
            "after the API server outage an operator acts on a new spec"
        );
        t0.elapsed()
    };
    converge(&sys, Duration::from_secs(60), "after the API server outage").await;
    let t = load.since(mark);
    assert_quiet("API server down 30 s", &t);
    push(&mut rows, Row {
        scenario: "API server stopped 30 s",
        recovery_s: up.elapsed().as_secs_f64(),
        note: format!(
            "a spec change made after it returned was acted on in {:.1}s; operator restarts so far {}",
            converged_in.as_secs_f64(),
            sys.operator_restarts.load(Ordering::Relaxed)
        ),
        tally: t,
    });

    // 4. Prometheus stopped for 60 s, from fresh signals.
    let fresh_before = signal_conditions(&sys, "False", Duration::from_secs(30)).await;
    if fresh_before.is_err() {
        let o = sys.isvc.get(NAME).await.expect("get");
        panic!(
            "the signals are not fresh before Prometheus stops: {:?} {:?}",
            condition(&o, "MetricsUnavailable"),
            condition(&o, "SignalsUnavailable")
        );
    }
    let mark = load.mark();
    let serving_before = ready_serving_pods(&sys).await.len();
    sys.prometheus.stop();
    let t_stop = Instant::now();
    let unavailable = signal_conditions(&sys, "True", Duration::from_secs(20)).await;
    assert!(
        unavailable.is_ok(),
        "MetricsUnavailable and SignalsUnavailable turn True without Prometheus"
    );
    let noticed = t_stop.elapsed();
    while t_stop.elapsed() < Duration::from_secs(60) {
        let o = sys.isvc.get(NAME).await.expect("get");
        assert_eq!(
            status(&o)["replicas"]["serving"].as_u64(),
            Some(serving_before as u64),
            "no scale decision without Prometheus"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let decisions = decision_events(&sys, t_stop).await;
    assert!(
        decisions.is_empty(),
        "no scale or rollback decision while Prometheus is down: {decisions:?}"
    );
    sys.prometheus
        .restart()
        .await
        .expect("Prometheus starts again");
    let restarted_at = Instant::now();
    let fresh = signal_conditions(&sys, "False", Duration::from_secs(30)).await;
    assert!(
        fresh.is_ok(),
        "the signal conditions clear once Prometheus is back"
    );
    let recovered = restarted_at.elapsed();
    converge(&sys, Duration::from_secs(30), "after the Prometheus outage").await;
    let t = load.since(mark);
    assert_quiet("Prometheus down 60 s", &t);
    push(
        &mut rows,
        Row {
            scenario: "Prometheus stopped 60 s",
            recovery_s: recovered.as_secs_f64(),
            note: format!(
            "conditions True {:.1}s after the stop; recovery = conditions False after the restart",
            noticed.as_secs_f64()
        ),
            tally: t,
        },
    );

    // 5. The operator leader SIGKILLed with a spec change in flight.
    let leader = lease_holder(&sys).await.expect("a leader holds the Lease");
    let mark = load.mark();
    let killed_at = {
        let mut ops = sys.operators.lock().expect("operators");
        let op = ops
            .iter_mut()
            .find(|o| o.opts.identity == leader)
            .expect("the leader is ours");
        op.crash();
        Instant::now()
    };
    let generation = change_spec(&sys, &model, "7s").await;
    let standby = eventually(Duration::from_secs(30), || async {
        lease_holder(&sys).await.filter(|h| *h != leader)
    })
    .await
    .expect("the standby takes the Lease");
    let takeover = killed_at.elapsed();
    let acted = eventually(Duration::from_secs(60), || async {
        let o = sys.isvc.get(NAME).await.ok()?;
        (status(&o)["observedGeneration"].as_i64() == Some(generation)).then_some(())
    })
    .await;
    assert!(
        acted.is_ok(),
        "{standby} converges the change made after the kill"
    );
    let converged_after = killed_at.elapsed();
    assert!(
        takeover <= LEASE + 2 * RENEW + Duration::from_secs(2),
        "{standby} took over {takeover:?} after the kill; the lease is {LEASE:?}"
    );
    {
        let mut ops = sys.operators.lock().expect("operators");
        if let Some(op) = ops.iter_mut().find(|o| o.opts.identity == leader) {
            op.restart()
                .expect("the killed operator starts again as a standby");
        }
    }
    converge(&sys, Duration::from_secs(30), "after the leader kill").await;
    let t = load.since(mark);
    assert_quiet("operator leader SIGKILL", &t);
    push(
        &mut rows,
        Row {
            scenario: "operator leader SIGKILL",
            recovery_s: converged_after.as_secs_f64(),
            note: format!(
                "{standby} led {:.1}s after the kill (lease {}s); recovery = spec change converged",
                takeover.as_secs_f64(),
                LEASE.as_secs()
            ),
            tally: t,
        },
    );

    // 6. The local node agent restarted.
    let mark = load.mark();
    let before: BTreeMap<String, Vec<u32>> = ready_serving_pods(&sys)
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .map(|n| {
            let pids = pod_pids(NS, &n);
            (n, pids)
        })
        .collect();
    let stopped_at = k8s_openapi::jiff::Timestamp::now();
    sys.node.stop();
    sys.node = sys
        .cluster
        .start_node(node_options())
        .expect("the node starts again");
    let restarted_at = Instant::now();
    // The API still shows the old processes' last status until the new
    // agent posts its own: wait for containers it started.
    let pods: Api<Pod> = Api::namespaced(sys.client.clone(), NS);
    let started = eventually(Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        let fresh = list.items.iter().filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
                .is_some_and(|t| t.0.as_second() >= stopped_at.as_second())
        });
        (fresh.count() >= SERVING).then_some(())
    })
    .await;
    assert!(
        started.is_ok(),
        "the new node agent starts the pods' containers again"
    );
    converge(&sys, Duration::from_secs(120), "after the node restart").await;
    let recovered = restarted_at.elapsed();
    let whole = mark.elapsed();
    for (pod, old) in &before {
        for pid in old {
            assert!(
                !steward_e2e::proc::pid_alive(*pid) || !pod_pids(NS, pod).contains(pid),
                "an engine process of {pod} from before the restart is left over ({pid})"
            );
        }
    }
    let calm = load.mark();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = load.since(calm);
    assert_quiet("after the node's pods serve again", &after);
    let t = load.since(mark);
    push(&mut rows, Row {
        scenario: "node agent restart",
        recovery_s: whole.as_secs_f64(),
        note: format!(
            "every pod process died with the agent; converged {:.1}s after the new agent started; 0 failures in the 5 s after",
            recovered.as_secs_f64()
        ),
        tally: t,
    });

    load.stop(Duration::from_secs(10)).await;
    print_table(&rows, t_all.elapsed());
    drop(sys);
}
