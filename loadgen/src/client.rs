//! Sends one planned request and times it.
//!
//! For a streamed request the clock marks the send, every event that adds
//! text (the first one is TTFT, the gaps between them are ITL), and the end
//! of the stream. Output tokens are the server's `usage.completion_tokens`
//! when it reports them, else the number of text-bearing events (one token
//! per event, as OpenAI-compatible servers stream). A non-streamed request
//! only has an end-to-end time. Every failure becomes an [`Failure`] with a
//! stable label used as the "errors by status" key.

use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::sse::{decode_chunk, Chunk, SseParser, Usage};
use crate::workload::Planned;

/// Where and how requests are sent; shared by all tasks of a run.
#[derive(Debug, Clone)]
pub struct Target {
    pub client: reqwest::Client,
    pub url: String,
    pub headers: HeaderMap,
    pub tenant_header: HeaderName,
    pub request_timeout: Duration,
}

/// Why a request did not complete normally. `label()` is the stable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("connect failed")]
    Connect,
    #[error("timed out")]
    Timeout,
    #[error("stream broke after the response started: {0}")]
    Stream(String),
    #[error("stream ended without [DONE] or a finish_reason")]
    Truncated,
    #[error("the server sent an error event: {0}")]
    InBand(String),
    #[error("the response body was not an OpenAI completion: {0}")]
    BadBody(String),
    #[error("request failed: {0}")]
    Other(String),
}

impl Failure {
    pub fn label(&self) -> String {
        match self {
            Failure::Status(s) => s.to_string(),
            Failure::Connect => "connect".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Stream(_) => "stream_error".into(),
            Failure::Truncated => "stream_truncated".into(),
            Failure::InBand(_) => "error_event".into(),
            Failure::BadBody(_) => "bad_body".into(),
            Failure::Other(_) => "other".into(),
        }
    }
}

/// The measured result of one request. Times are relative to the run start.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub index: u64,
    pub tenant: Option<String>,
    pub requested_tokens: u32,
    pub started: Duration,
    pub ended: Duration,
    pub result: Result<(), Failure>,
    /// Time to the first text-bearing event (streamed requests only).
    pub ttft: Option<Duration>,
    /// Gaps between consecutive text-bearing events.
    pub itl: Vec<Duration>,
    pub output_tokens: u64,
    pub prompt_tokens: Option<u64>,
    /// The first part of an error body, for the report's examples.
    pub detail: Option<String>,
}

impl Outcome {
    pub fn e2e(&self) -> Duration {
        self.ended.saturating_sub(self.started)
    }
}

/// Sends `planned` and measures it; never panics on what the server does.
pub async fn execute(
    target: &Target,
    planned: Planned,
    run_start: Instant,
    stream: bool,
) -> Outcome {
    let started_at = Instant::now();
    let mut out = Outcome {
        index: planned.index,
        tenant: planned.tenant.clone(),
        requested_tokens: planned.max_tokens,
        started: started_at - run_start,
        ended: Duration::ZERO,
        result: Ok(()),
        ttft: None,
        itl: Vec::new(),
        output_tokens: 0,
        prompt_tokens: None,
        detail: None,
    };
    let work = send(target, &planned, started_at, stream, &mut out);
    let result = match tokio::time::timeout(target.request_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    };
    out.ended = Instant::now() - run_start;
    if let Err(f) = &result {
        tracing::debug!(index = planned.index, failure = %f, "request failed");
    }
    out.result = result;
    out
}

async fn send(
    target: &Target,
    planned: &Planned,
    started_at: Instant,
    stream: bool,
    out: &mut Outcome,
) -> Result<(), Failure> {
    let mut req = target
        .client
        .post(&target.url)
        .headers(target.headers.clone())
        .json(&planned.body);
    if let Some(t) = &planned.tenant {
        if let Ok(v) = HeaderValue::from_str(t) {
            req = req.header(target.tenant_header.clone(), v);
        }
    }
    let resp = req.send().await.map_err(classify)?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        out.detail = Some(String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        return Err(Failure::Status(status.as_u16()));
    }
    if stream {
        read_stream(resp, started_at, out).await
    } else {
        read_whole(resp, out).await
    }
}

async fn read_stream(
    resp: reqwest::Response,
    started_at: Instant,
    out: &mut Outcome,
) -> Result<(), Failure> {
    let mut parser = SseParser::new();
    let mut body = resp.bytes_stream();
    let mut last_token: Option<Instant> = None;
    let mut events = 0u64;
    let mut usage: Option<Usage> = None;
    let mut finished = false;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| Failure::Stream(e.to_string()))?;
        let now = Instant::now();
        let evs = parser
            .push(&piece)
            .map_err(|e| Failure::Stream(e.to_string()))?;
        for data in evs {
            match decode_chunk(&data) {
                Some(Chunk::Done) => finished = true,
                Some(Chunk::Error(msg)) => {
                    out.detail = Some(msg.clone());
                    return Err(Failure::InBand(msg));
                }
                Some(Chunk::Delta {
                    text,
                    finished: fin,
                    usage: u,
                }) => {
                    finished |= fin;
                    if u.is_some() {
                        usage = u;
                    }
                    if !text.is_empty() {
                        events += 1;
                        match last_token {
                            None => out.ttft = Some(now - started_at),
                            Some(prev) => out.itl.push(now - prev),
                        }
                        last_token = Some(now);
                    }
                }
                None => return Err(Failure::BadBody(truncate(&data))),
            }
        }
    }
    out.output_tokens = usage.map_or(events, |u| u.completion_tokens);
    out.prompt_tokens = usage.map(|u| u.prompt_tokens);
    if finished {
        Ok(())
    } else {
        Err(Failure::Truncated)
    }
}

async fn read_whole(resp: reqwest::Response, out: &mut Outcome) -> Result<(), Failure> {
    let body = resp
        .bytes()
        .await
        .map_err(|e| Failure::Stream(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| Failure::BadBody(truncate(&String::from_utf8_lossy(&body))))?;
    if let Some(u) = v
        .get("usage")
        .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok())
    {
        out.output_tokens = u.completion_tokens;
        out.prompt_tokens = Some(u.prompt_tokens);
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

fn classify(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_connect() {
        Failure::Connect
    } else {
        Failure::Other(e.to_string())
    }
}

/// Parses `--header 'Name: value'` flags.
pub fn parse_headers(raw: &[String]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for h in raw {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header '{h}' is not 'Name: value'"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|e| format!("header name '{k}': {e}"))?;
        let value =
            HeaderValue::from_str(v.trim()).map_err(|e| format!("header value for '{k}': {e}"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_labels_are_stable_keys() {
        assert_eq!(Failure::Status(503).label(), "503");
        assert_eq!(Failure::Connect.label(), "connect");
        assert_eq!(Failure::Truncated.label(), "stream_truncated");
    }

    #[test]
    fn headers_parse_and_bad_ones_are_rejected() {
        let m = parse_headers(&["Authorization: Bearer x".into(), "x-a:1".into()]).expect("valid");
        assert_eq!(
            m.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer x")
        );
        assert!(parse_headers(&["nocolon".into()]).is_err());
        assert!(parse_headers(&["bad name: v".into()]).is_err());
    }
}
