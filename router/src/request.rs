//! Parsing the client's request at the edge.
//!
//! The router reads only what it routes on (`model`, `stream`, the start of
//! the prompt) and forwards the original bytes untouched. Anything that is
//! not a JSON object with a string `model` is rejected here with a 400, so
//! nothing deeper re-checks it.

use serde::Deserialize;
use serde_json::Value;

use crate::error::ProxyError;
use crate::hashing::fnv1a;

/// A request the router can route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidRequest {
    pub model: String,
    pub stream: bool,
    /// FNV-1a of the prompt's first block (first `block_bytes` bytes).
    pub prefix_hash: Option<u64>,
}

#[derive(Deserialize)]
struct Peek {
    model: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    messages: Option<Value>,
}

/// Only what routing without prefix affinity needs; the prompt is skipped, not built.
#[derive(Deserialize)]
struct PeekModel {
    model: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
}

fn bad_json(e: serde_json::Error) -> ProxyError {
    ProxyError::BadRequest(format!("request body is not a valid JSON object: {e}"))
}

/// Parses an OpenAI completions or chat body.
pub fn parse(body: &[u8], block_bytes: usize) -> Result<ValidRequest, ProxyError> {
    if block_bytes == 0 {
        let peek: PeekModel = serde_json::from_slice(body).map_err(bad_json)?;
        return Ok(ValidRequest {
            model: model_of(peek.model)?,
            stream: peek.stream.unwrap_or(false),
            prefix_hash: None,
        });
    }
    let peek: Peek = serde_json::from_slice(body).map_err(bad_json)?;
    let model = model_of(peek.model)?;
    let first_text =
        prompt_text(peek.prompt.as_ref()).or_else(|| messages_text(peek.messages.as_ref()));
    let prefix_hash = first_text
        .filter(|t| !t.is_empty() && block_bytes > 0)
        .map(|t| {
            let end = floor_char_boundary(t, block_bytes);
            fnv1a(&t.as_bytes()[..end])
        });
    Ok(ValidRequest {
        model,
        stream: peek.stream.unwrap_or(false),
        prefix_hash,
    })
}

fn model_of(v: Option<Value>) -> Result<String, ProxyError> {
    match v {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        Some(_) => Err(ProxyError::BadRequest(
            "`model` must be a non-empty string".into(),
        )),
        None => Err(ProxyError::BadRequest(
            "missing required field `model`".into(),
        )),
    }
}

fn prompt_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Array(items) => items.first().and_then(Value::as_str),
        _ => None,
    }
}

fn messages_text(v: Option<&Value>) -> Option<&str> {
    v?.as_array()?.first()?.get("content")?.as_str()
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_body_yields_model_stream_and_prefix() {
        let r = parse(br#"{"model":"m","prompt":"hello world","stream":true}"#, 5).expect("valid");
        assert_eq!(r.model, "m");
        assert!(r.stream);
        assert_eq!(r.prefix_hash, Some(fnv1a(b"hello")));
    }

    #[test]
    fn chat_body_uses_the_first_message_for_the_prefix() {
        let r = parse(
            br#"{"model":"m","messages":[{"role":"system","content":"be brief"}]}"#,
            256,
        )
        .expect("valid");
        assert_eq!(r.prefix_hash, Some(fnv1a(b"be brief")));
        assert!(!r.stream);
    }

    #[test]
    fn malformed_or_modelless_bodies_are_bad_requests() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"model":3}"#,
            br#"{"stream":true}"#,
        ] {
            assert!(matches!(parse(body, 0), Err(ProxyError::BadRequest(_))));
        }
        for body in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"prompt":"x"}"#,
            br#"{"model":3}"#,
            br#"{"model":""}"#,
        ] {
            assert!(
                matches!(parse(body, 16), Err(ProxyError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn prefix_cut_respects_utf8_boundaries() {
        let r = parse("{\"model\":\"m\",\"prompt\":\"héllo\"}".as_bytes(), 2).expect("valid");
        assert_eq!(r.prefix_hash, Some(fnv1a(b"h")));
    }
}
