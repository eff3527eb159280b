//! The local system the autoscaling tests and benchmarks share: the shared
//! cluster, a real Prometheus (1 s scrapes), the operator in-process with
//! its signal poller (interval 2 s, window 30 s), the real `steward-router`
//! watching the test's namespace, and the helpers that load it and measure
//! it (`steward-loadgen` through the router, long streams from an in-test
//! client, engine metrics read from the pods, the autoscaler's own
//! utilisation reading evaluated by Prometheus second by second).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use steward_e2e::proc::spawn;
use steward_e2e::prometheus::LocalPrometheus;
use steward_e2e::testing::{eventually, TestFolder};
use steward_e2e::tools::{free_port, workspace_bin};
use steward_operator::crd::{labels, InferenceService};
use steward_operator::signals::{promql, Scope, Signal, Window};

use crate::support::{env, manifest, tiny_model, Killed as Proc, Operator, TestEnv};

/// The analysis interval of every object here (the poller's period).
pub const INTERVAL: Duration = Duration::from_secs(2);

/// The engine flags of every object here. `--fault-token-delay` is the
/// engine's "slower accelerator" test aid: the tiny CPU model decodes a
/// token in about a millisecond, a GPU serving a real model in tens of
/// milliseconds; with 40 ms between tokens a 200-token stream lasts about
/// 8 s, sequences hold their KV blocks as long as they would on a GPU, and
/// the KV cache is the first resource to fill (the executor sleeps between
/// steps, so its utilisation stays low and KV usage carries the
/// utilisation reading). It also keeps four engines cheap on a shared
/// 2-core machine.
pub const ENGINE_ARGS: [&str; 5] = [
    "--torch-threads",
    "1",
    "--enable-fault-injection",
    "--fault-token-delay",
    "40ms",
];

/// KV-cache blocks per engine (16 tokens each).
pub const KV_BLOCKS: i32 = 64;

pub struct System {
    pub env: TestEnv,
    pub dir: PathBuf,
    pub prometheus: LocalPrometheus,
    pub operator: Operator,
    _router: Proc,
    pub router_url: String,
    pub http: reqwest::Client,
    /// Last, so it is dropped after the processes that write into the folder.
    folder: TestFolder,
}

impl System {
    /// The folder (logs, load reports, Prometheus' data) is removed when
    /// the test passes and kept when it fails. Benchmarks keep it always:
    /// their reports are in it.
    pub fn remove_folder_on_pass(&mut self) {
        self.folder.set_remove_on_pass(true);
    }
}

/// Starts Prometheus, the operator and the router for a new namespace.
pub async fn start(prefix: &str) -> System {
    let t0 = Instant::now();
    let env = env(prefix).await;
    let mut folder = TestFolder::new(&format!("steward-{prefix}-")).expect("tempdir");
    folder.set_remove_on_pass(false);
    let dir = folder.path().to_path_buf();
    let model = tiny_model(&dir);
    let (prometheus, operator) = crate::support::prometheus_and_operator(&env, &dir).await;
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
        "[autoscale] cluster, Prometheus, operator and router up in {:.1}s ({})",
        t0.elapsed().as_secs_f64(),
        dir.display()
    );
    System {
        env,
        dir,
        prometheus,
        operator,
        _router: router,
        router_url,
        http,
        folder,
    }
}

/// What differs between the objects of the tests and benchmarks.
pub struct Shape<'a> {
    pub min: i32,
    pub max: i32,
    pub warm: i32,
    pub scale_in_after: &'a str,
    pub drain_window: &'a str,
    /// Engine flags after [`ENGINE_ARGS`].
    pub extra_args: &'a [&'a str],
}

/// An autoscaled object of the real tiny engine (see [`ENGINE_ARGS`]);
/// its model is served as `<name>-model`.
pub fn object(env: &TestEnv, name: &str, s: &Shape<'_>) -> Value {
    let args: Vec<&str> = ENGINE_ARGS.iter().chain(s.extra_args).copied().collect();
    manifest(
        env,
        name,
        s.min,
        json!({
            "engine": {
                "image": "steward-engine:0.1",
                "gpus": 0,
                "maxBatchTokens": 256,
                "kvCacheBlocks": KV_BLOCKS,
                "extraArgs": args,
            },
            "model": { "maxContextTokens": 512 },
            "limits": { "maxTokensPerRequest": 256 },
            "replicas": { "min": s.min, "max": s.max, "warm": s.warm },
            "autoscaling": { "targetUtilization": 70, "scaleInAfter": s.scale_in_after },
            "rollout": { "analysis": { "interval": "2s" } },
            "draining": { "window": s.drain_window },
        }),
    )
}

/// One pod as the tests see it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub rotation: String,
    pub ready: bool,
    pub ip: String,
    pub terminating: bool,
    /// Its `controller.kubernetes.io/pod-deletion-cost`, if set.
    pub deletion_cost: Option<String>,
}

/// Every pod of the object, terminating ones included, by name.
pub async fn all_pods(env: &TestEnv, name: &str) -> BTreeMap<String, PodView> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let sel = format!("{}={name}", labels::SERVICE);
    let Ok(list) = api.list(&ListParams::default().labels(&sel)).await else {
        return BTreeMap::new();
    };
    list.items
        .into_iter()
        .map(|p| {
            let rotation = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::ROTATION).cloned())
                .unwrap_or_default();
            let terminating = p.metadata.deletion_timestamp.is_some();
            let deletion_cost = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(labels::POD_DELETION_COST).cloned());
            let status = p.status.unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (
                p.metadata.name.unwrap_or_default(),
                PodView {
                    rotation,
                    ready,
                    ip: status.pod_ip.unwrap_or_default(),
                    terminating,
                    deletion_cost,
                },
            )
        })
        .collect()
}

/// The pods that are not terminating.
pub async fn pods(env: &TestEnv, name: &str) -> BTreeMap<String, PodView> {
    let mut p = all_pods(env, name).await;
    p.retain(|_, v| !v.terminating);
    p
}

/// Ready pods in `rotation`.
pub fn with(pods: &BTreeMap<String, PodView>, rotation: &str) -> Vec<String> {
    pods.iter()
        .filter(|(_, v)| v.rotation == rotation && v.ready)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Waits until the pods are exactly `serving` ready serving and `warm`
/// ready warm (nothing else, nothing terminating).
pub async fn settle(
    env: &TestEnv,
    name: &str,
    serving: usize,
    warm: usize,
    limit: Duration,
    what: &str,
) {
    let got = eventually(limit, || async {
        let p = all_pods(env, name).await;
        (with(&p, "serving").len() == serving
            && with(&p, "warm").len() == warm
            && p.len() == serving + warm)
            .then_some(())
    })
    .await;
    if let Err(e) = got {
        panic!("{what}: {e}; pods: {:?}", all_pods(env, name).await);
    }
}

pub fn condition_status(o: &InferenceService, type_: &str) -> Option<String> {
    o.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// `status.autoscaling.serving`: the count the autoscaler decided.
pub fn serving_memory(o: &InferenceService) -> Option<i32> {
    o.status.as_ref()?.autoscaling.serving
}

pub fn last_scale_reason(o: &InferenceService) -> String {
    o.status
        .as_ref()
        .and_then(|s| s.autoscaling.last_scale_reason.clone())
        .unwrap_or_default()
}

/// Event reasons in the namespace, `involvedObject` `name`.
pub async fn event_reasons(env: &TestEnv, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(name))
                .filter_map(|e| e.reason)
                .collect()
        })
        .unwrap_or_default()
}

/// Seconds since the Unix epoch (Prometheus' clock: same machine).
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

pub use crate::support::engine_metric;

/// Requests the engine has taken in (it counts their prompt tokens).
pub const TAKEN_IN: &str = "steward_engine_prompt_tokens_total";

/// Watches one pod's engine every 100 ms and answers when it first took a
/// request in (its prompt-token counter moved past `baseline`): the
/// router's first request on that pod, give or take one poll.
pub fn first_request(
    ip: String,
    baseline: f64,
    limit: Duration,
) -> tokio::task::JoinHandle<Option<SystemTime>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(v) = engine_metric(&http, &ip, TAKEN_IN).await {
                if v > baseline {
                    return Some(SystemTime::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    })
}

/// The autoscaler's readings of `name`, evaluated by Prometheus at every
/// whole second of the last `secs` with the very queries the poller runs:
/// `(unix seconds, utilisation, queue per pod)`, where utilisation is the
/// higher of executor utilisation and KV-cache usage over the serving pods.
pub async fn readings_series(sys: &System, name: &str, secs: u64) -> Vec<(f64, f64, f64)> {
    let scope = Scope::service(&sys.env.ns, name);
    let window = Window::for_interval(INTERVAL);
    let mut by_time: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    for signal in [
        Signal::ExecutorUtilization,
        Signal::KvCacheUsage,
        Signal::QueueWaitingPerPod,
    ] {
        let q = format!("({})[{secs}s:1s]", promql::query(signal, &scope, window));
        let data = sys.prometheus.query(&q).await.expect("a subquery answers");
        for series in data["result"].as_array().into_iter().flatten() {
            for point in series["values"].as_array().into_iter().flatten() {
                let t = point[0].as_f64().unwrap_or_default();
                let v = point[1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                if v.is_finite() {
                    let e = by_time.entry((t * 1000.0) as i64).or_insert((0.0, 0.0));
                    if signal == Signal::QueueWaitingPerPod {
                        e.1 = e.1.max(v);
                    } else {
                        e.0 = e.0.max(v);
                    }
                }
            }
        }
    }
    by_time
        .into_iter()
        .map(|(ms, (u, q))| (ms as f64 / 1000.0, u, q))
        .collect()
}

/// The first sample at or after `after` (unix seconds) for which `pred`
/// (utilisation, queue per pod) holds.
pub fn first_sample(
    series: &[(f64, f64, f64)],
    after: f64,
    pred: impl Fn(f64, f64) -> bool,
) -> Option<f64> {
    series
        .iter()
        .find(|(t, u, q)| *t >= after && pred(*u, *q))
        .map(|(t, _, _)| *t)
}

/// A reading reached its target: utilisation 70% or one waiting request
/// per pod (what scale-out answers to: the target itself, no band above it).
pub fn at_target(utilisation: f64, queue: f64) -> bool {
    utilisation >= 0.70 || queue >= 1.0
}

/// `steward-loadgen` streaming through the router for `secs`: a closed
/// loop of `concurrency` requests of `prompt`/`output` tokens
/// (`fixed:N`).
pub fn loadgen(
    sys: &System,
    model: &str,
    label: &str,
    concurrency: usize,
    lengths: (&str, &str),
    secs: u64,
) -> (Proc, PathBuf) {
    let json = sys.dir.join(format!("load-{label}.json"));
    let out = std::fs::File::create(sys.dir.join(format!("load-{label}.log"))).expect("log");
    let mut cmd = Command::new(workspace_bin("steward-loadgen").expect("steward-loadgen is built"));
    cmd.args(["--url", &sys.router_url])
        .args(["--model", model])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--prompt-len", lengths.0, "--output-len", lengths.1])
        .args([
            "--duration",
            &format!("{secs}s"),
            "--request-timeout",
            "60s",
        ])
        .args(["--label", label])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out);
    (Proc(spawn(cmd).expect("steward-loadgen starts")), json)
}

/// Long streams from an in-test client through the router: `n` workers,
/// each sending one stream of `max_tokens` tokens after another until
/// stopped. Each stream is checked whole: status 200, no in-band error,
/// `finish_reason: "length"` and `[DONE]`.
pub struct Streams {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<StreamCounts>>,
}

/// Streams that ended whole, and how the others failed.
#[derive(Debug, Default)]
pub struct StreamCounts {
    pub whole: u64,
    pub failures: Vec<String>,
}

impl Streams {
    pub fn start(sys: &System, model: &str, n: usize, max_tokens: u32) -> Streams {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{}/v1/completions", sys.router_url);
        let tasks = (0..n)
            .map(|i| {
                let stop = stop.clone();
                let url = url.clone();
                let http = sys.http.clone();
                let model = model.to_owned();
                tokio::spawn(async move {
                    let mut c = StreamCounts::default();
                    while !stop.load(Ordering::SeqCst) {
                        let body = long_stream(
                            &model,
                            &format!("worker {i} tells a long story about the sea"),
                            max_tokens,
                        );
                        match tokio::time::timeout(
                            Duration::from_secs(90),
                            one_stream(&http, &url, &body),
                        )
                        .await
                        {
                            Ok(Ok(())) => c.whole += 1,
                            Ok(Err(e)) => c.failures.push(e),
                            Err(_) => c.failures.push("no end within 90s".into()),
                        }
                    }
                    c
                })
            })
            .collect();
        Streams { stop, tasks }
    }

    /// Stops sending; each worker finishes the stream it is on.
    pub async fn finish(self) -> StreamCounts {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = StreamCounts::default();
        for t in self.tasks {
            match t.await {
                Ok(c) => {
                    all.whole += c.whole;
                    all.failures.extend(c.failures);
                }
                Err(e) => all.failures.push(format!("worker: {e}")),
            }
        }
        all
    }
}

/// One long stream after another sent straight to each pod (its IP, not
/// the router), so that every pod has a stream running whichever one the
/// scale-in picks: the router's power-of-two choice can leave a pod with
/// none of the routed streams, and then "drained without a cut" would say
/// nothing. A pod's worker stops after its current stream once
/// [`Pinned::release`] names the pod; a 503 before any byte (the pod began
/// its drain first) ends the worker too and is counted, not failed: nothing
/// was cut.
pub struct Pinned {
    workers: Vec<(
        String,
        Arc<AtomicBool>,
        tokio::task::JoinHandle<StreamCounts>,
    )>,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl Pinned {
    /// `pods`: name → IP of the pods to pin a stream to.
    pub fn start(
        sys: &System,
        model: &str,
        pods: &BTreeMap<String, PodView>,
        max_tokens: u32,
    ) -> Pinned {
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let workers = pods
            .iter()
            .map(|(name, v)| {
                let stop = Arc::new(AtomicBool::new(false));
                let url = format!("http://{}:8000/v1/completions", v.ip);
                let body = long_stream(
                    model,
                    &format!("pinned to {name}: a long story about the sea"),
                    max_tokens,
                );
                let (http, flag, refused) = (sys.http.clone(), stop.clone(), refused.clone());
                let task = tokio::spawn(async move {
                    let mut c = StreamCounts::default();
                    while !flag.load(Ordering::SeqCst) {
                        match tokio::time::timeout(
                            Duration::from_secs(90),
                            one_stream(&http, &url, &body),
                        )
                        .await
                        {
                            Ok(Ok(())) => c.whole += 1,
                            Ok(Err(e)) if e.starts_with("status 503") => {
                                refused.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Ok(Err(e)) => c.failures.push(format!("{url}: {e}")),
                            Err(_) => c.failures.push(format!("{url}: no end within 90s")),
                        }
                    }
                    c
                });
                (name.clone(), stop, task)
            })
            .collect();
        Pinned { workers, refused }
    }

    /// The worker pinned to `pod` sends no new stream after its current one.
    pub fn release(&self, pod: &str) {
        for (name, stop, _) in &self.workers {
            if name == pod {
                stop.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Stops every worker after its current stream; the counts, and how
    /// many workers ended on a 503 before a stream began.
    pub async fn finish(self) -> (StreamCounts, u64) {
        let mut all = StreamCounts::default();
        for (_, stop, _) in &self.workers {
            stop.store(true, Ordering::SeqCst);
        }
        for (name, _, t) in self.workers {
            match t.await {
                Ok(c) => {
                    all.whole += c.whole;
                    all.failures.extend(c.failures);
                }
                Err(e) => all.failures.push(format!("worker pinned to {name}: {e}")),
            }
        }
        (all, self.refused.load(Ordering::SeqCst))
    }
}

/// A greedy stream of exactly `max_tokens` tokens.
fn long_stream(model: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": true,
        "ignore_eos": true,
        "temperature": 0.0,
    })
}

async fn one_stream(http: &reqwest::Client, url: &str, body: &Value) -> Result<(), String> {
    let resp = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("status {status}: {text}"));
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let (mut events, mut done, mut finish) = (0u64, false, None::<String>);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| format!("cut after {events} events: {e}"))?;
        buf.push_str(&String::from_utf8_lossy(&piece));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(data)
                    .map_err(|e| format!("unreadable event after {events}: {e}: {data}"))?;
                if v.get("error").is_some() {
                    return Err(format!("in-band error after {events} events: {data}"));
                }
                events += 1;
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish = Some(f.to_owned());
                }
            }
        }
    }
    if done && finish.as_deref() == Some("length") {
        Ok(())
    } else {
        Err(format!(
            "ended after {events} events without finish_reason length and [DONE] (finish {finish:?}, done {done})"
        ))
    }
}
