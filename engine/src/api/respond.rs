//! Response shapes of a started request: the OpenAI JSON body of a
//! non-streaming completion (`collect_response`) and the SSE stream of a
//! streaming one (`stream_response`). A stream ends with its final chunk and
//! `data: [DONE]`; its guard (in-flight count, tenant slot) is released only
//! after those were handed to the connection, so a drain that waits for
//! in-flight requests never exits before the last bytes are written.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use tokio::sync::mpsc::UnboundedReceiver;

use std::sync::Arc;

use super::generate::RequestGuard;
use super::logprobs::{chat_json, completion_json, Entry, Renderer};
use super::validate::ValidRequest;
use crate::executor::score::TokenLogprob;
use crate::executor::Event;
use crate::tokenizer::TextCodec;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Completion,
    Chat,
}

pub struct ResponseMeta {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub kind: Kind,
    pub valid: ValidRequest,
    pub codec: Arc<TextCodec>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ResponseMeta {
    pub fn new(kind: Kind, model: String, valid: ValidRequest, codec: Arc<TextCodec>) -> Self {
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        Self {
            id: format!("{prefix}-{:x}", rand::random::<u64>()),
            model,
            created: now_secs(),
            kind,
            valid,
            codec,
        }
    }

    fn wants_logprobs(&self) -> bool {
        self.valid.logprobs.is_some()
    }

    fn logprobs_json(&self, entries: &[Entry]) -> serde_json::Value {
        match self.kind {
            Kind::Completion => completion_json(entries),
            Kind::Chat => chat_json(entries),
        }
    }

    /// The entries of the echoed prompt: the first token has no
    /// log-probability; the rest come from the engine's scoring.
    fn prompt_entries(&self, r: &mut Renderer, scored: &[TokenLogprob]) -> Vec<Entry> {
        let Some(echo) = &self.valid.echo else {
            return Vec::new();
        };
        if echo.logprobs.is_none() {
            r.skip_tokens(&self.valid.prompt);
            return Vec::new();
        }
        let first = self.valid.prompt.first().map(|&token| TokenLogprob {
            token,
            logprob: None,
            top: Vec::new(),
        });
        first.iter().chain(scored).map(|t| r.entry(t)).collect()
    }

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

/// Why a non-streaming request ended without a result.
#[derive(Debug)]
pub enum Unfinished {
    Refused(crate::admission::Refusal),
    Failed(String),
    /// The engine dropped the request (it stopped).
    Dropped,
}

/// Collects a non-streaming response.
pub async fn collect_response(
    meta: ResponseMeta,
    mut rx: UnboundedReceiver<Event>,
    guard: RequestGuard,
) -> Result<Response, Unfinished> {
    let mut text = meta
        .valid
        .echo
        .as_ref()
        .map(|e| e.text.clone())
        .unwrap_or_default();
    let mut prompt_lps = Vec::new();
    let mut gen_lps = Vec::new();
    loop {
        match rx.recv().await {
            Some(Event::Started) => {}
            Some(Event::PromptLogprobs(v)) => prompt_lps.extend(v),
            Some(Event::Logprob(t)) => gen_lps.push(t),
            Some(Event::Delta(d)) => text.push_str(&d),
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let usage = meta.usage(prompt_tokens, completion_tokens);
                let logprobs = if meta.wants_logprobs() {
                    let mut r = Renderer::new(meta.codec.clone(), meta.valid.tokens_as_ids);
                    let mut entries = meta.prompt_entries(&mut r, &prompt_lps);
                    entries.extend(gen_lps.iter().map(|t| r.entry(t)));
                    meta.logprobs_json(&entries)
                } else {
                    serde_json::Value::Null
                };
                let body = match meta.kind {
                    Kind::Completion => serde_json::json!({
                        "id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
                        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish.as_str()}],
                        "usage": usage,
                    }),
                    Kind::Chat => serde_json::json!({
                        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "logprobs": logprobs, "finish_reason": finish.as_str()}],
                        "usage": usage,
                    }),
                };
                // The body is built; the guard goes with this function, as
                // the response is handed to the connection.
                drop(guard);
                return Ok(Json(body).into_response());
            }
            Some(Event::Refused(r)) => return Err(Unfinished::Refused(r)),
            Some(Event::Failed(m)) => return Err(Unfinished::Failed(m)),
            None => return Err(Unfinished::Dropped),
        }
    }
}

struct StreamState {
    meta: ResponseMeta,
    rx: UnboundedReceiver<Event>,
    pending: Option<Event>,
    /// Dropped with the state, i.e. after the last event was yielded.
    _guard: RequestGuard,
    first: bool,
    done: bool,
    renderer: Renderer,
    prompt_lps: Vec<TokenLogprob>,
    /// Log-probabilities of tokens whose text has not been sent yet.
    pending_lps: Vec<TokenLogprob>,
    echo_sent: bool,
}

impl StreamState {
    /// The echoed prompt, as the stream's first chunk (once).
    fn echo_chunk(&mut self) -> Option<SseEvent> {
        let echo = self.meta.valid.echo.as_ref()?;
        if self.echo_sent {
            return None;
        }
        self.echo_sent = true;
        let text = echo.text.clone();
        let mut c = self.meta.chunk(&text, None, self.first);
        self.first = false;
        let entries = self
            .meta
            .prompt_entries(&mut self.renderer, &self.prompt_lps);
        if self.meta.wants_logprobs() {
            c["choices"][0]["logprobs"] = self.meta.logprobs_json(&entries);
        }
        Some(SseEvent::default().data(c.to_string()))
    }

    /// Attaches the pending log-probabilities to a chunk.
    fn attach_logprobs(&mut self, c: &mut serde_json::Value) {
        if !self.meta.wants_logprobs() || self.pending_lps.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending_lps);
        let entries: Vec<Entry> = pending.iter().map(|t| self.renderer.entry(t)).collect();
        c["choices"][0]["logprobs"] = self.meta.logprobs_json(&entries);
    }

    /// The SSE events for one engine event.
    fn events(&mut self, ev: Option<Event>) -> Vec<SseEvent> {
        match ev {
            Some(Event::Started) => Vec::new(),
            Some(Event::PromptLogprobs(v)) => {
                self.prompt_lps.extend(v);
                Vec::new()
            }
            Some(Event::Logprob(t)) => {
                self.pending_lps.push(t);
                Vec::new()
            }
            Some(Event::Delta(d)) => {
                let mut out: Vec<SseEvent> = self.echo_chunk().into_iter().collect();
                let mut c = self.meta.chunk(&d, None, self.first);
                self.attach_logprobs(&mut c);
                self.first = false;
                out.push(SseEvent::default().data(c.to_string()));
                out
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let mut out: Vec<SseEvent> = self.echo_chunk().into_iter().collect();
                let mut c = self.meta.chunk("", Some(finish.as_str()), self.first);
                self.attach_logprobs(&mut c);
                let usage = self.meta.usage(prompt_tokens, completion_tokens);
                c["usage"] = usage.clone();
                out.push(SseEvent::default().data(c.to_string()));
                if self.meta.valid.include_usage {
                    let mut u = self.meta.chunk("", None, false);
                    u["choices"] = serde_json::json!([]);
                    u["usage"] = usage;
                    out.push(SseEvent::default().data(u.to_string()));
                }
                out.push(SseEvent::default().data("[DONE]"));
                self.done = true;
                out
            }
            Some(Event::Failed(e)) => {
                let body = serde_json::json!({"error": {"message": e, "type": "internal_error", "param": null, "code": 500}});
                self.done = true;
                vec![
                    SseEvent::default().data(body.to_string()),
                    SseEvent::default().data("[DONE]"),
                ]
            }
            Some(Event::Refused(_)) | None => {
                // The engine stopped (drain window ended): say so, and do
                // not send [DONE], so the client knows the stream was cut.
                let body = serde_json::json!({"error": {"message": "the stream was cut: the replica is shutting down",
                    "type": "stream_cut", "param": null, "code": 503}});
                self.done = true;
                vec![SseEvent::default().data(body.to_string())]
            }
        }
    }
}

pub fn stream_response(
    meta: ResponseMeta,
    rx: UnboundedReceiver<Event>,
    pending: Option<Event>,
    guard: RequestGuard,
    keep_alive: Duration,
) -> Response {
    let renderer = Renderer::new(meta.codec.clone(), meta.valid.tokens_as_ids);
    let st = StreamState {
        meta,
        rx,
        pending,
        _guard: guard,
        first: true,
        done: false,
        renderer,
        prompt_lps: Vec::new(),
        pending_lps: Vec::new(),
        echo_sent: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            // Returning None drops the state, and with it the guard, only
            // after the final events above were yielded.
            return None;
        }
        let ev = match st.pending.take() {
            Some(ev) => Some(ev),
            None => st.rx.recv().await,
        };
        let out = st.events(ev);
        Some((
            futures::stream::iter(out.into_iter().map(Ok::<_, Infallible>)),
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
