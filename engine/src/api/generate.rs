//! A generation request, from bytes to response: readiness/drain check →
//! read the body (bounded in size and time) → parse, tokenise and validate
//! on the blocking pool (never on the few runtime threads that answer
//! `/ready`) → admission (tenant slot, queue, KV pressure) → submit to the
//! engine actor → wait until the request *starts* (enters the running
//! batch) → JSON response or SSE stream.
//!
//! A stream's 200 head is sent only when the request starts, so a request
//! still queued when a drain begins is refused with 503 `draining` (the
//! router retries it elsewhere) instead of being cut at the end of the
//! window. The request's guards (tenant slot, in-flight count) live as long
//! as its response body; when the client disconnects, the body and its
//! event receiver are dropped and the engine cancels the sequence at its
//! next step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::error::ApiError;
use super::respond::{collect_response, stream_response, Kind, ResponseMeta, Unfinished};
use super::routes::{AppState, BodyLimits, Loaded, SharedState};
use super::validate::{
    chat_logprobs, chat_prompt, completion_logprobs, completion_prompt, parse_json, validate_with,
    ChatRequest, CompletionRequest, Limits, Prompt, ValidRequest,
};
use crate::admission::{decide, AdmissionView, Refusal, TenantGuard};
use crate::executor::{Event, Submission};
use crate::faults::Fault;
use crate::tokenizer::TextCodec;

pub async fn completions(State(s): State<SharedState>, headers: HeaderMap, body: Body) -> Response {
    let r = generate(&s, &headers, body, Kind::Completion).await;
    finish_response(&s, r)
}

pub async fn chat_completions(
    State(s): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = generate(&s, &headers, body, Kind::Chat).await;
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
pub struct RequestGuard {
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

/// Reads the whole body, refusing it (413) as soon as it is larger than the
/// limit and (408) when it does not arrive in time, so a slow or huge
/// upload holds neither memory nor a connection for long.
async fn read_body(headers: &HeaderMap, body: Body, l: &BodyLimits) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    if declared.is_some_and(|n| n > l.max_bytes as u64) {
        linger(&mut body, l, 0).await;
        return Err(ApiError::BodyTooLarge(l.max_bytes));
    }
    let read = async {
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::invalid(format!("reading the request body failed: {e}"), None)
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > l.max_bytes {
                    return Err(ApiError::BodyTooLarge(buf.len() + data.len()));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(l.read_timeout, read).await {
        Err(_) => Err(ApiError::BodyTimeout(l.read_timeout)),
        Ok(Err(ApiError::BodyTooLarge(seen))) => {
            linger(&mut body, l, seen).await;
            Err(ApiError::BodyTooLarge(l.max_bytes))
        }
        Ok(r) => r,
    }
}

/// Reads and discards the rest of a refused body, up to `LINGER_FACTOR` ×
/// the limit and at most `LINGER_TIME`, before the 413 is sent. A client is
/// usually still writing when the refusal is decided; answering and closing
/// at once makes the kernel reset the connection, and the client then sees
/// a broken pipe instead of the 413 (a lingering close, as nginx does).
/// Bodies beyond the bound are cut, as before.
async fn linger(body: &mut Body, l: &BodyLimits, already: usize) {
    const LINGER_FACTOR: usize = 4;
    const LINGER_TIME: Duration = Duration::from_secs(2);
    let cap = l.max_bytes.saturating_mul(LINGER_FACTOR);
    let drain = async {
        let mut seen = already;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > cap {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME.min(l.read_timeout), drain).await;
}

/// Parse, tokenise (chat template included) and validate: CPU work that
/// grows with the body, so it runs on the blocking pool, at most
/// `prep_permits` at a time.
async fn prepare(
    s: &AppState,
    loaded: &Loaded,
    body: Bytes,
    kind: Kind,
) -> Result<ValidRequest, ApiError> {
    let permit = s
        .prep_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Internal("the server is shutting down".into()))?;
    let codec = loaded.codec.clone();
    let limits = loaded.limits.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        parse_and_validate(&body, kind, &codec, &limits)
    })
    .await
    .map_err(|_| ApiError::Internal("preparing the request failed".into()))?
}

fn parse_and_validate(
    body: &[u8],
    kind: Kind,
    codec: &TextCodec,
    limits: &Limits,
) -> Result<ValidRequest, ApiError> {
    match kind {
        Kind::Completion => {
            let req: CompletionRequest = parse_json(body)?;
            let text = match (&req.prompt, req.echo) {
                (Prompt::Text(t), true) => Some(t.clone()),
                (Prompt::Texts(v), true) => v.first().cloned(),
                _ => None,
            };
            let prompt = completion_prompt(req.prompt, codec)?;
            let lp = completion_logprobs(req.logprobs, req.echo, || {
                text.unwrap_or_else(|| codec.decode(&prompt))
            })?;
            validate_with(req.common, prompt, Some(16), limits, lp)
        }
        Kind::Chat => {
            let req: ChatRequest = parse_json(body)?;
            let prompt = chat_prompt(&req.messages, codec)?;
            let lp = chat_logprobs(req.logprobs, req.top_logprobs)?;
            validate_with(req.common, prompt, None, limits, lp)
        }
    }
}

async fn generate(
    s: &SharedState,
    headers: &HeaderMap,
    body: Body,
    kind: Kind,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let Some(loaded) = s.loaded.get() else {
        return Err(refused(s, Refusal::NotReady));
    };
    if s.draining.load(Ordering::SeqCst) {
        return Err(refused(s, Refusal::Draining));
    }
    let body = read_body(headers, body, &s.body).await?;
    let valid = prepare(s, loaded, body, kind).await?;
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
    inject_request_faults(s).await?;
    let (tx, mut rx) = unbounded_channel();
    loaded
        .handle
        .submit(Submission {
            prompt: valid.prompt.clone(),
            max_tokens: valid.max_tokens,
            sampling: valid.sampling.clone(),
            stop: valid.stop.clone(),
            ignore_eos: valid.ignore_eos,
            logprobs: valid.logprobs,
            prompt_logprobs: valid.echo.as_ref().and_then(|e| e.logprobs),
            arrived,
            events: tx,
        })
        .map_err(|e| match e {
            crate::executor::actor::SubmitError::QueueFull => refused(s, Refusal::QueueFull),
            crate::executor::actor::SubmitError::Stopped => ApiError::Internal(e.to_string()),
        })?;
    let meta = ResponseMeta::new(kind, s.served_model.clone(), valid, loaded.codec.clone());
    if meta.valid.stream {
        let pending = wait_started(s, &mut rx).await?;
        Ok(stream_response(meta, rx, pending, guard, s.keep_alive))
    } else {
        collect_response(meta, rx, guard)
            .await
            .map_err(|e| match e {
                Unfinished::Refused(r) => refused(s, r),
                Unfinished::Failed(m) => ApiError::Internal(m),
                Unfinished::Dropped if s.draining.load(Ordering::SeqCst) => {
                    refused(s, Refusal::Draining)
                }
                Unfinished::Dropped => ApiError::Internal("the engine dropped the request".into()),
            })
    }
}

/// Waits until the request starts; returns an event that arrived with the
/// start, if any. A refusal or failure before the start becomes a proper
/// status (503 / 500) instead of a 200 head followed by an error.
async fn wait_started(
    s: &AppState,
    rx: &mut UnboundedReceiver<Event>,
) -> Result<Option<Event>, ApiError> {
    match rx.recv().await {
        Some(Event::Started) => Ok(None),
        Some(Event::Refused(r)) => Err(refused(s, r)),
        Some(Event::Failed(m)) => Err(ApiError::Internal(m)),
        Some(ev) => Ok(Some(ev)),
        None if s.draining.load(Ordering::SeqCst) => Err(refused(s, Refusal::Draining)),
        None => Err(ApiError::Internal("the engine dropped the request".into())),
    }
}

/// Test aids (`--fault-error-rate`, `--fault-prefill-delay`): applied to
/// a valid, admitted request before it enters the engine.
async fn inject_request_faults(s: &AppState) -> Result<(), ApiError> {
    if !s.faults.any() {
        return Ok(());
    }
    let fail = s
        .fault_rng
        .lock()
        .map(|mut r| s.faults.fail_request(&mut *r))
        .unwrap_or(false);
    if fail {
        s.metrics.fault(Fault::ServerError);
        tracing::info!(fault = Fault::ServerError.as_str(), "injected fault");
        return Err(ApiError::Internal(
            "injected fault (--fault-error-rate)".into(),
        ));
    }
    if !s.faults.prefill_delay.is_zero() {
        s.metrics.fault(Fault::PrefillDelay);
        tokio::time::sleep(s.faults.prefill_delay).await;
    }
    Ok(())
}
