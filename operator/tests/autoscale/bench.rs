//! Benchmarks of the autoscaler on the real local system (ignored in CI;
//! run by bench/scale-out.sh and bench/scale-flap.sh). Same system as the
//! cluster test (`system.rs`): load only through the router.
//!
//! - `scale_out_bench`: the same load step on an object with `warm: 1`
//!   and on one with `warm: 0` (cold start), one after the other in one
//!   run: when a reading of the autoscaler first reached its target
//!   (utilisation 70%, or one waiting request per pod: under an overload
//!   the queue often comes first), when the autoscaler
//!   decided, when the added pod took its first request (time to
//!   capacity), and TTFT during the step (the load generator's p99 over the
//!   whole step; the engines' p99 over the 30 s after the crossing). The
//!   step overloads two pods (KV cache full, requests wait), so until the
//!   third pod serves, requests queue. Each pair runs with the tiny engine
//!   as it is and with an emulated model load time (`slow_image`).
//! - `flap_bench`: load oscillating around the target for a bounded time;
//!   counts scale events and compares them with the documented bound.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use kube::api::{Api, DeleteParams};
use steward_e2e::testing::eventually;
use steward_e2e::tools::workspace_bin;
use steward_operator::crd::InferenceService;

use crate::support::{apply, env_or, finish, load_average, wait_for};
use crate::system::{
    all_pods, at_target, engine_metric, first_sample, loadgen, object, pods, readings_series,
    serving_memory, settle, start, unix, with, Shape, System, TAKEN_IN,
};

/// One case's figures, seconds from the step.
#[derive(Debug)]
struct StepFigures {
    label: String,
    model_load_secs: u64,
    crossed: Option<f64>,
    decided: f64,
    capacity: Option<f64>,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    engine_ttft_p99_ms: Option<f64>,
    sent: u64,
    failed: u64,
    load: String,
}

/// Watches every 100 ms for the first request taken in by a pod outside
/// `initial` (the warm pod put in rotation, or a cold-started one).
fn first_request_outside(
    sys: &System,
    name: &str,
    initial: BTreeSet<String>,
    limit: Duration,
) -> tokio::task::JoinHandle<Option<(SystemTime, String)>> {
    let env = crate::support::TestEnv {
        client: sys.env.client.clone(),
        ns: sys.env.ns.clone(),
        kubeconfig: sys.env.kubeconfig.clone(),
        model_uri: sys.env.model_uri.clone(),
    };
    let http = sys.http.clone();
    let name = name.to_owned();
    tokio::spawn(async move {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            for (pod, v) in all_pods(&env, &name).await {
                if initial.contains(&pod) || v.ip.is_empty() {
                    continue;
                }
                if engine_metric(&http, &v.ip, TAKEN_IN)
                    .await
                    .is_some_and(|n| n > 0.0)
                {
                    return Some((SystemTime::now(), pod));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    })
}

/// The engines' TTFT p99 of `name` over `[from, from + secs]` (unix s).
async fn engine_ttft_p99(sys: &System, name: &str, from: f64, secs: u64) -> Option<f64> {
    let q = format!(
        "histogram_quantile(0.99, sum by (le) (increase(steward_engine_time_to_first_token_seconds_bucket{{namespace=\"{}\",service=\"{name}\"}}[{secs}s] @ {:.3})))",
        sys.env.ns,
        from + secs as f64
    );
    let data = sys.prometheus.query(&q).await.ok()?;
    data["result"][0]["value"][1]
        .as_str()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(|v| v * 1000.0)
}

async fn delete_and_wait(sys: &System, name: &str) {
    let api: Api<InferenceService> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let _ = api.delete(name, &DeleteParams::default()).await;
    let gone = eventually(Duration::from_secs(120), || async {
        all_pods(&sys.env, name).await.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_ok(), "{name}'s pods were not removed");
}

/// The image of an engine whose model takes `secs` to load: the node's
/// image map points it at a wrapper that sleeps, then starts the real
/// engine. The tiny model loads in about 0.3 s; a real one from a volume
/// onto a GPU takes tens of seconds, and that is what a warm pool hides.
async fn slow_image(sys: &System, secs: u64) -> String {
    if secs == 0 {
        return "steward-engine:0.1".into();
    }
    let shared = steward_e2e::testing::shared()
        .await
        .expect("the shared cluster");
    let engine = workspace_bin("steward-engine").expect("steward-engine is built");
    // The node runs the mapped file when the container's command names
    // it, so the wrapper is called steward-engine too.
    let folder = sys.dir.join(format!("engine-load-{secs}s"));
    std::fs::create_dir_all(&folder).expect("wrapper folder");
    let script = folder.join("steward-engine");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# bench: a model load of {secs}s, then the real engine\nsleep {secs}\nexec {} \"$@\"\n",
            engine.display()
        ),
    )
    .expect("wrapper written");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("wrapper executable");
    let map_path = shared.node.image_map();
    let mut map: BTreeMap<String, PathBuf> =
        serde_yaml::from_str(&std::fs::read_to_string(map_path).expect("image map"))
            .unwrap_or_default();
    let image = format!("steward-engine-load{secs}s");
    map.insert(image.clone(), script);
    std::fs::write(map_path, serde_yaml::to_string(&map).expect("yaml")).expect("image map");
    format!("{image}:0.1")
}

/// Applies a benchmark's object and waits until it is ready with two pods
/// serving and `warm` warm.
async fn bring_up(env: &crate::support::TestEnv, name: &str, obj: &serde_json::Value, warm: i32) {
    apply(env, obj).await.expect("the manifest applies");
    wait_for(
        env,
        name,
        Duration::from_secs(240),
        "ready",
        crate::support::ready_and_current,
    )
    .await;
    settle(
        env,
        name,
        2,
        warm as usize,
        Duration::from_secs(120),
        "two serving and the warm pool",
    )
    .await;
}

async fn step_case(
    sys: &System,
    name: &str,
    label: &str,
    warm: i32,
    model_load_secs: u64,
) -> StepFigures {
    let concurrency: usize = env_or("STEWARD_BENCH_CONCURRENCY", 36);
    let secs: u64 = env_or("STEWARD_BENCH_STEP_SECS", 90);
    let env = &sys.env;
    let shape = Shape {
        min: 2,
        max: 3,
        warm,
        // No scale-in during a case.
        scale_in_after: "30m",
        drain_window: "5s",
        // Every request is served (queued), none shed: TTFT shows the
        // wait for capacity instead of 503s.
        extra_args: &["--shed-kv-usage", "1"],
    };
    let mut obj = object(env, name, &shape);
    obj["spec"]["engine"]["image"] = slow_image(sys, model_load_secs).await.into();
    bring_up(env, name, &obj, warm).await;
    let initial: BTreeSet<String> = with(&pods(env, name).await, "serving")
        .into_iter()
        .collect();
    // Quiet before the step: the reading starts from idle.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let load = load_average();
    let t_step = SystemTime::now();
    let watch = first_request_outside(sys, name, initial, Duration::from_secs(secs + 60));
    let (lg, report) = loadgen(
        sys,
        &format!("{name}-model"),
        name,
        concurrency,
        ("fixed:16", "fixed:64"),
        secs,
    );
    wait_for(
        env,
        name,
        Duration::from_secs(secs),
        "scaled out to 3 serving",
        |o| serving_memory(o) == Some(3),
    )
    .await;
    let decided = unix(SystemTime::now()) - unix(t_step);
    let capacity = watch.await.ok().flatten();
    let r = finish(lg, &report, Duration::from_secs(secs + 120)).await;
    let step = unix(t_step);
    let series = readings_series(sys, name, secs + 30).await;
    let crossed = first_sample(&series, step, at_target);
    let engine_ttft = match crossed {
        Some(c) => engine_ttft_p99(sys, name, c, 30).await,
        None => None,
    };
    let f = StepFigures {
        label: label.to_owned(),
        model_load_secs,
        crossed: crossed.map(|c| c - step),
        decided,
        capacity: capacity.as_ref().map(|(t, _)| unix(*t) - step),
        ttft_p50_ms: r.ttft_p50_ms,
        ttft_p99_ms: r.ttft_p99_ms,
        engine_ttft_p99_ms: engine_ttft,
        sent: r.sent,
        failed: r.failed,
        load,
    };
    eprintln!("[bench] {f:?} (added pod {:?})", capacity.map(|c| c.1));
    delete_and_wait(sys, name).await;
    f
}

/// `later - earlier`, when both are known.
fn gap(later: Option<f64>, earlier: Option<f64>) -> Option<f64> {
    Some(later? - earlier?)
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

#[tokio::test]
#[ignore = "benchmark: bench/scale-out.sh"]
async fn scale_out_bench() {
    let runs: usize = env_or("STEWARD_BENCH_RUNS", 1);
    let loads: Vec<u64> = std::env::var("STEWARD_BENCH_MODEL_LOAD_SECS")
        .unwrap_or_else(|_| "0 20".into())
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let sys = start("scalebench").await;
    let mut all = Vec::new();
    for &load in &loads {
        for run in 0..runs {
            all.push(step_case(&sys, &format!("warm{run}-{load}s"), "warm", 1, load).await);
            all.push(step_case(&sys, &format!("cold{run}-{load}s"), "cold", 0, load).await);
        }
    }
    println!(
        "BENCH {:<5} {:>5} {:>9} {:>8} {:>9} {:>13} {:>9} {:>9} {:>12} {:>6} {:>6}  load",
        "case",
        "model_load_s",
        "cross_s",
        "decide_s",
        "capacity_s",
        "cross->serve_s",
        "ttft_p50",
        "ttft_p99",
        "engine_p99",
        "sent",
        "failed"
    );
    for f in &all {
        let from_cross = gap(f.capacity, f.crossed);
        println!(
            "BENCH {:<5} {:>5} {:>9} {:>8.1} {:>9} {:>13} {:>9.0} {:>9.0} {:>12} {:>6} {:>6}  {}",
            f.label,
            f.model_load_secs,
            secs(f.crossed),
            f.decided,
            secs(f.capacity),
            secs(from_cross),
            f.ttft_p50_ms,
            f.ttft_p99_ms,
            f.engine_ttft_p99_ms
                .map_or("-".into(), |v| format!("{v:.0}")),
            f.sent,
            f.failed,
            f.load
        );
    }
    for &load in &loads {
        let median = |label: &str, pick: &dyn Fn(&StepFigures) -> Option<f64>| {
            let mut v: Vec<f64> = all
                .iter()
                .filter(|f| f.label == label && f.model_load_secs == load)
                .filter_map(pick)
                .collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let ratio = |pick: &dyn Fn(&StepFigures) -> Option<f64>| match (
            median("cold", pick),
            median("warm", pick),
        ) {
            (Some(c), Some(w)) if w > 0.0 => format!("{:.2}", c / w),
            _ => "-".into(),
        };
        let to_capacity = |f: &StepFigures| gap(f.capacity, f.crossed);
        println!(
            "BENCH headline (model load {load}s): cold/warm TTFT p99 (load generator, whole step) = {}; engine TTFT p99 in the 30 s after the crossing = {}; crossing -> added pod serving = {}; step -> added pod serving = {}",
            ratio(&|f| Some(f.ttft_p99_ms)),
            ratio(&|f| f.engine_ttft_p99_ms),
            ratio(&to_capacity),
            ratio(&|f| f.capacity)
        );
    }
    sys.operator.stop().await;
}

#[tokio::test]
#[ignore = "benchmark: bench/scale-flap.sh"]
async fn flap_bench() {
    let total: u64 = env_or("STEWARD_FLAP_SECS", 300);
    let period: u64 = env_or("STEWARD_FLAP_PERIOD", 60);
    let low: usize = env_or("STEWARD_FLAP_LOW", 16);
    let high: usize = env_or("STEWARD_FLAP_HIGH", 36);
    let window: u64 = env_or("STEWARD_FLAP_SCALE_IN_AFTER", 30);
    let sys = start("scaleflap").await;
    let env = &sys.env;
    let name = "flap";
    let after = format!("{window}s");
    let shape = Shape {
        min: 2,
        max: 4,
        warm: 1,
        scale_in_after: &after,
        drain_window: "10s",
        extra_args: &[],
    };
    bring_up(env, name, &object(env, name, &shape), 1).await;
    let model = format!("{name}-model");
    let lengths = ("fixed:16", "fixed:32");
    let load = load_average();
    let t0 = Instant::now();
    let (base, base_report) = loadgen(&sys, &model, "flap-base", low, lengths, total);
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let mut timeline: Vec<(f64, i32)> = Vec::new();
    let mut bursts = Vec::new();
    let mut next_burst = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(total) {
        if t0.elapsed() >= next_burst {
            let secs_left = total.saturating_sub(t0.elapsed().as_secs());
            let len = (period / 2).min(secs_left).max(1);
            let label = format!("flap-burst-{}", bursts.len());
            bursts.push(loadgen(&sys, &model, &label, high - low, lengths, len));
            next_burst += Duration::from_secs(period);
        }
        if let Ok(o) = api.get(name).await {
            let s = serving_memory(&o).unwrap_or(0);
            if timeline.last().map(|(_, v)| *v) != Some(s) {
                timeline.push((t0.elapsed().as_secs_f64(), s));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let outs: u64 = ["executor_utilization", "kv_cache_usage", "queue"]
        .iter()
        .map(|r| sys.operator.metrics.scale_events("out", r))
        .sum();
    let ins = sys.operator.metrics.scale_events("in", "low_utilization");
    let r = finish(base, &base_report, Duration::from_secs(120)).await;
    for (p, j) in bursts {
        let _ = finish(p, &j, Duration::from_secs(120)).await;
    }
    let bound = 2 * (total / window) + (shape.max - shape.min) as u64;
    println!(
        "BENCH flap: {total}s of load oscillating {low} <-> {high} streams (period {period}s), scaleInAfter {window}s: {outs} scale-outs, {ins} scale-ins, {} events (bound 2*floor(T/scaleInAfter)+(max-min) = {bound}); serving count over time (s, pods): {timeline:?}; base load failed {} of {}; load average at start {load}, at end {}",
        outs + ins,
        r.failed,
        r.sent,
        load_average()
    );
    assert!(outs + ins <= bound, "more scale events than the bound");
    sys.operator.stop().await;
}

/// One ramp case's figures, seconds from the start of the load.
#[derive(Debug)]
struct RampFigures {
    label: String,
    early_warm_at: Option<f64>,
    crossed: Option<f64>,
    capacity: Option<f64>,
    ttft_p99_ms: f64,
    sent: u64,
    failed: u64,
    capacity_message: String,
    load: String,
}

/// Load that rises: `top` streams reached by adding `step` streams every
/// `every` s (a step when `step >= top`), on `warm: 0` engines whose model
/// load takes `load_secs` (`--fault-load-delay`, so the engine's own
/// `steward_engine_cold_start_seconds` says it, as a real one would).
async fn ramp_case(
    sys: &System,
    name: &str,
    label: &str,
    step: usize,
    load_secs: u64,
) -> RampFigures {
    let top: usize = env_or("STEWARD_RAMP_TOP", 36);
    let every: u64 = env_or("STEWARD_RAMP_EVERY", 6);
    let hold: u64 = env_or("STEWARD_RAMP_HOLD", 60);
    let env = &sys.env;
    let delay = format!("{load_secs}s");
    let extra = ["--shed-kv-usage", "1", "--fault-load-delay", delay.as_str()];
    let shape = Shape {
        min: 2,
        max: 3,
        warm: 0,
        scale_in_after: "30m",
        drain_window: "5s",
        extra_args: &extra,
    };
    bring_up(env, name, &object(env, name, &shape), 0).await;
    let initial: BTreeSet<String> = pods(env, name).await.into_keys().collect();
    tokio::time::sleep(Duration::from_secs(35)).await;
    let load = load_average();
    let stages = top.div_ceil(step.max(1));
    let total = stages as u64 * every + hold;
    let t0 = SystemTime::now();
    let watch = first_request_outside(sys, name, initial, Duration::from_secs(total + 60));
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let mut gens = Vec::new();
    let mut early_warm_at = None;
    let mut message = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(total) {
        let due = (start.elapsed().as_secs() / every.max(1)) as usize + 1;
        while gens.len() < due.min(stages) {
            let n = step.min(top - gens.len() * step);
            let left = total.saturating_sub(start.elapsed().as_secs()).max(1);
            gens.push(loadgen(
                sys,
                &format!("{name}-model"),
                &format!("{name}-{}", gens.len()),
                n,
                ("fixed:16", "fixed:64"),
                left,
            ));
        }
        if let Ok(o) = api.get(name).await {
            if let Some(c) = o.status.and_then(|s| s.capacity) {
                if c.early_warm > 0 && early_warm_at.is_none() {
                    early_warm_at = Some(unix(SystemTime::now()) - unix(t0));
                    message = c.message.clone();
                }
                if message.is_empty() || early_warm_at.is_none() {
                    message = c.message;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let capacity = watch.await.ok().flatten();
    let mut sent = 0;
    let mut failed = 0;
    let mut p99: f64 = 0.0;
    for (p, j) in gens {
        let r = finish(p, &j, Duration::from_secs(120)).await;
        sent += r.sent;
        failed += r.failed;
        p99 = p99.max(r.ttft_p99_ms);
    }
    let begin = unix(t0);
    let series = readings_series(sys, name, total + 30).await;
    let f = RampFigures {
        label: label.to_owned(),
        early_warm_at,
        crossed: first_sample(&series, begin, at_target).map(|c| c - begin),
        capacity: capacity.as_ref().map(|(t, _)| unix(*t) - begin),
        ttft_p99_ms: p99,
        sent,
        failed,
        capacity_message: message,
        load,
    };
    eprintln!("[bench] {f:?} (added pod {:?})", capacity.map(|c| c.1));
    delete_and_wait(sys, name).await;
    f
}

#[tokio::test]
#[ignore = "benchmark: bench/scale-ramp.sh"]
async fn ramp_bench() {
    let load_secs: u64 = env_or("STEWARD_BENCH_MODEL_LOAD_SECS", 20);
    let step: usize = env_or("STEWARD_RAMP_STEP", 4);
    let runs: usize = env_or("STEWARD_BENCH_RUNS", 1);
    let sys = start("rampbench").await;
    let mut all = Vec::new();
    for run in 0..runs {
        all.push(ramp_case(&sys, &format!("ramp{run}"), "ramp", step, load_secs).await);
        // Baseline, same engines: the whole load at once, no trend to read
        // ahead of the crossing.
        all.push(
            ramp_case(
                &sys,
                &format!("step{run}"),
                "step",
                usize::MAX / 2,
                load_secs,
            )
            .await,
        );
    }
    println!(
        "BENCH {:<5} {:>12} {:>8} {:>11} {:>15} {:>9} {:>6} {:>6}  load",
        "case",
        "early_warm_s",
        "cross_s",
        "capacity_s",
        "cross->serve_s",
        "ttft_p99",
        "sent",
        "failed"
    );
    for f in &all {
        let from_cross = gap(f.capacity, f.crossed);
        println!(
            "BENCH {:<5} {:>12} {:>8} {:>11} {:>15} {:>9.0} {:>6} {:>6}  {}",
            f.label,
            secs(f.early_warm_at),
            secs(f.crossed),
            secs(f.capacity),
            secs(from_cross),
            f.ttft_p99_ms,
            f.sent,
            f.failed,
            f.load
        );
        println!("BENCH {} capacity: {}", f.label, f.capacity_message);
    }
    sys.operator.stop().await;
}
