//! The HTTP server: the accept loop, per-connection limits, and the
//! shutdown sequence.
//!
//! Every connection starts in the router's own HTTP/1.1 loop
//! ([`crate::h1_conn`]), which serves `POST /v1/...` straight through the
//! proxy and body-less `GET`s through the axum routes of
//! [`crate::server::app`], with the header timeout and a head bounded by
//! `max_header_bytes` (+ 8 KiB). Whatever the loop does not serve (h2c,
//! HTTP/1.0, `Expect`, `Upgrade`, malformed or oversized heads, other
//! methods and paths) it hands to hyper for the rest of the connection,
//! with the bytes already read in front; hyper runs with the same timer and
//! buffer limit as before the loop existed. At most `max_connections` are
//! open; beyond that the accept loop stops accepting (the kernel's backlog
//! holds the rest) until one closes.
//!
//! Shutdown ([`ShutdownHandle::trigger`], SIGTERM in the binary) runs in
//! two phases, so rolling the router cuts nothing (issue 13, fault 8):
//! 1. *closing*, for `shutdown_delay`: everything is still served and new
//!    connections are accepted (load balancers and kube-proxy take a moment
//!    to drop the endpoint), but `/readyz` answers 503 and every HTTP/1
//!    response carries `Connection: close`, so keep-alive clients reconnect
//!    elsewhere;
//! 2. *draining*, for at most `drain_window`: the listener closes, idle
//!    connections close, and open requests and streams run to their end;
//!    [`serve`] returns when the last connection is done or the window ends.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Response;
use http::header::CONNECTION;
use http::{HeaderValue, Method, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::ServerConfig;
use crate::conn_io::Prefixed;
use crate::h1_conn::{self, ConnContext, Ended};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Worker};
use crate::upstream::{EnginePool, PoolConfig};

/// Starts the shutdown sequence of a running [`serve`].
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for ShutdownHandle {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl ShutdownHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins shutting down (idempotent).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    fn requested(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// How a shutdown ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open when the drain window ended (cut).
    pub cut: usize,
    pub drained_in: Duration,
}

/// The per-request service of connections handed to hyper: the proxy for
/// `POST /v1/...`, axum for the rest.
#[derive(Clone)]
struct Service {
    /// This server thread's proxy handle and pool to the engines (see [`serve`]).
    worker: Arc<Worker>,
    routes: axum::Router,
    closing: Arc<AtomicBool>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn call(&self, req: Request<Incoming>) -> BoxFuture {
        let closing = self.closing.clone();
        if req.method() == Method::POST && req.uri().path().starts_with("/v1/") {
            let worker = self.worker.clone();
            Box::pin(async move {
                let mut resp = worker.proxy.handle(req, &worker).await;
                if closing.load(Ordering::Relaxed) {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok(resp)
            })
        } else {
            let mut routes = self.routes.clone();
            Box::pin(async move {
                let mut resp =
                    match tower_service::Service::call(&mut routes, req.map(axum::body::Body::new))
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => match e {},
                    };
                if closing.load(Ordering::Relaxed) {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok(resp)
            })
        }
    }
}

/// What [`serve`] needs besides the listener.
pub struct ServeParts {
    pub proxy: Arc<Proxy>,
    pub routes: axum::Router,
    pub metrics: Metrics,
    /// Set from the start of the shutdown; `/readyz` reads it.
    pub closing: Arc<AtomicBool>,
    pub shutdown: ShutdownHandle,
}

/// Decrements the open-connection gauge when a connection ends.
struct ConnGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `listener` until a shutdown has drained (see the module docs).
pub async fn serve(listener: TcpListener, cfg: ServerConfig, parts: ServeParts) -> DrainReport {
    let ServeParts {
        proxy,
        routes,
        metrics,
        closing,
        shutdown,
    } = parts;
    let max_conns = cfg.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let conns = Arc::new(Semaphore::new(max_conns));
    // Phase 2 begins (graceful close of every connection) / the window ends (cut).
    let (stop_tx, stop_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(false);
    // The own loop hands a head larger than this to hyper, which answers 431 at the same size.
    let max_buf = cfg.max_header_bytes.saturating_add(8 << 10).max(16 << 10);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(max_buf);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    // A pool per serve() call: its connections are driven by tasks of the
    // runtime that created them, so with one serve() per core-pinned
    // runtime a request never hops threads.
    let pool = EnginePool::new(PoolConfig::new(proxy.cfg.connect_timeout));
    let worker = Worker::new(proxy, pool);
    let ctx = ConnContext {
        worker: worker.clone(),
        routes: routes.clone(),
        closing: closing.clone(),
        header_read_timeout: cfg.header_read_timeout,
        max_head: max_buf,
    };
    let service = Service {
        worker,
        routes,
        closing: closing.clone(),
    };

    // Boxed so that dropping it really drops it: that closes the listener.
    let mut accept_loop = Box::pin({
        let conns = conns.clone();
        let metrics = metrics.clone();
        async move {
            loop {
                let Ok(permit) = conns.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await
                {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
                metrics.connections.inc();
                let guard = ConnGuard(metrics.connections.clone());
                let builder = builder.clone();
                let service = service.clone();
                let ctx = ctx.clone();
                let mut stop = stop_rx.clone();
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _guard = guard;
                    // Dropping the loop closes the connection: a stream cut here ends without `[DONE]`.
                    let ended = tokio::select! {
                        biased;
                        e = h1_conn::serve(tcp, &ctx, &mut stop) => e,
                        _ = cut.wait_for(|c| *c) => return,
                    };
                    let Ended::Handoff { io, buffered } = ended else {
                        return;
                    };
                    let io = TokioIo::new(Prefixed::new(buffered, io));
                    let conn = builder.serve_connection(io, service);
                    tokio::pin!(conn);
                    tokio::select! {
                        // First: hyper takes in what the loop had read before a drain may close it.
                        biased;
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            return;
                        }
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "connection ended with an error while draining");
                            }
                        }
                        // Dropping the connection closes it: a stream cut here ends without `[DONE]`.
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        }
    });

    let mut requested = shutdown.requested();
    tokio::select! {
        _ = &mut accept_loop => {}
        _ = requested.wait_for(|r| *r) => {}
    }
    let t0 = Instant::now();
    closing.store(true, Ordering::SeqCst);
    metrics.shutting_down.set(1);
    tracing::info!(delay = ?cfg.shutdown_delay, drain_window = ?cfg.drain_window,
        "shutting down: serving through the delay (readiness false, Connection: close)");
    tokio::select! {
        _ = &mut accept_loop => {}
        _ = tokio::time::sleep(cfg.shutdown_delay) => {}
    }
    // Phase 2: the listener closes with the accept loop.
    drop(accept_loop);
    stop_tx.send_replace(true);
    let open = max_conns - conns.available_permits();
    tracing::info!(
        connections = open,
        "listener closed; draining open connections"
    );
    let deadline = tokio::time::Instant::now() + cfg.drain_window;
    loop {
        let open = max_conns - conns.available_permits();
        if open == 0 {
            let report = DrainReport {
                cut: 0,
                drained_in: t0.elapsed(),
            };
            tracing::info!(took = ?report.drained_in, "drained; every connection finished");
            return report;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                connections = open,
                "drain window over; cutting what is still open"
            );
            cut_tx.send_replace(true);
            return DrainReport {
                cut: open,
                drained_in: t0.elapsed(),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
