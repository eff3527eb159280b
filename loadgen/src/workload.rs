//! The request mix: what request number `i` of a run looks like.
//!
//! Each request is derived from its own RNG seeded by `(seed, i)`, so the
//! same seed gives the same prompts, output lengths and tenants in the same
//! order whatever the arrival mode, concurrency or target. That is what makes
//! two targets (engine and baseline, router and direct) comparable.
//!
//! Prompts are random common English words, one word per requested token:
//! byte-level BPE and word-level tokenizers both map these words to about one
//! token each. The server's reported `usage.prompt_tokens` is the exact
//! figure and is reported when the server sends it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::dist::LengthDist;
use crate::tenants::TenantMix;

/// Which OpenAI route the requests take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `/v1/completions` with a `prompt` string.
    Completions,
    /// `/v1/chat/completions` with one user message.
    Chat,
}

impl Api {
    pub fn default_path(self) -> &'static str {
        match self {
            Api::Completions => "/v1/completions",
            Api::Chat => "/v1/chat/completions",
        }
    }
}

/// Everything that shapes request bodies.
#[derive(Debug, Clone)]
pub struct Workload {
    pub api: Api,
    pub model: String,
    pub prompt_len: LengthDist,
    pub output_len: LengthDist,
    pub stream: bool,
    /// Sends `ignore_eos: true` (vLLM's extension) so outputs run to `max_tokens`.
    pub ignore_eos: bool,
    /// Sends `stream_options.include_usage` so the server reports exact token counts.
    pub stream_usage: bool,
    pub temperature: f64,
    pub tenants: TenantMix,
    pub seed: u64,
}

/// One request, fully decided before it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub index: u64,
    pub prompt_words: u32,
    pub max_tokens: u32,
    pub tenant: Option<String>,
    pub body: Value,
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "was", "on", "are", "as", "with",
    "his", "they", "at", "be", "this", "from", "have", "or", "by", "one", "had", "not", "but",
    "what", "all", "were", "when", "we", "there", "can", "an", "your", "which", "their", "said",
    "if", "do", "will", "each", "about", "how", "up", "out", "them", "then", "she", "many", "some",
    "so", "these", "would", "other", "into", "has", "more", "her", "two", "like", "him", "see",
    "time", "could", "no", "make", "than", "first", "been", "its", "who", "now", "people", "my",
    "made", "over", "did", "down", "only", "way", "find", "use", "may", "water", "long", "little",
    "very", "after", "words", "called", "just", "where", "most", "know",
];

impl Workload {
    /// The request with number `index` of this run.
    pub fn plan(&self, index: u64) -> Planned {
        // splitmix-style mixing keeps neighbouring indices' streams unrelated.
        let mut rng = StdRng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let prompt_words = self.prompt_len.sample(&mut rng);
        let max_tokens = self.output_len.sample(&mut rng);
        let tenant = self.tenants.pick(&mut rng).map(str::to_string);
        let mut prompt = String::with_capacity(prompt_words as usize * 6);
        for k in 0..prompt_words {
            if k > 0 {
                prompt.push(' ');
            }
            prompt.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
        let mut body = match self.api {
            Api::Completions => json!({ "model": self.model, "prompt": prompt }),
            Api::Chat => json!({
                "model": self.model,
                "messages": [{ "role": "user", "content": prompt }],
            }),
        };
        if let Some(obj) = body.as_object_mut() {
            obj.insert("max_tokens".into(), json!(max_tokens));
            obj.insert("temperature".into(), json!(self.temperature));
            obj.insert("stream".into(), json!(self.stream));
            if self.ignore_eos {
                obj.insert("ignore_eos".into(), json!(true));
            }
            if self.stream && self.stream_usage {
                obj.insert("stream_options".into(), json!({ "include_usage": true }));
            }
        }
        Planned {
            index,
            prompt_words,
            max_tokens,
            tenant,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(api: Api, stream: bool) -> Workload {
        Workload {
            api,
            model: "m".into(),
            prompt_len: "uniform:3-40".parse().expect("valid"),
            output_len: "lognormal:20,1@100".parse().expect("valid"),
            stream,
            ignore_eos: true,
            stream_usage: true,
            temperature: 0.0,
            tenants: "a,b".parse().expect("valid"),
            seed: 42,
        }
    }

    #[test]
    fn the_same_index_plans_the_same_request() {
        let w = workload(Api::Completions, true);
        assert_eq!(w.plan(17), w.plan(17));
        assert_ne!(w.plan(17).body, w.plan(18).body);
    }

    #[test]
    fn completion_body_carries_lengths_and_extensions() {
        let p = workload(Api::Completions, true).plan(3);
        let prompt = p.body["prompt"].as_str().expect("prompt string");
        assert_eq!(prompt.split(' ').count(), p.prompt_words as usize);
        assert_eq!(p.body["max_tokens"], json!(p.max_tokens));
        assert_eq!(p.body["ignore_eos"], json!(true));
        assert_eq!(p.body["stream_options"]["include_usage"], json!(true));
        assert!(p.tenant.is_some());
    }

    #[test]
    fn chat_body_has_one_user_message_and_no_stream_options_when_not_streaming() {
        let p = workload(Api::Chat, false).plan(0);
        assert_eq!(p.body["messages"][0]["role"], json!("user"));
        assert_eq!(p.body["stream"], json!(false));
        assert!(p.body.get("stream_options").is_none());
    }
}
