//! Signals and alarms on the real local system: the shared local cluster, a
//! real Prometheus (`LocalPrometheus`, 1 s scrapes) scraping real
//! steward-engine pods (`make-model --size tiny`, `--torch-threads 1`),
//! load from `steward-loadgen`, and the operator running in-process with its
//! signal pollers and PrometheusRule writer.
//!
//! Two revisions serving at once: until canary steps exist (issue 11) a new
//! revision gets traffic only once every one of its pods is ready. The test
//! keeps the second revision half-ready on purpose: it asks for two pods of
//! three GPUs each on the four-GPU local node, so one pod runs and the other
//! stays Unschedulable. The rollout holds there (the first revision keeps
//! 100% of the router's weight) while the second revision has one ready
//! engine. `steward-loadgen` therefore sends to each revision's pod IPs
//! directly rather than through the router (which sends nothing to a weight-0
//! revision); the alarm path reads per-revision engine metrics and does not
//! depend on where the requests came from. The second revision's engine runs
//! with `--enable-fault-injection --fault-prefill-delay 800ms` (docs/engine.md,
//! "Test aids").
//!
//! What is proved, in one object and one pass of phases (CI-lean: one
//! cluster, one Prometheus, three tiny engines):
//! 1. under load, `status.alarms` shows the TTFT leaf Firing for the slow
//!    revision only, with a value near the injected delay, within three
//!    analysis intervals of the load reaching it; the fast revision's leaf
//!    is Ok; an `AlarmFiring` event names the revision; the generated
//!    PrometheusRule is mirrored into the local Prometheus and its TTFT
//!    alert evaluates (pending) there;
//! 2. a custom PromQL that does not parse gives an `AlarmQueryInvalid`
//!    condition naming the leaf, and nothing else changes;
//! 3. Prometheus stopped: `SignalsUnavailable`, every leaf unknown (NoData
//!    or Inconclusive), never Ok, never Firing, TTFT-P99 blank;
//! 4. Prometheus started again: the leaves recover.
//!
//! The detection-time benchmark (`detection_time`, ignored here; run by
//! `bench/signals-detection.sh`) repeats phase 1 at two intervals.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::{json, Value};
use steward_e2e::proc::spawn;
use steward_e2e::prometheus::{
    install_monitoring_crds, prometheus_rule_resource, LocalPrometheus, PrometheusOptions,
};
use steward_e2e::testing::{eventually, TestFolder};
use steward_e2e::tools::workspace_bin;
use steward_operator::controller::prometheus::PrometheusConfig;
use steward_operator::crd::{labels, AlarmState, AlarmStatus, InferenceService};
use support::{apply, env, manifest, tiny_model, wait_for, Killed as Load, Operator, TestEnv};

/// The injected prefill delay of the slow revision.
const DELAY: Duration = Duration::from_millis(800);
/// The TTFT objective: far above a tiny engine's TTFT, below the delay.
const TTFT_OBJECTIVE: &str = "600ms";
const NAME: &str = "sig";

/// Closed-loop load on one engine pod for up to ten minutes.
fn load(pod_ip: &str, concurrency: usize, log: &Path) -> Load {
    let bin = workspace_bin("steward-loadgen").expect("steward-loadgen is built");
    let out = std::fs::File::create(log).expect("loadgen log");
    let mut cmd = Command::new(bin);
    cmd.args(["--url", &format!("http://{pod_ip}:8000")])
        .args(["--model", &format!("{NAME}-model")])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--prompt-len", "fixed:8", "--output-len", "fixed:4"])
        .args(["--duration", "600s", "--request-timeout", "30s"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out);
    Load(spawn(cmd).expect("steward-loadgen starts"))
}

/// Everything one run of the scenario holds.
struct System {
    env: TestEnv,
    dir: PathBuf,
    prometheus: LocalPrometheus,
    operator: Operator,
    /// Last: dropped after the processes that write into it.
    _folder: TestFolder,
}

async fn start(prefix: &str) -> System {
    let t0 = Instant::now();
    let env = env(prefix).await;
    install_monitoring_crds(&env.kubeconfig)
        .expect("prometheus-operator CRDs install (tools/setup.sh promcrds)");
    let folder = TestFolder::new("steward-signals-").expect("tempdir");
    let dir = folder.path().to_path_buf();
    let model = tiny_model(&dir);
    let mut prometheus = LocalPrometheus::start(
        Some(env.client.clone()),
        PrometheusOptions::in_dir(dir.join("prometheus")),
    )
    .await
    .expect("prometheus starts");
    prometheus.sync_prometheus_rules(env.client.clone(), Duration::from_secs(1));
    let url = prometheus.url();
    let operator = Operator::start_with(&env, |cfg| {
        cfg.signals.prometheus = Some(PrometheusConfig {
            url,
            timeout: Duration::from_secs(2),
            max_in_flight: 16,
        });
    });
    let env = TestEnv {
        model_uri: format!("file://{}", model.display()),
        ..env
    };
    eprintln!(
        "[signals] cluster, Prometheus, operator up in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    System {
        env,
        dir,
        prometheus,
        operator,
        _folder: folder,
    }
}

/// The fast revision: two CPU pods of the real engine, one torch thread.
fn fast_manifest(env: &TestEnv, interval: &str) -> Value {
    manifest(
        env,
        NAME,
        2,
        json!({
            "engine": {
                "image": "steward-engine:0.1",
                "gpus": 0,
                "maxBatchTokens": 256,
                "kvCacheBlocks": 64,
                "extraArgs": ["--torch-threads", "1"],
            },
            "model": { "maxContextTokens": 256 },
            "limits": { "maxTokensPerRequest": 64 },
            "slo": { "ttftP99": TTFT_OBJECTIVE },
            "rollout": { "analysis": { "interval": interval } },
        }),
    )
}

/// The slow revision: the same plus the injected prefill delay, and three
/// GPUs a pod so only one of its two pods fits the node (see the header).
fn slow_manifest(env: &TestEnv, interval: &str) -> Value {
    let mut m = fast_manifest(env, interval);
    m["spec"]["engine"]["gpus"] = json!(3);
    m["spec"]["engine"]["extraArgs"] = json!([
        "--torch-threads",
        "1",
        "--enable-fault-injection",
        "--fault-prefill-delay",
        humantime::format_duration(DELAY).to_string(),
    ]);
    m
}

fn alarms(o: &InferenceService) -> Vec<AlarmStatus> {
    o.status
        .as_ref()
        .map(|s| s.alarms.clone())
        .unwrap_or_default()
}

fn leaf<'a>(alarms: &'a [AlarmStatus], rev: &str, name: &str) -> Option<&'a AlarmStatus> {
    alarms.iter().find(|a| a.revision == rev && a.name == name)
}

fn condition<'a>(
    o: &'a InferenceService,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    o.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn condition_true(o: &InferenceService, type_: &str) -> bool {
    condition(o, type_).is_some_and(|c| c.status == "True")
}

fn unknown(state: AlarmState) -> bool {
    matches!(state, AlarmState::NoData | AlarmState::Inconclusive)
}

/// `412ms` / `1.02s` → seconds.
fn seconds(text: &str) -> Option<f64> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    text.strip_suffix('s')?.parse().ok()
}

async fn ready_pod_ips(env: &TestEnv, rev: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let sel = format!("{}={NAME},{}={rev}", labels::SERVICE, labels::REVISION);
    let list = pods
        .list(&ListParams::default().labels(&sel))
        .await
        .expect("list pods");
    list.items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect()
}

/// Both revisions running, the fast one under load. Returns the fast and
/// slow revision names and the fast revision's load.
async fn two_revisions(sys: &System, interval: &str) -> (String, String, Vec<Load>) {
    let t0 = Instant::now();
    let env = &sys.env;
    apply(env, &fast_manifest(env, interval))
        .await
        .expect("the fast revision applies");
    let o = wait_for(
        env,
        NAME,
        Duration::from_secs(180),
        "the fast revision ready",
        support::ready_and_current,
    )
    .await;
    let fast = o
        .status
        .as_ref()
        .and_then(|s| s.stable_revision.clone())
        .expect("stable revision");
    let mut loads = Vec::new();
    for (i, ip) in ready_pod_ips(env, &fast).await.iter().enumerate() {
        loads.push(load(ip, 1, &sys.dir.join(format!("load-fast-{i}.log"))));
    }
    eprintln!(
        "[signals] fast revision {fast} ready and loaded after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    apply(env, &slow_manifest(env, interval))
        .await
        .expect("the slow revision applies");
    let o = wait_for(
        env,
        NAME,
        Duration::from_secs(180),
        "one pod of the slow revision ready",
        |o| {
            o.status.as_ref().is_some_and(|s| {
                s.revisions
                    .iter()
                    .any(|r| Some(&r.name) != s.stable_revision.as_ref() && r.ready >= 1)
            })
        },
    )
    .await;
    let status = o.status.expect("status");
    let slow = status
        .revisions
        .iter()
        .find(|r| Some(&r.name) != status.stable_revision.as_ref())
        .map(|r| r.name.clone())
        .expect("slow revision");
    assert_eq!(
        status.stable_revision.as_deref(),
        Some(fast.as_str()),
        "the half-ready revision must not take the traffic"
    );
    eprintln!(
        "[signals] slow revision {slow} has a ready pod after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    (fast, slow, loads)
}

/// Starts load on the slow revision and waits for its TTFT leaf to fire;
/// returns the load, the object at that moment and the time it took.
async fn detect(
    sys: &System,
    slow: &str,
    limit: Duration,
    run: usize,
) -> (Load, InferenceService, Duration) {
    let ips = ready_pod_ips(&sys.env, slow).await;
    let ip = ips.first().expect("a ready pod of the slow revision");
    let onset = Instant::now();
    let l = load(ip, 3, &sys.dir.join(format!("load-slow-{run}.log")));
    let api: Api<InferenceService> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let got = eventually(limit, || {
        let api = api.clone();
        async move {
            let o = api.get(NAME).await.ok()?;
            let firing = leaf(&alarms(&o), slow, "ttftP99")?.state == AlarmState::Firing;
            firing.then_some(o)
        }
    })
    .await;
    let took = onset.elapsed();
    match got {
        Ok(o) => (l, o, took),
        Err(e) => {
            let last = api.get(NAME).await.ok();
            panic!(
                "the slow revision's ttftP99 leaf did not fire: {e}; alarms: {:#?}",
                last.map(|o| alarms(&o))
            )
        }
    }
}

#[tokio::test]
async fn slow_revision_fires_alone_bad_promql_is_named_and_missing_signals_read_unknown() {
    let t_all = Instant::now();
    let mut sys = start("signals").await;
    let interval = Duration::from_secs(5);
    let (fast, slow, _fast_load) = two_revisions(&sys, "5s").await;

    // 1. The slow revision's TTFT leaf fires, alone.
    let (_slow_load, o, took) = detect(&sys, &slow, Duration::from_secs(120), 0).await;
    eprintln!(
        "[signals] slow revision's ttftP99 Firing {:.1}s after its load started (interval {interval:?})",
        took.as_secs_f64()
    );
    let all = alarms(&o);
    let slow_ttft = leaf(&all, &slow, "ttftP99").expect("slow ttft leaf");
    let value = slow_ttft
        .value
        .as_deref()
        .and_then(seconds)
        .expect("a value");
    // The engine's TTFT buckets double (…, 0.512 s, 1.024 s, …), so p99 is
    // known to within one bucket above the delay.
    assert!(
        value >= DELAY.as_secs_f64() && value <= 2.0 * DELAY.as_secs_f64(),
        "slow ttft p99 {value}s is not near the injected {DELAY:?}: {slow_ttft:?}"
    );
    assert!(
        took <= 3 * interval,
        "Firing took {took:?}, more than 3 analysis intervals of {interval:?}"
    );
    let fast_ttft = leaf(&all, &fast, "ttftP99").expect("fast ttft leaf");
    assert_eq!(fast_ttft.state, AlarmState::Ok, "{all:#?}");
    assert!(
        all.iter()
            .filter(|a| a.revision == fast)
            .all(|a| a.state != AlarmState::Firing),
        "nothing of the fast revision fires: {all:#?}"
    );
    let column = o.status.as_ref().and_then(|s| s.ttft_p99.clone());
    assert!(
        column.as_deref().and_then(seconds).is_some(),
        "TTFT-P99 shows the stable revision's value: {column:?}"
    );
    assert!(!condition_true(&o, "SignalsUnavailable"), "{o:?}");
    let events: Api<Event> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let fired = eventually(Duration::from_secs(20), || {
        let events = events.clone();
        let slow = slow.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("AlarmFiring")
                    && e.message.as_deref().is_some_and(|m| m.contains(&slow))
            })
        }
    })
    .await;
    assert!(
        fired.is_ok(),
        "an AlarmFiring event names the slow revision"
    );

    // The operator's PrometheusRule reaches the local Prometheus, and its
    // TTFT alert evaluates there (pending: its `for` is 10m).
    let rules: Api<DynamicObject> = Api::namespaced_with(
        sys.env.client.clone(),
        &sys.env.ns,
        &prometheus_rule_resource(),
    );
    rules
        .get(&format!("{NAME}-slo"))
        .await
        .expect("the operator owns a PrometheusRule");
    let pending = eventually(Duration::from_secs(60), || {
        let p = &sys.prometheus;
        async move {
            let alerts = p.alerts().await.ok()?;
            alerts
                .iter()
                .any(|(name, state)| name == "StewardTtftP99OverObjective" && state != "inactive")
                .then_some(())
        }
    })
    .await;
    assert!(
        pending.is_ok(),
        "the generated TTFT alert is evaluated by the local Prometheus: {:?}",
        sys.prometheus.alerts().await
    );

    // 2. A custom PromQL that does not parse names its leaf; nothing else moves.
    let mut m = slow_manifest(&sys.env, "5s");
    m["spec"]["rollout"]["analysis"]["rollbackOn"] = json!({ "any": [
        { "slo": "ttftP99" },
        { "query": { "promql": "sum(rate(steward_engine_responses_total{revision=\"$revision\"}[1m]", "above": 1 } },
    ]});
    apply(&sys.env, &m).await.expect("the bad query applies");
    let o = wait_for(
        &sys.env,
        NAME,
        Duration::from_secs(60),
        "AlarmQueryInvalid names the leaf",
        |o| {
            condition(o, "AlarmQueryInvalid")
                .is_some_and(|c| c.status == "True" && c.message.contains("query-1"))
        },
    )
    .await;
    let all = alarms(&o);
    assert_eq!(
        leaf(&all, &slow, "ttftP99").map(|a| a.state),
        Some(AlarmState::Firing),
        "{all:#?}"
    );
    assert_eq!(
        leaf(&all, &fast, "ttftP99").map(|a| a.state),
        Some(AlarmState::Ok),
        "{all:#?}"
    );
    assert!(!condition_true(&o, "SignalsUnavailable"));
    assert_eq!(
        o.status.as_ref().and_then(|s| s.stable_revision.as_deref()),
        Some(fast.as_str())
    );
    apply(&sys.env, &slow_manifest(&sys.env, "5s"))
        .await
        .expect("the fix applies");
    wait_for(
        &sys.env,
        NAME,
        Duration::from_secs(60),
        "AlarmQueryInvalid clears",
        |o| !condition_true(o, "AlarmQueryInvalid"),
    )
    .await;

    // 3. Prometheus stopped: every leaf unknown, never Ok or Firing.
    sys.prometheus.stop();
    let t_stop = Instant::now();
    let o = wait_for(
        &sys.env,
        NAME,
        Duration::from_secs(60),
        "SignalsUnavailable",
        |o| condition_true(o, "SignalsUnavailable"),
    )
    .await;
    eprintln!(
        "[signals] SignalsUnavailable {:.1}s after Prometheus stopped",
        t_stop.elapsed().as_secs_f64()
    );
    let api: Api<InferenceService> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let mut seen = o;
    let watch_until = Instant::now() + 3 * interval;
    loop {
        let all = alarms(&seen);
        assert!(!all.is_empty());
        assert!(
            all.iter().all(|a| unknown(a.state)),
            "a leaf reads a state while Prometheus is down: {all:#?}"
        );
        assert_eq!(
            seen.status.as_ref().and_then(|s| s.ttft_p99.clone()),
            None,
            "TTFT-P99 is blank, never 0, without signals"
        );
        if Instant::now() >= watch_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen = api.get(NAME).await.expect("get");
    }

    // 4. Prometheus back: the leaves recover.
    sys.prometheus.restart().await.expect("prometheus restarts");
    let t_start = Instant::now();
    wait_for(
        &sys.env,
        NAME,
        Duration::from_secs(90),
        "signals recover",
        |o| {
            let all = alarms(o);
            !condition_true(o, "SignalsUnavailable")
                && leaf(&all, &slow, "ttftP99").is_some_and(|a| a.state == AlarmState::Firing)
                && leaf(&all, &fast, "ttftP99").is_some_and(|a| a.state == AlarmState::Ok)
        },
    )
    .await;
    eprintln!(
        "[signals] recovered {:.1}s after Prometheus restarted; whole test {:.1}s",
        t_start.elapsed().as_secs_f64(),
        t_all.elapsed().as_secs_f64()
    );
    sys.operator.stop().await;
}

/// Fault onset → Firing, several runs at 2 s and at the default 15 s
/// interval (`STEWARD_BENCH_RUNS`, default 5; `STEWARD_BENCH_INTERVALS`,
/// default `2s,15s`). Onset is the moment load starts reaching the slow
/// revision (its fault is on from start-up); between runs the load stops
/// and the leaf is left to go back to unknown (too few requests) so each
/// run starts cold. Prints min / median / max per interval.
#[tokio::test]
#[ignore = "benchmark: bench/signals-detection.sh"]
async fn detection_time() {
    let runs: usize = std::env::var("STEWARD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let intervals = std::env::var("STEWARD_BENCH_INTERVALS").unwrap_or_else(|_| "2s,15s".into());
    let sys = start("sigbench").await;
    let mut first = true;
    let mut slow_rev = String::new();
    let mut _fast_load = Vec::new();
    for interval in intervals.split(',') {
        let every = humantime::parse_duration(interval).expect("interval");
        if first {
            let (_, slow, l) = two_revisions(&sys, interval).await;
            slow_rev = slow;
            _fast_load = l;
            first = false;
        } else {
            apply(&sys.env, &slow_manifest(&sys.env, interval))
                .await
                .expect("interval change applies");
        }
        let mut times = Vec::new();
        for run in 0..runs {
            cool_down(&sys, &slow_rev).await;
            let (l, _, took) =
                detect(&sys, &slow_rev, 10 * every + Duration::from_secs(60), run).await;
            drop(l);
            eprintln!(
                "[bench] interval {interval} run {run}: {:.2}s (load {})",
                took.as_secs_f64(),
                std::fs::read_to_string("/proc/loadavg")
                    .unwrap_or_default()
                    .trim()
            );
            times.push(took.as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "BENCH interval={interval} runs={runs} min={:.2}s median={median:.2}s max={:.2}s all={times:?}",
            times[0],
            times[times.len() - 1]
        );
    }
}

/// Waits until the slow revision's TTFT leaf is no longer Firing (its load
/// has left the window).
async fn cool_down(sys: &System, slow: &str) {
    wait_for(
        &sys.env,
        NAME,
        Duration::from_secs(300),
        "the slow revision's leaf cools down",
        |o| leaf(&alarms(o), slow, "ttftP99").is_some_and(|a| unknown(a.state)),
    )
    .await;
}
