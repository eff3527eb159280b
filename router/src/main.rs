//! steward-router binary: flags → discovery + load poller + HTTP server.

use anyhow::Context;
use clap::Parser;
use steward_router::config::{Cli, LogFormat};
use steward_router::discovery::{self, static_routes, DiscoveryConfig};
use steward_router::index::SharedIndex;
use steward_router::serve::{serve, DrainReport, ShutdownHandle};
use steward_router::server::{serve_parts, RouterState};

/// mimalloc: the proxy allocates small, short-lived buffers per request;
/// glibc malloc's consolidation showed up at ~10% of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormat::Json => steward_telemetry::LogFormat::Json,
        LogFormat::Text => steward_telemetry::LogFormat::Text,
    };
    steward_telemetry::init_logging("info", format, steward_telemetry::LogStream::Stdout);
    let workers = cli
        .server
        .workers
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let index = SharedIndex::new();
    let (state, poller) = RouterState::new(cli.proxy_config(), cli.poll_config(), index.clone());
    let shutdown = ShutdownHandle::new();
    let server_cfg = cli.server_config();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the main runtime")?;
    let listener = rt.block_on(async { bind(cli.listen) })?;
    // With port 0, the others share the port the first one got.
    let listen = listener.local_addr().context("listener address")?;

    // One event loop per worker thread (thread-per-core, like nginx's
    // workers): each accepts on its own SO_REUSEPORT listener and serves
    // its connections start to end, with no cross-thread wake-ups.
    let mut threads = Vec::new();
    for i in 1..workers {
        let state = state.clone();
        let shutdown = shutdown.clone();
        let cfg = server_cfg.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("router-{i}"))
                .spawn(move || -> anyhow::Result<DrainReport> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("building a worker runtime")?;
                    rt.block_on(async move {
                        let listener = bind(listen)?;
                        Ok(serve(listener, cfg, serve_parts(&state, shutdown)).await)
                    })
                })
                .context("starting a worker thread")?,
        );
    }
    let mut report = rt.block_on(async {
        if let Some(path) = &cli.discovery.static_routes {
            static_routes::load(path, &index).context("loading static routes")?;
            state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(path = %path.display(), "routing from a static file; not watching the API server");
        } else {
            let client = kube::Client::try_default()
                .await
                .context("building the Kubernetes client")?;
            tokio::spawn(discovery::run(
                client,
                DiscoveryConfig {
                    namespace: cli.discovery.namespace.clone(),
                    resync_interval: cli.discovery.resync_interval,
                },
                index,
                state.proxy.metrics.clone(),
                state.ready.clone(),
            ));
        }
        tokio::spawn(poller.run());
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                steward_telemetry::shutdown_signal().await;
                shutdown.trigger();
            }
        });
        tracing::info!(%listen, workers, namespace = ?cli.discovery.namespace, "steward-router serving");
        anyhow::Ok(serve(listener, server_cfg, serve_parts(&state, shutdown.clone())).await)
    });
    if report.is_err() {
        // Stop the other workers too.
        shutdown.trigger();
    }
    for t in threads {
        match t.join() {
            Ok(Ok(r)) => {
                if let Ok(total) = report.as_mut() {
                    total.cut += r.cut;
                    total.drained_in = total.drained_in.max(r.drained_in);
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "a worker failed"),
            Err(_) => tracing::error!("a worker thread panicked"),
        }
    }
    let report = report?;
    tracing::info!(cut = report.cut, took = ?report.drained_in, "steward-router stopped");
    Ok(())
}

/// A listener on `addr` that other workers may share (SO_REUSEPORT).
fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .context("creating a socket")?;
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    socket.set_reuseport(true).context("SO_REUSEPORT")?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    socket
        .listen(1024)
        .with_context(|| format!("listening on {addr}"))
}
