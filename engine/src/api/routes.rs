//! The axum routes. A generation request goes: readiness/drain check →
//! parse → validate → admission (tenant slot, queue, KV pressure) → submit to
//! the engine actor → JSON response or SSE stream. The request's guards
//! (tenant slot, in-flight count) live as long as its response stream; when
//! the client disconnects, the stream and its event receiver are dropped and
//! the engine cancels the sequence at its next step.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Notify;

use super::error::ApiError;
use super::validate::{
    chat_prompt, completion_prompt, parse_json, validate, ChatRequest, CompletionRequest, Limits,
    ValidRequest,
};
use crate::admission::{decide, AdmissionLimits, AdmissionView, Refusal, TenantGuard, TenantSlots};
use crate::executor::{EngineHandle, Event, Submission};
use crate::metrics::EngineMetrics;
use crate::tokenizer::TextCodec;

/// What exists once the model is loaded and warmed up.
pub struct Loaded {
    pub handle: EngineHandle,
    pub codec: Arc<TextCodec>,
    pub limits: Limits,
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
}

impl AppState {
    pub fn ready(&self) -> bool {
        self.loaded.get().is_some() && !self.draining.load(Ordering::SeqCst)
    }

    /// Enters draining (idempotent); returns true the first time.
    pub fn start_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::SeqCst);
        if first {
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
        // GET too: a kubelet preStop httpGet hook can only send GET.
        .route("/drain", get(drain).post(drain))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    let body = serde_json::json!({"error": {
        "message": "no such route", "type": "not_found", "param": null, "code": 404}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(s): State<SharedState>) -> Response {
    if s.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if s.loaded.get().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(s): State<SharedState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn load(State(s): State<SharedState>) -> Json<serde_json::Value> {
    let (running, waiting, kv, util) = match s.loaded.get() {
        Some(l) => {
            let sh = &l.handle.shared;
            (
                sh.running(),
                sh.waiting_total(),
                sh.kv_usage(),
                sh.utilization(),
            )
        }
        None => (0, 0, 0.0, 0.0),
    };
    Json(serde_json::json!({
        "running": running,
        "waiting": waiting,
        "kv_cache_usage": kv,
        "utilization": util,
        "draining": s.draining.load(Ordering::SeqCst),
    }))
}

async fn drain(State(s): State<SharedState>) -> Response {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(State(s): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    let r = generate(&s, &headers, &body, Kind::Completion).await;
    finish_response(&s, r)
}

async fn chat_completions(
    State(s): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = generate(&s, &headers, &body, Kind::Chat).await;
    finish_response(&s, r)
}

fn finish_response(s: &AppState, r: Result<Response, ApiError>) -> Response {
    let resp = match r {
        Ok(resp) => resp,
        Err(e) => {
            if let ApiError::Refused(reason, _) = &e {
                s.metrics.refuse(reason.as_str());
            }
            tracing::debug!(status = e.status().as_u16(), error_type = e.kind(), error = %e, "request rejected");
            e.into_response()
        }
    };
    s.metrics.response(resp.status().as_u16());
    resp
}

/// Held for the life of a response: a tenant slot and an in-flight count.
struct RequestGuard {
    _tenant: TenantGuard,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refused(s: &AppState, r: Refusal) -> ApiError {
    ApiError::Refused(r, s.retry_after_secs)
}

async fn generate(
    s: &SharedState,
    headers: &HeaderMap,
    body: &[u8],
    kind: Kind,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let Some(loaded) = s.loaded.get() else {
        return Err(refused(s, Refusal::NotReady));
    };
    if s.draining.load(Ordering::SeqCst) {
        return Err(refused(s, Refusal::Draining));
    }
    let valid = match kind {
        Kind::Completion => {
            let req: CompletionRequest = parse_json(body)?;
            let prompt = completion_prompt(req.prompt, &loaded.codec)?;
            validate(req.common, prompt, Some(16), &loaded.limits)?
        }
        Kind::Chat => {
            let req: ChatRequest = parse_json(body)?;
            let prompt = chat_prompt(&req.messages, &loaded.codec)?;
            validate(req.common, prompt, None, &loaded.limits)?
        }
    };
    let tenant = headers
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .unwrap_or("default")
        .to_string();
    let sh = &loaded.handle.shared;
    let view = AdmissionView {
        ready: true,
        draining: s.draining.load(Ordering::SeqCst),
        waiting: sh.waiting_total(),
        tenant_active: s.tenants.active(&tenant),
        kv_high_for: match sh.kv_high_for_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
    };
    decide(&s.admission, &view).map_err(|r| refused(s, r))?;
    let tenant_guard = s
        .tenants
        .try_take(&tenant, s.admission.tenant_max_concurrent)
        .ok_or_else(|| refused(s, Refusal::TenantLimit))?;
    s.in_flight.fetch_add(1, Ordering::SeqCst);
    let guard = RequestGuard {
        _tenant: tenant_guard,
        in_flight: s.in_flight.clone(),
    };
    let (tx, rx) = unbounded_channel();
    loaded
        .handle
        .submit(Submission {
            prompt: valid.prompt.clone(),
            max_tokens: valid.max_tokens,
            sampling: valid.sampling.clone(),
            stop: valid.stop.clone(),
            ignore_eos: valid.ignore_eos,
            arrived,
            events: tx,
        })
        .map_err(|e| match e {
            crate::executor::actor::SubmitError::QueueFull => refused(s, Refusal::QueueFull),
            crate::executor::actor::SubmitError::Stopped => ApiError::Internal(e.to_string()),
        })?;
    let meta = ResponseMeta {
        id: format!(
            "{}-{:x}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            rand::random::<u64>()
        ),
        model: s.served_model.clone(),
        created: now_secs(),
        kind,
        valid,
    };
    if meta.valid.stream {
        Ok(stream_response(meta, rx, guard, s.keep_alive))
    } else {
        collect_response(meta, rx, guard).await
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct ResponseMeta {
    id: String,
    model: String,
    created: u64,
    kind: Kind,
    valid: ValidRequest,
}

impl ResponseMeta {
    fn usage(&self, prompt: usize, completion: usize) -> serde_json::Value {
        let mut u = serde_json::json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        });
        if let Some(asked) = self.valid.clamped_from {
            u["max_tokens_requested"] = asked.into();
            u["max_tokens_clamped_to"] = self.valid.max_tokens.into();
        }
        u
    }

    fn chunk(&self, text: &str, finish: Option<&str>, first: bool) -> serde_json::Value {
        match self.kind {
            Kind::Completion => serde_json::json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            }),
            Kind::Chat => {
                let mut delta = serde_json::json!({});
                if first {
                    delta["role"] = "assistant".into();
                }
                if !text.is_empty() || finish.is_none() {
                    delta["content"] = text.into();
                }
                serde_json::json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                })
            }
        }
    }
}

async fn collect_response(
    meta: ResponseMeta,
    mut rx: UnboundedReceiver<Event>,
    guard: RequestGuard,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Delta(d)) => text.push_str(&d),
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                drop(guard);
                let usage = meta.usage(prompt_tokens, completion_tokens);
                let body = match meta.kind {
                    Kind::Completion => serde_json::json!({
                        "id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
                        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish.as_str()}],
                        "usage": usage,
                    }),
                    Kind::Chat => serde_json::json!({
                        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "logprobs": null, "finish_reason": finish.as_str()}],
                        "usage": usage,
                    }),
                };
                return Ok(Json(body).into_response());
            }
            Some(Event::Failed(e)) => return Err(ApiError::Internal(e)),
            None => return Err(ApiError::Internal("the engine dropped the request".into())),
        }
    }
}

struct StreamState {
    meta: ResponseMeta,
    rx: UnboundedReceiver<Event>,
    guard: Option<RequestGuard>,
    first: bool,
    done: bool,
}

fn stream_response(
    meta: ResponseMeta,
    rx: UnboundedReceiver<Event>,
    guard: RequestGuard,
    keep_alive: Duration,
) -> Response {
    let st = StreamState {
        meta,
        rx,
        guard: Some(guard),
        first: true,
        done: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let ev = match st.rx.recv().await {
            Some(Event::Delta(d)) => {
                let c = st.meta.chunk(&d, None, st.first);
                st.first = false;
                vec![SseEvent::default().data(c.to_string())]
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let mut c = st.meta.chunk("", Some(finish.as_str()), st.first);
                let usage = st.meta.usage(prompt_tokens, completion_tokens);
                c["usage"] = usage.clone();
                let mut out = vec![SseEvent::default().data(c.to_string())];
                if st.meta.valid.include_usage {
                    let mut u = st.meta.chunk("", None, false);
                    u["choices"] = serde_json::json!([]);
                    u["usage"] = usage;
                    out.push(SseEvent::default().data(u.to_string()));
                }
                out.push(SseEvent::default().data("[DONE]"));
                st.done = true;
                st.guard.take();
                out
            }
            Some(Event::Failed(e)) => {
                let body = serde_json::json!({"error": {"message": e, "type": "internal_error", "param": null, "code": 500}});
                st.done = true;
                st.guard.take();
                vec![
                    SseEvent::default().data(body.to_string()),
                    SseEvent::default().data("[DONE]"),
                ]
            }
            None => {
                // The engine stopped (drain window ended): say so, and do
                // not send [DONE], so the client knows the stream was cut.
                let body = serde_json::json!({"error": {"message": "the stream was cut: the replica is shutting down",
                    "type": "stream_cut", "param": null, "code": 503}});
                st.done = true;
                st.guard.take();
                vec![SseEvent::default().data(body.to_string())]
            }
        };
        Some((
            futures::stream::iter(ev.into_iter().map(Ok::<_, Infallible>)),
            st,
        ))
    });
    let stream = futures::StreamExt::flatten(stream);
    sse(stream, keep_alive)
}

fn sse<S>(stream: S, keep_alive: Duration) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
        .into_response()
}
