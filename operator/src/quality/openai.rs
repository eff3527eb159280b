//! The OpenAI-compatible requests the gate sends to an engine pod, and the
//! parts of the answers it reads. Pure: bodies in, JSON out; the runner in
//! controller/quality.rs does the HTTP.
//!
//! - An answer: greedy decoding (`temperature: 0`) on `/v1/completions`
//!   (`prompt`) or `/v1/chat/completions` (`messages`), the entry's
//!   `max_tokens` and `stop`.
//! - A likelihood: `/v1/completions` with `prompt` = entry prompt +
//!   reference, `echo: true`, `logprobs: 0`, `max_tokens: 0` (steward-engine
//!   scores without generating, docs/engine.md); the answer's
//!   `logprobs.token_logprobs` from `text_offset` ≥ the prompt's length up to
//!   the end of the reference are the reference's tokens, scored with the
//!   prompt as context (teacher forcing, as lm-evaluation-harness does).
//!   Tokens past the reference (an engine that generates anyway) are left
//!   out. Offsets are in characters (Unicode scalar values), as OpenAI,
//!   vLLM and steward-engine count.

use serde_json::{json, Value};

use super::gate::LogLikelihood;
use super::golden::{GoldenEntry, Input};

/// Path and body of the request that asks for an entry's answer.
pub fn answer_request(model: &str, e: &GoldenEntry) -> (&'static str, Value) {
    let mut body = match &e.input {
        Input::Prompt(p) => json!({ "model": model, "prompt": p }),
        Input::Chat(messages) => json!({
            "model": model,
            "messages": messages
                .iter()
                .map(|m| json!({ "role": m.role.as_str(), "content": m.content }))
                .collect::<Vec<_>>(),
        }),
    };
    body["temperature"] = json!(0);
    body["max_tokens"] = json!(e.max_tokens);
    if !e.stop.is_empty() {
        body["stop"] = json!(e.stop);
    }
    let path = match e.input {
        Input::Prompt(_) => "/v1/completions",
        Input::Chat(_) => "/v1/chat/completions",
    };
    (path, body)
}

/// Body of the teacher-forced scoring request for `prompt` + `reference`
/// (always `/v1/completions`).
pub fn likelihood_request(model: &str, prompt: &str, reference: &str) -> Value {
    json!({
        "model": model,
        "prompt": format!("{prompt}{reference}"),
        "echo": true,
        "logprobs": 0,
        "max_tokens": 0,
        "temperature": 0,
    })
}

/// An answer that does not have the OpenAI shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected response shape: {0}")]
pub struct ShapeError(pub String);

/// The text of the first choice of a completion or chat completion.
pub fn answer_text(v: &Value) -> Result<String, ShapeError> {
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| ShapeError("no choices[0]".into()))?;
    let text = choice
        .get("text")
        .or_else(|| choice.get("message").and_then(|m| m.get("content")))
        .ok_or_else(|| ShapeError("choices[0] has neither text nor message.content".into()))?;
    match text {
        Value::String(s) => Ok(s.clone()),
        // A chat answer with no content is an empty answer, not a shape
        // fault.
        Value::Null => Ok(String::new()),
        _ => Err(ShapeError("choices[0] text is not a string".into())),
    }
}

/// The reference's log-likelihood from a [`likelihood_request`] answer.
pub fn reference_likelihood(
    v: &Value,
    prompt: &str,
    reference: &str,
) -> Result<LogLikelihood, ShapeError> {
    let lp = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("logprobs"))
        .filter(|l| !l.is_null())
        .ok_or_else(|| {
            ShapeError(
                "choices[0].logprobs is missing (does the engine support logprobs with echo?)"
                    .into(),
            )
        })?;
    let arr = |k: &str| {
        lp.get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| ShapeError(format!("logprobs.{k} is not a list")))
    };
    let offsets = arr("text_offset")?;
    let logprobs = arr("token_logprobs")?;
    if offsets.len() != logprobs.len() {
        return Err(ShapeError(format!(
            "logprobs.text_offset has {} items and token_logprobs {}",
            offsets.len(),
            logprobs.len()
        )));
    }
    let start = prompt.chars().count() as u64;
    let end = start + reference.chars().count() as u64;
    let mut out = LogLikelihood::default();
    for (o, l) in offsets.iter().zip(logprobs) {
        let o = o
            .as_u64()
            .ok_or_else(|| ShapeError("text_offset holds a non-integer".into()))?;
        if o < start || o >= end {
            continue;
        }
        // The very first token of the text has no context and no logprob.
        let Some(l) = l.as_f64() else {
            if l.is_null() {
                continue;
            }
            return Err(ShapeError("token_logprobs holds a non-number".into()));
        };
        out.sum += l;
        out.tokens += 1;
    }
    if out.tokens == 0 {
        return Err(ShapeError(format!(
            "no token starts inside the reference (characters {start}..{end}); was echo honoured?"
        )));
    }
    Ok(out)
}

/// Model ids from `GET /v1/models`.
pub fn model_ids(v: &Value) -> Vec<String> {
    v.get("data")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The message of an OpenAI-style error body, else the body's start.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::golden::GoldenSet;
    use super::*;

    fn entries() -> Vec<GoldenEntry> {
        let yaml = r#"
- {id: p, category: c, prompt: "Q?", scorer: contains, reference: " A", maxTokens: 8, stop: ["\n"]}
- {id: m, category: c, messages: [{role: user, content: hi}], scorer: json-valid}
"#;
        GoldenSet::parse(&BTreeMap::from([("g.yaml".to_string(), yaml.to_string())]))
            .unwrap()
            .entries()
            .to_vec()
    }

    #[test]
    fn answer_requests_are_greedy_and_carry_limits() {
        let e = entries();
        let (path, body) = answer_request("chat", &e[0]);
        assert_eq!(path, "/v1/completions");
        assert_eq!(
            body,
            json!({"model": "chat", "prompt": "Q?", "temperature": 0, "max_tokens": 8, "stop": ["\n"]})
        );
        let (path, body) = answer_request("chat", &e[1]);
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(
            body,
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 32})
        );
    }

    #[test]
    fn likelihood_request_echoes_prompt_and_reference() {
        assert_eq!(
            likelihood_request("m", "Q?", " A"),
            json!({"model": "m", "prompt": "Q? A", "echo": true, "logprobs": 0, "max_tokens": 0, "temperature": 0})
        );
    }

    #[test]
    fn answer_text_reads_completion_and_chat_shapes() {
        let c = json!({"choices": [{"index": 0, "text": " Paris", "logprobs": null}]});
        assert_eq!(answer_text(&c).unwrap(), " Paris");
        let m = json!({"choices": [{"message": {"role": "assistant", "content": "{}"}}]});
        assert_eq!(answer_text(&m).unwrap(), "{}");
        let empty = json!({"choices": [{"message": {"role": "assistant", "content": null}}]});
        assert_eq!(answer_text(&empty).unwrap(), "");
        assert!(answer_text(&json!({"choices": []})).is_err());
        assert!(answer_text(&json!({"choices": [{"text": 3}]})).is_err());
    }

    /// "Q? A" echoed as tokens "Q", "?", " A" plus one generated "!":
    /// only " A" (offset 2) lies in the reference.
    #[test]
    fn reference_likelihood_sums_only_the_reference_tokens() {
        let v = json!({"choices": [{"text": "Q? A!", "logprobs": {
            "tokens": ["Q", "?", " A", "!"],
            "token_logprobs": [null, -1.5, -0.25, -3.0],
            "top_logprobs": null,
            "text_offset": [0, 1, 2, 4]
        }}]});
        let ll = reference_likelihood(&v, "Q?", " A").unwrap();
        assert_eq!(
            ll,
            LogLikelihood {
                sum: -0.25,
                tokens: 1
            }
        );
    }

    #[test]
    fn offsets_count_characters_not_bytes() {
        // "é" is two bytes, one character: the reference starts at 1.
        let v = json!({"choices": [{"logprobs": {
            "token_logprobs": [null, -1.0, -2.0],
            "text_offset": [0, 1, 2]
        }}]});
        let ll = reference_likelihood(&v, "é", "xy").unwrap();
        assert_eq!(
            ll,
            LogLikelihood {
                sum: -3.0,
                tokens: 2
            }
        );
    }

    #[test]
    fn a_reference_at_the_very_start_skips_the_null_first_logprob() {
        let v = json!({"choices": [{"logprobs": {
            "token_logprobs": [null, -1.0],
            "text_offset": [0, 1]
        }}]});
        let ll = reference_likelihood(&v, "", "ab").unwrap();
        assert_eq!(
            ll,
            LogLikelihood {
                sum: -1.0,
                tokens: 1
            }
        );
    }

    #[test]
    fn missing_or_inconsistent_logprobs_are_shape_errors() {
        let no_lp = json!({"choices": [{"text": "x", "logprobs": null}]});
        assert!(reference_likelihood(&no_lp, "Q", "x")
            .unwrap_err()
            .0
            .contains("logprobs is missing"));
        let lopsided =
            json!({"choices": [{"logprobs": {"token_logprobs": [null], "text_offset": [0, 1]}}]});
        assert!(reference_likelihood(&lopsided, "Q", "x").is_err());
        let no_echo =
            json!({"choices": [{"logprobs": {"token_logprobs": [-1.0], "text_offset": [9]}}]});
        assert!(reference_likelihood(&no_echo, "Q", "x")
            .unwrap_err()
            .0
            .contains("echo"));
    }

    #[test]
    fn models_and_error_messages_are_read_leniently() {
        let v = json!({"object": "list", "data": [{"id": "chat", "object": "model"}]});
        assert_eq!(model_ids(&v), ["chat"]);
        assert!(model_ids(&json!({})).is_empty());
        assert_eq!(
            error_message(r#"{"error": {"message": "prompt too long", "type": "x"}}"#),
            "prompt too long"
        );
        assert_eq!(error_message("plain text"), "plain text");
    }
}
