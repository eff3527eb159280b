//! Assembling the router: state, HTTP routes, background tasks.
//!
//! Routes: `POST /v1/*` (proxied), `GET /v1/models` (from the routing
//! table), `GET /metrics`, `GET /healthz` (alive), `GET /readyz` (the
//! index has been filled by discovery at least once).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{PollConfig, ProxyConfig};
use crate::endpoints::EndpointStates;
use crate::error::ProxyError;
use crate::index::SharedIndex;
use crate::load::Poller;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::upstream;

/// The assembled router.
#[derive(Clone)]
pub struct RouterState {
    pub proxy: Arc<Proxy>,
    pub registry: Arc<Registry>,
    pub ready: Arc<AtomicBool>,
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
            client: client.clone(),
            eject_duration: cfg.eject_duration,
        });
        let proxy = Arc::new(Proxy::new(cfg, index, endpoints, metrics, client));
        (
            Self {
                proxy,
                registry: Arc::new(registry),
                ready: Arc::new(AtomicBool::new(false)),
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
        .route("/v1/{*rest}", post(proxy))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(no_route)
        // The proxy enforces its own body limit while reading.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn proxy(State(s): State<RouterState>, req: Request) -> Response {
    s.proxy.clone().handle(req).await
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
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "discovery has not synced").into_response()
    }
}

/// Sets TCP_NODELAY on every accepted connection: SSE events are small
/// writes that Nagle's algorithm would otherwise hold back until an ACK.
pub fn nodelay(listener: TcpListener) -> impl axum::serve::Listener<Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    })
}

/// A router serving on a bound listener, with its poller running.
pub struct RunningRouter {
    pub addr: SocketAddr,
    pub state: RouterState,
    server: JoinHandle<()>,
    poller: JoinHandle<()>,
}

impl RunningRouter {
    /// Serves `state` on `listener` and starts `poller`.
    pub fn start(
        listener: TcpListener,
        state: RouterState,
        poller: Arc<Poller>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let router = app(state.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(nodelay(listener), router).await {
                tracing::error!(error = %e, "router server stopped");
            }
        });
        let poller = tokio::spawn(poller.run());
        Ok(Self {
            addr,
            state,
            server,
            poller,
        })
    }
}

impl Drop for RunningRouter {
    fn drop(&mut self) {
        self.server.abort();
        self.poller.abort();
    }
}
