//! The OpenAI shapes of log-probabilities:
//! - completions (legacy): `{"tokens": [..], "token_logprobs": [..],
//!   "top_logprobs": [{token: logprob}, ..], "text_offset": [..]}`, the
//!   first echoed prompt token with `null` logprob and `null` top entry;
//!   `top_logprobs` holds the k most likely tokens and always the chosen
//!   one (so up to k + 1 entries, as OpenAI documents);
//! - chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs":
//!   [{"token", "logprob", "bytes"}]}]}`.
//!
//! `text_offset` is the character offset of each token in the returned
//! `text` (which, with `echo`, starts with the prompt): it comes from the
//! same incremental decoding that produces the text, so a token that
//! completes a multi-byte character shares the offset of the token that
//! started it.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::executor::score::TokenLogprob;
use crate::tokenizer::{IncrementalDecoder, TextCodec};

/// One rendered entry: token text, its log-probability, the alternatives
/// (text, logprob) and its offset in the returned text.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub token: String,
    pub logprob: Option<f32>,
    pub top: Vec<(String, f32)>,
    pub offset: usize,
}

/// Renders `TokenLogprob`s into entries, keeping the text offsets.
pub struct Renderer {
    codec: Arc<TextCodec>,
    decoder: IncrementalDecoder,
    chars: usize,
    /// Name tokens `token_id:<id>` (vLLM's `return_tokens_as_token_ids`).
    as_ids: bool,
}

impl Renderer {
    pub fn new(codec: Arc<TextCodec>, as_ids: bool) -> Self {
        Self {
            codec,
            decoder: IncrementalDecoder::default(),
            chars: 0,
            as_ids,
        }
    }

    fn name(&self, id: u32) -> String {
        if self.as_ids {
            format!("token_id:{id}")
        } else {
            self.codec.token_text(id)
        }
    }

    pub fn entry(&mut self, t: &TokenLogprob) -> Entry {
        let offset = self.chars;
        self.chars += self.decoder.push(&self.codec, t.token).chars().count();
        Entry {
            token: self.name(t.token),
            logprob: t.logprob,
            top: t.top.iter().map(|(id, lp)| (self.name(*id), *lp)).collect(),
            offset,
        }
    }

    /// Moves the offsets past text that has no entries (an echoed prompt
    /// whose log-probabilities were not asked for).
    pub fn skip_tokens(&mut self, ids: &[u32]) {
        for &id in ids {
            self.chars += self.decoder.push(&self.codec, id).chars().count();
        }
    }
}

/// The legacy completions `logprobs` object.
pub fn completion_json(entries: &[Entry]) -> Value {
    let tokens: Vec<&str> = entries.iter().map(|e| e.token.as_str()).collect();
    let token_logprobs: Vec<Option<f32>> = entries.iter().map(|e| e.logprob).collect();
    let top: Vec<Value> = entries
        .iter()
        .map(|e| match e.logprob {
            None => Value::Null,
            Some(lp) => {
                let mut m = Map::new();
                for (t, v) in &e.top {
                    m.entry(t.clone()).or_insert(json!(v));
                }
                m.entry(e.token.clone()).or_insert(json!(lp));
                Value::Object(m)
            }
        })
        .collect();
    let offsets: Vec<usize> = entries.iter().map(|e| e.offset).collect();
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

/// The chat `logprobs` object.
pub fn chat_json(entries: &[Entry]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.token.as_bytes(),
                "top_logprobs": e.top.iter().map(|(t, lp)| json!({
                    "token": t, "logprob": lp, "bytes": t.as_bytes(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "content": content })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(token: &str, logprob: Option<f32>, top: &[(&str, f32)], offset: usize) -> Entry {
        Entry {
            token: token.into(),
            logprob,
            top: top.iter().map(|(t, v)| (t.to_string(), *v)).collect(),
            offset,
        }
    }

    #[test]
    fn completion_shape_has_a_null_first_prompt_token_and_always_the_chosen_token() {
        let v = completion_json(&[
            e("Hello", None, &[], 0),
            e(" there", Some(-2.0), &[(" world", -0.5)], 5),
        ]);
        assert_eq!(v["tokens"], json!(["Hello", " there"]));
        assert_eq!(v["token_logprobs"], json!([null, -2.0]));
        assert_eq!(v["top_logprobs"][0], Value::Null);
        assert_eq!(
            v["top_logprobs"][1],
            json!({" world": -0.5, " there": -2.0})
        );
        assert_eq!(v["text_offset"], json!([0, 5]));
    }

    #[test]
    fn chat_shape_lists_content_entries_with_bytes() {
        let v = chat_json(&[e("Hi", Some(-0.25), &[("Hi", -0.25), ("Yo", -3.0)], 0)]);
        let c = &v["content"][0];
        assert_eq!(c["token"], "Hi");
        assert_eq!(c["logprob"], -0.25);
        assert_eq!(c["bytes"], json!([72, 105]));
        assert_eq!(c["top_logprobs"][1]["token"], "Yo");
    }
}
