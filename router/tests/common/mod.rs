//! Shared helpers for the router's HTTP tests: a small in-process engine
//! (a real HTTP peer on 127.0.0.x that speaks `/load` and OpenAI SSE and can
//! be told to fail or to die) and a router started over a directly fed index.
//!
//! The engine is a test server rather than steward-engine because these
//! tests need failures on cue (die before the first byte, die mid-stream,
//! answer 400/503) that a real engine cannot be made to produce reliably.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use steward_router::config::{PollConfig, ProxyConfig};
use steward_router::index::{
    ObjKey, PodView, ServiceView, SharedIndex, TenantLimits, TrafficWeight,
};
use steward_router::retry::BudgetConfig;
use steward_router::server::{RouterState, RunningRouter};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the engine does with the next completion requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// Answer with this status and an OpenAI error body.
    Status(u16),
    /// Accept the request, then die before sending anything.
    DieBeforeFirstByte,
    /// Stream this many chunks, then die.
    DieAfterChunks(usize),
    /// A broken engine that still answers: streams get a 200 head and then
    /// an in-band `{"error": ...}` event and `[DONE]`; non-streaming
    /// requests get a 500. Both come back at once (it fails fast).
    InBandError,
    /// Wait this long before the response head (non-streaming: the whole
    /// answer, as a real engine does when generation takes long).
    SlowHead(Duration),
}

pub struct EngineState {
    pub name: String,
    pub mode: Mutex<Mode>,
    pub load: Mutex<serde_json::Value>,
    pub chunks: usize,
    pub chunk_delay: Duration,
    pub requests: AtomicUsize,
    pub completed: AtomicUsize,
    pub cancelled: AtomicUsize,
    kill: watch::Sender<bool>,
}

pub struct TestEngine {
    pub addr: SocketAddr,
    pub state: Arc<EngineState>,
}

impl TestEngine {
    pub async fn start(name: &str, ip_last: u8) -> Self {
        Self::start_with(name, ip_last, 5, Duration::from_millis(5)).await
    }

    /// An engine on 127.0.0.`ip_last` whose streams send `chunks` events `chunk_delay` apart.
    pub async fn start_with(name: &str, ip_last: u8, chunks: usize, chunk_delay: Duration) -> Self {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, ip_last));
        Self::start_at(name, SocketAddr::new(ip, 0), chunks, chunk_delay).await
    }

    /// An engine on exactly `addr` (port 0: any), e.g. a new pod that got a
    /// dead pod's IP and port.
    pub async fn start_at(
        name: &str,
        addr: SocketAddr,
        chunks: usize,
        chunk_delay: Duration,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind test engine");
        let addr = listener.local_addr().expect("local addr");
        let (kill, _) = watch::channel(false);
        let state = Arc::new(EngineState {
            name: name.to_string(),
            mode: Mutex::new(Mode::Ok),
            load: Mutex::new(
                serde_json::json!({"running":0,"waiting":0,"kv_cache_usage":0.0,"utilization":0.0,"draining":false}),
            ),
            chunks,
            chunk_delay,
            requests: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            kill,
        });
        let app = axum::Router::new()
            .route("/load", get(load))
            .route("/v1/completions", post(completions))
            .route("/v1/chat/completions", post(completions))
            // The engine's body limit is the router's (4 MiB): they agree.
            .layer(axum::extract::DefaultBodyLimit::max(4 << 20))
            .with_state(state.clone());
        let mut killed = state.kill.subscribe();
        let conn_kill = state.kill.clone();
        tokio::spawn(async move {
            loop {
                let sock = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = killed.wait_for(|k| *k) => break,
                };
                let svc = TowerToHyperService::new(app.clone());
                let mut k = conn_kill.subscribe();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = k.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        Self { addr, state }
    }

    pub fn set_mode(&self, m: Mode) {
        *self.state.mode.lock().expect("mode") = m;
    }

    pub fn set_load(&self, running: u32) {
        *self.state.load.lock().expect("load") = serde_json::json!({"running":running,"waiting":0,"kv_cache_usage":0.0,"utilization":0.0,"draining":false});
    }

    /// Closes the listener and every open connection, like a killed process.
    pub fn kill(&self) {
        self.state.kill.send_replace(true);
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }
}

async fn load(State(s): State<Arc<EngineState>>) -> Response {
    let v = s.load.lock().expect("load").clone();
    axum::Json(v).into_response()
}

/// Counts a stream as cancelled if dropped before its end.
struct StreamGuard {
    state: Arc<EngineState>,
    done: bool,
}

impl StreamGuard {
    fn mark_done(&mut self) {
        self.done = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.done {
            self.state.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn completions(State(s): State<Arc<EngineState>>, body: Bytes) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let stream = req.get("stream").and_then(|v| v.as_bool()).unwrap_or(false);
    let mode = *s.mode.lock().expect("mode");
    match mode {
        Mode::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::json!({"error":{"message":"test engine refused","type":"test","code":code}});
            return (status, [(header::RETRY_AFTER, "1")], axum::Json(body)).into_response();
        }
        Mode::DieBeforeFirstByte => {
            s.kill.send_replace(true);
            std::future::pending::<()>().await;
        }
        Mode::InBandError if stream => {
            let body = "data: {\"error\":{\"message\":\"step failed\",\"type\":\"internal_error\",\"param\":null,\"code\":500}}\n\ndata: [DONE]\n\n";
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from(body))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        Mode::InBandError => {
            let body = serde_json::json!({"error":{"message":"step failed","type":"internal_error","code":500}});
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
        }
        Mode::SlowHead(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    if !stream {
        s.completed.fetch_add(1, Ordering::SeqCst);
        return axum::Json(serde_json::json!({
            "id": "cmpl-1", "object": "text_completion", "engine": s.name,
            "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]
        }))
        .into_response();
    }
    let die_after = match mode {
        Mode::DieAfterChunks(n) => Some(n),
        _ => None,
    };
    let guard = StreamGuard {
        state: s.clone(),
        done: false,
    };
    let st = futures::stream::unfold((0usize, guard), move |(i, mut guard)| async move {
        if Some(i) == die_after {
            guard.state.kill.send_replace(true);
            std::future::pending::<()>().await;
        }
        let total = guard.state.chunks;
        if i > total {
            guard.mark_done();
            return None;
        }
        if i > 0 {
            tokio::time::sleep(guard.state.chunk_delay).await;
        }
        let chunk = if i == total {
            "data: [DONE]\n\n".to_string()
        } else {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"text\":\"t{i}\"}}],\"engine\":\"{}\"}}\n\n",
                guard.state.name
            )
        };
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (i + 1, guard)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(st))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

pub const NS: &str = "team-a";
pub const SVC: &str = "chat";
pub const MODEL: &str = "chat-small";

pub fn service(traffic: &[(&str, u32)], limits: Option<TenantLimits>) -> ServiceView {
    ServiceView {
        key: ObjKey::new(NS, SVC),
        created: Some(1_700_000_000),
        model: MODEL.to_string(),
        traffic: traffic
            .iter()
            .map(|(r, w)| TrafficWeight {
                revision: r.to_string(),
                weight: *w,
            })
            .collect(),
        tenant_limits: limits,
    }
}

pub fn pod(name: &str, revision: &str, addr: SocketAddr) -> PodView {
    PodView {
        key: ObjKey::new(NS, name),
        uid: format!("uid-{name}"),
        service: SVC.to_string(),
        revision: revision.to_string(),
        serving: true,
        ready: true,
        terminating: false,
        addr: Some(addr),
    }
}

/// Test defaults: fast polls, short back-off, no retry-budget floor.
pub fn proxy_config() -> ProxyConfig {
    ProxyConfig {
        retry_backoff: Duration::from_millis(5),
        retry_budget: BudgetConfig {
            ratio: 1.0,
            min_per_second: 0.0,
            ..BudgetConfig::default()
        },
        ..ProxyConfig::default()
    }
}

pub async fn start_router(cfg: ProxyConfig, index: SharedIndex) -> RunningRouter {
    let (state, poller) = RouterState::new(
        cfg,
        PollConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(400),
        },
        index,
    );
    state.ready.store(true, Ordering::SeqCst);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind router");
    RunningRouter::start(listener, state, poller).expect("start router")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

pub fn completion(stream: bool) -> serde_json::Value {
    serde_json::json!({"model": MODEL, "prompt": "hello", "max_tokens": 4, "stream": stream})
}

/// Sends a non-streaming completion to `url` (a transport failure fails the
/// test; any status is returned).
pub async fn post_completion(http: &reqwest::Client, url: &str) -> reqwest::Response {
    http.post(url)
        .json(&completion(false))
        .send()
        .await
        .expect("send")
}

/// Sum of a metric's samples whose label text contains every `needle`.
pub fn metric(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Polls `f` until it holds or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

pub fn router_bin() -> &'static str {
    env!("CARGO_BIN_EXE_steward-router")
}

/// A real `steward-router` process over a static routes file.
pub struct RouterProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RouterProcess {
    /// Starts the binary routing model [`MODEL`] to `engine`, with extra
    /// environment (flags as `STEWARD_ROUTER_*`).
    pub fn start(engine: SocketAddr, env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "steward-router-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let routes = dir.join("routes.json");
        std::fs::write(
            &routes,
            serde_json::json!({
                "services": [{"namespace": NS, "name": SVC, "model": MODEL,
                              "traffic": [{"revision": "r1", "weight": 100}]}],
                "endpoints": [{"namespace": NS, "service": SVC, "revision": "r1", "addr": engine.to_string()}]
            })
            .to_string(),
        )
        .expect("write routes");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(router_bin());
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--static-routes")
            .arg(&routes)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start steward-router");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Self { child, addr, log }
    }

    pub async fn wait_healthy(&self) {
        let url = format!("http://{}/healthz", self.addr);
        let ok = eventually_async(Duration::from_secs(20), || async {
            client()
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(
            ok,
            "router never became healthy: {:?}",
            self.log.lock().map(|l| l.clone())
        );
    }

    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(st.success());
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn eventually_async<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl RouterProcess {
    /// Resident memory of the process now (bytes), from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lines the process logged that report a panic.
    pub fn panics(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|l| l.contains("panicked"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}
