//! `steward-testserver`: a small HTTP server the local-node tests run as
//! pods. It answers on its pod IP, can be made unready, records preStop and
//! SIGTERM in a marker file, and can ignore SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Address to bind (the pod IP).
    #[arg(long, env = "POD_IP", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Keep running after SIGTERM (the node must SIGKILL it).
    #[arg(long, env = "IGNORE_SIGTERM")]
    ignore_sigterm: bool,
    /// File that gets one line per lifecycle event (prestop, sigterm).
    #[arg(long, env = "MARKER")]
    marker: Option<PathBuf>,
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
}

#[derive(Clone)]
struct AppState {
    ready: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    args: Args,
}

fn mark(args: &Args, what: &str) {
    if let Some(m) = &args.marker {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m)
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let _ = writeln!(f, "{what} {now}");
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let state = AppState {
        ready: Arc::new(AtomicBool::new(true)),
        alive: Arc::new(AtomicBool::new(true)),
        args: args.clone(),
    };
    let app = Router::new()
        .route(
            "/",
            get(|State(s): State<AppState>| async move {
                Json(serde_json::json!({"pod": s.args.pod_name, "ip": s.args.host}))
            }),
        )
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move {
                if s.alive.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "wedged")
                }
            }),
        )
        .route(
            "/healthz/fail",
            post(|State(s): State<AppState>| async move {
                s.alive.store(false, Ordering::SeqCst);
                "ok"
            }),
        )
        .route(
            "/ready",
            get(|State(s): State<AppState>| async move {
                if s.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/ready/fail",
            post(|State(s): State<AppState>| async move {
                s.ready.store(false, Ordering::SeqCst);
                "ok"
            }),
        )
        .route(
            "/ready/ok",
            post(|State(s): State<AppState>| async move {
                s.ready.store(true, Ordering::SeqCst);
                "ok"
            }),
        )
        .route(
            "/prestop",
            get(|State(s): State<AppState>| async move {
                mark(&s.args, "prestop");
                "ok"
            }),
        )
        .with_state(state);
    let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("testserver listening on {addr}");
    let a2 = args.clone();
    let shutdown = async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        loop {
            term.recv().await;
            mark(&a2, "sigterm");
            if !a2.ignore_sigterm {
                return;
            }
            eprintln!("ignoring SIGTERM");
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
