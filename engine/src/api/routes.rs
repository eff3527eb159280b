//! The axum routes and the state they share. Generation requests are
//! handled in `super::generate`; this module holds the operational routes:
//! health (`/health`, liveness), readiness (`/ready`), `/load` for the
//! router's endpoint picker, `/metrics`, `/v1/models`, and `/drain`, which
//! only a holder of the pod's drain token may call (the pod's own lifecycle
//! drains it with SIGTERM).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{Notify, Semaphore};

use super::error::ApiError;
use super::validate::Limits;
use crate::admission::{AdmissionLimits, TenantSlots};
use crate::executor::EngineHandle;
use crate::faults::FaultPlan;
use crate::health::{judge, Health, HealthLimits};
use crate::metrics::EngineMetrics;
use crate::tokenizer::TextCodec;

/// What exists once the model is loaded and warmed up.
pub struct Loaded {
    pub handle: EngineHandle,
    pub codec: Arc<TextCodec>,
    pub limits: Limits,
}

/// Limits on reading a request (the connection-level ones live in
/// `crate::listen`).
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Largest request body (413 `request_too_large` beyond it); the same
    /// default as the router's, so both answer alike.
    pub max_bytes: usize,
    /// Longest time to receive a whole body (408 `request_timeout`).
    pub read_timeout: Duration,
}

/// Shared state of the HTTP server.
pub struct AppState {
    pub loaded: OnceLock<Loaded>,
    pub served_model: String,
    pub admission: AdmissionLimits,
    pub metrics: Arc<EngineMetrics>,
    pub tenants: TenantSlots,
    pub draining: AtomicBool,
    pub drain_notify: Notify,
    /// Generation requests whose response has not ended yet.
    pub in_flight: Arc<AtomicUsize>,
    pub retry_after_secs: u64,
    pub keep_alive: Duration,
    pub created: u64,
    /// The secret `POST /drain` must carry (`Authorization: Bearer`); None
    /// disables draining over HTTP.
    pub drain_token: Option<String>,
    pub health: HealthLimits,
    pub body: BodyLimits,
    /// Bounds the parse + tokenise work running on the blocking pool.
    pub prep_permits: Arc<Semaphore>,
    /// Test aids (`--fault-*`); empty in production.
    pub faults: FaultPlan,
    pub fault_rng: std::sync::Mutex<rand::rngs::StdRng>,
}

impl AppState {
    /// The engine thread's health; `Ok` while loading (nothing to judge).
    pub fn health(&self) -> Health {
        match self.loaded.get() {
            Some(l) => judge(&l.handle.shared.health_sample(), &self.health),
            None => Health::Ok,
        }
    }

    pub fn ready(&self) -> bool {
        self.loaded.get().is_some()
            && !self.draining.load(Ordering::SeqCst)
            && self.health().ready()
    }

    /// Enters draining (idempotent); returns true the first time. Requests
    /// that have not started are refused from now on.
    pub fn start_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::SeqCst);
        if first {
            if let Some(l) = self.loaded.get() {
                l.handle
                    .shared
                    .refuse_unstarted
                    .store(true, Ordering::SeqCst);
            }
            self.metrics.draining.set(1);
            self.drain_notify.notify_waiters();
        }
        first
    }
}

pub type SharedState = Arc<AppState>;

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/load", get(load))
        .route("/drain", post(drain))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(super::generate::completions))
        .route(
            "/v1/chat/completions",
            post(super::generate::chat_completions),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn error_body(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {
        "message": message, "type": kind, "param": null, "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    error_body(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> Response {
    error_body(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Liveness: 503 only when the engine thread is dead or hung, which no
/// amount of waiting fixes.
async fn health(State(s): State<SharedState>) -> Response {
    let h = s.health();
    if h.live() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, h.as_str()).into_response()
    }
}

async fn ready(State(s): State<SharedState>) -> Response {
    let h = s.health();
    if s.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if s.loaded.get().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response()
    } else if !h.ready() {
        (StatusCode::SERVICE_UNAVAILABLE, h.as_str()).into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(s): State<SharedState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// The router's load report. 200 only when the engine can serve (a
/// draining one says so in the body); while loading or unhealthy it is 503,
/// so a restarting pod never looks idle and attractive.
async fn load(State(s): State<SharedState>) -> Response {
    let draining = s.draining.load(Ordering::SeqCst);
    let Some(l) = s.loaded.get() else {
        let body = serde_json::json!({
            "ready": false, "loading": true, "health": "loading", "draining": draining,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let h = s.health();
    let sh = &l.handle.shared;
    let body = serde_json::json!({
        "running": sh.running(),
        "waiting": sh.waiting_total(),
        "kv_cache_usage": sh.kv_usage(),
        "utilization": sh.utilization(),
        "draining": draining,
        "ready": h.ready() && !draining,
        "loading": false,
        "health": h.as_str(),
    });
    let status = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Byte-wise comparison that does not stop at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Starts a drain, for a caller that holds the pod's drain token. Anyone
/// else who reaches the pod IP gets 403 and changes nothing: the pod's own
/// lifecycle drains it with SIGTERM.
async fn drain(State(s): State<SharedState>, headers: HeaderMap) -> Response {
    let Some(token) = &s.drain_token else {
        return ApiError::Forbidden(
            "draining over HTTP is disabled on this replica; it drains on SIGTERM".into(),
        )
        .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_secret(given.as_bytes(), token.as_bytes()) {
        tracing::warn!("drain refused: missing or wrong drain token");
        return ApiError::Forbidden("a valid drain token is required".into()).into_response();
    }
    if s.start_drain() {
        tracing::info!(
            in_flight = s.in_flight.load(Ordering::SeqCst),
            "drain requested over HTTP"
        );
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"draining": true})),
    )
        .into_response()
}

async fn models(State(s): State<SharedState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": s.served_model,
            "object": "model",
            "created": s.created,
            "owned_by": "steward",
            "max_model_len": s.loaded.get().map(|l| l.limits.max_context),
        }]
    }))
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn drain_token_comparison_needs_the_exact_secret() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
