//! Talking to engines: a per-thread pool of HTTP/1.1 connections and a
//! small client that runs on the caller's task, and the classification of
//! what goes wrong before the response head.
//!
//! Each server thread owns one [`EnginePool`] (see [`crate::serve`]). A
//! request takes an idle connection to its engine (or connects), writes
//! its head and body on it from the request's own task, and reads the
//! response head there; the response body ([`UpstreamBody`]) reads the
//! rest from the same socket while hyper's server polls it, and puts the
//! connection back in the pool when the body ends cleanly. No task, channel
//! or wake-up sits between the client's request and the engine's socket
//! (hyper-util's pooled `Client` handed every request to a connection task;
//! that hand-off was the largest fixed cost the profile showed).
//!
//! Stale connections: an engine may close a connection while it idles in
//! the pool. Checkout skips connections whose close has already been seen
//! (a read-readiness check that costs no system call when nothing
//! arrived), and ones idle longer than the idle timeout. If a reused
//! connection still fails before a single byte of the answer (write error,
//! reset or EOF), the request is sent again once, on a fresh connection:
//! the engine closed it as idle and never read the request.
//! Failures on a fresh connection are classified for the retry policy:
//! connect refused or timed out → [`EarlyFailure::Connect`]; the
//! connection closed, reset or answered garbage before a complete head →
//! [`EarlyFailure::ClosedBeforeResponse`].
//!
//! The load poller's `GET /load` still uses hyper-util's client
//! ([`client`]): it is not on the request path.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Method, Response};
use http_body::Frame;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::h1::{self, Decoded, Decoder, Framing, Parsed};
use crate::retry::EarlyFailure;

pub use crate::h1::is_hop_header;

/// hyper-util's pooled client, for the load poller.
pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the poller's client; `connect_timeout` bounds each TCP connect.
pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// Request bodies up to this size go out in the same write as the head.
const COALESCE_BODY: usize = 16 << 10;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 << 10;
/// How often checkin sweeps the whole pool for expired connections.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Pool settings.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    /// An idle connection older than this is closed, not reused.
    pub idle_timeout: Duration,
    pub max_idle_per_engine: usize,
}

impl PoolConfig {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            idle_timeout: Duration::from_secs(30),
            max_idle_per_engine: 256,
        }
    }
}

/// One server thread's connections to the engines (cheap to clone).
#[derive(Clone)]
pub struct EnginePool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    cfg: PoolConfig,
    state: Mutex<PoolState>,
}

struct PoolState {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    last_sweep: Instant,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One connection to an engine and its buffers.
struct Conn {
    io: TcpStream,
    addr: SocketAddr,
    host: String,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Whether it came from the pool (it carried a request before).
    reused: bool,
}

impl Conn {
    /// Whether the engine's close (or stray bytes) has arrived while idle.
    /// Without read readiness this returns at once, with no system call.
    fn looks_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// How one exchange on one connection failed.
enum Attempt {
    /// A reused connection failed before any byte of the answer: send again on a fresh one.
    Stale,
    Failed(EarlyFailure),
}

impl EnginePool {
    pub fn new(cfg: PoolConfig) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                cfg,
                state: Mutex::new(PoolState {
                    idle: HashMap::new(),
                    last_sweep: Instant::now(),
                }),
            }),
        }
    }

    /// Idle connections held, over all engines.
    pub fn idle_count(&self) -> usize {
        self.inner
            .state
            .lock()
            .map(|s| s.idle.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        let mut st = self.inner.state.lock().ok()?;
        let list = st.idle.get_mut(&addr)?;
        // Most recently used first: the least likely to have been closed.
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < self.inner.cfg.idle_timeout && idle.conn.looks_open() {
                return Some(idle.conn);
            }
            tracing::debug!(endpoint = %addr, "dropping a pooled connection the engine closed or that idled too long");
        }
        None
    }

    fn checkin(&self, mut conn: Conn) {
        let Ok(mut st) = self.inner.state.lock() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(st.last_sweep) >= SWEEP_EVERY {
            st.last_sweep = now;
            let timeout = self.inner.cfg.idle_timeout;
            st.idle.retain(|_, list| {
                list.retain(|i| now.duration_since(i.since) < timeout && i.conn.looks_open());
                !list.is_empty()
            });
        }
        let max = self.inner.cfg.max_idle_per_engine;
        let list = st.idle.entry(conn.addr).or_default();
        if list.len() < max {
            conn.reused = true;
            list.push(Idle { conn, since: now });
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, EarlyFailure> {
        let io = match tokio::time::timeout(
            self.inner.cfg.connect_timeout,
            TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %addr, error = %e, "connect failed");
                return Err(EarlyFailure::Connect);
            }
            Err(_) => {
                tracing::debug!(endpoint = %addr, timeout = ?self.inner.cfg.connect_timeout, "connect timed out");
                return Err(EarlyFailure::Connect);
            }
        };
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        Ok(Conn {
            io,
            addr,
            host: h1::host_header(addr),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
            reused: false,
        })
    }

    /// Sends one request to `addr` and reads the response head (no timeout;
    /// see [`send`]). `headers` are the client's: hop-by-hop ones are left out.
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Response<UpstreamBody>, EarlyFailure> {
        if let Some(conn) = self.checkout(addr) {
            match self
                .exchange(conn, method, path_and_query, headers, body)
                .await
            {
                Ok(r) => return Ok(r),
                Err(Attempt::Failed(f)) => return Err(f),
                Err(Attempt::Stale) => {
                    tracing::debug!(endpoint = %addr, "pooled connection was closed by the engine; sending on a fresh one");
                }
            }
        }
        let conn = self.connect(addr).await?;
        match self
            .exchange(conn, method, path_and_query, headers, body)
            .await
        {
            Ok(r) => Ok(r),
            Err(Attempt::Stale) => Err(EarlyFailure::ClosedBeforeResponse),
            Err(Attempt::Failed(f)) => Err(f),
        }
    }

    async fn exchange(
        &self,
        mut conn: Conn,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Response<UpstreamBody>, Attempt> {
        let closed = |conn: &Conn, received: bool| {
            if conn.reused && !received {
                Attempt::Stale
            } else {
                Attempt::Failed(EarlyFailure::ClosedBeforeResponse)
            }
        };
        let mut wbuf = std::mem::take(&mut conn.wbuf);
        wbuf.clear();
        h1::encode_request_head(&mut wbuf, method, path, &conn.host, headers, body.len());
        let coalesce = body.len() <= COALESCE_BODY;
        if coalesce {
            wbuf.extend_from_slice(body);
        }
        let mut written = conn.io.write_all(&wbuf).await;
        if written.is_ok() && !coalesce {
            written = conn.io.write_all(body).await;
        }
        if wbuf.capacity() <= 64 << 10 {
            conn.wbuf = wbuf;
        }
        if let Err(e) = written {
            tracing::debug!(endpoint = %conn.addr, error = %e, "writing the request failed");
            return Err(closed(&conn, false));
        }
        let mut received = false;
        loop {
            match h1::parse_response_head(&conn.rbuf, method) {
                Ok(Parsed::Complete(head, len)) => {
                    let _ = conn.rbuf.split_to(len);
                    let mut resp = Response::new(UpstreamBody::new(
                        conn,
                        head.framing,
                        head.keep_alive,
                        self.clone(),
                    ));
                    *resp.status_mut() = head.status;
                    *resp.headers_mut() = head.headers;
                    return Ok(resp);
                }
                Ok(Parsed::Informational(len)) => {
                    let _ = conn.rbuf.split_to(len);
                    received = true;
                    continue;
                }
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    tracing::debug!(endpoint = %conn.addr, error = %e, "bad response head");
                    return Err(Attempt::Failed(EarlyFailure::ClosedBeforeResponse));
                }
            }
            received |= !conn.rbuf.is_empty();
            conn.rbuf.reserve(READ_CHUNK);
            match conn.io.read_buf(&mut conn.rbuf).await {
                Ok(0) => return Err(closed(&conn, received)),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(endpoint = %conn.addr, error = %e, "reading the response head failed");
                    return Err(closed(&conn, received));
                }
            }
        }
    }
}

/// Sends one request and waits for the response head, at most
/// `first_byte_timeout` (connect included).
pub async fn send(
    pool: &EnginePool,
    addr: SocketAddr,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &Bytes,
    first_byte_timeout: Duration,
) -> Result<Response<UpstreamBody>, EarlyFailure> {
    match tokio::time::timeout(
        first_byte_timeout,
        pool.request(addr, method, path_and_query, headers, body),
    )
    .await
    {
        Err(_) => Err(EarlyFailure::FirstByteTimeout),
        Ok(r) => r,
    }
}

/// An engine's response body, read from its connection as hyper's server
/// polls it. Ends cleanly → the connection goes back to the pool; dropped
/// before its end → the connection closes (the engine sees the cancel).
pub struct UpstreamBody {
    conn: Option<Conn>,
    decoder: Decoder,
    until_close: bool,
    keep_alive: bool,
    pool: EnginePool,
}

impl UpstreamBody {
    fn new(conn: Conn, framing: Framing, keep_alive: bool, pool: EnginePool) -> Self {
        let mut body = Self {
            conn: Some(conn),
            decoder: Decoder::new(framing),
            until_close: framing == Framing::UntilClose,
            keep_alive,
            pool,
        };
        if body.decoder.is_done() {
            body.release();
        }
        body
    }

    /// The body is complete: the connection goes back to the pool if it can carry another request.
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && !self.until_close && conn.rbuf.is_empty() {
                self.pool.checkin(conn);
            }
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.rbuf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Done) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))));
                }
            }
            if conn.rbuf.capacity() - conn.rbuf.len() < 1024 {
                conn.rbuf.reserve(READ_CHUNK);
            }
            match conn.io.try_read_buf(&mut conn.rbuf) {
                Ok(0) => {
                    this.conn = None;
                    if this.until_close {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "engine closed the connection before the end of the body",
                    ))));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = ready!(conn.io.poll_read_ready(cx)) {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.conn, self.decoder.remaining()) {
            (None, _) => http_body::SizeHint::with_exact(0),
            (Some(_), Some(n)) => http_body::SizeHint::with_exact(n),
            (Some(_), None) => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(header::HOST, HeaderValue::from_static("router"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert("x-tenant", HeaderValue::from_static("a"));
        let mut out = Vec::new();
        h1::encode_request_head(&mut out, &Method::POST, "/", "e:1", &h, 0);
        let s = String::from_utf8(out).expect("ascii");
        assert!(!s.contains("connection"));
        assert!(!s.contains("router"));
        assert!(s.contains("x-tenant: a\r\n"));
        assert!(s.contains("authorization: Bearer x\r\n"));
    }
}
