//! Canary rollouts on the real local system (issue 11): the shared local
//! cluster, a real Prometheus (`LocalPrometheus`, 1 s scrapes) scraping
//! real steward-engine pods (`make-model --size tiny`, `--torch-threads 1`),
//! the real `steward-router` following `status.traffic`, and
//! `steward-loadgen` streaming through the router during every phase. The
//! operator runs in-process with its signal pollers.
//!
//! One object, one pod per revision unless a phase says otherwise, nine
//! phases in one cluster (CI-lean):
//! 1. a healthy canary walks both steps (30%, then 60%) and is promoted;
//!    the old revision drains to zero;
//! 2. a canary whose engine runs with `--enable-fault-injection
//!    --fault-prefill-delay 800ms` gets step 1's weight, its `ttftP99` leaf
//!    fires and it is rolled back: weight 0, phase RolledBack, a RolledBack
//!    condition naming the leaf and both values, a Warning event, the
//!    rollback metric, its pods gone, and it is not tried again.
//!
//! 3. with `replicas.min: 2`, a canary runs its share of the pods (one pod
//!    at 30%, two at 60%) while the stable revision keeps both, and is
//!    promoted once it has the full count;
//! 4. a spec change mid-canary: the unfinished canary loses its weight and
//!    drains, the newest revision starts before step 1 and is promoted;
//! 5. Prometheus stopped mid-canary: the step holds past its pause with
//!    `AnalysisUnknown` (no step, no rollback); restarted, the rollout
//!    finishes;
//! 6. manual control through `kubectl steward` at a step: pause holds past
//!    the pause, resume moves on, promote skips the rest; abort rolls back
//!    (`Aborted`), retry runs the revision again from step 1;
//! 7. a canary answering 30% of its requests with 500
//!    (`--fault-error-rate 0.3`) is rolled back by `errorRate`, while a
//!    canary that only sees clients' mistakes (400s from bad requests sent
//!    through the router beside the load) is promoted: 4xx are not errors.
//!
//! 8. a canary whose answers are wrong while latency and errors are fine
//!    (`--fault-corrupt-token-rate 0.5`) is rolled back by the quality
//!    gate before it takes traffic, status naming the failing category
//!    (`canary/quality.rs`);
//! 9. the leader of two `steward-operator` processes is killed (SIGKILL)
//!    in the middle of a step's pause: the standby resumes the same step
//!    with the pause's remaining time and promotes once
//!    (`canary/leader.rs`).
//!
//! The detection and noisy-canary benchmarks (`#[ignore]`,
//! bench/canary-detection.sh, bench/canary-noisy.sh) are in
//! `canary/bench.rs` and share this binary's set-up.
//!
//! Phase 7 is the one phase with failed requests: the 500s the faulty
//! canary answers before its rollback (counted and bounded).
//!
//! The load generator counts every failed request and every stream cut
//! short: both must be zero in each phase. Timings are printed.

mod support;

#[path = "canary/bench.rs"]
mod bench;
#[path = "canary/leader.rs"]
mod leader;
#[path = "canary/quality.rs"]
mod quality;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use steward_e2e::parts::Router;
use steward_e2e::proc::spawn;
use steward_e2e::prometheus::LocalPrometheus;
use steward_e2e::testing::{eventually, TestFolder};
use steward_e2e::tools::workspace_bin;
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
    prometheus: LocalPrometheus,
    operator: Operator,
    _router: Router,
    router_url: String,
    /// Last: dropped after the processes that write into it.
    _folder: TestFolder,
}

async fn start() -> System {
    let t0 = Instant::now();
    let env = env("canary").await;
    let folder = TestFolder::new("steward-canary-").expect("tempdir");
    let dir = folder.path().to_path_buf();
    let model = tiny_model(&dir);
    let (prometheus, operator) = support::prometheus_and_operator(&env, &dir).await;
    // The router, watching this namespace only.
    let router = Router::start(&env.kubeconfig, Some(&env.ns), &dir.join("router.log"))
        .await
        .expect("steward-router starts and answers /healthz");
    let router_url = router.url();
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
        prometheus,
        operator,
        _router: router,
        router_url,
        _folder: folder,
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

/// [`revision`] with `patch` merged into its spec.
fn revision_with(env: &TestEnv, blocks: i32, extra: &[&str], patch: Value) -> Value {
    let mut m = revision(env, blocks, extra);
    support::merge(&mut m["spec"], patch);
    m
}

/// Steps whose second pause outlasts any phase (manual control decides).
fn long_second_step() -> Value {
    json!({ "rollout": { "steps": [ { "weight": 30, "pause": "4s" }, { "weight": 60, "pause": "10m" } ] } })
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

fn canary_weight(o: &InferenceService) -> i32 {
    o.status.as_ref().and_then(|s| s.canary_weight).unwrap_or(0)
}

fn status_of(o: &InferenceService) -> steward_operator::crd::InferenceServiceStatus {
    o.status.clone().unwrap_or_default()
}

/// Polls every 100 ms until `done`, recording each distinct
/// (step, canary weight) seen.
/// Applies a revision and waits until its canary has weight; its name.
async fn canary_with_weight(sys: &System, obj: &serde_json::Value, what: &str) -> String {
    apply(&sys.env, obj).await.expect("the revision applies");
    let (with_weight, _) =
        watch_steps(sys, Duration::from_secs(60), what, |o| canary_weight(o) > 0).await;
    status_of(&with_weight).canary_revision.expect("canary")
}

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
    let (lg, report) = load(&sys, "healthy", 45);
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
    let support::LoadReport {
        sent,
        failed,
        abandoned,
        errors,
        ..
    } = support::finish(lg, &report, Duration::from_secs(120)).await;
    eprintln!("[canary] healthy phase load: sent {sent}, failed {failed}, abandoned {abandoned}");
    assert!(
        promoted < Duration::from_secs(45),
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
    let slow =
        canary_with_weight(&sys, &slow_revision(env, 80), "the slow canary gets weight").await;
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
    // The metric is counted after the pass's status write: it may lag the
    // status read above by a moment.
    let metrics = &sys.operator.metrics;
    let counted = eventually(Duration::from_secs(10), || async {
        (metrics.rollbacks(Reason::AlarmFiring) > 0).then_some(())
    })
    .await;
    assert!(
        counted.is_ok() && metrics.rollbacks(Reason::AlarmFiring) == 1,
        "steward_operator_rollbacks_total{{reason=\"AlarmFiring\"}} is 1, not {}",
        metrics.rollbacks(Reason::AlarmFiring)
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
    let support::LoadReport {
        sent,
        failed,
        abandoned,
        errors,
        ..
    } = support::finish(lg, &report, Duration::from_secs(120)).await;
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

    let mut sys = sys;
    let stable = sized_canary(&sys, &healthy).await;
    let stable = spec_change_mid_canary(&sys, &stable).await;
    let stable = prometheus_stopped_mid_canary(&mut sys, &stable).await;
    let stable = manual_control_at_a_step(&sys, &stable).await;
    let stable = errors_roll_back_client_mistakes_do_not(&sys, &stable).await;
    quality::wrong_answers_are_rolled_back_by_the_quality_gate(&sys, &stable).await;
    assert!(sys.operator.is_running());
    leader::leader_killed_mid_pause(&mut sys, &stable).await;
    eprintln!("[canary] whole test {:.1}s", t_all.elapsed().as_secs_f64());
}

fn revision_of<'a>(
    s: &'a steward_operator::crd::InferenceServiceStatus,
    rev: &str,
) -> Option<&'a steward_operator::crd::RevisionStatus> {
    s.revisions.iter().find(|r| r.name == rev)
}

fn progressing_reason(o: &InferenceService) -> Option<String> {
    status_of(o)
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .map(|c| c.reason.clone())
}

/// Promoted: a new stable revision other than `from`, Ready, every other
/// revision at zero pods.
fn promoted_from(o: &InferenceService, from: &str) -> bool {
    let s = status_of(o);
    s.stable_revision.as_deref() != Some(from)
        && s.stable_revision.is_some()
        && s.phase == Phase::Ready
        && s.revisions
            .iter()
            .all(|r| Some(&r.name) == s.stable_revision.as_ref() || r.pods == 0)
}

/// Asserts a load run saw no failed request and no cut stream.
async fn no_loss(lg: Proc, report: &Path, phase: &str) {
    let support::LoadReport {
        sent,
        failed,
        abandoned,
        errors,
        ..
    } = support::finish(lg, report, Duration::from_secs(120)).await;
    eprintln!("[canary] {phase} load: sent {sent}, failed {failed}, abandoned {abandoned}");
    assert!(
        sent > 10,
        "{phase}: the load reached the engines: {sent} requests"
    );
    assert_eq!(
        (failed, abandoned),
        (0, 0),
        "{phase}: no failed request or cut stream: {errors}"
    );
}

/// Phase 3, `replicas.min: 2`: the canary runs one pod at 30% and two at 60%,
/// the stable revision keeps two; promoted with two.
async fn sized_canary(sys: &System, stable: &str) -> String {
    let t = Instant::now();
    let (lg, report) = load(sys, "sized", 45);
    apply(
        &sys.env,
        &revision_with(&sys.env, 88, &[], json!({ "replicas": { "min": 2 } })),
    )
    .await
    .expect("the two-pod revision applies");
    // Every distinct (step, weight, canary desired, stable desired) seen.
    let api: Api<InferenceService> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let mut seen: Vec<(Option<i32>, i32, i32, i32)> = Vec::new();
    let o = loop {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "the sized canary promoted within 90 s; seen {seen:?}"
        );
        if let Ok(o) = api.get(NAME).await {
            let s = status_of(&o);
            let desired = |rev: Option<&String>| {
                rev.and_then(|r| revision_of(&s, r))
                    .map_or(0, |r| r.desired)
            };
            let now = (
                s.rollout.step,
                canary_weight(&o),
                desired(s.canary_revision.as_ref()),
                desired(Some(&stable.to_owned())),
            );
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            if promoted_from(&o, stable) {
                break o;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let s = status_of(&o);
    let new = s.stable_revision.clone().expect("stable");
    eprintln!(
        "[canary] sized canary {new}: (step, weight, canary pods, stable pods) seen {seen:?}; promoted {:.1}s after apply",
        t.elapsed().as_secs_f64()
    );
    let at = |step| {
        seen.iter()
            .filter(|(k, w, _, _)| *k == Some(step) && *w > 0)
            .map(|(_, _, c, st)| (*c, *st))
            .collect::<Vec<_>>()
    };
    assert!(
        !at(1).is_empty() && at(1).iter().all(|(c, st)| *c <= 2 && *st == 2),
        "at step 1 the stable keeps 2 pods: {seen:?}"
    );
    assert!(
        at(1).iter().any(|(c, _)| *c == 1),
        "at 30% the canary runs 1 pod: {seen:?}"
    );
    assert!(
        at(2).iter().all(|(c, st)| *c == 2 && *st == 2),
        "at 60% the canary runs 2 pods, the stable 2: {seen:?}"
    );
    assert_eq!(revision_of(&s, &new).map(|r| r.desired), Some(2));
    no_loss(lg, &report, "sized").await;
    new
}

/// Phase 4: a newer spec while a canary is at step 1.
async fn spec_change_mid_canary(sys: &System, stable: &str) -> String {
    let env = &sys.env;
    let t = Instant::now();
    let (lg, report) = load(sys, "respec", 45);
    apply(env, &revision_with(env, 96, &[], long_second_step()))
        .await
        .expect("the first newer revision applies");
    let (o, _) = watch_steps(sys, Duration::from_secs(60), "the canary at step 1", |o| {
        canary_weight(o) > 0
    })
    .await;
    let unfinished = status_of(&o).canary_revision.expect("canary");
    apply(env, &revision_with(env, 104, &[], json!({})))
        .await
        .expect("the newest revision applies");
    let (o, seen) = watch_steps(
        sys,
        Duration::from_secs(90),
        "the newest revision promoted, the unfinished canary drained",
        |o| promoted_from(o, stable),
    )
    .await;
    let s = status_of(&o);
    let newest = s.stable_revision.clone().expect("stable");
    eprintln!(
        "[canary] spec change: {unfinished} at step 1 replaced by {newest}; steps seen {seen:?}; promoted {:.1}s after the first apply",
        t.elapsed().as_secs_f64()
    );
    assert_ne!(
        newest, unfinished,
        "the newest revision, not the unfinished one"
    );
    assert!(
        revision_of(&s, &unfinished).is_none_or(|r| r.pods == 0),
        "the unfinished canary drained"
    );
    no_loss(lg, &report, "respec").await;
    newest
}

/// Phase 5: Prometheus stopped while a canary is at step 1.
async fn prometheus_stopped_mid_canary(sys: &mut System, stable: &str) -> String {
    let t = Instant::now();
    let (lg, report) = load(sys, "prom-down", 50);
    apply(&sys.env, &revision_with(&sys.env, 112, &[], json!({})))
        .await
        .expect("the revision applies");
    watch_steps(sys, Duration::from_secs(60), "the canary at step 1", |o| {
        status_of(o).rollout.step == Some(1)
    })
    .await;
    sys.prometheus.stop();
    let stopped = Instant::now();
    let (o, _) = watch_steps(
        sys,
        Duration::from_secs(40),
        "the step held for unknown analysis",
        |o| progressing_reason(o).as_deref() == Some("AnalysisUnknown"),
    )
    .await;
    eprintln!(
        "[canary] Prometheus stopped at step 1: held with AnalysisUnknown {:.1}s later",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(status_of(&o).rollout.step, Some(1));
    // It keeps holding (no step, no rollback) while Prometheus is down.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let api: Api<InferenceService> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let o = api.get(NAME).await.expect("get");
    let s = status_of(&o);
    assert_eq!((s.rollout.step, canary_weight(&o)), (Some(1), 30), "held");
    assert_eq!(s.rollout.rolled_back_revision, None, "no rollback");
    sys.prometheus
        .restart()
        .await
        .expect("Prometheus starts again");
    let restarted = Instant::now();
    let (o, seen) = watch_steps(
        sys,
        Duration::from_secs(90),
        "the rollout finishes after Prometheus is back",
        |o| promoted_from(o, stable),
    )
    .await;
    eprintln!(
        "[canary] Prometheus back: promoted {:.1}s later (steps {seen:?}); phase {:.1}s",
        restarted.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    no_loss(lg, &report, "prom-down").await;
    status_of(&o).stable_revision.expect("stable")
}

/// Runs `kubectl steward ARGS` against this test's namespace.
fn steward(sys: &System, args: &[&str]) {
    let bin = workspace_bin("kubectl-steward").expect("kubectl-steward is built");
    let (ok, out) = support::run_cmd(
        Command::new(bin)
            .arg("--kubeconfig")
            .arg(&sys.env.kubeconfig)
            .args(["-n", &sys.env.ns])
            .args(args)
            .env_remove("KUBECONFIG"),
    );
    eprintln!("[canary] kubectl steward {args:?}: {}", out.trim());
    assert!(ok, "kubectl steward {args:?} failed: {out}");
}

/// Phase 6: pause, resume and promote at a step; abort, then retry.
async fn manual_control_at_a_step(sys: &System, stable: &str) -> String {
    let env = &sys.env;
    let t = Instant::now();
    let (lg, report) = load(sys, "manual", 60);
    apply(env, &revision_with(env, 120, &[], long_second_step()))
        .await
        .expect("the revision applies");
    watch_steps(sys, Duration::from_secs(60), "the canary at step 1", |o| {
        status_of(o).rollout.step == Some(1)
    })
    .await;
    steward(sys, &["pause", NAME]);
    // Step 1's pause is 4 s: paused, it stays there.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (o, _) = watch_steps(sys, Duration::from_secs(10), "held by the pause", |o| {
        progressing_reason(o).as_deref() == Some("RolloutPaused")
    })
    .await;
    assert_eq!(status_of(&o).rollout.step, Some(1), "pause holds the step");
    steward(sys, &["resume", NAME]);
    watch_steps(sys, Duration::from_secs(30), "resume moves on", |o| {
        status_of(o).rollout.step == Some(2)
    })
    .await;
    steward(sys, &["promote", NAME]);
    let (o, _) = watch_steps(
        sys,
        Duration::from_secs(40),
        "promote skips step 2's 10-minute pause",
        |o| promoted_from(o, stable),
    )
    .await;
    let promoted = status_of(&o).stable_revision.expect("stable");
    eprintln!(
        "[canary] manual: paused, resumed, promoted {promoted} {:.1}s after apply",
        t.elapsed().as_secs_f64()
    );

    // Abort at step 1, then retry: it runs again from step 1.
    apply(env, &revision_with(env, 128, &[], long_second_step()))
        .await
        .expect("the next revision applies");
    let (o, _) = watch_steps(sys, Duration::from_secs(60), "the canary at step 1", |o| {
        status_of(o).rollout.step == Some(1)
    })
    .await;
    let aborted = status_of(&o).canary_revision.expect("canary");
    steward(sys, &["abort", NAME]);
    let (o, _) = watch_steps(sys, Duration::from_secs(30), "abort rolls back", |o| {
        status_of(o).rollout.rolled_back_revision.as_deref() == Some(aborted.as_str())
    })
    .await;
    let s = status_of(&o);
    assert_eq!(s.rollout.rollback_reason.as_deref(), Some("Aborted"));
    assert_eq!(s.canary_weight, None, "weight 0 at once");
    steward(sys, &["retry", NAME]);
    let (o, seen) = watch_steps(sys, Duration::from_secs(60), "retry runs it again", |o| {
        let s = status_of(o);
        s.canary_revision.as_deref() == Some(aborted.as_str()) && s.rollout.step == Some(1)
    })
    .await;
    assert_eq!(status_of(&o).rollout.rolled_back_revision, None);
    eprintln!(
        "[canary] manual: aborted {aborted} and retried it (steps {seen:?}), {:.1}s after the first apply",
        t.elapsed().as_secs_f64()
    );
    steward(sys, &["promote", NAME]);
    wait_for(
        env,
        NAME,
        Duration::from_secs(40),
        "the retried revision promoted",
        |o| status_of(o).stable_revision.as_deref() == Some(aborted.as_str()),
    )
    .await;
    no_loss(lg, &report, "manual").await;
    aborted
}

/// `rollbackOn` with the error-rate alarm as well as TTFT.
fn with_error_alarm() -> Value {
    json!({ "rollout": { "analysis": { "interval": "2s", "rollbackOn": { "any": [
        { "slo": "ttftP99" }, { "alarm": "errorRate" } ] } } } })
}

/// A canary answering 30% of its requests with 500, judged by
/// `errorRate` (and a TTFT objective it meets).
fn errors_revision(env: &TestEnv, blocks: i32) -> Value {
    let mut faulty = revision_with(
        env,
        blocks,
        &["--enable-fault-injection", "--fault-error-rate", "0.3"],
        with_error_alarm(),
    );
    support::merge(&mut faulty["spec"], json!({ "slo": { "ttftP99": "5s" } }));
    faulty
}

/// A canary whose TTFT is `DELAY` more than the stable's (above the
/// `TTFT_OBJECTIVE`).
fn slow_revision(env: &TestEnv, blocks: i32) -> Value {
    revision(
        env,
        blocks,
        &["--enable-fault-injection", "--fault-prefill-delay", DELAY],
    )
}

/// Sends requests the engine must refuse with a 4xx (a client's mistake)
/// through the router until `stop`; returns the status counts.
async fn bad_requests(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::collections::BTreeMap<u16, u64> {
    let http = reqwest::Client::new();
    let mut counts = std::collections::BTreeMap::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // max_tokens must be a positive integer: a 400 from the engine.
        let body = json!({ "model": format!("{NAME}-model"), "prompt": "hi", "max_tokens": -5 });
        if let Ok(r) = http
            .post(format!("{url}/v1/completions"))
            .json(&body)
            .send()
            .await
        {
            *counts.entry(r.status().as_u16()).or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    counts
}

/// Phase 7: a 5xx canary is rolled back by `errorRate`; a canary that only
/// sees 4xx (clients' mistakes) is promoted.
/// Returns the promoted revision.
async fn errors_roll_back_client_mistakes_do_not(sys: &System, stable: &str) -> String {
    let env = &sys.env;
    let t = Instant::now();
    let (lg, report) = load(sys, "errors", 40);
    let bad = canary_with_weight(
        sys,
        &errors_revision(env, 136),
        "the 5xx canary gets weight",
    )
    .await;
    let onset = Instant::now();
    let (o, _) = watch_steps(
        sys,
        Duration::from_secs(60),
        "the 5xx canary rolled back",
        |o| status_of(o).rollout.rolled_back_revision.as_deref() == Some(bad.as_str()),
    )
    .await;
    let detected = onset.elapsed();
    let s = status_of(&o);
    assert_eq!(s.rollout.rollback_reason.as_deref(), Some("AlarmFiring"));
    let msg = s.rollout.rollback_message.clone().unwrap_or_default();
    assert!(msg.contains("errorRate"), "the errorRate leaf: {msg}");
    let support::LoadReport {
        sent,
        failed,
        abandoned,
        errors,
        ..
    } = support::finish(lg, &report, Duration::from_secs(120)).await;
    eprintln!(
        "[canary] 5xx canary {bad}: rolled back {:.1}s after it got weight ({msg}); load sent {sent}, failed {failed}, abandoned {abandoned}: {errors}",
        detected.as_secs_f64()
    );
    // Only the canary's 500s fail: at most 30% of its 30% share while it
    // had weight, far below that over the whole run.
    assert!(sent > 10, "the load reached the engines: {sent}");
    assert!(
        failed * 10 < sent,
        "only the canary's injected 500s fail ({failed} of {sent})"
    );
    assert_eq!(abandoned, 0, "no stream cut: {errors}");

    // The same rollout with clients sending bad requests beside the load.
    let (lg, report) = load(sys, "client-mistakes", 45);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mistakes = tokio::spawn(bad_requests(sys.router_url.clone(), stop.clone()));
    apply(env, &revision_with(env, 144, &[], with_error_alarm()))
        .await
        .expect("the healthy revision applies");
    let (o, seen) = watch_steps(
        sys,
        Duration::from_secs(90),
        "the canary seeing only 4xx promoted",
        |o| {
            promoted_from(o, stable)
                && status_of(o).stable_revision.as_deref() != Some(bad.as_str())
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let counts = mistakes.await.expect("the bad-request client ends");
    let s = status_of(&o);
    eprintln!(
        "[canary] 4xx-only canary {}: promoted (steps {seen:?}) beside bad requests answered {counts:?}; phase {:.1}s",
        s.stable_revision.clone().unwrap_or_default(),
        t.elapsed().as_secs_f64()
    );
    assert!(
        counts.get(&400).copied().unwrap_or(0) >= 20,
        "the clients' mistakes reached the engines as 400s: {counts:?}"
    );
    assert!(
        counts.keys().all(|c| (400..500).contains(c)),
        "a client's mistake is never a 5xx: {counts:?}"
    );
    assert_eq!(s.rollout.rolled_back_revision, None, "not rolled back");
    no_loss(lg, &report, "client-mistakes").await;
    s.stable_revision.expect("stable")
}
