//! Shared set-up of the operator's cluster tests: the shared local cluster
//! (real etcd, kube-apiserver, controller-manager, scheduler and the local
//! node from `steward-e2e`), the CRD installed from `crds/`, the engine
//! stand-in in the node's image map, a namespace per test, and an operator
//! running in-process scoped to that namespace.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::Value;
use steward_e2e::testing::{eventually, shared, unique_ns};
use steward_operator::controller::OperatorConfig;
use steward_operator::crd::InferenceService;
use steward_operator::metrics::Metrics;
use steward_operator::run::{run, RunConfig};
use tokio::sync::OnceCell;

/// The image the stand-in engine is mapped under.
pub const STANDIN_IMAGE: &str = "steward-engine-standin:0.1";

static INIT: OnceCell<PathBuf> = OnceCell::const_new();

/// One test's view of the cluster.
pub struct TestEnv {
    /// A client made in this test's runtime.
    pub client: Client,
    /// The test's own namespace.
    pub ns: String,
    /// The cluster's kubeconfig.
    pub kubeconfig: PathBuf,
    /// A model directory that exists (`file://` uri).
    pub model_uri: String,
}

async fn init_once(client: &Client) -> anyhow::Result<PathBuf> {
    let s = shared().await?;
    // The node re-reads its image map for each container start.
    let map_path = s.node.image_map();
    let mut map: BTreeMap<String, PathBuf> =
        serde_yaml::from_str(&std::fs::read_to_string(map_path)?).unwrap_or_default();
    map.insert(
        "steward-engine-standin".into(),
        steward_e2e::parts::repo_root().join("operator/tests/support/steward-engine"),
    );
    std::fs::write(map_path, serde_yaml::to_string(&map)?)?;

    steward_e2e::parts::install_crd(client).await?;
    let models = tempfile::Builder::new()
        .prefix("steward-operator-models-")
        .tempdir()?
        .keep();
    steward_e2e::testing::remove_at_exit(models.clone());
    std::fs::create_dir_all(models.join("tiny"))?;
    Ok(models.join("tiny"))
}

/// Cluster, CRD and stand-in ready; a fresh namespace.
pub async fn env(prefix: &str) -> TestEnv {
    let s = shared().await.expect("shared local cluster starts");
    let client = s.cluster.client().await.expect("client");
    let model = INIT
        .get_or_try_init(|| init_once(&client))
        .await
        .expect("CRD installs and stand-in is mapped");
    let ns = unique_ns(prefix);
    steward_e2e::create_namespace(&client, &ns)
        .await
        .expect("namespace");
    TestEnv {
        client,
        ns,
        kubeconfig: s.cluster.kubeconfig_path().to_path_buf(),
        model_uri: format!("file://{}", model.display()),
    }
}

/// An operator running in this test's runtime, watching one namespace.
pub struct Operator {
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    /// Starts it without leader election.
    pub fn start(env: &TestEnv) -> Operator {
        Self::start_with(env, |_| {})
    }

    /// Starts it without leader election, with settings changed by `tweak`.
    pub fn start_with(env: &TestEnv, tweak: impl FnOnce(&mut OperatorConfig)) -> Operator {
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut operator = OperatorConfig {
            namespace: Some(env.ns.clone()),
            identity: format!("test-{}", env.ns),
            // HTTPRoutes off: lifecycle's gateway test installs the Gateway
            // API CRDs mid-run, and another test's operator finding them at
            // a random moment would write a route inside that test's
            // zero-write window. The gateway test turns them on.
            gateway: steward_operator::controller::gateway::GatewayConfig {
                enabled: false,
                ..Default::default()
            },
            ..OperatorConfig::default()
        };
        tweak(&mut operator);
        let cfg = RunConfig {
            operator,
            listen: "127.0.0.1:0".parse().expect("address"),
            lease: None,
        };
        let client = env.client.clone();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(e) = run(client, cfg, m, shutdown).await {
                eprintln!("operator stopped: {e}");
            }
        });
        Operator {
            metrics,
            stop: Some(tx),
            task,
        }
    }

    /// True while the operator task runs (it ends on a panic or an error).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops it and waits.
    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    /// Stops it and waits, keeping the handle (a test that hands the
    /// object over to other operator replicas).
    pub async fn shut_down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A valid manifest: the stand-in engine, no GPUs, `min` pods, no canary
/// steps, merged with
/// `spec_patch` (a JSON merge of the spec).
pub fn manifest(env: &TestEnv, name: &str, min: i32, spec_patch: Value) -> Value {
    let mut spec = serde_json::json!({
        "model": { "name": format!("{name}-model"), "uri": env.model_uri },
        "engine": { "image": STANDIN_IMAGE, "gpus": 0 },
        "replicas": { "min": min },
        "draining": { "window": "2s" },
        // No canary steps: a ready revision is promoted at once (the
        // lifecycle tests); a test that walks steps sets its own.
        "rollout": { "steps": [] },
    });
    merge(&mut spec, spec_patch);
    serde_json::json!({
        "apiVersion": "serving.steward.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": { "name": name, "namespace": env.ns },
        "spec": spec,
    })
}

/// JSON merge patch semantics, for building manifests.
pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}

/// Applies a manifest as the user would (`kubectl apply --server-side`).
pub async fn apply(env: &TestEnv, obj: &Value) -> Result<InferenceService, kube::Error> {
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.patch(
        &name,
        &PatchParams::apply("test-user").force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Polls the object until `pred` holds.
pub async fn wait_for(
    env: &TestEnv,
    name: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&InferenceService) -> bool,
) -> InferenceService {
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let got = eventually(limit, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let o = api.get_opt(name).await.ok().flatten()?;
            pred(&o).then_some(o)
        }
    })
    .await;
    match got {
        Ok(o) => o,
        Err(e) => {
            let last = api.get_opt(name).await.ok().flatten();
            panic!(
                "{name}: {what}: {e}; last status: {}",
                last.and_then(|o| o.status)
                    .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                    .unwrap_or_else(|| "none".into())
            )
        }
    }
}

/// True when the status says Ready for the current generation.
pub fn ready_and_current(o: &InferenceService) -> bool {
    o.status.as_ref().is_some_and(|s| {
        s.phase == steward_operator::crd::Phase::Ready
            && s.observed_generation == o.metadata.generation
    })
}

/// Runs a command and returns (success, stdout + stderr).
pub fn run_cmd(cmd: &mut std::process::Command) -> (bool, String) {
    match cmd.output() {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, format!("could not run {cmd:?}: {e}")),
    }
}

/// The path of a tool from `tools/setup.sh`.
pub fn tool(name: &str) -> PathBuf {
    steward_e2e::tools::find_tool(name).expect("kube tools on PATH (tools/setup.sh)")
}

#[allow(unused_imports)]
pub use steward_e2e::parts::{tiny_model, Killed};

/// A real Prometheus in `dir/prometheus` (finding engine pods through the
/// API) and an in-process operator whose signal pollers query it.
pub async fn prometheus_and_operator(
    env: &TestEnv,
    dir: &std::path::Path,
) -> (steward_e2e::prometheus::LocalPrometheus, Operator) {
    let prometheus = steward_e2e::prometheus::LocalPrometheus::start(
        Some(env.client.clone()),
        steward_e2e::prometheus::PrometheusOptions::in_dir(dir.join("prometheus")),
    )
    .await
    .expect("prometheus starts");
    let url = prometheus.url();
    let operator = Operator::start_with(env, |cfg| {
        cfg.signals.prometheus = Some(steward_operator::controller::prometheus::PrometheusConfig {
            url,
            timeout: Duration::from_secs(2),
            max_in_flight: 16,
        });
    });
    (prometheus, operator)
}

/// What a load generator run reported.
#[derive(Debug)]
pub struct LoadReport {
    pub sent: u64,
    pub failed: u64,
    pub abandoned: u64,
    pub errors: serde_json::Value,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
}

/// Waits for the load generator to end and reads its report.
pub async fn finish(mut p: Killed, json: &std::path::Path, limit: Duration) -> LoadReport {
    let t = std::time::Instant::now();
    while p.0.try_wait().ok().flatten().is_none() {
        assert!(
            t.elapsed() < limit,
            "steward-loadgen did not finish in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).expect("the report"))
            .expect("report JSON");
    let r = &doc["report"];
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    let ttft = |k: &str| r["ttft_ms"][k].as_f64().unwrap_or(f64::NAN);
    LoadReport {
        sent: n("sent"),
        failed: n("failed"),
        abandoned: n("abandoned"),
        errors: r["errors"].clone(),
        ttft_p50_ms: ttft("p50"),
        ttft_p99_ms: ttft("p99"),
    }
}

/// The sum of every series of `metric` on one engine pod, from its
/// `/metrics` (port 8000 of the pod's loopback IP); `None` when the pod does
/// not answer or has no such series.
pub async fn engine_metric(http: &reqwest::Client, ip: &str, metric: &str) -> Option<f64> {
    let text = http
        .get(format!("http://{ip}:8000/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        if name == metric {
            if let Ok(v) = value.parse::<f64>() {
                sum = Some(sum.unwrap_or(0.0) + v);
            }
        }
    }
    sum
}

/// A benchmark's setting from the environment, or `default` when unset or
/// not a number.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The 1, 5 and 15 minute load averages, for a benchmark's figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
