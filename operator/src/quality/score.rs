//! Judging one answer with one entry's scorer: right or wrong.
//!
//! Answers are compared after trimming surrounding whitespace, since greedy
//! decoding often starts with a space or ends at a newline stop. JSON
//! scorers also accept an answer wrapped in a Markdown code fence (```json
//! … ```), the usual way chat models return JSON.

use super::golden::{Literal, Scorer};

impl Scorer {
    /// Whether `answer` is right.
    pub fn accepts(&self, answer: &str) -> bool {
        match self {
            Scorer::Exact(l) => eq(l, answer.trim()),
            Scorer::Contains(l) => contains(l, answer),
            Scorer::Regex(re) => re.is_match(answer),
            Scorer::JsonValid => parse_json(answer).is_some(),
            Scorer::JsonSchema(v) => parse_json(answer).is_some_and(|j| v.is_valid(&j)),
        }
    }
}

fn eq(l: &Literal, answer: &str) -> bool {
    let want = l.text.trim();
    if l.ignore_case {
        want.to_lowercase() == answer.to_lowercase()
    } else {
        want == answer
    }
}

fn contains(l: &Literal, answer: &str) -> bool {
    let want = l.text.trim();
    if l.ignore_case {
        answer.to_lowercase().contains(&want.to_lowercase())
    } else {
        answer.contains(want)
    }
}

fn parse_json(answer: &str) -> Option<serde_json::Value> {
    let t = answer.trim();
    let t = strip_fence(t).unwrap_or(t);
    serde_json::from_str(t).ok()
}

/// The body of a ```` ```lang … ``` ```` fence around the whole text.
fn strip_fence(t: &str) -> Option<&str> {
    let inner = t.strip_prefix("```")?.strip_suffix("```")?;
    // Drop the info string (`json`) up to the first newline.
    let body = inner.split_once('\n').map_or(inner, |(_, rest)| rest);
    Some(body.trim())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::golden::GoldenSet;
    use super::*;

    fn scorer(yaml_tail: &str) -> Scorer {
        let yaml = format!("- {{id: x, category: c, prompt: p, {yaml_tail}}}");
        let set = GoldenSet::parse(&BTreeMap::from([("g.yaml".to_string(), yaml)])).unwrap();
        set.entries()[0].scorer.clone()
    }

    #[test]
    fn exact_compares_trimmed_text() {
        let s = scorer("scorer: exact, reference: ' Paris'");
        assert!(s.accepts("Paris"));
        assert!(s.accepts("  Paris\n"));
        assert!(!s.accepts("paris"));
        assert!(!s.accepts("Paris, France"));
        let s = scorer("scorer: exact, reference: Paris, ignoreCase: true");
        assert!(s.accepts(" PARIS "));
    }

    #[test]
    fn contains_finds_the_reference_anywhere() {
        let s = scorer("scorer: contains, reference: ' Paris'");
        assert!(s.accepts("It is Paris, of course."));
        assert!(!s.accepts("It is Lyon."));
        assert!(!s.accepts("PARIS"));
        assert!(scorer("scorer: contains, reference: paris, ignoreCase: true").accepts("PARIS!"));
    }

    #[test]
    fn regex_matches_anywhere_unless_anchored() {
        let s = scorer(r#"scorer: regex, reference: '\d{4}'"#);
        assert!(s.accepts("in 1969."));
        assert!(!s.accepts("in sixty-nine"));
        let s = scorer(r#"scorer: regex, reference: '^yes$', ignoreCase: true"#);
        assert!(s.accepts("YES"));
        assert!(!s.accepts("yes, sure"));
    }

    #[test]
    fn json_valid_accepts_json_and_fenced_json() {
        let s = scorer("scorer: json-valid");
        assert!(s.accepts(r#" {"a": 1} "#));
        assert!(s.accepts("```json\n{\"a\": [1, 2]}\n```"));
        assert!(s.accepts("```\n[1]\n```"));
        assert!(!s.accepts("{a: 1}"));
        assert!(!s.accepts("Sure! {\"a\": 1}"));
        assert!(!s.accepts(""));
    }

    #[test]
    fn json_schema_checks_the_parsed_answer() {
        let s = scorer(
            "scorer: json-schema, reference: {type: object, required: [name], properties: {name: {type: string}, age: {type: integer, minimum: 0}}}",
        );
        assert!(s.accepts(r#"{"name": "Ada", "age": 36}"#));
        assert!(s.accepts("```json\n{\"name\": \"Ada\"}\n```"));
        assert!(!s.accepts(r#"{"age": 36}"#), "required field missing");
        assert!(!s.accepts(r#"{"name": "Ada", "age": -1}"#), "minimum");
        assert!(!s.accepts(r#"{"name": 7}"#), "wrong type");
        assert!(!s.accepts("not json"));
    }
}
