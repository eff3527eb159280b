//! steward-router binary: flags → discovery + load poller + HTTP server.

use anyhow::Context;
use clap::Parser;
use steward_router::config::{Cli, LogFormat};
use steward_router::discovery::{self, static_routes, DiscoveryConfig};
use steward_router::index::SharedIndex;
use steward_router::serve::{serve, ShutdownHandle};
use steward_router::server::{serve_parts, RouterState};
use tracing_subscriber::EnvFilter;

/// mimalloc: the proxy allocates small, short-lived buffers per request;
/// glibc malloc's consolidation showed up at ~10% of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let index = SharedIndex::new();
    let (state, poller) = RouterState::new(cli.proxy_config(), cli.poll_config(), index.clone());
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
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    tracing::info!(listen = %cli.listen, namespace = ?cli.discovery.namespace, "steward-router serving");
    let shutdown = ShutdownHandle::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.trigger();
        }
    });
    let report = serve(listener, cli.server_config(), serve_parts(&state, shutdown)).await;
    tracing::info!(cut = report.cut, took = ?report.drained_in, "steward-router stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("termination signal received");
}
