//! The quality gate's decision: scores per category for both revisions,
//! pass / fail / unknown, and the perplexity drift behind the
//! `qualityRegression` alarm.
//!
//! Input is what the runner (controller/quality.rs) collected: each
//! revision's answer to each entry and its log-likelihood of the
//! references. Output is a [`QualityReport`], which becomes
//! `status.quality` and, when it fails, the rollback's reason.
//!
//! Rules (docs/rollouts.md, "Quality gate"):
//! - a category fails when the canary's score is below `minScore`, or below
//!   the stable revision's score minus `margin`;
//! - with `perCategory: false` there is one category, `overall`;
//! - an entry the engine refused (4xx) counts as wrong for that revision;
//!   refused by both revisions it is a golden-set fault and the gate is
//!   unknown (held), naming the entry;
//! - perplexity = exp(−Σ log p / tokens) over the references; the alarm
//!   fires when the canary's exceeds the stable's by more than
//!   `perplexityMargin` (a fraction). A lower perplexity never fires.
//! - Unknown is never a pass: a missing answer or a missing likelihood makes
//!   the matching part unknown.

use std::collections::BTreeMap;

use crate::crd::{CategoryQuality, PerplexityQuality, QualitySpec, QualityState, QualityStatus};
use crate::signals::Reading;

use super::golden::GoldenSet;

/// Scores closer than this are equal (scores are ratios of small counts).
const EPS: f64 = 1e-9;
/// The one category when `perCategory` is false.
pub const OVERALL: &str = "overall";

/// The gate's thresholds, from `analysis.quality`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateSettings {
    /// Lowest acceptable score per category.
    pub min_score: f64,
    /// Largest acceptable fall below the stable's score.
    pub margin: f64,
    /// One score per category, or one overall.
    pub per_category: bool,
    /// Largest acceptable relative perplexity increase.
    pub perplexity_margin: f64,
}

impl From<&QualitySpec> for GateSettings {
    fn from(q: &QualitySpec) -> Self {
        Self {
            min_score: q.min_score,
            margin: q.margin,
            per_category: q.per_category,
            perplexity_margin: q.perplexity_margin,
        }
    }
}

/// One revision's answer to one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The generated text.
    Text(String),
    /// The engine refused the request (4xx) with this message.
    Refused(String),
}

/// Summed log-probabilities of reference tokens, teacher-forced.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct LogLikelihood {
    /// Σ log p(token | prefix), natural log.
    pub sum: f64,
    /// Tokens summed.
    pub tokens: u64,
}

impl LogLikelihood {
    /// Adds another entry's tokens.
    pub fn add(&mut self, other: LogLikelihood) {
        self.sum += other.sum;
        self.tokens += other.tokens;
    }

    /// exp(−mean log p); `None` with no tokens.
    pub fn perplexity(&self) -> Option<f64> {
        (self.tokens > 0).then(|| (-self.sum / self.tokens as f64).exp())
    }
}

/// What one revision did with the golden set.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RevisionRun {
    /// The revision hash.
    pub revision: String,
    /// Answers by entry id.
    pub answers: BTreeMap<String, Answer>,
    /// Likelihood of the references; `None` when they were not scored.
    pub likelihood: Option<LogLikelihood>,
    /// Why the references were not scored, when they were not.
    pub unscored: Option<String>,
}

/// One category's result.
#[derive(Clone, Debug, PartialEq)]
pub struct CategoryResult {
    /// Category name ([`OVERALL`] when not per category).
    pub name: String,
    /// Entries in it.
    pub entries: usize,
    /// Canary's score, 0..=1.
    pub canary: f64,
    /// Stable's score, 0..=1.
    pub stable: f64,
    /// Why it fails, if it does.
    pub failure: Option<Shortfall>,
}

/// How a category falls short.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shortfall {
    /// Below `minScore`.
    BelowMinScore(f64),
    /// Below the stable's score minus `margin`.
    BelowStable {
        /// `stable − margin`.
        floor: f64,
    },
}

/// The gate's decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Gate {
    /// Every category passes.
    Pass,
    /// At least one category fails; the message names each with both
    /// scores.
    Fail(String),
    /// Not decided; the rollout holds.
    Unknown(Unknown),
}

/// Why the gate could not decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    /// Stable reason, for conditions and metrics.
    pub reason: UnknownReason,
    /// What happened, naming the entry, revision or object.
    pub message: String,
}

/// Stable reasons for an undecided gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnknownReason {
    /// The golden set cannot be used: malformed, or an entry every
    /// revision refuses. The user must fix the ConfigMap.
    GoldenSetInvalid,
    /// The golden set's ConfigMap does not exist.
    GoldenSetNotFound,
    /// A pod could not be asked or did not answer usably (unreachable,
    /// 5xx, timeout, unexpected shape, no ready pod); retried later.
    QualityUnavailable,
}

impl UnknownReason {
    /// The reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownReason::GoldenSetInvalid => "GoldenSetInvalid",
            UnknownReason::GoldenSetNotFound => "GoldenSetNotFound",
            UnknownReason::QualityUnavailable => "QualityUnavailable",
        }
    }
}

impl Gate {
    /// An undecided gate.
    pub fn unknown(reason: UnknownReason, message: impl Into<String>) -> Self {
        Gate::Unknown(Unknown {
            reason,
            message: message.into(),
        })
    }
}

/// Name of the alarm leaf the perplexity drift feeds (`alarm:
/// qualityRegression` in `rollbackOn`), and its key among the readings the
/// alarm evaluation takes from other parts of the operator.
pub const REGRESSION_ALARM: &str = "qualityRegression";

/// The perplexity comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct PerplexityDrift {
    /// Canary perplexity.
    pub canary: Option<f64>,
    /// Stable perplexity.
    pub stable: Option<f64>,
    /// `canary / stable − 1`.
    pub drift: Option<f64>,
    /// Reference tokens the canary scored.
    pub tokens: u64,
    /// The alarm threshold (`perplexityMargin`).
    pub threshold: f64,
    /// Pass = Ok, Fail = firing, Unknown = no data.
    pub state: QualityState,
    /// Why it is unknown.
    pub note: Option<String>,
}

impl PerplexityDrift {
    /// The `qualityRegression` leaf's reading: the drift (`canary / stable
    /// − 1`), to compare *above* `perplexityMargin`; `None` = no data (the
    /// leaf is unknown and holds).
    pub fn reading(&self) -> Option<f64> {
        self.drift
    }

    fn unknown(threshold: f64) -> Self {
        Self {
            canary: None,
            stable: None,
            drift: None,
            tokens: 0,
            threshold,
            state: QualityState::Unknown,
            note: None,
        }
    }

    /// One line for conditions and events.
    pub fn message(&self) -> String {
        match (self.canary, self.stable, self.drift) {
            (Some(c), Some(s), Some(d)) => format!(
                "perplexity on the golden references: canary {c:.3}, stable {s:.3} ({:+.1}%, margin {:.1}%)",
                d * 100.0,
                self.threshold * 100.0
            ),
            _ => format!(
                "perplexity on the golden references is unknown: {}",
                self.note.as_deref().unwrap_or("not measured")
            ),
        }
    }
}

/// The gate's full result for one step.
#[derive(Clone, Debug, PartialEq)]
pub struct QualityReport {
    /// Per category (or one overall), in name order.
    pub categories: Vec<CategoryResult>,
    /// The decision over the categories.
    pub gate: Gate,
    /// The `qualityRegression` alarm's input.
    pub perplexity: PerplexityDrift,
}

impl QualityReport {
    /// A report with nothing decided, e.g. when the run could not finish or
    /// the golden set is malformed.
    pub fn unknown(
        reason: UnknownReason,
        message: impl Into<String>,
        settings: &GateSettings,
    ) -> Self {
        Self {
            categories: Vec::new(),
            gate: Gate::unknown(reason, message),
            perplexity: PerplexityDrift::unknown(settings.perplexity_margin),
        }
    }

    /// What this report supplies to the alarm evaluation
    /// (`alarm::EvalInput::external`): the `qualityRegression` reading,
    /// `NoData` while the drift is unknown.
    pub fn alarm_readings(&self) -> BTreeMap<String, Reading> {
        let r = match self.perplexity.reading() {
            Some(d) => Reading::Value(d),
            None => Reading::NoData,
        };
        BTreeMap::from([(REGRESSION_ALARM.to_string(), r)])
    }

    /// `status.quality` for this report.
    pub fn to_status(&self, canary: &str, stable: &str, step: i32) -> QualityStatus {
        let (state, message) = match &self.gate {
            Gate::Pass => (QualityState::Pass, None),
            Gate::Fail(m) => (QualityState::Fail, Some(m.clone())),
            Gate::Unknown(u) => (QualityState::Unknown, Some(u.message.clone())),
        };
        QualityStatus {
            canary_revision: canary.to_string(),
            stable_revision: stable.to_string(),
            step,
            state,
            message,
            categories: self
                .categories
                .iter()
                .map(|c| CategoryQuality {
                    name: c.name.clone(),
                    entries: i32::try_from(c.entries).unwrap_or(i32::MAX),
                    canary: round4(c.canary),
                    stable: round4(c.stable),
                    state: if c.failure.is_some() {
                        QualityState::Fail
                    } else {
                        QualityState::Pass
                    },
                })
                .collect(),
            perplexity: (self.perplexity.state != QualityState::Unknown
                || self.perplexity.note.is_some())
            .then(|| PerplexityQuality {
                canary: self.perplexity.canary.map(round4),
                stable: self.perplexity.stable.map(round4),
                drift: self.perplexity.drift.map(round4),
                tokens: i32::try_from(self.perplexity.tokens).unwrap_or(i32::MAX),
                state: self.perplexity.state,
                message: self.perplexity.note.clone(),
            }),
        }
    }
}

/// Rounds for status, so re-running the same numbers writes nothing new.
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Judges the canary's run against the stable's.
pub fn evaluate(
    set: &GoldenSet,
    canary: &RevisionRun,
    stable: &RevisionRun,
    s: &GateSettings,
) -> QualityReport {
    let mut perplexity = drift(canary, stable, s.perplexity_margin);
    if perplexity.state == QualityState::Unknown {
        perplexity.note = if !set.entries().iter().any(|e| e.perplexity_text().is_some()) {
            Some(
                "the golden set has no completion entry with an exact or contains reference".into(),
            )
        } else {
            [canary, stable].iter().find_map(|r| {
                r.unscored
                    .as_ref()
                    .map(|w| format!("revision {}: {w}", r.revision))
            })
        };
    }
    // Per category: (entries, canary right, stable right).
    let mut tally: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for e in set.entries() {
        let (Some(a), Some(b)) = (canary.answers.get(&e.id), stable.answers.get(&e.id)) else {
            let missing = if canary.answers.contains_key(&e.id) {
                &stable.revision
            } else {
                &canary.revision
            };
            return QualityReport {
                categories: Vec::new(),
                gate: Gate::unknown(
                    UnknownReason::QualityUnavailable,
                    format!(
                        "no answer from revision {missing} to golden entry `{}`",
                        e.id
                    ),
                ),
                perplexity,
            };
        };
        if let (Answer::Refused(why), Answer::Refused(_)) = (a, b) {
            return QualityReport {
                categories: Vec::new(),
                gate: Gate::unknown(
                    UnknownReason::GoldenSetInvalid,
                    format!(
                        "golden entry `{}` is refused by both revisions ({why}); fix the golden set",
                        e.id
                    ),
                ),
                perplexity,
            };
        }
        let right = |x: &Answer| matches!(x, Answer::Text(t) if e.scorer.accepts(t));
        let key = if s.per_category {
            e.category.as_str()
        } else {
            OVERALL
        };
        let t = tally.entry(key).or_default();
        t.0 += 1;
        t.1 += usize::from(right(a));
        t.2 += usize::from(right(b));
    }
    let categories: Vec<CategoryResult> = tally
        .into_iter()
        .map(|(name, (n, c, st))| {
            let canary = c as f64 / n as f64;
            let stable = st as f64 / n as f64;
            let floor = stable - s.margin;
            let failure = if canary + EPS < s.min_score {
                Some(Shortfall::BelowMinScore(s.min_score))
            } else if canary + EPS < floor {
                Some(Shortfall::BelowStable { floor })
            } else {
                None
            };
            CategoryResult {
                name: name.to_string(),
                entries: n,
                canary,
                stable,
                failure,
            }
        })
        .collect();
    let failing: Vec<String> = categories
        .iter()
        .filter_map(|c| {
            let why = match c.failure? {
                Shortfall::BelowMinScore(m) => format!("below minScore {m:.2}"),
                Shortfall::BelowStable { floor } => format!(
                    "below the stable's score minus margin {:.2} ({floor:.2})",
                    s.margin
                ),
            };
            Some(format!(
                "category `{}` scored {:.2} on canary {} and {:.2} on stable {}, {why}",
                c.name, c.canary, canary.revision, c.stable, stable.revision
            ))
        })
        .collect();
    let gate = if failing.is_empty() {
        Gate::Pass
    } else {
        Gate::Fail(failing.join("; "))
    };
    QualityReport {
        categories,
        gate,
        perplexity,
    }
}

fn drift(canary: &RevisionRun, stable: &RevisionRun, threshold: f64) -> PerplexityDrift {
    let c = canary.likelihood.and_then(|l| l.perplexity());
    let s = stable.likelihood.and_then(|l| l.perplexity());
    let tokens = canary.likelihood.map_or(0, |l| l.tokens);
    let (drift, state) = match (c, s) {
        (Some(c), Some(s)) if s > 0.0 && c.is_finite() && s.is_finite() => {
            let d = c / s - 1.0;
            let state = if d > threshold + EPS {
                QualityState::Fail
            } else {
                QualityState::Pass
            };
            (Some(d), state)
        }
        _ => (None, QualityState::Unknown),
    };
    PerplexityDrift {
        canary: c,
        stable: s,
        drift,
        tokens,
        threshold,
        state,
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"
- {id: f1, category: facts, prompt: "a", scorer: exact, reference: "x"}
- {id: f2, category: facts, prompt: "b", scorer: exact, reference: "y"}
- {id: f3, category: facts, prompt: "c", scorer: exact, reference: "z"}
- {id: f4, category: facts, prompt: "d", scorer: exact, reference: "w"}
- {id: j1, category: json, prompt: "e", scorer: json-valid}
- {id: j2, category: json, prompt: "f", scorer: json-valid}
"#;

    fn set() -> GoldenSet {
        GoldenSet::parse(&BTreeMap::from([("g.yaml".to_string(), SET.to_string())])).unwrap()
    }

    fn settings() -> GateSettings {
        GateSettings {
            min_score: 0.5,
            margin: 0.1,
            per_category: true,
            perplexity_margin: 0.1,
        }
    }

    /// A run whose answers are right for the ids in `right`, wrong for the
    /// rest.
    fn run(rev: &str, right: &[&str], ll: Option<(f64, u64)>) -> RevisionRun {
        let good = BTreeMap::from([
            ("f1", "x"),
            ("f2", "y"),
            ("f3", "z"),
            ("f4", "w"),
            ("j1", "{}"),
            ("j2", "[1]"),
        ]);
        RevisionRun {
            revision: rev.into(),
            answers: good
                .into_iter()
                .map(|(id, ans)| {
                    let text = if right.contains(&id) { ans } else { "nope" };
                    (id.to_string(), Answer::Text(text.to_string()))
                })
                .collect(),
            likelihood: ll.map(|(sum, tokens)| LogLikelihood { sum, tokens }),
            unscored: None,
        }
    }

    const ALL: &[&str] = &["f1", "f2", "f3", "f4", "j1", "j2"];

    #[test]
    fn identical_answers_pass_with_scores_per_category() {
        let r = evaluate(
            &set(),
            &run("c", ALL, Some((-10.0, 10))),
            &run("s", ALL, Some((-10.0, 10))),
            &settings(),
        );
        assert_eq!(r.gate, Gate::Pass);
        let names: Vec<_> = r.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["facts", "json"]);
        assert_eq!(r.categories[0].entries, 4);
        assert_eq!(r.categories[0].canary, 1.0);
        assert_eq!(r.perplexity.state, QualityState::Pass);
        assert_eq!(r.perplexity.drift, Some(0.0));
    }

    #[test]
    fn a_category_below_min_score_fails_and_is_named_with_both_scores() {
        // Canary gets 1/4 facts right (0.25 < minScore 0.5), json fine.
        let r = evaluate(
            &set(),
            &run("c", &["f1", "j1", "j2"], None),
            &run("s", ALL, None),
            &settings(),
        );
        let Gate::Fail(msg) = &r.gate else {
            panic!("{:?}", r.gate)
        };
        assert!(
            msg.contains("category `facts` scored 0.25 on canary c and 1.00 on stable s")
                && msg.contains("below minScore 0.50"),
            "{msg}"
        );
        assert!(!msg.contains("json"), "{msg}");
        assert_eq!(r.categories[0].failure, Some(Shortfall::BelowMinScore(0.5)));
        assert_eq!(r.categories[1].failure, None);
    }

    #[test]
    fn a_category_above_min_score_but_below_stable_minus_margin_fails() {
        // facts: canary 0.75, stable 1.0, floor 0.9 → fails; json: 0.5 vs
        // 0.5 passes (equal to minScore is enough).
        let r = evaluate(
            &set(),
            &run("c", &["f1", "f2", "f3", "j1"], None),
            &run("s", &["f1", "f2", "f3", "f4", "j1"], None),
            &settings(),
        );
        assert!(matches!(
            r.categories[0].failure,
            Some(Shortfall::BelowStable { floor }) if (floor - 0.9).abs() < 1e-12
        ));
        assert_eq!(r.categories[1].failure, None);
        assert!(matches!(&r.gate, Gate::Fail(m) if m.contains("minus margin 0.10")));
    }

    #[test]
    fn falling_exactly_by_the_margin_passes() {
        // 0.9 − 0.1 computed in floating point is 0.8000000000000002 > 0.8.
        let s = GateSettings {
            min_score: 0.0,
            margin: 0.25,
            ..settings()
        };
        let r = evaluate(
            &set(),
            &run("c", &["f1", "f2", "f3", "j1", "j2"], None),
            &run("s", ALL, None),
            &s,
        );
        assert_eq!(r.gate, Gate::Pass, "{:?}", r.categories);
    }

    #[test]
    fn without_per_category_one_overall_score_decides() {
        let s = GateSettings {
            per_category: false,
            ..settings()
        };
        // 4/6 right overall ≥ 0.5 and ≥ 1.0 − 0.1? No: 0.667 < 0.9 → fail.
        let r = evaluate(
            &set(),
            &run("c", &["f1", "f2", "j1", "j2"], None),
            &run("s", ALL, None),
            &s,
        );
        assert_eq!(r.categories.len(), 1);
        assert_eq!(r.categories[0].name, OVERALL);
        assert_eq!(r.categories[0].entries, 6);
        assert!(matches!(&r.gate, Gate::Fail(m) if m.contains("category `overall` scored 0.67")));
    }

    #[test]
    fn a_canary_better_than_stable_passes() {
        let r = evaluate(
            &set(),
            &run("c", ALL, Some((-5.0, 10))),
            &run("s", &["f1", "f2", "f3", "j1"], Some((-10.0, 10))),
            &settings(),
        );
        assert_eq!(r.gate, Gate::Pass);
        assert_eq!(
            r.perplexity.state,
            QualityState::Pass,
            "lower perplexity never fires"
        );
        assert!(r.perplexity.drift.is_some_and(|d| d < 0.0));
    }

    #[test]
    fn refused_by_the_canary_only_counts_as_wrong() {
        let mut c = run("c", ALL, None);
        c.answers
            .insert("f1".into(), Answer::Refused("prompt too long".into()));
        let r = evaluate(&set(), &c, &run("s", ALL, None), &settings());
        assert_eq!(r.categories[0].canary, 0.75);
        assert!(matches!(r.gate, Gate::Fail(_)));
    }

    #[test]
    fn refused_by_both_is_a_golden_set_fault_and_holds() {
        let mut c = run("c", ALL, None);
        let mut s = run("s", ALL, None);
        for r in [&mut c, &mut s] {
            r.answers
                .insert("j2".into(), Answer::Refused("max_tokens too large".into()));
        }
        let r = evaluate(&set(), &c, &s, &settings());
        assert!(
            matches!(&r.gate, Gate::Unknown(u) if u.reason == UnknownReason::GoldenSetInvalid
                && u.message.contains("`j2`") && u.message.contains("max_tokens too large")),
            "{:?}",
            r.gate
        );
    }

    #[test]
    fn a_missing_answer_is_unknown_never_pass() {
        let mut c = run("c", ALL, None);
        c.answers.remove("f3");
        let r = evaluate(&set(), &c, &run("s", ALL, None), &settings());
        assert!(
            matches!(&r.gate, Gate::Unknown(u) if u.message.contains("revision c") && u.message.contains("`f3`"))
        );
    }

    #[test]
    fn perplexity_drift_fires_only_beyond_the_margin() {
        let stable = Some((-20.0, 10)); // ppl e^2
        let cases = [
            // canary Σlogp, expected state
            (-20.0, QualityState::Pass), // same
            (-20.9, QualityState::Pass), // e^0.09 − 1 = 9.4% ≤ 10%
            (-21.0, QualityState::Pass), // e^0.1 − 1 = 10.5% ≤ 10.6%
            (-22.0, QualityState::Fail), // e^0.2 − 1 = 22%
            (-40.0, QualityState::Fail),
        ];
        for (sum, want) in cases {
            let r = evaluate(
                &set(),
                &run("c", ALL, Some((sum, 10))),
                &run("s", ALL, stable),
                &GateSettings {
                    perplexity_margin: 0.106,
                    ..settings()
                },
            );
            assert_eq!(r.perplexity.state, want, "sum {sum}: {:?}", r.perplexity);
            assert_eq!(r.gate, Gate::Pass, "perplexity does not decide the gate");
        }
    }

    #[test]
    fn perplexity_is_unknown_without_likelihoods_on_either_side() {
        for (c, s) in [
            (None, Some((-1.0, 1))),
            (Some((-1.0, 1)), None),
            (Some((0.0, 0)), Some((-1.0, 1))),
        ] {
            let r = evaluate(&set(), &run("c", ALL, c), &run("s", ALL, s), &settings());
            assert_eq!(r.perplexity.state, QualityState::Unknown);
            assert_eq!(r.perplexity.drift, None);
        }
        let mut c = run("c", ALL, None);
        c.unscored = Some("HTTP 400: unknown field `echo`".into());
        let r = evaluate(&set(), &c, &run("s", ALL, Some((-1.0, 1))), &settings());
        let st = r.to_status("c", "s", 1).perplexity.unwrap();
        assert_eq!(st.state, QualityState::Unknown);
        assert_eq!(
            st.message.as_deref(),
            Some("revision c: HTTP 400: unknown field `echo`")
        );
    }

    #[test]
    fn the_alarm_reading_is_the_drift_or_no_data() {
        let r = evaluate(
            &set(),
            &run("c", ALL, Some((-11.0, 10))),
            &run("s", ALL, Some((-10.0, 10))),
            &settings(),
        );
        let readings = r.alarm_readings();
        let Some(Reading::Value(d)) = readings.get(REGRESSION_ALARM) else {
            panic!("{readings:?}")
        };
        assert!((d - (0.1f64.exp() - 1.0)).abs() < 1e-12);
        let u = QualityReport::unknown(UnknownReason::QualityUnavailable, "x", &settings());
        assert!(matches!(
            u.alarm_readings().get(REGRESSION_ALARM),
            Some(Reading::NoData)
        ));
    }

    #[test]
    fn a_set_without_references_to_score_says_so() {
        let only_json = GoldenSet::parse(&BTreeMap::from([(
            "g.yaml".to_string(),
            "- {id: j1, category: json, prompt: e, scorer: json-valid}".to_string(),
        )]))
        .unwrap();
        let r = evaluate(
            &only_json,
            &run("c", ALL, None),
            &run("s", ALL, None),
            &settings(),
        );
        assert_eq!(r.gate, Gate::Pass);
        assert!(r
            .perplexity
            .message()
            .contains("no completion entry with an exact or contains reference"));
    }

    #[test]
    fn status_carries_both_revisions_rounded_scores_and_the_message() {
        let r = evaluate(
            &set(),
            &run("c", &["f1", "j1", "j2"], Some((-11.0, 10))),
            &run("s", ALL, Some((-10.0, 10))),
            &settings(),
        );
        let st = r.to_status("c", "s", 2);
        assert_eq!(st.canary_revision, "c");
        assert_eq!(st.stable_revision, "s");
        assert_eq!(st.step, 2);
        assert_eq!(st.state, QualityState::Fail);
        assert!(st.message.as_deref().is_some_and(|m| m.contains("facts")));
        assert_eq!(st.categories[0].canary, 0.25);
        assert_eq!(st.categories[0].state, QualityState::Fail);
        assert_eq!(st.categories[1].state, QualityState::Pass);
        let p = st.perplexity.unwrap();
        assert_eq!(p.canary, Some(3.0042)); // e^1.1
        assert_eq!(p.stable, Some((std::f64::consts::E * 1e4).round() / 1e4));
        assert_eq!(p.drift, Some(0.1052));
        assert_eq!(p.tokens, 10);
        assert_eq!(p.state, QualityState::Fail, "10.5% > margin 10%");

        let u = QualityReport::unknown(
            UnknownReason::QualityUnavailable,
            "pod unreachable",
            &settings(),
        )
        .to_status("c", "s", 1);
        assert_eq!(u.state, QualityState::Unknown);
        assert_eq!(u.message.as_deref(), Some("pod unreachable"));
        assert!(u.categories.is_empty() && u.perplexity.is_none());
    }
}
