//! Text <-> tokens for the served model: the `tokenizers` crate over
//! `tokenizer.json`, the chat template from `tokenizer_config.json`
//! (rendered with minijinja), and an incremental decoder that turns a token
//! stream into text deltas without splitting multi-byte characters.

use std::path::Path;

use tokenizers::Tokenizer;

/// The template used when the model directory carries none (documented in
/// docs/engine.md): one `<|role|>` header line per message, the content, the
/// EOS token, and an assistant header when a reply is wanted.
pub const DEFAULT_CHAT_TEMPLATE: &str = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("loading tokenizer.json: {0}")]
    Load(String),
    #[error("tokenizing: {0}")]
    Encode(String),
    #[error("chat template: {0}")]
    Template(String),
}

pub struct TextCodec {
    tok: Tokenizer,
    chat_template: String,
    bos_token: String,
    eos_token: String,
}

impl TextCodec {
    pub fn load(dir: &Path) -> Result<Self, TokenizerError> {
        let tok = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| TokenizerError::Load(e.to_string()))?;
        let cfg: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
        let token_str = |key: &str| -> String {
            match cfg.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or_default()
                    .to_string(),
                None => String::new(),
            }
        };
        let chat_template = cfg
            .get("chat_template")
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| DEFAULT_CHAT_TEMPLATE.to_string());
        Ok(Self {
            bos_token: token_str("bos_token"),
            eos_token: token_str("eos_token"),
            tok,
            chat_template,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .tok
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tok.decode(ids, true).unwrap_or_default()
    }

    /// One token's text, special tokens included (`logprobs` entries).
    pub fn token_text(&self, id: u32) -> String {
        self.tok.decode(&[id], false).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Renders chat messages (role, content) into a prompt.
    pub fn apply_chat_template(
        &self,
        messages: &[(String, String)],
    ) -> Result<String, TokenizerError> {
        let mut env = minijinja::Environment::new();
        env.add_template("chat", &self.chat_template)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let msgs: Vec<_> = messages
            .iter()
            .map(|(r, c)| minijinja::context! { role => r, content => c })
            .collect();
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => msgs,
                    add_generation_prompt => true,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                })
            })
            .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

/// Turns a stream of token ids into text deltas. Holds back text while the
/// tail decodes to an incomplete character (U+FFFD).
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> String {
        self.ids.push(id);
        let prefix = codec.decode(&self.ids[self.prefix_offset..self.read_offset]);
        let full = codec.decode(&self.ids[self.prefix_offset..]);
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let delta = full
                .get(prefix.len()..)
                .map(str::to_string)
                .unwrap_or_default();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            delta
        } else {
            String::new()
        }
    }
}
