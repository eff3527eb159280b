//! The HTTP listener: accepts connections and serves the axum router on
//! each, with the limits `axum::serve` does not set: a deadline for a
//! request's headers (a slowloris client trickling header bytes is cut
//! off), a cap on header buffer size, and a cap on open connections (the
//! accept loop waits for a free slot; hitting the cap is counted). On
//! shutdown it stops accepting and lets every open connection finish its
//! current response (graceful), bounded by the caller, so the last chunk
//! and `[DONE]` of a stream reach the client before the process exits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::EngineMetrics;

/// Connection limits (flags in `crate::server::HttpArgs`).
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Most open connections; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest header block (431 beyond it).
    pub max_header_bytes: usize,
}

/// Serves until `stop` completes, then closes the listener and waits up to
/// `flush` for open connections to finish their current responses.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: ListenConfig,
    metrics: Arc<EngineMetrics>,
    stop: impl Future<Output = ()>,
    flush: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    tokio::pin!(stop);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics.connections_limited.inc();
                tokio::select! {
                    _ = &mut stop => break,
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let open = metrics.connections_open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(flush, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            flush_seconds = flush.as_secs_f64(),
            "connections still open after the flush window; closing"
        );
    }
}
