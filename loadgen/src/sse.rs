//! Incremental Server-Sent Events parsing and OpenAI stream-chunk decoding.
//!
//! Bytes arrive in arbitrary pieces (a network read may split a line or hold
//! several events); [`SseParser::push`] buffers the partial tail and returns
//! only complete events. [`decode_chunk`] turns one event's data into what
//! the load generator measures: text produced and usage, for both
//! `/v1/completions` and `/v1/chat/completions` chunks.

use serde::Deserialize;

/// Most a single event may buffer before the stream is declared malformed.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// A stream that cannot be parsed as SSE.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an SSE event exceeded {MAX_EVENT_BYTES} bytes")]
    EventTooLarge,
}

/// Splits a byte stream into SSE events; only `data:` fields are kept.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(rel) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + rel;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                self.data.push(String::from_utf8_lossy(rest).into_owned());
            }
            // Comments (":...") and other fields (event:, id:, retry:) are ignored.
            start = end + 1;
        }
        self.buf.drain(..start);
        let pending: usize = self.buf.len() + self.data.iter().map(String::len).sum::<usize>();
        if pending > MAX_EVENT_BYTES {
            return Err(SseError::EventTooLarge);
        }
        Ok(events)
    }
}

/// Token usage as OpenAI-compatible servers report it.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// What one streamed event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// The `[DONE]` sentinel.
    Done,
    /// A chunk: the text it adds (possibly empty), whether it closes a choice,
    /// and usage when the server sent it (`stream_options.include_usage`).
    Delta {
        text: String,
        finished: bool,
        usage: Option<Usage>,
    },
    /// An `{"error": ...}` object sent in-band, e.g. a stream cut by the server.
    Error(String),
}

#[derive(Deserialize)]
struct RawChunk {
    #[serde(default)]
    choices: Vec<RawChoice>,
    usage: Option<Usage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawChoice {
    text: Option<String>,
    delta: Option<RawDelta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct RawDelta {
    content: Option<String>,
}

/// Decodes one event's data; `None` when it is not JSON of a known shape.
pub fn decode_chunk(data: &str) -> Option<Chunk> {
    let data = data.trim();
    if data == "[DONE]" {
        return Some(Chunk::Done);
    }
    let raw: RawChunk = serde_json::from_str(data).ok()?;
    if let Some(err) = raw.error {
        let msg = err
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Some(Chunk::Error(msg));
    }
    let mut text = String::new();
    let mut finished = false;
    for c in raw.choices {
        if let Some(t) = c.text {
            text.push_str(&t);
        }
        if let Some(t) = c.delta.and_then(|d| d.content) {
            text.push_str(&t);
        }
        finished |= c.finish_reason.is_some();
    }
    Some(Chunk::Delta {
        text,
        finished,
        usage: raw.usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_are_reassembled() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"a\"").expect("ok").is_empty());
        assert!(p.push(b":1}\n").expect("ok").is_empty());
        assert_eq!(
            p.push(b"\ndata: x\n\n").expect("ok"),
            vec!["{\"a\":1}", "x"]
        );
    }

    #[test]
    fn crlf_comments_and_other_fields_are_handled() {
        let mut p = SseParser::new();
        let ev = p
            .push(b": keep-alive\r\n\r\nevent: m\r\nid: 3\r\ndata: one\r\ndata:two\r\n\r\n")
            .expect("ok");
        assert_eq!(ev, vec!["one\ntwo"]);
    }

    #[test]
    fn an_unterminated_event_is_not_emitted() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: partial\n").expect("ok").is_empty());
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut p = SseParser::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(p.push(&big), Err(SseError::EventTooLarge));
    }

    #[test]
    fn completion_and_chat_chunks_decode_to_text() {
        let c = decode_chunk(r#"{"choices":[{"index":0,"text":" hi","finish_reason":null}]}"#);
        assert_eq!(
            c,
            Some(Chunk::Delta {
                text: " hi".into(),
                finished: false,
                usage: None
            })
        );
        let c =
            decode_chunk(r#"{"choices":[{"delta":{"content":"yo"},"finish_reason":"length"}]}"#);
        assert_eq!(
            c,
            Some(Chunk::Delta {
                text: "yo".into(),
                finished: true,
                usage: None
            })
        );
    }

    #[test]
    fn usage_only_chunk_and_done_sentinel_decode() {
        let c = decode_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}"#,
        );
        assert_eq!(
            c,
            Some(Chunk::Delta {
                text: String::new(),
                finished: false,
                usage: Some(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 9
                })
            })
        );
        assert_eq!(decode_chunk("[DONE]"), Some(Chunk::Done));
    }

    #[test]
    fn in_band_error_and_garbage_are_distinguished() {
        assert_eq!(
            decode_chunk(r#"{"error":{"message":"draining","type":"unavailable"}}"#),
            Some(Chunk::Error("draining".into()))
        );
        assert_eq!(decode_chunk("not json"), None);
    }
}
