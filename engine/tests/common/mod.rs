//! Test harness: makes the tiny model once per test binary and runs the real
//! `steward-engine serve` process on a free loopback port.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;

pub const MODEL: &str = "tiny";

pub fn tiny_model() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("steward-tiny-")
            .tempdir()
            .expect("tempdir")
            .keep();
        remove_at_exit(&dir);
        steward_engine::make_model::make_model(steward_engine::make_model::ModelSize::Tiny, &dir)
            .expect("make tiny model");
        dir
    })
    .clone()
}

/// The tiny model's folder, removed when the test process exits (a static
/// is never dropped). `STEWARD_KEEP_TEST_CLUSTER` keeps it.
fn remove_at_exit(dir: &std::path::Path) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove() {
        if let Some(d) = DIR.get() {
            if std::env::var_os("STEWARD_KEEP_TEST_CLUSTER").is_none() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    if DIR.set(dir.to_path_buf()).is_ok() {
        // SAFETY: registering a plain extern "C" fn that only reads a static.
        unsafe {
            libc::atexit(remove);
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Engine {
    pub child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

impl Engine {
    /// Starts an engine with extra flags (and one torch thread) and waits
    /// until /ready.
    pub async fn start(extra: &[&str]) -> Engine {
        let mut args = vec!["--torch-threads", "1"];
        args.extend_from_slice(extra);
        Self::spawn(&args, &[], Stdio::inherit()).await
    }

    /// Starts an engine with exactly these extra flags and environment
    /// variables (no thread count of its own) and waits until /ready.
    pub async fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Engine {
        Self::spawn(extra, env, Stdio::inherit()).await
    }

    /// Like `start`, with the engine's stderr going to `stderr`.
    pub async fn start_with_stderr(extra: &[&str], stderr: Stdio) -> Engine {
        let mut args = vec!["--torch-threads", "1"];
        args.extend_from_slice(extra);
        Self::spawn(&args, &[], stderr).await
    }

    async fn spawn(extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Engine {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_steward-engine"))
            .arg("serve")
            .arg("--model")
            .arg(tiny_model())
            .args(["--served-model-name", MODEL, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn steward-engine");
        let e = Engine {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = e.client.get(e.url("/ready")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "engine did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        e
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn load(&self) -> serde_json::Value {
        self.client
            .get(self.url("/load"))
            .send()
            .await
            .expect("load")
            .json()
            .await
            .expect("load json")
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns true.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A streaming completion read chunk by chunk.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
    pub events: Vec<String>,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            stream: resp.bytes_stream().boxed(),
            buf: String::new(),
            events: Vec::new(),
        }
    }

    /// Reads raw bytes until `needle` appears in them (true) or the stream
    /// ends (false).
    pub async fn raw_until(&mut self, needle: &str) -> bool {
        loop {
            if self.buf.contains(needle) {
                return true;
            }
            match self.stream.next().await {
                Some(Ok(b)) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                _ => return false,
            }
        }
    }

    /// Next `data:` payload, or None at end of stream.
    pub async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                    .collect();
                if data.is_empty() {
                    continue; // comment keep-alive
                }
                let d = data.join("\n");
                self.events.push(d.clone());
                return Some(d);
            }
            match self.stream.next().await {
                Some(Ok(b)) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                _ => return None,
            }
        }
    }

    /// Reads to the end; returns (text, finish_reason, saw_done).
    pub async fn finish(&mut self) -> (String, Option<String>, bool) {
        let mut text = String::new();
        let mut finish = None;
        let mut done = false;
        for d in self.events.clone() {
            absorb(&d, &mut text, &mut finish, &mut done);
        }
        while let Some(d) = self.next_data().await {
            absorb(&d, &mut text, &mut finish, &mut done);
        }
        (text, finish, done)
    }
}

fn absorb(d: &str, text: &mut String, finish: &mut Option<String>, done: &mut bool) {
    if d == "[DONE]" {
        *done = true;
        return;
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(d) {
        let c = &v["choices"][0];
        if let Some(t) = c["text"].as_str() {
            text.push_str(t);
        }
        if let Some(t) = c["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = c["finish_reason"].as_str() {
            *finish = Some(f.to_string());
        }
    }
}

/// Value of the first sample named `name` whose labels include every
/// `key="value"` string in `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let n = l.split(['{', ' ']).next().unwrap_or("");
            n == name && labels.iter().all(|lab| l.contains(lab))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends SIGTERM to the engine (what the kubelet does after preStop).
pub fn sigterm(e: &Engine) {
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(e.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM sent");
}

/// The engine's port.
pub fn port(e: &Engine) -> u16 {
    e.base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in base url")
}

/// A blocking loopback TCP connection whose receive buffer is set to
/// `rcvbuf` bytes before connecting (a client that reads slowly, with no
/// large kernel buffer to hide it).
pub fn connect_with_rcvbuf(port: u16, rcvbuf: i32) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; it is handed to
    // TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let r = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &rcvbuf as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "SO_RCVBUF");
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect");
        std::net::TcpStream::from_raw_fd(fd)
    }
}

/// A raw HTTP/1.1 POST with a JSON body (`Connection: close`).
pub fn raw_post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Resident memory of a process in MiB (VmRSS), if it can be read.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
