//! Canary rollouts on the real local system (issue 11): the shared local
//! cluster, a real Prometheus (`LocalPrometheus`, 1 s scrapes) scraping
//! real steward-engine pods (`make-model --size tiny`, `--torch-threads 1`),
//! the real `steward-router` following `status.traffic`, and
//! `steward-loadgen` streaming through the router during every phase. The
//! operator runs in-process with its signal pollers.
//!
//! One object, one pod per revision, two phases (CI-lean):
//! 1. a healthy canary walks both steps (30%, then 60%) and is promoted;
//!    the old revision drains to zero;
//! 2. a canary whose engine runs with `--enable-fault-injection
//!    --fault-prefill-delay 800ms` gets step 1's weight, its `ttftP99` leaf
//!    fires and it is rolled back: weight 0, phase RolledBack, a RolledBack
//!    condition naming the leaf and both values, a Warning event, the
//!    rollback metric, its pods gone, and it is not tried again.
//!
//! The load generator counts every failed request and every stream cut
//! short: both must be zero in each phase. Timings are printed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use steward_e2e::proc::spawn;
use steward_e2e::prometheus::{LocalPrometheus, PrometheusOptions};
use steward_e2e::testing::eventually;
use steward_e2e::tools::{free_port, workspace_bin};
use steward_operator::controller::prometheus::PrometheusConfig;
use steward_operator::crd::{InferenceService, Phase};
use steward_operator::reason::Reason;
use support::{apply, env, manifest, tiny_model, wait_for, Killed as Proc, Operator, TestEnv};

const NAME: &str = "canary";
/// The injected prefill delay of the bad canary.
const DELAY: &str = "800ms";
/// Far above a tiny engine's TTFT, below the injected delay.
const TTFT_OBJECTIVE: &str = "600ms";

struct System {
    env: TestEnv,
    dir: PathBuf,
    _prometheus: LocalPrometheus,
    operator: Operator,
    _router: Proc,
    router_url: String,
}

async fn start() -> System {
    let t0 = Instant::now();
    let env = env("canary").await;
    let dir = tempfile::Builder::new()
        .prefix("steward-canary-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let model = tiny_model(&dir);
    let prometheus = LocalPrometheus::start(
        Some(env.client.clone()),
        PrometheusOptions::in_dir(dir.join("prometheus")),
    )
    .await
    .expect("prometheus starts");
    let url = prometheus.url();
    let operator = Operator::start_with(&env, |cfg| {
        cfg.signals.prometheus = Some(PrometheusConfig {
            url,
            timeout: Duration::from_secs(2),
            max_in_flight: 16,
        });
    });
    // The router, watching this namespace only.
    let port = free_port().expect("a free port");
    let log = std::fs::File::create(dir.join("router.log")).expect("router log");
    let mut cmd = Command::new(workspace_bin("steward-router").expect("steward-router is built"));
    cmd.env("KUBECONFIG", &env.kubeconfig)
        .env("STEWARD_ROUTER_LISTEN", format!("127.0.0.1:{port}"))
        .env("STEWARD_ROUTER_NAMESPACE", &env.ns)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let router = Proc(spawn(cmd).expect("steward-router starts"));
    let router_url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let up = eventually(Duration::from_secs(30), || {
        let req = http.get(format!("{router_url}/healthz"));
        async move { req.send().await.ok()?.status().is_success().then_some(()) }
    })
    .await;
    assert!(
        up.is_ok(),
        "the router answers /healthz (log: {})",
        dir.join("router.log").display()
    );
    let env = TestEnv {
        model_uri: format!("file://{}", model.display()),
        ..env
    };
    eprintln!(
        "[canary] cluster, Prometheus, operator, router up in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    System {
        env,
        dir,
        _prometheus: prometheus,
        operator,
        _router: router,
        router_url,
    }
}

/// One pod of the real engine; `extra` engine flags; `blocks` tells
/// revisions apart.
fn revision(env: &TestEnv, blocks: i32, extra: &[&str]) -> Value {
    let args: Vec<&str> = ["--torch-threads", "1"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    manifest(
        env,
        NAME,
        1,
        json!({
            "engine": {
                "image": "steward-engine:0.1",
                "gpus": 0,
                "maxBatchTokens": 256,
                "kvCacheBlocks": blocks,
                "extraArgs": args,
            },
            "model": { "maxContextTokens": 256 },
            "limits": { "maxTokensPerRequest": 64 },
            "slo": { "ttftP99": TTFT_OBJECTIVE },
            "rollout": {
                "steps": [ { "weight": 30, "pause": "4s" }, { "weight": 60, "pause": "4s" } ],
                "analysis": { "interval": "2s", "rollbackOn": { "any": [ { "slo": "ttftP99" } ] } },
            },
        }),
    )
}

/// Streaming load through the router for `secs`; returns the process and
/// where its JSON report goes.
fn load(sys: &System, label: &str, secs: u64) -> (Proc, PathBuf) {
    let json = sys.dir.join(format!("load-{label}.json"));
    let out = std::fs::File::create(sys.dir.join(format!("load-{label}.log"))).expect("log");
    let mut cmd = Command::new(workspace_bin("steward-loadgen").expect("steward-loadgen is built"));
    cmd.args(["--url", &sys.router_url])
        .args(["--model", &format!("{NAME}-model")])
        .args(["--concurrency", "2"])
        .args(["--prompt-len", "fixed:8", "--output-len", "fixed:8"])
        .args([
            "--duration",
            &format!("{secs}s"),
            "--request-timeout",
            "30s",
        ])
        .args(["--label", label])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out);
    (Proc(spawn(cmd).expect("steward-loadgen starts")), json)
}

/// Waits for the load generator to end and returns (sent, failed,
/// abandoned, errors).
async fn finish(mut p: Proc, json: &Path, limit: Duration) -> (u64, u64, u64, Value) {
    let t = Instant::now();
    while p.0.try_wait().ok().flatten().is_none() {
        assert!(
            t.elapsed() < limit,
            "steward-loadgen did not finish in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(json).expect("the report"))
        .expect("report JSON");
    let r = &doc["report"];
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    (n("sent"), n("failed"), n("abandoned"), r["errors"].clone())
}

fn canary_weight(o: &InferenceService) -> i32 {
    o.status.as_ref().and_then(|s| s.canary_weight).unwrap_or(0)
}

fn status_of(o: &InferenceService) -> steward_operator::crd::InferenceServiceStatus {
    o.status.clone().unwrap_or_default()
}

/// Polls every 100 ms until `done`, recording each distinct
/// (step, canary weight) seen.
async fn watch_steps(
    sys: &System,
    limit: Duration,
    what: &str,
    done: impl Fn(&InferenceService) -> bool,
) -> (InferenceService, Vec<(Option<i32>, i32, f64)>) {
    let api: Api<InferenceService> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let t0 = Instant::now();
    let mut seen: Vec<(Option<i32>, i32, f64)> = Vec::new();
    loop {
        if let Ok(o) = api.get(NAME).await {
            let s = status_of(&o);
            let now = (s.rollout.step, canary_weight(&o));
            if seen.last().map(|(a, b, _)| (*a, *b)) != Some(now) {
                seen.push((now.0, now.1, t0.elapsed().as_secs_f64()));
            }
            if done(&o) {
                return (o, seen);
            }
        }
        if t0.elapsed() > limit {
            let last = api.get(NAME).await.ok().map(|o| status_of(&o));
            panic!("{what}: not within {limit:?}; steps seen {seen:?}; last status {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_slow_canary_is_rolled_back_by_its_ttft_alarm_and_a_healthy_one_walks_the_steps_without_a_failed_stream(
) {
    let t_all = Instant::now();
    let sys = start().await;
    let env = &sys.env;

    // The first revision.
    apply(env, &revision(env, 64, &[]))
        .await
        .expect("the first revision applies");
    let o = wait_for(
        env,
        NAME,
        Duration::from_secs(180),
        "the first revision ready",
        support::ready_and_current,
    )
    .await;
    let first = status_of(&o).stable_revision.expect("stable");
    eprintln!(
        "[canary] first revision {first} ready at {:.1}s",
        t_all.elapsed().as_secs_f64()
    );

    // 1. A healthy canary walks both steps and is promoted.
    let t1 = Instant::now();
    let (lg, report) = load(&sys, "healthy", 75);
    apply(env, &revision(env, 72, &[]))
        .await
        .expect("the healthy revision applies");
    let (o, seen) = watch_steps(
        &sys,
        Duration::from_secs(70),
        "the healthy canary promoted, the old revision drained",
        |o| {
            let s = status_of(o);
            s.stable_revision.as_deref() != Some(first.as_str())
                && s.stable_revision.is_some()
                && s.phase == Phase::Ready
                && s.revisions
                    .iter()
                    .all(|r| Some(&r.name) == s.stable_revision.as_ref() || r.pods == 0)
        },
    )
    .await;
    let promoted = t1.elapsed();
    let healthy = status_of(&o).stable_revision.expect("stable");
    eprintln!(
        "[canary] healthy canary {healthy}: steps seen (step, weight, s) {seen:?}; promoted and drained {:.1}s after apply",
        promoted.as_secs_f64()
    );
    let steps: Vec<(Option<i32>, i32)> = seen.iter().map(|(s, w, _)| (*s, *w)).collect();
    for want in [(Some(1), 30), (Some(2), 60)] {
        assert!(steps.contains(&want), "step {want:?} was walked: {seen:?}");
    }
    assert_eq!(steps.last(), Some(&(None, 0)), "{seen:?}");
    assert_eq!(status_of(&o).traffic.len(), 1);
    let (sent, failed, abandoned, errors) = finish(lg, &report, Duration::from_secs(120)).await;
    eprintln!("[canary] healthy phase load: sent {sent}, failed {failed}, abandoned {abandoned}");
    assert!(
        promoted < Duration::from_secs(75),
        "the load must cover the whole walk and drain ({promoted:?})"
    );
    assert!(sent > 20, "the load reached the engines: {sent} requests");
    assert_eq!(
        (failed, abandoned),
        (0, 0),
        "no failed request or cut stream: {errors}"
    );

    // 2. A slow canary gets step 1's weight and is rolled back by its TTFT leaf.
    let t2 = Instant::now();
    let (lg, report) = load(&sys, "slow", 50);
    apply(
        env,
        &revision(
            env,
            80,
            &["--enable-fault-injection", "--fault-prefill-delay", DELAY],
        ),
    )
    .await
    .expect("the slow revision applies");
    let (with_weight, _) = watch_steps(
        &sys,
        Duration::from_secs(60),
        "the slow canary gets weight",
        |o| canary_weight(o) > 0,
    )
    .await;
    let slow = status_of(&with_weight).canary_revision.expect("canary");
    let onset = Instant::now();
    let (o, seen) = watch_steps(
        &sys,
        Duration::from_secs(60),
        "the slow canary rolled back",
        |o| status_of(o).rollout.rolled_back_revision.as_deref() == Some(slow.as_str()),
    )
    .await;
    let detected = onset.elapsed();
    let s = status_of(&o);
    eprintln!(
        "[canary] slow canary {slow}: weight > 0 at {:.1}s after apply, rolled back {:.1}s later; steps seen {seen:?}",
        (onset - t2).as_secs_f64(),
        detected.as_secs_f64()
    );
    assert_eq!(
        s.canary_weight, None,
        "weight 0 in the rollback's own status write"
    );
    assert_eq!(s.traffic.len(), 1);
    assert_eq!(s.traffic[0].revision, healthy);
    assert_eq!(s.rollout.rollback_reason.as_deref(), Some("AlarmFiring"));
    let cond = s
        .conditions
        .iter()
        .find(|c| c.type_ == "RolledBack")
        .expect("a RolledBack condition");
    assert_eq!(cond.status, "True");
    assert_eq!(cond.reason, "AlarmFiring");
    for part in ["ttftP99", &slow, &healthy, "against stable"] {
        assert!(cond.message.contains(part), "{part} in {:?}", cond.message);
    }
    assert_eq!(
        sys.operator.metrics.rollbacks(Reason::AlarmFiring),
        1,
        "steward_operator_rollbacks_total{{reason=\"AlarmFiring\"}}"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let warned = eventually(Duration::from_secs(20), || {
        let events = events.clone();
        let slow = slow.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("AlarmFiring")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("rolled back") && m.contains(&slow))
            })
        }
    })
    .await;
    assert!(
        warned.is_ok(),
        "a Warning event says the canary was rolled back"
    );
    // Its pods drain and go; the phase settles at RolledBack; not tried again.
    let o = wait_for(
        env,
        NAME,
        Duration::from_secs(60),
        "the rolled-back canary at zero",
        |o| {
            let s = status_of(o);
            s.phase == Phase::RolledBack
                && s.revisions.iter().all(|r| r.name != slow || r.pods == 0)
        },
    )
    .await;
    let s = status_of(&o);
    assert_eq!(s.stable_revision.as_deref(), Some(healthy.as_str()));
    assert_eq!(s.canary_revision, None);
    let (sent, failed, abandoned, errors) = finish(lg, &report, Duration::from_secs(120)).await;
    eprintln!(
        "[canary] slow phase load: sent {sent}, failed {failed}, abandoned {abandoned}; rollback settled {:.1}s after apply",
        t2.elapsed().as_secs_f64()
    );
    assert!(sent > 20, "the load reached the engines: {sent} requests");
    assert_eq!(
        (failed, abandoned),
        (0, 0),
        "no failed request or cut stream: {errors}"
    );
    let again = Api::<InferenceService>::namespaced(env.client.clone(), &env.ns)
        .get(NAME)
        .await
        .expect("get");
    assert_eq!(status_of(&again).phase, Phase::RolledBack, "not retried");
    assert!(sys.operator.is_running());
    eprintln!("[canary] whole test {:.1}s", t_all.elapsed().as_secs_f64());
}
