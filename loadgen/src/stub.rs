//! A fast OpenAI-compatible stub backend, for benchmarking what sits in
//! front of an engine (a router, a proxy) and for calibrating the load
//! generator itself, where a real model would be the bottleneck.
//!
//! `POST /v1/completions` and `/v1/chat/completions` answer `max_tokens`
//! tokens of the text `tok`, streamed (one SSE event per token, optional
//! delays, usage when asked) or as one JSON body. Faults on request, by
//! header: `x-stub-status: 503` answers that status (with `Retry-After: 1`
//! and an OpenAI-style error body); `x-stub-cut-after: N` ends a stream
//! after N tokens without a finish (a broken stream). Also `GET /health`,
//! `/ready`, `/v1/models`, and `/load` in the engine's shape (always idle).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Timing of the stub's answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct StubConfig {
    /// Delay before the first token (streamed) or the whole answer.
    pub first_token_delay: Duration,
    /// Delay between streamed tokens (and per token for a whole answer).
    pub token_delay: Duration,
}

/// The stub's routes.
pub fn router(cfg: StubConfig) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/health", get(ok))
        .route("/ready", get(ok))
        .route("/load", get(load))
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object":"list","data":[{"id":"stub","object":"model"}]}))
            }),
        )
        .with_state(cfg)
}

async fn ok() -> &'static str {
    "ok"
}

async fn load() -> Json<Value> {
    Json(json!({"running":0,"waiting":0,"kv_cache_usage":0.0,"utilization":0.0,"draining":false}))
}

async fn completions(
    State(cfg): State<StubConfig>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    answer(cfg, &headers, &body, false).await
}

async fn chat(
    State(cfg): State<StubConfig>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    answer(cfg, &headers, &body, true).await
}

fn header_num(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

async fn answer(cfg: StubConfig, headers: &HeaderMap, body: &Value, chat: bool) -> Response {
    if let Some(code) = header_num(headers, "x-stub-status").and_then(|c| u16::try_from(c).ok()) {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let err = json!({"error": {"message": "injected by x-stub-status", "type": "stub"}});
        return (status, [("retry-after", "1")], Json(err)).into_response();
    }
    let n = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(16)
        .min(1 << 20);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("stub")
        .to_string();
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        sleep(cfg.first_token_delay + cfg.token_delay * u32::try_from(n).unwrap_or(u32::MAX)).await;
        let text = "tok ".repeat(n as usize);
        let choice = if chat {
            json!({"index":0,"message":{"role":"assistant","content":text},"finish_reason":"length"})
        } else {
            json!({"index":0,"text":text,"finish_reason":"length"})
        };
        let usage = json!({"prompt_tokens":1,"completion_tokens":n,"total_tokens":n + 1});
        return Json(json!({"id":"stub","object":"text_completion","model":model,"choices":[choice],"usage":usage}))
            .into_response();
    }
    let usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let cut = header_num(headers, "x-stub-cut-after");
    let stream = token_stream(cfg, n, chat, usage, cut);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn token_stream(
    cfg: StubConfig,
    n: u64,
    chat: bool,
    usage: bool,
    cut: Option<u64>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::unfold(0u64, move |i| async move {
        if cut.is_some_and(|c| i >= c && i < n) || i > n + 1 {
            return None;
        }
        let piece = if i < n {
            sleep(if i == 0 {
                cfg.first_token_delay
            } else {
                cfg.token_delay
            })
            .await;
            let fin = if i + 1 == n {
                json!("length")
            } else {
                Value::Null
            };
            let choice = if chat {
                json!({"index":0,"delta":{"content":"tok "},"finish_reason":fin})
            } else {
                json!({"index":0,"text":"tok ","finish_reason":fin})
            };
            event(&json!({"id":"stub","object":"text_completion","choices":[choice]}))
        } else if i == n {
            if usage {
                event(
                    &json!({"id":"stub","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":n,"total_tokens":n + 1}}),
                )
            } else {
                Bytes::new()
            }
        } else {
            Bytes::from_static(b"data: [DONE]\n\n")
        };
        Some((Ok(piece), i + 1))
    })
}
