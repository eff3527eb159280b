//! The golden set: a ConfigMap's data parsed into validated entries.
//!
//! Format (docs/rollouts.md, "Golden set"): every data key ending in
//! `.yaml`, `.yml` or `.json` holds a YAML (or JSON) list of entries; keys
//! are read in name order. Each entry has an `id` (unique over the set), a
//! `category`, exactly one of `prompt` (sent to `/v1/completions`) or
//! `messages` (sent to `/v1/chat/completions`), a `scorer` and what the
//! scorer needs in `reference`.
//!
//! This is the edge where untrusted text becomes [`GoldenSet`]: regexes and
//! JSON schemas are compiled here, limits are checked here, unknown keys are
//! refused here (a typo such as `refrence` would otherwise silently score
//! nothing). Nothing past this module re-checks an entry. Every error names
//! the data key and the entry (its `id`, or its position when the `id`
//! itself is what is wrong), so the rollout can put it in a condition.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

/// Most entries a golden set may hold (it runs twice at every step).
pub const MAX_ENTRIES: usize = 500;
/// Longest prompt or chat message, in bytes.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// `maxTokens` when an entry does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 32;
/// Largest `maxTokens` an entry may ask for.
pub const MAX_MAX_TOKENS: u32 = 1024;
/// Most stop strings per entry (the OpenAI limit).
pub const MAX_STOP: usize = 4;
/// Longest id or category name.
pub const MAX_NAME_LEN: usize = 63;
/// Compiled size limit of a regex scorer, in bytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A validated golden set, in ConfigMap key order then list order.
#[derive(Clone, Debug)]
pub struct GoldenSet {
    entries: Vec<GoldenEntry>,
}

impl GoldenSet {
    /// The entries, in order.
    pub fn entries(&self) -> &[GoldenEntry] {
        &self.entries
    }

    /// The category names, sorted.
    pub fn categories(&self) -> BTreeSet<&str> {
        self.entries.iter().map(|e| e.category.as_str()).collect()
    }

    /// Parses a ConfigMap's `data`.
    pub fn parse(data: &BTreeMap<String, String>) -> Result<GoldenSet, GoldenSetError> {
        let mut entries = Vec::new();
        let mut ids = BTreeSet::new();
        for (key, text) in data {
            if !is_entry_key(key) {
                return Err(GoldenSetError::at_key(
                    key,
                    "data keys hold lists of entries and must end in .yaml, .yml or .json",
                ));
            }
            let raw: Vec<serde_yaml::Value> = serde_yaml::from_str(text).map_err(|e| {
                GoldenSetError::at_key(key, format!("not a YAML list of entries: {e}"))
            })?;
            for (index, value) in raw.into_iter().enumerate() {
                let at = Location {
                    key: key.clone(),
                    index,
                    id: entry_id_hint(&value),
                };
                let raw: RawEntry = serde_yaml::from_value(value)
                    .map_err(|e| GoldenSetError::at(&at, e.to_string()))?;
                let entry = raw.validate().map_err(|m| GoldenSetError::at(&at, m))?;
                if !ids.insert(entry.id.clone()) {
                    return Err(GoldenSetError::at(
                        &at,
                        "id is used by an earlier entry; ids must be unique over the golden set",
                    ));
                }
                entries.push(entry);
                if entries.len() > MAX_ENTRIES {
                    return Err(GoldenSetError::at(
                        &at,
                        format!("the golden set holds more than {MAX_ENTRIES} entries"),
                    ));
                }
            }
        }
        if entries.is_empty() {
            return Err(GoldenSetError {
                location: None,
                reason: "the golden set has no entries (no .yaml/.yml/.json data key with a non-empty list)".into(),
            });
        }
        Ok(GoldenSet { entries })
    }
}

/// One validated golden entry.
#[derive(Clone, Debug)]
pub struct GoldenEntry {
    /// Unique over the set.
    pub id: String,
    /// The category it is scored in.
    pub category: String,
    /// What is sent.
    pub input: Input,
    /// How the answer is judged.
    pub scorer: Scorer,
    /// `max_tokens` of the request.
    pub max_tokens: u32,
    /// `stop` of the request.
    pub stop: Vec<String>,
}

impl GoldenEntry {
    /// The text whose perplexity the entry contributes, with the prompt it
    /// continues: only completion prompts with a literal reference
    /// (`exact`, `contains`) are teacher-forced, since a chat template is
    /// the engine's and a regex or schema is not text the model would say.
    pub fn perplexity_text(&self) -> Option<(&str, &str)> {
        let Input::Prompt(prompt) = &self.input else {
            return None;
        };
        match &self.scorer {
            Scorer::Exact(t) | Scorer::Contains(t) => Some((prompt, &t.text)),
            _ => None,
        }
    }
}

/// A prompt or a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Raw text for `/v1/completions`.
    Prompt(String),
    /// Messages for `/v1/chat/completions`.
    Chat(Vec<ChatMessage>),
}

/// A chat message role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user's turn.
    User,
    /// An earlier answer.
    Assistant,
}

impl Role {
    /// The OpenAI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

/// Literal text to compare with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Literal {
    /// The reference text.
    pub text: String,
    /// Compare without regard to case.
    pub ignore_case: bool,
}

/// How an answer is judged right (1) or wrong (0).
#[derive(Clone)]
pub enum Scorer {
    /// The answer, trimmed, equals the reference, trimmed.
    Exact(Literal),
    /// The answer contains the reference, trimmed.
    Contains(Literal),
    /// The regex (the reference) matches somewhere in the answer.
    Regex(regex::Regex),
    /// The answer, trimmed and out of a ``` fence, parses as JSON.
    JsonValid,
    /// The answer parses as JSON and the schema (the reference) accepts it.
    JsonSchema(Arc<jsonschema::Validator>),
}

impl fmt::Debug for Scorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scorer::Exact(l) => f.debug_tuple("Exact").field(l).finish(),
            Scorer::Contains(l) => f.debug_tuple("Contains").field(l).finish(),
            Scorer::Regex(r) => f.debug_tuple("Regex").field(&r.as_str()).finish(),
            Scorer::JsonValid => f.write_str("JsonValid"),
            Scorer::JsonSchema(_) => f.write_str("JsonSchema"),
        }
    }
}

impl Scorer {
    /// The scorer's name as written in the golden set.
    pub fn name(&self) -> &'static str {
        match self {
            Scorer::Exact(_) => "exact",
            Scorer::Contains(_) => "contains",
            Scorer::Regex(_) => "regex",
            Scorer::JsonValid => "json-valid",
            Scorer::JsonSchema(_) => "json-schema",
        }
    }
}

/// A golden set that cannot be used, naming where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", location.as_ref().map(|l| format!("golden set {l}: ")).unwrap_or_else(|| "golden set: ".into()))]
pub struct GoldenSetError {
    /// The key and entry, when the fault is in one.
    pub location: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl GoldenSetError {
    /// Stable reason string for conditions and events.
    pub const REASON: &'static str = "GoldenSetInvalid";

    fn at_key(key: &str, reason: impl Into<String>) -> Self {
        Self {
            location: Some(format!("key `{key}`")),
            reason: reason.into(),
        }
    }

    fn at(at: &Location, reason: impl Into<String>) -> Self {
        Self {
            location: Some(at.to_string()),
            reason: reason.into(),
        }
    }
}

struct Location {
    key: String,
    index: usize,
    id: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "entry `{id}` (key `{}`, #{})", self.key, self.index + 1),
            None => write!(f, "entry #{} of key `{}`", self.index + 1, self.key),
        }
    }
}

fn is_entry_key(key: &str) -> bool {
    [".yaml", ".yml", ".json"].iter().any(|s| key.ends_with(s))
}

/// The entry's `id` if it is a short string, for naming the entry in an
/// error about any other field.
fn entry_id_hint(v: &serde_yaml::Value) -> Option<String> {
    let id = v.get("id")?.as_str()?;
    (!id.is_empty() && id.len() <= MAX_NAME_LEN && is_name(id)).then(|| id.to_string())
}

fn is_name(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum ScorerName {
    #[serde(rename = "exact")]
    Exact,
    #[serde(rename = "contains")]
    Contains,
    #[serde(rename = "regex")]
    Regex,
    #[serde(rename = "json-valid")]
    JsonValid,
    #[serde(rename = "json-schema")]
    JsonSchema,
}

/// The wire shape of one entry.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEntry {
    id: String,
    category: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    scorer: ScorerName,
    #[serde(default)]
    reference: Option<serde_json::Value>,
    #[serde(default)]
    ignore_case: bool,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    stop: Vec<String>,
}

impl RawEntry {
    fn validate(self) -> Result<GoldenEntry, String> {
        name("id", &self.id)?;
        name("category", &self.category)?;
        let input = match (self.prompt, self.messages) {
            (Some(p), None) => {
                text("prompt", &p)?;
                Input::Prompt(p)
            }
            (None, Some(m)) => {
                if m.is_empty() {
                    return Err("messages must not be empty".into());
                }
                for msg in &m {
                    text("message content", &msg.content)?;
                }
                Input::Chat(m)
            }
            _ => return Err("set exactly one of prompt or messages".into()),
        };
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        if !(1..=MAX_MAX_TOKENS).contains(&max_tokens) {
            return Err(format!(
                "maxTokens must be between 1 and {MAX_MAX_TOKENS}, got {max_tokens}"
            ));
        }
        if self.stop.len() > MAX_STOP || self.stop.iter().any(|s| s.is_empty()) {
            return Err(format!("stop holds at most {MAX_STOP} non-empty strings"));
        }
        let scorer = scorer(self.scorer, self.reference, self.ignore_case)?;
        Ok(GoldenEntry {
            id: self.id,
            category: self.category,
            input,
            scorer,
            max_tokens,
            stop: self.stop,
        })
    }
}

fn name(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_NAME_LEN || !is_name(v) {
        return Err(format!(
            "{field} `{v}` must be 1 to {MAX_NAME_LEN} letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(())
}

fn text(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if v.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "{field} is {} bytes, more than {MAX_TEXT_BYTES}",
            v.len()
        ));
    }
    Ok(())
}

fn scorer(
    kind: ScorerName,
    reference: Option<serde_json::Value>,
    ignore_case: bool,
) -> Result<Scorer, String> {
    let reference_text = |what: &str| -> Result<String, String> {
        match &reference {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(serde_json::Value::String(_)) => Err("reference must not be blank".into()),
            Some(_) => Err(format!("reference must be a string ({what})")),
            None => Err(format!("reference is required ({what})")),
        }
    };
    if ignore_case
        && !matches!(
            kind,
            ScorerName::Exact | ScorerName::Contains | ScorerName::Regex
        )
    {
        return Err("ignoreCase applies only to exact, contains and regex".into());
    }
    Ok(match kind {
        ScorerName::Exact => Scorer::Exact(Literal {
            text: reference_text("the expected answer")?,
            ignore_case,
        }),
        ScorerName::Contains => Scorer::Contains(Literal {
            text: reference_text("the text the answer must contain")?,
            ignore_case,
        }),
        ScorerName::Regex => {
            let pattern = reference_text("the pattern the answer must match")?;
            let re = regex::RegexBuilder::new(&pattern)
                .case_insensitive(ignore_case)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("reference is not a valid regex: {e}"))?;
            Scorer::Regex(re)
        }
        ScorerName::JsonValid => {
            if reference.is_some() {
                return Err("json-valid takes no reference".into());
            }
            Scorer::JsonValid
        }
        ScorerName::JsonSchema => {
            let schema = match reference {
                Some(serde_json::Value::String(s)) => serde_json::from_str(&s)
                    .map_err(|e| format!("reference is not a JSON schema: {e}"))?,
                Some(v @ serde_json::Value::Object(_)) => v,
                Some(_) => return Err("reference must be a JSON schema object".into()),
                None => return Err("reference is required (the JSON schema)".into()),
            };
            // Built without remote resolution: a `$ref` to a URL fails here
            // instead of reaching out from the operator.
            let v = jsonschema::validator_for(&schema)
                .map_err(|e| format!("reference is not a usable JSON schema: {e}"))?;
            Scorer::JsonSchema(Arc::new(v))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse_one(yaml: &str) -> Result<GoldenSet, GoldenSetError> {
        GoldenSet::parse(&data(&[("golden.yaml", yaml)]))
    }

    #[test]
    fn every_scorer_and_input_parses() {
        let set = parse_one(
            r#"
- id: capital-fr
  category: facts
  prompt: "The capital of France is"
  scorer: contains
  reference: " Paris"
- id: greet
  category: chat
  messages: [ { role: system, content: "Be brief." }, { role: user, content: "Say hi" } ]
  scorer: exact
  reference: "Hi"
  ignoreCase: true
  maxTokens: 4
  stop: ["\n"]
- id: year
  category: facts
  prompt: "Year:"
  scorer: regex
  reference: "^\\s*\\d{4}"
- id: obj
  category: json
  prompt: "JSON:"
  scorer: json-valid
- id: person
  category: json
  prompt: "Person as JSON:"
  scorer: json-schema
  reference: { type: object, required: [name], properties: { name: { type: string } } }
"#,
        )
        .unwrap();
        let e = set.entries();
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(e[1].max_tokens, 4);
        assert_eq!(e[1].stop, vec!["\n".to_string()]);
        assert!(matches!(&e[1].input, Input::Chat(m) if m.len() == 2 && m[0].role == Role::System));
        assert!(matches!(&e[1].scorer, Scorer::Exact(l) if l.ignore_case));
        assert_eq!(e[2].scorer.name(), "regex");
        assert_eq!(e[4].scorer.name(), "json-schema");
        assert_eq!(
            set.categories().into_iter().collect::<Vec<_>>(),
            ["chat", "facts", "json"]
        );
        assert_eq!(
            e[0].perplexity_text(),
            Some(("The capital of France is", " Paris"))
        );
        assert_eq!(
            e[1].perplexity_text(),
            None,
            "chat entries are not teacher-forced"
        );
        assert_eq!(e[2].perplexity_text(), None, "a regex is not text");
    }

    #[test]
    fn keys_are_read_in_name_order_and_json_is_accepted() {
        let set = GoldenSet::parse(&data(&[
            ("b.yaml", "- {id: b1, category: c, prompt: p, scorer: json-valid}"),
            (
                "a.json",
                r#"[{"id": "a1", "category": "c", "prompt": "p", "scorer": "exact", "reference": "x"}]"#,
            ),
        ]))
        .unwrap();
        let ids: Vec<_> = set.entries().iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a1", "b1"]);
    }

    #[test]
    fn schema_given_as_a_json_string_also_parses() {
        let set = parse_one(
            r#"- {id: s, category: c, prompt: p, scorer: json-schema, reference: '{"type": "array"}'}"#,
        )
        .unwrap();
        assert_eq!(set.entries()[0].scorer.name(), "json-schema");
    }

    /// Each malformed entry is refused with a message that names the entry
    /// (by id when it has a usable one, else by key and position) and the
    /// field.
    #[test]
    fn malformed_entries_are_named_in_the_error() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "- {id: a, category: c, prompt: p, scorer: exact}",
                "entry `a` (key `golden.yaml`, #1)",
                "reference is required",
            ),
            (
                "- {id: ok, category: c, prompt: p, scorer: json-valid}\n- {id: b, category: c, prompt: p, scorer: regex, reference: '(unclosed'}",
                "entry `b` (key `golden.yaml`, #2)",
                "not a valid regex",
            ),
            (
                "- {id: c, category: c, prompt: p, messages: [{role: user, content: x}], scorer: json-valid}",
                "entry `c`",
                "exactly one of prompt or messages",
            ),
            (
                "- {id: d, category: c, scorer: json-valid}",
                "entry `d`",
                "exactly one of prompt or messages",
            ),
            (
                "- {id: e, category: c, prompt: p, scorer: fuzzy}",
                "entry `e`",
                "unknown variant `fuzzy`",
            ),
            (
                "- {id: f, category: c, prompt: p, scorer: exact, refrence: x}",
                "entry `f`",
                "unknown field `refrence`",
            ),
            (
                "- {id: 'bad id', category: c, prompt: p, scorer: json-valid}",
                "entry #1 of key `golden.yaml`",
                "id `bad id` must be",
            ),
            (
                "- {id: g, category: c, prompt: '', scorer: json-valid}",
                "entry `g`",
                "prompt must not be empty",
            ),
            (
                "- {id: h, category: c, prompt: p, scorer: json-valid, maxTokens: 0}",
                "entry `h`",
                "maxTokens must be between 1",
            ),
            (
                "- {id: i, category: c, prompt: p, scorer: json-schema, reference: {type: 12}}",
                "entry `i`",
                "not a usable JSON schema",
            ),
            (
                "- {id: j, category: c, messages: [{role: robot, content: x}], scorer: json-valid}",
                "entry `j`",
                "unknown variant `robot`",
            ),
            (
                "- {id: k, category: c, prompt: p, scorer: json-valid}\n- {id: k, category: c, prompt: q, scorer: json-valid}",
                "entry `k` (key `golden.yaml`, #2)",
                "ids must be unique",
            ),
            (
                "- {id: l, category: c, prompt: p, scorer: contains, reference: '  '}",
                "entry `l`",
                "must not be blank",
            ),
            (
                "- {id: m, category: c, prompt: p, scorer: json-valid, ignoreCase: true}",
                "entry `m`",
                "ignoreCase applies only",
            ),
            (
                "- {id: n, category: c, prompt: p, scorer: json-schema, reference: {$ref: 'https://example.invalid/s.json'}}",
                "entry `n`",
                "not a usable JSON schema",
            ),
        ];
        for (yaml, location, reason) in cases {
            let err = parse_one(yaml).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(location) && text.contains(reason),
                "for {yaml:?} got {text:?}, want {location:?} and {reason:?}"
            );
        }
    }

    #[test]
    fn set_level_faults_are_refused() {
        let err = GoldenSet::parse(&data(&[("README", "hello")])).unwrap_err();
        assert!(err.to_string().contains("key `README`"), "{err}");
        let err = parse_one("not: a list").unwrap_err();
        assert!(err.to_string().contains("not a YAML list"), "{err}");
        let err = parse_one("[]").unwrap_err();
        assert!(err.to_string().contains("no entries"), "{err}");
        let err = GoldenSet::parse(&BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("no entries"), "{err}");
        let many: String = (0..=MAX_ENTRIES)
            .map(|i| format!("- {{id: e{i}, category: c, prompt: p, scorer: json-valid}}\n"))
            .collect();
        let err = parse_one(&many).unwrap_err();
        assert!(err.to_string().contains("more than 500"), "{err}");
    }
}
