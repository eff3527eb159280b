//! The quality gate's runner against real parts: golden sets in ConfigMaps
//! of the shared local cluster, and real `steward-engine` processes on
//! loopback ports (the tiny random-weight model; faulted replicas use the
//! engine's `--enable-fault-injection` test aids).
//!
//! The golden references are captured from a healthy engine's own greedy
//! answers (a random-weight model has no "right" answers otherwise), the
//! way a team would seed a golden set from its stable revision.
//!
//! Runs: healthy vs healthy passes with equal scores and no drift; a
//! replica with corrupted sampled tokens scores lower and is failed; a
//! replica with noisy logits also drifts in perplexity; `poll` runs a key
//! once and wakes the caller; a missing or malformed golden set and an
//! unreachable pod are unknown with the right reason, never pass.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use steward_e2e::tools::{free_port, workspace_bin};
use steward_operator::controller::quality::{
    QualityMetrics, QualityRunner, QualityRunnerConfig, RunKey, RunRequest, RunState, Target,
};
use steward_operator::crd::QualityState;
use steward_operator::quality::{Gate, GateSettings, UnknownReason};
use tokio::sync::OnceCell;

const MODEL: &str = "tiny";

/// A `steward-engine serve` child, killed on drop.
struct Engine {
    child: Child,
    base: String,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engine_bin() -> PathBuf {
    workspace_bin("steward-engine")
        .expect("steward-engine is built (cargo build --release -p steward-engine)")
}

async fn tiny_model() -> &'static Path {
    static DIR: OnceCell<PathBuf> = OnceCell::const_new();
    DIR.get_or_init(|| async {
        let dir = tempfile::Builder::new()
            .prefix("steward-quality-model-")
            .tempdir()
            .expect("tempdir")
            .keep();
        steward_e2e::testing::remove_at_exit(dir.clone());
        let st = Command::new(engine_bin())
            .args(["make-model", "--size", "tiny"])
            .arg(&dir)
            .status()
            .expect("run make-model");
        assert!(st.success(), "make-model failed");
        dir
    })
    .await
}

impl Engine {
    async fn start(extra: &[&str]) -> Engine {
        let model = tiny_model().await;
        let port = free_port().expect("free port");
        let child = Command::new(engine_bin())
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--served-model-name", MODEL, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--torch-threads", "1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn steward-engine");
        let e = Engine {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = http.get(format!("{}/ready", e.base)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "engine {} not ready in 120s",
                e.base
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        e
    }

    fn target(&self, revision: &str) -> Target {
        Target {
            revision: revision.into(),
            base_url: self.base.clone(),
        }
    }

    /// The engine's own greedy answer.
    async fn greedy(&self, prompt: &str, max_tokens: u32) -> String {
        let v: Value = reqwest::Client::new()
            .post(format!("{}/v1/completions", self.base))
            .json(&json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}))
            .send()
            .await
            .expect("completion")
            .json()
            .await
            .expect("json");
        v["choices"][0]["text"].as_str().expect("text").to_string()
    }
}

const PROMPTS: &[(&str, &str)] = &[
    ("facts", "The capital of France is"),
    ("facts", "Water boils at"),
    ("facts", "The speed of light"),
    ("facts", "Scientists measure"),
    ("prose", "Once upon a time"),
    ("prose", "The weather today is"),
    ("prose", "Hello, world"),
    ("prose", "In the beginning"),
];

/// A golden set whose references are `stable`'s own greedy answers.
async fn golden_from(stable: &Engine) -> String {
    let mut entries = Vec::new();
    for (i, (cat, prompt)) in PROMPTS.iter().enumerate() {
        let answer = stable.greedy(prompt, 8).await;
        entries.push(json!({
            "id": format!("e{i}"),
            "category": cat,
            "prompt": prompt,
            "scorer": "exact",
            "reference": answer,
            "maxTokens": 8,
        }));
    }
    serde_yaml::to_string(&entries).expect("yaml")
}

async fn config_map(client: &kube::Client, ns: &str, name: &str, golden: &str) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"golden.yaml": golden}
    }))
    .expect("configmap");
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
}

fn settings() -> GateSettings {
    GateSettings {
        min_score: 0.5,
        margin: 0.05,
        per_category: true,
        perplexity_margin: 0.1,
    }
}

fn request(ns: &str, cm: &str, canary: Target, stable: Target, step: i32) -> RunRequest {
    RunRequest {
        key: RunKey {
            namespace: ns.into(),
            name: "chat".into(),
            canary: canary.revision.clone(),
            stable: stable.revision.clone(),
            step,
        },
        config_map: cm.into(),
        settings: settings(),
        canary,
        stable,
    }
}

fn runner(client: kube::Client, metrics: QualityMetrics) -> QualityRunner {
    QualityRunner::new(
        client,
        QualityRunnerConfig {
            request_timeout: Duration::from_secs(60),
            retry_unknown_after: Duration::from_millis(500),
            ..QualityRunnerConfig::default()
        },
        metrics,
    )
    .expect("runner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_set_runs_score_faulted_replicas_lower_and_catch_perplexity_drift() {
    let t0 = Instant::now();
    let env = support::env("quality").await;
    let (stable, twin, corrupt, noisy) = tokio::join!(
        Engine::start(&[]),
        Engine::start(&[]),
        Engine::start(&[
            "--enable-fault-injection",
            "--fault-corrupt-token-rate",
            "0.5",
            "--fault-seed",
            "7"
        ]),
        Engine::start(&[
            "--enable-fault-injection",
            "--fault-logit-noise",
            "3.0",
            "--fault-seed",
            "7"
        ]),
    );
    eprintln!("engines ready in {:?}", t0.elapsed());
    config_map(&env.client, &env.ns, "golden", &golden_from(&stable).await).await;
    let metrics = QualityMetrics::unregistered();
    let r = runner(env.client.clone(), metrics.clone());

    // Healthy against healthy: same greedy answers, same likelihoods.
    let t = Instant::now();
    let ok = r
        .run(&request(
            &env.ns,
            "golden",
            twin.target("bbbbbbbbbb"),
            stable.target("aaaaaaaaaa"),
            1,
        ))
        .await;
    eprintln!("healthy run took {:?}: {ok:?}", t.elapsed());
    assert_eq!(ok.gate, Gate::Pass);
    for c in &ok.categories {
        assert_eq!((c.canary, c.stable), (1.0, 1.0), "{c:?}");
    }
    assert_eq!(ok.perplexity.state, QualityState::Pass);
    let drift = ok.perplexity.drift.expect("drift measured");
    assert!(drift.abs() < 1e-3, "identical replicas drift {drift}");
    assert!(ok.perplexity.tokens > 0);

    // Corrupted sampled tokens: answers wrong, gate fails naming a category.
    let bad = r
        .run(&request(
            &env.ns,
            "golden",
            corrupt.target("cccccccccc"),
            stable.target("aaaaaaaaaa"),
            1,
        ))
        .await;
    eprintln!("corrupt: {bad:?}");
    let Gate::Fail(msg) = &bad.gate else {
        panic!("corrupted replica not failed: {:?}", bad.gate)
    };
    assert!(
        msg.contains("on canary cccccccccc") && msg.contains("1.00 on stable aaaaaaaaaa"),
        "{msg}"
    );
    assert!(bad.categories.iter().any(|c| c.canary < c.stable));
    // Sampling corruption leaves the model's probabilities alone.
    assert!(
        bad.perplexity.drift.is_some_and(|d| d.abs() < 1e-3),
        "{:?}",
        bad.perplexity
    );

    // Noisy logits: answers and likelihoods both degrade.
    let noisy_report = r
        .run(&request(
            &env.ns,
            "golden",
            noisy.target("dddddddddd"),
            stable.target("aaaaaaaaaa"),
            1,
        ))
        .await;
    eprintln!("noisy: {noisy_report:?}");
    assert!(matches!(noisy_report.gate, Gate::Fail(_)));
    assert_eq!(
        noisy_report.perplexity.state,
        QualityState::Fail,
        "{:?}",
        noisy_report.perplexity
    );
    assert!(noisy_report.perplexity.drift.is_some_and(|d| d > 0.1));
    let st = noisy_report.to_status("dddddddddd", "aaaaaaaaaa", 1);
    assert_eq!(
        st.perplexity.as_ref().map(|p| p.state),
        Some(QualityState::Fail)
    );

    assert_eq!(metrics.requests("answer", "error"), 0);
    assert!(metrics.requests("likelihood", "ok") > 0);
    eprintln!("scenario took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_runs_each_step_once_wakes_the_caller_and_retries_unknowns() {
    let env = support::env("quality-poll").await;
    let stable = Engine::start(&[]).await;
    let woken = Arc::new(AtomicUsize::new(0));
    let w = woken.clone();
    let r = runner(env.client.clone(), QualityMetrics::unregistered()).with_waker(Arc::new(
        move |_k: &RunKey| {
            w.fetch_add(1, Ordering::SeqCst);
        },
    ));
    let done = |req: RunRequest| {
        let r = r.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if let RunState::Done(rep) = r.poll(req.clone()) {
                    return rep;
                }
                assert!(Instant::now() < deadline, "run did not finish");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // No ConfigMap yet: unknown, GoldenSetNotFound; never pass.
    let req = request(
        &env.ns,
        "golden",
        stable.target("bbbbbbbbbb"),
        stable.target("aaaaaaaaaa"),
        1,
    );
    assert!(matches!(r.poll(req.clone()), RunState::Running));
    let rep = done(req.clone()).await;
    assert!(
        matches!(&rep.gate, Gate::Unknown(u) if u.reason == UnknownReason::GoldenSetNotFound),
        "{:?}",
        rep.gate
    );
    // Unknown results expire: after creating the ConfigMap the same key
    // runs again and passes.
    config_map(&env.client, &env.ns, "golden", &golden_from(&stable).await).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rep = done(req.clone()).await;
    assert_eq!(rep.gate, Gate::Pass);
    // A decided result is cached for the step: the same Arc comes back.
    let again = done(req.clone()).await;
    assert!(Arc::ptr_eq(&rep, &again), "the step ran twice");
    assert_eq!(woken.load(Ordering::SeqCst), 2, "one wake per finished run");
    // A new step runs again.
    let mut next = req.clone();
    next.key.step = 2;
    assert!(matches!(r.poll(next.clone()), RunState::Running));
    let rep2 = done(next).await;
    assert!(!Arc::ptr_eq(&rep, &rep2));

    // A malformed golden set: unknown, naming the entry.
    config_map(
        &env.client,
        &env.ns,
        "broken",
        "- {id: ok, category: c, prompt: p, scorer: json-valid}\n- {id: year, category: c, prompt: p, scorer: regex, reference: '(1969'}\n",
    )
    .await;
    let mut broken = request(
        &env.ns,
        "broken",
        stable.target("bbbbbbbbbb"),
        stable.target("aaaaaaaaaa"),
        3,
    );
    broken.key.name = "other".into();
    let rep = done(broken).await;
    let Gate::Unknown(u) = &rep.gate else {
        panic!("{:?}", rep.gate)
    };
    assert_eq!(u.reason, UnknownReason::GoldenSetInvalid);
    assert!(
        u.message.contains("entry `year`") && u.message.contains("regex"),
        "{}",
        u.message
    );

    // A pod nobody listens on: unknown, QualityUnavailable, naming it.
    let dead = Target {
        revision: "eeeeeeeeee".into(),
        base_url: format!("http://127.0.0.1:{}", free_port().expect("port")),
    };
    let mut unreachable = request(&env.ns, "golden", dead, stable.target("aaaaaaaaaa"), 1);
    unreachable.key.name = "third".into();
    let rep = done(unreachable).await;
    let Gate::Unknown(u) = &rep.gate else {
        panic!("{:?}", rep.gate)
    };
    assert_eq!(u.reason, UnknownReason::QualityUnavailable);
    assert!(u.message.contains("revision eeeeeeeeee"), "{}", u.message);
    let st = rep.to_status("eeeeeeeeee", "aaaaaaaaaa", 1);
    assert_eq!(st.state, QualityState::Unknown);
}
