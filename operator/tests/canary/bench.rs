//! Benchmarks of canary analysis on the real local system (ignored in CI;
//! run by bench/canary-detection.sh and bench/canary-noisy.sh), on the
//! cluster test's set-up (`start`: real Prometheus scraping every 1 s, tiny
//! real engines, the operator in-process at `analysis.interval: 2s`,
//! steward-router, steward-loadgen streaming through it during every run).
//!
//! - `detection_bench`: issue 11 scenarios 2 (TTFT regression, 800 ms
//!   injected prefill delay, `ttftP99` objective 600 ms), 3 (30% of the
//!   canary's requests answered 500, `errorRate`) and 4 (one sampled token
//!   in two corrupted, the quality gate), N runs each, interleaved. Per run:
//!   **onset** = the first bad response the canary's engine produced (its
//!   `steward_engine_faults_injected_total` moved past 0, read every
//!   100 ms: the first delayed request, the first 500, the first corrupted
//!   token of a golden-set answer); **detected** = the first status read
//!   (every 100 ms) with the canary rolled back, i.e. its weight 0 (the
//!   rollback writes weight 0 in the same status write). Also the moment
//!   the canary first had weight (the quality gate decides before step 1,
//!   so a wrong-answer canary never has any), requests failed and streams
//!   cut.
//! - `noisy_bench`: a canary slower and jittery but inside its objectives
//!   (`--fault-token-jitter`, a small `--fault-prefill-delay`), judged by
//!   `ttftP99`, `itlP99`, `errorRate`, `latencySpike` and `errorRise`,
//!   run N times (default 10): false rollbacks (must be 0) and the time
//!   from apply to promotion. Between runs a clean revision with `steps:
//!   []` becomes the stable again, so every noisy canary is compared with a
//!   clean stable.
//!
//! Each run prints the load average: on a shared machine absolute figures
//! are noisy.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use steward_operator::crd::{labels, InferenceService};

use super::quality::{put_golden_set, wrong_answers};
use super::{
    canary_weight, errors_revision, load, promoted_from, revision, revision_with, slow_revision,
    start, status_of, System, NAME,
};
use crate::support::{
    apply, engine_metric, env_or, finish, load_average, ready_and_current, wait_for, LoadReport,
};

/// Injected faults counted by the engine (one fault kind per scenario).
const FAULTS: &str = "steward_engine_faults_injected_total";

/// min / median / max, seconds.
fn spread(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!("{:.1} / {:.1} / {:.1}", v[0], median, v[v.len() - 1])
}

/// The first revision, clean, ready and stable.
async fn first_revision(sys: &System) -> String {
    apply(&sys.env, &revision(&sys.env, 64, &[]))
        .await
        .expect("the first revision applies");
    let o = wait_for(
        &sys.env,
        NAME,
        Duration::from_secs(180),
        "the first revision ready",
        ready_and_current,
    )
    .await;
    status_of(&o).stable_revision.expect("stable")
}

/// Prometheus queries of the operator so far that errored or found no data.
fn missed_queries(sys: &System) -> u64 {
    let m = &sys.operator.metrics;
    m.prometheus_queries("error") + m.prometheus_queries("no_data")
}

/// `status.rollout.rolledBackRevision` now.
async fn rolled_back(api: &Api<InferenceService>) -> Option<String> {
    let o = api.get(NAME).await.ok()?;
    status_of(&o).rollout.rolled_back_revision
}

/// The loopback IP of a pod of `revision`, if one has one.
async fn pod_ip(sys: &System, revision: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let sel = format!("{}={revision}", labels::REVISION);
    let list = pods.list(&ListParams::default().labels(&sel)).await.ok()?;
    list.items
        .into_iter()
        .filter_map(|p| p.status?.pod_ip)
        .find(|ip| !ip.is_empty())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Ttft,
    Errors,
    Quality,
}

impl Scenario {
    fn parse(s: &str) -> Option<Scenario> {
        match s.trim() {
            "ttft" => Some(Scenario::Ttft),
            "5xx" => Some(Scenario::Errors),
            "quality" => Some(Scenario::Quality),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Scenario::Ttft => "ttft",
            Scenario::Errors => "5xx",
            Scenario::Quality => "quality",
        }
    }

    fn manifest(self, sys: &System, blocks: i32) -> Value {
        match self {
            Scenario::Ttft => slow_revision(&sys.env, blocks),
            Scenario::Errors => errors_revision(&sys.env, blocks),
            Scenario::Quality => wrong_answers(&sys.env, blocks),
        }
    }
}

/// One detection run, seconds from the apply.
#[derive(Debug)]
struct Detection {
    scenario: Scenario,
    weight_at: Option<f64>,
    onset_at: Option<f64>,
    zero_at: f64,
    reason: String,
    report: LoadReport,
    covered: bool,
    load: String,
    /// The operator's Prometheus queries during the run that failed or
    /// found no data (a slow Prometheus on a loaded machine delays a
    /// verdict).
    queries_missed: u64,
}

impl Detection {
    fn detect(&self) -> Option<f64> {
        self.onset_at.map(|o| self.zero_at - o)
    }
}

const DETECTION_LOAD_SECS: u64 = 35;

async fn detection_run(sys: &System, scenario: Scenario, blocks: i32, stable: &str) -> Detection {
    let load_at_start = load_average();
    let api: Api<InferenceService> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    // The previous run's rolled-back revision stays in status until the
    // operator sees the new spec.
    let before = rolled_back(&api).await;
    let missed_before = missed_queries(sys);
    let t = Instant::now();
    let (lg, report) = load(
        sys,
        &format!("{}-{blocks}", scenario.label()),
        DETECTION_LOAD_SECS,
    );
    apply(&sys.env, &scenario.manifest(sys, blocks))
        .await
        .expect("the faulty revision applies");
    let http = reqwest::Client::new();
    let (mut canary, mut ip) = (None::<String>, None::<String>);
    let (mut weight_at, mut onset_at) = (None, None);
    let (zero_at, reason, bad) = loop {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{scenario:?} run: not rolled back within 120 s (canary {canary:?})"
        );
        if let Ok(o) = api.get(NAME).await {
            let s = status_of(&o);
            let now = t.elapsed().as_secs_f64();
            if let Some(rb) = s
                .rollout
                .rolled_back_revision
                .clone()
                .filter(|r| r != stable && Some(r) != before.as_ref())
            {
                break (
                    now,
                    s.rollout.rollback_reason.clone().unwrap_or_default(),
                    rb,
                );
            }
            if canary.is_none() {
                canary = s.canary_revision.clone();
            }
            if weight_at.is_none() && canary_weight(&o) > 0 {
                weight_at = Some(now);
            }
        }
        if let (Some(rev), None) = (&canary, &ip) {
            ip = pod_ip(sys, rev).await;
        }
        if let (Some(ip), None) = (&ip, onset_at) {
            if engine_metric(&http, ip, FAULTS)
                .await
                .is_some_and(|n| n > 0.0)
            {
                onset_at = Some(t.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_for(
        &sys.env,
        NAME,
        Duration::from_secs(60),
        "the rolled-back canary at zero",
        |o| {
            let s = status_of(o);
            s.revisions.iter().all(|r| r.name != bad || r.pods == 0)
        },
    )
    .await;
    let covered = t.elapsed() < Duration::from_secs(DETECTION_LOAD_SECS);
    let report = finish(lg, &report, Duration::from_secs(120)).await;
    Detection {
        scenario,
        weight_at,
        onset_at,
        zero_at,
        reason,
        report,
        covered,
        load: format!("{load_at_start} → {}", load_average()),
        queries_missed: missed_queries(sys) - missed_before,
    }
}

#[tokio::test]
#[ignore = "benchmark: bench/canary-detection.sh"]
async fn detection_bench() {
    let runs: usize = env_or("STEWARD_BENCH_RUNS", 5);
    let scenarios: Vec<Scenario> = std::env::var("STEWARD_BENCH_SCENARIOS")
        .unwrap_or_else(|_| "ttft,5xx,quality".into())
        .split(',')
        .map(|s| {
            Scenario::parse(s)
                .unwrap_or_else(|| panic!("unknown scenario {s:?} (ttft, 5xx, quality)"))
        })
        .collect();
    let sys = start().await;
    let stable = first_revision(&sys).await;
    if scenarios.contains(&Scenario::Quality) {
        put_golden_set(&sys).await;
    }
    eprintln!(
        "[bench] stable {stable}; {runs} runs of {scenarios:?}; load average {}",
        load_average()
    );
    let mut all = Vec::new();
    let mut blocks = 200;
    for run in 1..=runs {
        for &scenario in &scenarios {
            blocks += 8;
            let d = detection_run(&sys, scenario, blocks, &stable).await;
            let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}s"));
            eprintln!(
                "[bench] {} run {run}: weight > 0 at {}, first bad response at {}, weight 0 at {:.1}s ({}): onset → weight 0 {}; load sent {} failed {} cut {}{}; operator queries with no data or an error {}; load average {}",
                scenario.label(),
                fmt(d.weight_at),
                fmt(d.onset_at),
                d.zero_at,
                d.reason,
                fmt(d.detect()),
                d.report.sent,
                d.report.failed,
                d.report.abandoned,
                if d.covered { "" } else { " (the load ended before the drain)" },
                d.queries_missed,
                d.load
            );
            all.push(d);
        }
    }
    println!("BENCH canary detection at analysis.interval 2s, {runs} runs per scenario (seconds, min / median / max)");
    println!("BENCH | scenario | onset → weight 0 | weight > 0 → weight 0 | rollback reason | requests sent | failed | streams cut |");
    println!("BENCH |---|---|---|---|---|---|---|");
    for &scenario in &scenarios {
        let runs: Vec<&Detection> = all.iter().filter(|d| d.scenario == scenario).collect();
        let detect = runs.iter().filter_map(|d| d.detect()).collect();
        let from_weight = runs
            .iter()
            .filter_map(|d| d.weight_at.map(|w| d.zero_at - w))
            .collect();
        let mut reasons: Vec<&str> = runs.iter().map(|d| d.reason.as_str()).collect();
        reasons.dedup();
        println!(
            "BENCH | {} | {} | {} | {} | {} | {} | {} |",
            scenario.label(),
            spread(detect),
            spread(from_weight),
            reasons.join(", "),
            runs.iter().map(|d| d.report.sent).sum::<u64>(),
            runs.iter().map(|d| d.report.failed).sum::<u64>(),
            runs.iter().map(|d| d.report.abandoned).sum::<u64>(),
        );
    }
    for d in &all {
        assert!(
            d.onset_at.is_some(),
            "{:?}: no fault seen on the canary",
            d.scenario
        );
        assert_eq!(d.report.abandoned, 0, "{:?}: streams cut", d.scenario);
        if d.scenario != Scenario::Errors {
            assert_eq!(d.report.failed, 0, "{:?}: failed requests", d.scenario);
        }
    }
}

/// A canary slower and noisier than the stable, inside every threshold:
/// up to `jitter` after each decode step, `prefill` before each request's
/// first token; objectives TTFT p99 600 ms, ITL p99 150 ms.
fn noisy_revision(sys: &System, blocks: i32, args: &[&str]) -> Value {
    revision_with(
        &sys.env,
        blocks,
        args,
        json!({
            "slo": { "ttftP99": super::TTFT_OBJECTIVE, "itlP99": "150ms" },
            "rollout": {
                "steps": [ { "weight": 30, "pause": "8s" }, { "weight": 60, "pause": "8s" } ],
                "analysis": { "interval": "2s", "rollbackOn": { "any": [
                    { "slo": "ttftP99" }, { "slo": "itlP99" }, { "alarm": "errorRate" },
                    { "alarm": "latencySpike" }, { "alarm": "errorRise" } ] } },
            },
        }),
    )
}

#[tokio::test]
#[ignore = "benchmark: bench/canary-noisy.sh"]
async fn noisy_bench() {
    let runs: usize = env_or("STEWARD_NOISY_RUNS", 10);
    let args = std::env::var("STEWARD_NOISY_ARGS")
        .unwrap_or_else(|_| "--fault-token-jitter 40ms --fault-prefill-delay 150ms".into());
    let mut extra = vec!["--enable-fault-injection"];
    extra.extend(args.split_whitespace());
    let sys = start().await;
    let mut stable = first_revision(&sys).await;
    eprintln!(
        "[bench] noisy canary engine flags {extra:?}; {runs} runs; load average {}",
        load_average()
    );
    let api: Api<InferenceService> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let (mut promoted, mut false_rollbacks, mut sent, mut failed, mut cut) =
        (Vec::new(), 0, 0, 0, 0);
    let mut blocks = 200;
    for run in 1..=runs {
        let load_at_start = load_average();
        blocks += 8;
        let before = rolled_back(&api).await;
        let t = Instant::now();
        let (lg, report) = load(&sys, &format!("noisy-{run}"), 45);
        apply(&sys.env, &noisy_revision(&sys, blocks, &extra))
            .await
            .expect("the noisy revision applies");
        let outcome = loop {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "run {run}: neither promoted nor rolled back in 120 s"
            );
            if let Ok(o) = api.get(NAME).await {
                let s = status_of(&o);
                if let Some(rb) = s
                    .rollout
                    .rolled_back_revision
                    .clone()
                    .filter(|r| Some(r) != before.as_ref())
                {
                    break Err(format!(
                        "{rb} rolled back: {}",
                        s.rollout.rollback_message.unwrap_or_default()
                    ));
                }
                if promoted_from(&o, &stable) {
                    break Ok((
                        t.elapsed().as_secs_f64(),
                        s.stable_revision.unwrap_or_default(),
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let r = finish(lg, &report, Duration::from_secs(120)).await;
        (sent, failed, cut) = (sent + r.sent, failed + r.failed, cut + r.abandoned);
        match &outcome {
            Ok((secs, _)) => promoted.push(*secs),
            Err(_) => false_rollbacks += 1,
        }
        eprintln!(
            "[bench] noisy run {run}: {}; load sent {} failed {} cut {}, TTFT p50/p99 {:.0}/{:.0} ms; load average {load_at_start} → {}",
            match &outcome {
                Ok((secs, rev)) => format!("{rev} promoted {secs:.1}s after apply"),
                Err(e) => format!("FALSE ROLLBACK: {e}"),
            },
            r.sent, r.failed, r.abandoned, r.ttft_p50_ms, r.ttft_p99_ms, load_average()
        );
        // A clean stable again, at once (no steps, no analysis).
        blocks += 8;
        apply(
            &sys.env,
            &revision_with(&sys.env, blocks, &[], json!({ "rollout": { "steps": [] } })),
        )
        .await
        .expect("the clean revision applies");
        let before = match &outcome {
            Ok((_, rev)) => rev.clone(),
            Err(_) => stable.clone(),
        };
        let o = wait_for(
            &sys.env,
            NAME,
            Duration::from_secs(90),
            "a clean stable",
            |o| promoted_from(o, &before),
        )
        .await;
        stable = status_of(&o).stable_revision.expect("stable");
    }
    println!(
        "BENCH noisy canary ({}), {runs} runs at analysis.interval 2s",
        extra.join(" ")
    );
    println!("BENCH false rollbacks: {false_rollbacks} of {runs}");
    println!(
        "BENCH apply → promoted (s, min / median / max): {}",
        spread(promoted)
    );
    println!("BENCH load: sent {sent}, failed {failed}, streams cut {cut}");
    assert_eq!(false_rollbacks, 0, "a healthy canary was rolled back");
    assert_eq!((failed, cut), (0, 0), "no failed request or cut stream");
}
