//! Request shapes of `/v1/completions` and `/v1/chat/completions`, and their
//! validation into `ValidRequest` ("parse, don't validate": nothing past
//! this module re-checks a field). Every rule here answers 4xx with a message
//! naming the field.

use serde::Deserialize;

use super::error::ApiError;
use crate::sampling::SamplingParams;
use crate::tokenizer::TextCodec;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: String,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// vLLM's extension: logprob entries name tokens as `token_id:<id>`
    /// instead of their text, so a client can score exact token ids.
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Top-k log-probabilities per token (0 = only the chosen token's).
    pub logprobs: Option<i64>,
    /// Return the prompt before the completion (with its log-probabilities
    /// when `logprobs` is set: teacher-forced scoring).
    #[serde(default)]
    pub echo: bool,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: String,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Content,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Return the log-probability of each generated token.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per token (0-20); needs `logprobs: true`.
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// Limits validation applies.
#[derive(Debug, Clone)]
pub struct Limits {
    pub served_model: String,
    /// Context window (prompt + generated).
    pub max_context: usize,
    /// Cap on max_tokens.
    pub max_tokens_cap: usize,
    /// Cap on prompt + max_tokens per request.
    pub max_request_tokens: usize,
}

/// A request the engine can run as is.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    /// The max_tokens asked for when it was clamped.
    pub clamped_from: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// Top-k log-probabilities for each generated token.
    pub logprobs: Option<usize>,
    /// Echo the prompt (completions); with `prompt_logprobs`, scored.
    pub echo: Option<EchoPrompt>,
    /// Name tokens `token_id:<id>` in logprob entries.
    pub tokens_as_ids: bool,
}

/// The prompt a response echoes back.
#[derive(Debug, Clone)]
pub struct EchoPrompt {
    /// The prompt as text (the client's string, or decoded tokens).
    pub text: String,
    /// Top-k log-probabilities wanted for each prompt token.
    pub logprobs: Option<usize>,
}

/// What a request asked for besides the text: checked here, applied by
/// `validate`.
#[derive(Debug, Clone, Default)]
pub struct LogprobOptions {
    pub logprobs: Option<usize>,
    /// The echoed prompt's text, when `echo` was asked for.
    pub echo_text: Option<String>,
}

fn top_k_param(v: i64, param: &'static str) -> Result<usize, ApiError> {
    let max = crate::executor::score::MAX_TOP_LOGPROBS as i64;
    if (0..=max).contains(&v) {
        Ok(v as usize)
    } else {
        Err(ApiError::invalid(
            format!("{param} must be between 0 and {max}, got {v}"),
            Some(param),
        ))
    }
}

/// `logprobs` (integer) and `echo` of a completion request.
pub fn completion_logprobs(
    logprobs: Option<i64>,
    echo: bool,
    prompt_text: impl FnOnce() -> String,
) -> Result<LogprobOptions, ApiError> {
    Ok(LogprobOptions {
        logprobs: logprobs.map(|v| top_k_param(v, "logprobs")).transpose()?,
        echo_text: echo.then(prompt_text),
    })
}

/// `logprobs` (bool) and `top_logprobs` of a chat request.
pub fn chat_logprobs(logprobs: bool, top: Option<i64>) -> Result<LogprobOptions, ApiError> {
    let top = top.map(|v| top_k_param(v, "top_logprobs")).transpose()?;
    if top.is_some() && !logprobs {
        return Err(ApiError::invalid(
            "top_logprobs needs logprobs: true",
            Some("top_logprobs"),
        ));
    }
    Ok(LogprobOptions {
        logprobs: logprobs.then_some(top.unwrap_or(0)),
        echo_text: None,
    })
}

/// Parses a JSON body, naming what is wrong on failure.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::invalid(format!("malformed JSON body: {e}"), None)
            }
            Category::Data => ApiError::invalid(format!("invalid request body: {e}"), None),
        }
    })
}

pub fn completion_prompt(p: Prompt, codec: &TextCodec) -> Result<Vec<u32>, ApiError> {
    let ids = match p {
        Prompt::Text(t) => {
            if t.is_empty() {
                return Err(ApiError::invalid(
                    "prompt must not be empty",
                    Some("prompt"),
                ));
            }
            codec
                .encode(&t)
                .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))?
        }
        Prompt::Texts(v) => match v.as_slice() {
            [one] if !one.is_empty() => codec
                .encode(one)
                .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))?,
            [_] | [] => {
                return Err(ApiError::invalid(
                    "prompt must not be empty",
                    Some("prompt"),
                ))
            }
            _ => {
                return Err(ApiError::invalid(
                    "batched prompts are not supported; send one prompt per request",
                    Some("prompt"),
                ))
            }
        },
        Prompt::Tokens(v) => {
            if v.is_empty() {
                return Err(ApiError::invalid(
                    "prompt must not be empty",
                    Some("prompt"),
                ));
            }
            let vocab = codec.vocab_size() as u32;
            if let Some(bad) = v.iter().find(|&&t| t >= vocab) {
                return Err(ApiError::invalid(
                    format!("prompt token {bad} is outside the vocabulary (size {vocab})"),
                    Some("prompt"),
                ));
            }
            v
        }
    };
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "prompt encodes to no tokens",
            Some("prompt"),
        ));
    }
    Ok(ids)
}

pub fn chat_prompt(messages: &[ChatMessage], codec: &TextCodec) -> Result<Vec<u32>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    let mut pairs = Vec::with_capacity(messages.len());
    for m in messages {
        if !matches!(
            m.role.as_str(),
            "system" | "user" | "assistant" | "tool" | "developer"
        ) {
            return Err(ApiError::invalid(
                format!("unknown message role `{}`", m.role),
                Some("messages"),
            ));
        }
        let text = match &m.content {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                let mut t = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::invalid(
                            format!("content part type `{}` is not supported", p.kind),
                            Some("messages"),
                        ));
                    }
                    t.push_str(&p.text);
                }
                t
            }
        };
        pairs.push((m.role.clone(), text));
    }
    let prompt = codec
        .apply_chat_template(&pairs)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
    codec
        .encode(&prompt)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))
}

/// Checks the shared fields and the prompt's length; clamps max_tokens.
pub fn validate(
    c: Common,
    prompt: Vec<u32>,
    default_max_tokens: Option<usize>,
    limits: &Limits,
) -> Result<ValidRequest, ApiError> {
    validate_with(
        c,
        prompt,
        default_max_tokens,
        limits,
        LogprobOptions::default(),
    )
}

/// `validate` with the log-probability options of the request.
pub fn validate_with(
    c: Common,
    prompt: Vec<u32>,
    default_max_tokens: Option<usize>,
    limits: &Limits,
    lp: LogprobOptions,
) -> Result<ValidRequest, ApiError> {
    if c.model != limits.served_model {
        return Err(ApiError::ModelNotFound(c.model));
    }
    if let Some(n) = c.n {
        if n != 1 {
            return Err(ApiError::invalid("only n = 1 is supported", Some("n")));
        }
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("temperature must be between 0 and 2, got {temperature}"),
            Some("temperature"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("top_p must be in (0, 1], got {top_p}"),
            Some("top_p"),
        ));
    }
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                format!("top_k must be -1, 0 or positive, got {k}"),
                Some("top_k"),
            ))
        }
    };
    let stop = match c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid("at most 4 stop sequences", Some("stop")));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop sequences must not be empty",
            Some("stop"),
        ));
    }
    let prompt_len = prompt.len();
    let window = limits.max_context.min(limits.max_request_tokens);
    if prompt_len >= limits.max_context {
        return Err(ApiError::ContextLength(format!(
            "the prompt has {prompt_len} tokens; the context window is {} tokens and at least one must be left to generate",
            limits.max_context
        )));
    }
    if prompt_len >= limits.max_request_tokens {
        return Err(ApiError::RequestTooLarge(format!(
            "the prompt has {prompt_len} tokens; this server allows {} tokens (prompt + max_tokens) per request",
            limits.max_request_tokens
        )));
    }
    let room = (window - prompt_len).min(limits.max_tokens_cap);
    let asked = match c.max_completion_tokens.or(c.max_tokens) {
        // Scoring a prompt without generating (OpenAI's echo + max_tokens 0).
        Some(0) if lp.echo_text.is_some() => Some(0),
        Some(m) if m <= 0 => {
            return Err(ApiError::invalid(
                format!("max_tokens must be at least 1, got {m}"),
                Some("max_tokens"),
            ))
        }
        Some(m) => Some(m as usize),
        None => default_max_tokens,
    };
    let (max_tokens, clamped_from) = match asked {
        Some(m) if m > room => (room, Some(m)),
        Some(m) => (m, None),
        None => (room, None),
    };
    Ok(ValidRequest {
        prompt,
        max_tokens,
        clamped_from,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k,
            seed: c.seed,
        },
        stop,
        ignore_eos: c.ignore_eos,
        stream: c.stream,
        include_usage: c.stream_options.is_some_and(|o| o.include_usage),
        logprobs: lp.logprobs,
        echo: lp.echo_text.map(|text| EchoPrompt {
            text,
            logprobs: lp.logprobs,
        }),
        tokens_as_ids: c.return_tokens_as_token_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            served_model: "m".into(),
            max_context: 100,
            max_tokens_cap: 50,
            max_request_tokens: 100,
        }
    }

    fn common(json: &str) -> Common {
        parse_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn max_tokens_is_clamped_to_the_cap_and_the_context() {
        let v = validate(
            common(r#"{"model":"m","max_tokens":500}"#),
            vec![1; 10],
            Some(16),
            &limits(),
        )
        .unwrap();
        assert_eq!((v.max_tokens, v.clamped_from), (50, Some(500)));
        let v = validate(
            common(r#"{"model":"m","max_tokens":500}"#),
            vec![1; 80],
            Some(16),
            &limits(),
        )
        .unwrap();
        assert_eq!((v.max_tokens, v.clamped_from), (20, Some(500)));
    }

    #[test]
    fn out_of_range_sampling_params_are_rejected_with_the_field_named() {
        for (body, param) in [
            (r#"{"model":"m","temperature":3}"#, "temperature"),
            (r#"{"model":"m","temperature":-0.1}"#, "temperature"),
            (r#"{"model":"m","top_p":0}"#, "top_p"),
            (r#"{"model":"m","max_tokens":0}"#, "max_tokens"),
            (r#"{"model":"m","max_tokens":-5}"#, "max_tokens"),
            (r#"{"model":"m","n":2}"#, "n"),
        ] {
            match validate(common(body), vec![1], Some(16), &limits()) {
                Err(ApiError::InvalidRequest { param: Some(p), .. }) => {
                    assert_eq!(p, param, "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn prompt_filling_the_context_window_is_rejected() {
        let e = validate(
            common(r#"{"model":"m"}"#),
            vec![1; 100],
            Some(16),
            &limits(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), "context_length_exceeded");
    }

    #[test]
    fn max_tokens_zero_is_allowed_only_to_score_an_echoed_prompt() {
        let echo = || completion_logprobs(Some(1), true, || "p".into()).unwrap();
        let v = validate_with(
            common(r#"{"model":"m","max_tokens":0}"#),
            vec![1, 2],
            Some(16),
            &limits(),
            echo(),
        )
        .unwrap();
        assert_eq!(v.max_tokens, 0);
        let e = v.echo.unwrap();
        assert_eq!((e.text.as_str(), e.logprobs), ("p", Some(1)));
        assert!(validate(
            common(r#"{"model":"m","max_tokens":0}"#),
            vec![1],
            Some(16),
            &limits()
        )
        .is_err());
    }

    #[test]
    fn logprob_counts_outside_zero_to_twenty_are_rejected_with_the_field_named() {
        for (r, param) in [
            (
                completion_logprobs(Some(21), false, String::new),
                "logprobs",
            ),
            (
                completion_logprobs(Some(-1), false, String::new),
                "logprobs",
            ),
            (chat_logprobs(true, Some(99)), "top_logprobs"),
            (chat_logprobs(false, Some(2)), "top_logprobs"),
        ] {
            match r {
                Err(ApiError::InvalidRequest { param: Some(p), .. }) => assert_eq!(p, param),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(chat_logprobs(true, None).unwrap().logprobs, Some(0));
        assert_eq!(chat_logprobs(false, None).unwrap().logprobs, None);
    }

    #[test]
    fn unknown_model_is_404() {
        let e = validate(common(r#"{"model":"x"}"#), vec![1], Some(16), &limits()).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::NOT_FOUND);
    }

    #[test]
    fn malformed_json_and_wrong_types_are_invalid_requests() {
        assert!(matches!(
            parse_json::<Common>(b"{"),
            Err(ApiError::InvalidRequest { .. })
        ));
        assert!(matches!(
            parse_json::<Common>(br#"{"model":"m","temperature":"hot"}"#),
            Err(ApiError::InvalidRequest { .. })
        ));
        assert!(matches!(
            parse_json::<Common>(br#"{}"#),
            Err(ApiError::InvalidRequest { .. })
        ));
    }
}
