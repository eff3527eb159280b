//! Assembling the router: state, HTTP routes, background tasks.
//!
//! Routes: `POST /v1/*` (proxied; [`crate::serve`] sends these straight to
//! the proxy), `GET /v1/models` (from the routing table), `GET /metrics`,
//! `GET /healthz` (alive), `GET /readyz` (the index has been filled by
//! discovery at least once, and no shutdown has begun).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{PollConfig, ProxyConfig, ServerConfig};
use crate::endpoints::EndpointStates;
use crate::error::ProxyError;
use crate::index::SharedIndex;
use crate::load::Poller;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::serve::{self, DrainReport, ServeParts, ShutdownHandle};
use crate::upstream;

/// The assembled router.
#[derive(Clone)]
pub struct RouterState {
    pub proxy: Arc<Proxy>,
    pub registry: Arc<Registry>,
    pub ready: Arc<AtomicBool>,
    /// Set once a shutdown begins: `/readyz` answers 503 from then on.
    pub closing: Arc<AtomicBool>,
}

impl RouterState {
    /// Builds the proxy and its load poller over `index`.
    pub fn new(cfg: ProxyConfig, poll: PollConfig, index: SharedIndex) -> (Self, Arc<Poller>) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let endpoints = EndpointStates::default();
        let client = upstream::client(cfg.connect_timeout);
        let poller = Arc::new(Poller {
            cfg: poll,
            index: index.clone(),
            endpoints: endpoints.clone(),
            metrics: metrics.clone(),
            client,
            eject_duration: cfg.eject_duration,
        });
        let ready = Arc::new(AtomicBool::new(false));
        let proxy = Arc::new(Proxy::new(cfg, index, endpoints, metrics, ready.clone()));
        (
            Self {
                proxy,
                registry: Arc::new(registry),
                ready,
                closing: Arc::new(AtomicBool::new(false)),
            },
            poller,
        )
    }

    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// The HTTP routes.
pub fn app(state: RouterState) -> axum::Router {
    axum::Router::new()
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(no_route)
        .with_state(state)
}

async fn no_route(req: Request) -> Response {
    ProxyError::NoRoute {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
    }
    .into_response()
}

async fn models(State(s): State<RouterState>) -> Response {
    let table = s.proxy.index.table();
    let mut ids: Vec<&str> = table.models().map(|m| m.model.as_str()).collect();
    ids.sort_unstable();
    let data: Vec<serde_json::Value> = ids
        .into_iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "owned_by": "steward"}))
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(s): State<RouterState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics_text(),
    )
        .into_response()
}

async fn readyz(State(s): State<RouterState>) -> Response {
    if s.closing.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "discovery has not synced").into_response()
    }
}

/// The parts [`serve::serve`] needs to serve `state`.
pub fn serve_parts(state: &RouterState, shutdown: ShutdownHandle) -> ServeParts {
    ServeParts {
        proxy: state.proxy.clone(),
        routes: app(state.clone()),
        metrics: state.proxy.metrics.clone(),
        closing: state.closing.clone(),
        shutdown,
    }
}

/// A router serving on a bound listener, with its poller running.
pub struct RunningRouter {
    pub addr: SocketAddr,
    pub state: RouterState,
    pub shutdown: ShutdownHandle,
    server: JoinHandle<DrainReport>,
    poller: JoinHandle<()>,
}

impl RunningRouter {
    /// Serves `state` on `listener` with default server settings and starts `poller`.
    pub fn start(
        listener: TcpListener,
        state: RouterState,
        poller: Arc<Poller>,
    ) -> std::io::Result<Self> {
        Self::start_with(listener, state, poller, ServerConfig::default())
    }

    /// Serves `state` on `listener` under `cfg` and starts `poller`.
    pub fn start_with(
        listener: TcpListener,
        state: RouterState,
        poller: Arc<Poller>,
        cfg: ServerConfig,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shutdown = ShutdownHandle::new();
        let parts = serve_parts(&state, shutdown.clone());
        let server = tokio::spawn(serve::serve(listener, cfg, parts));
        let poller = tokio::spawn(poller.run());
        Ok(Self {
            addr,
            state,
            shutdown,
            server,
            poller,
        })
    }

    /// Triggers the shutdown sequence and waits for it to end.
    pub async fn shut_down(mut self) -> Option<DrainReport> {
        self.shutdown.trigger();
        (&mut self.server).await.ok()
    }
}

impl Drop for RunningRouter {
    fn drop(&mut self) {
        self.server.abort();
        self.poller.abort();
    }
}
