//! The autoscaler on the real local system: the shared local cluster, a
//! real Prometheus (`LocalPrometheus`, 1 s scrapes) scraping real
//! steward-engine pods (`make-model --size tiny`, `--torch-threads 1`),
//! closed-loop load from `steward-loadgen`, and the operator running
//! in-process with its signal poller (interval 2 s, window 30 s).
//!
//! One object, `replicas {min: 2, max: 3, warm: 1}`, `scaleInAfter: 10s`,
//! in three phases (CI-lean: one cluster, one Prometheus, four tiny
//! engines at most):
//! 1. load on both serving pods: utilisation crosses 70%, the warm pod is
//!    labelled serving (no new pod on the critical path) and a new pod
//!    backfills the warm pool; a `ScaledOut` event and
//!    `steward_operator_scale_events_total{direction="out"}`;
//! 2. load stopped and Prometheus stopped at once: `MetricsUnavailable`
//!    turns True and, for longer than the scale-in window, nothing is
//!    scaled in (missing data is never read as zero);
//! 3. Prometheus started again: after the low window exactly one pod is
//!    labelled draining, then exactly that pod is removed, leaving two
//!    serving and one warm; `MetricsUnavailable` is False again.
//!
//! The load goes to the pods' IPs rather than through the router (the
//! router is another crate's binary); the autoscaler reads per-revision
//! engine metrics and does not depend on where requests come from.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use serde_json::json;
use steward_e2e::proc::spawn;
use steward_e2e::prometheus::{LocalPrometheus, PrometheusOptions};
use steward_e2e::testing::eventually;
use steward_e2e::tools::workspace_bin;
use steward_operator::controller::prometheus::PrometheusConfig;
use steward_operator::crd::{labels, InferenceService};
use support::{apply, env, manifest, tiny_model, wait_for, Killed as Load, Operator, TestEnv};

const NAME: &str = "auto";

/// Closed-loop load on one engine pod for up to ten minutes.
fn load(pod_ip: &str, concurrency: usize, log: &Path) -> Load {
    let bin = workspace_bin("steward-loadgen").expect("steward-loadgen is built");
    let out = std::fs::File::create(log).expect("loadgen log");
    let mut cmd = Command::new(bin);
    cmd.args(["--url", &format!("http://{pod_ip}:8000")])
        .args(["--model", &format!("{NAME}-model")])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--prompt-len", "fixed:16", "--output-len", "fixed:32"])
        .args(["--duration", "600s", "--request-timeout", "30s"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out);
    Load(spawn(cmd).expect("steward-loadgen starts"))
}

/// Pods of the service that are not terminating: name -> (rotation,
/// ready, pod IP).
async fn pods(env: &TestEnv) -> BTreeMap<String, (String, bool, String)> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let sel = format!("{}={NAME}", labels::SERVICE);
    let list = api
        .list(&ListParams::default().labels(&sel))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let rotation = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::ROTATION).cloned())
                .unwrap_or_default();
            let status = p.status.unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (
                p.metadata.name.unwrap_or_default(),
                (rotation, ready, status.pod_ip.unwrap_or_default()),
            )
        })
        .collect()
}

fn with(pods: &BTreeMap<String, (String, bool, String)>, rotation: &str) -> Vec<String> {
    pods.iter()
        .filter(|(_, (r, ready, _))| r == rotation && *ready)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Waits until the ready pods are `serving` serving and `warm` warm.
async fn settle(env: &TestEnv, serving: usize, warm: usize, limit: Duration, what: &str) {
    let got = eventually(limit, || async {
        let p = pods(env).await;
        (with(&p, "serving").len() == serving
            && with(&p, "warm").len() == warm
            && p.len() == serving + warm)
            .then_some(())
    })
    .await;
    if let Err(e) = got {
        panic!("{what}: {e}; pods: {:?}", pods(env).await);
    }
}

fn condition_status(o: &InferenceService, type_: &str) -> Option<String> {
    o.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn serving_memory(o: &InferenceService) -> Option<i32> {
    o.status.as_ref()?.autoscaling.serving
}

async fn event_reasons(env: &TestEnv) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().filter_map(|e| e.reason).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn warm_pod_serves_under_load_no_data_holds_and_scale_in_drains_one_pod() {
    let t0 = Instant::now();
    let env = env("autoscale").await;
    let dir = tempfile::Builder::new()
        .prefix("steward-autoscale-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let model = tiny_model(&dir);
    let mut prometheus = LocalPrometheus::start(
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
    let env = TestEnv {
        model_uri: format!("file://{}", model.display()),
        ..env
    };
    let m = manifest(
        &env,
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
            "replicas": { "min": 2, "max": 3, "warm": 1 },
            "autoscaling": { "targetUtilization": 70, "scaleInAfter": "10s" },
            "rollout": { "analysis": { "interval": "2s" } },
            "draining": { "window": "20s" },
        }),
    );
    apply(&env, &m).await.expect("the manifest applies");
    wait_for(
        &env,
        NAME,
        Duration::from_secs(180),
        "ready",
        support::ready_and_current,
    )
    .await;
    settle(
        &env,
        2,
        1,
        Duration::from_secs(60),
        "two serving and one warm",
    )
    .await;
    let before = pods(&env).await;
    let warm = with(&before, "warm").pop().expect("a warm pod");
    eprintln!(
        "[autoscale] cluster, Prometheus, operator and 2+1 pods up in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // 1. Load on both serving pods: the warm pod serves, a new pod backfills.
    let t_load = Instant::now();
    let loads: Vec<Load> = with(&before, "serving")
        .iter()
        .enumerate()
        .map(|(i, n)| load(&before[n].2, 4, &dir.join(format!("load-{i}.log"))))
        .collect();
    let o = wait_for(
        &env,
        NAME,
        Duration::from_secs(150),
        "scaled out to 3 serving",
        |o| serving_memory(o) == Some(3),
    )
    .await;
    let t_out = t_load.elapsed();
    let flipped = eventually(Duration::from_secs(10), || async {
        let p = pods(&env).await;
        (p.get(&warm).map(|w| w.0.as_str()) == Some("serving")).then_some(())
    })
    .await;
    assert!(
        flipped.is_ok(),
        "the warm pod {warm} was not put in rotation"
    );
    let reason = o
        .status
        .as_ref()
        .and_then(|s| s.autoscaling.last_scale_reason.clone())
        .unwrap_or_default();
    eprintln!(
        "[autoscale] scale-out {:.1}s after the load started ({reason}); warm pod {warm} serving",
        t_out.as_secs_f64()
    );
    settle(
        &env,
        3,
        1,
        Duration::from_secs(150),
        "the warm pool backfilled",
    )
    .await;
    eprintln!(
        "[autoscale] warm pool backfilled {:.1}s after the load started",
        t_load.elapsed().as_secs_f64()
    );
    assert!(event_reasons(&env).await.iter().any(|r| r == "ScaledOut"));
    let outs = ["executor_utilization", "kv_cache_usage", "queue"]
        .iter()
        .map(|r| operator.metrics.scale_events("out", r))
        .sum::<u64>();
    assert!(outs >= 1, "no scale_events_total{{direction=out}}");

    // 2. Load and Prometheus stopped together: no data, so no scale-in,
    //    however long the load has been low.
    drop(loads);
    prometheus.stop();
    let t_stop = Instant::now();
    wait_for(
        &env,
        NAME,
        Duration::from_secs(30),
        "MetricsUnavailable",
        |o| condition_status(o, "MetricsUnavailable").as_deref() == Some("True"),
    )
    .await;
    eprintln!(
        "[autoscale] MetricsUnavailable {:.1}s after Prometheus stopped",
        t_stop.elapsed().as_secs_f64()
    );
    // Three scale-in windows with nothing draining.
    let held_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < held_until {
        let p = pods(&env).await;
        assert!(
            with(&p, "draining").is_empty() && with(&p, "serving").len() == 3,
            "scaled in without data: {p:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("[autoscale] held at 3 serving for 30s without data");

    // 3. Prometheus back: after the low window one pod drains, then exactly
    //    that pod goes.
    prometheus.restart().await.expect("prometheus restarts");
    let t_back = Instant::now();
    let held = pods(&env).await;
    let victim = eventually(Duration::from_secs(150), || async {
        let p = pods(&env).await;
        p.iter()
            .find(|(_, (r, _, _))| r == "draining")
            .map(|(n, _)| n.clone())
    })
    .await
    .expect("a pod is labelled draining");
    eprintln!(
        "[autoscale] {victim} draining {:.1}s after Prometheus came back",
        t_back.elapsed().as_secs_f64()
    );
    settle(
        &env,
        2,
        1,
        Duration::from_secs(90),
        "the draining pod removed",
    )
    .await;
    let after = pods(&env).await;
    let kept: Vec<&String> = held.keys().filter(|n| **n != victim).collect();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        kept,
        "exactly the draining pod goes"
    );
    let o = wait_for(
        &env,
        NAME,
        Duration::from_secs(30),
        "MetricsUnavailable false and 2 serving remembered",
        |o| {
            condition_status(o, "MetricsUnavailable").as_deref() == Some("False")
                && serving_memory(o) == Some(2)
        },
    )
    .await;
    assert!(event_reasons(&env).await.iter().any(|r| r == "ScaledIn"));
    eprintln!(
        "[autoscale] {victim} removed {:.1}s after Prometheus came back; last scale: {:?}; total {:.1}s",
        t_back.elapsed().as_secs_f64(),
        o.status.and_then(|s| s.autoscaling.last_scale_reason),
        t0.elapsed().as_secs_f64()
    );
    operator.stop().await;
    prometheus.stop();
}
