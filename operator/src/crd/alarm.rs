//! The composite rollback alarm (`rollout.analysis.rollbackOn`).
//!
//! Users write a tree of `any` / `all` / `not` over leaves (`slo`, `alarm`,
//! `query`). A CRD schema cannot be recursive, so the wire types spell out
//! three levels ([`AlarmExpr`] → [`AlarmTerm`] → [`AlarmLeaf`]), which covers
//! every combination in the design (`any: [..., all: [a, b]]`) and `not` at
//! each level. CEL makes every node set exactly one key. [`Alarm`] is the
//! recursive domain form that evaluation code uses; nothing past the edge
//! looks at the wire types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::GoDuration;

/// An SLO from `spec.slo`, compiled into an alarm on the canary.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SloSignal {
    /// `slo.ttftP99` breached.
    #[serde(rename = "ttftP99")]
    TtftP99,
    /// `slo.itlP99` breached.
    #[serde(rename = "itlP99")]
    ItlP99,
    /// `slo.availability` breached.
    #[serde(rename = "availability")]
    Availability,
}

/// A built-in alarm, comparing the canary with the stable revision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum AlarmKind {
    /// 5xx share above the availability budget (4xx never counts).
    ErrorRate,
    /// KV cache close to full.
    KvCacheSaturation,
    /// Latency jumped relative to stable.
    LatencySpike,
    /// Error share rose relative to stable.
    ErrorRise,
    /// Golden-set score below `quality.minScore`.
    QualityRegression,
}

/// A user-written PromQL alarm: fires when the value stays above (or below)
/// the threshold for the given time.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.above) != has(self.below)", "message": "a query alarm sets exactly one of above or below"}]))]
#[serde(rename_all = "camelCase")]
pub struct QueryAlarm {
    /// The PromQL expression; `$revision` and `$service` are substituted.
    #[schemars(length(min = 1, max = 4096))]
    pub promql: String,
    /// Fire when the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Fire when the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// How long the condition must hold.
    #[serde(default = "default_for", rename = "for")]
    pub for_: GoDuration,
}

fn default_for() -> GoDuration {
    GoDuration::from_secs(60)
}

const ONE_KEY_LEAF: &str =
    "(has(self.slo) ? 1 : 0) + (has(self.alarm) ? 1 : 0) + (has(self.query) ? 1 : 0) == 1";
const ONE_KEY_NODE: &str = "(has(self.slo) ? 1 : 0) + (has(self.alarm) ? 1 : 0) + (has(self.query) ? 1 : 0) + (has(self.any) ? 1 : 0) + (has(self.all) ? 1 : 0) + (has(self.not) ? 1 : 0) == 1";

/// Innermost level: a leaf only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": ONE_KEY_LEAF, "message": "an innermost rollbackOn term sets exactly one of slo, alarm, query"}]))]
#[serde(rename_all = "camelCase")]
pub struct AlarmLeaf {
    /// An SLO alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloSignal>,
    /// A built-in alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<AlarmKind>,
    /// A PromQL alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryAlarm>,
}

/// Middle level: a leaf, or any / all / not over leaves.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": ONE_KEY_NODE, "message": "each rollbackOn term sets exactly one of slo, alarm, query, any, all, not"}]))]
#[serde(rename_all = "camelCase")]
pub struct AlarmTerm {
    /// An SLO alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloSignal>,
    /// A built-in alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<AlarmKind>,
    /// A PromQL alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryAlarm>,
    /// Fires when any term fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub any: Option<Vec<AlarmLeaf>>,
    /// Fires when all terms fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub all: Option<Vec<AlarmLeaf>>,
    /// Fires when the term does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<AlarmLeaf>,
}

/// Top level: a leaf, or any / all / not over terms.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": ONE_KEY_NODE, "message": "rollbackOn sets exactly one of slo, alarm, query, any, all, not"}]))]
#[serde(rename_all = "camelCase")]
pub struct AlarmExpr {
    /// An SLO alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloSignal>,
    /// A built-in alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<AlarmKind>,
    /// A PromQL alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryAlarm>,
    /// Fires when any term fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub any: Option<Vec<AlarmTerm>>,
    /// Fires when all terms fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub all: Option<Vec<AlarmTerm>>,
    /// Fires when the term does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<AlarmTerm>>,
}

/// The recursive domain form of a rollback alarm.
#[derive(Clone, Debug, PartialEq)]
pub enum Alarm {
    /// An SLO alarm.
    Slo(SloSignal),
    /// A built-in alarm.
    Builtin(AlarmKind),
    /// A PromQL alarm.
    Query(QueryAlarm),
    /// Fires when any child fires.
    Any(Vec<Alarm>),
    /// Fires when all children fire.
    All(Vec<Alarm>),
    /// Fires when the child does not.
    Not(Box<Alarm>),
}

/// A node that does not set exactly one key (only possible for objects
/// that bypassed the API server's validation).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "a rollbackOn node must set exactly one of slo, alarm, query, any, all, not (found {found})"
)]
pub struct AlarmShapeError {
    found: usize,
}

fn leaf(
    slo: Option<SloSignal>,
    alarm: Option<AlarmKind>,
    query: &Option<QueryAlarm>,
) -> Vec<Alarm> {
    let mut out = Vec::new();
    out.extend(slo.map(Alarm::Slo));
    out.extend(alarm.map(Alarm::Builtin));
    out.extend(query.clone().map(Alarm::Query));
    out
}

fn exactly_one(mut found: Vec<Alarm>) -> Result<Alarm, AlarmShapeError> {
    if found.len() == 1 {
        if let Some(a) = found.pop() {
            return Ok(a);
        }
    }
    Err(AlarmShapeError { found: found.len() })
}

impl AlarmLeaf {
    /// The domain form.
    pub fn to_alarm(&self) -> Result<Alarm, AlarmShapeError> {
        exactly_one(leaf(self.slo, self.alarm, &self.query))
    }
}

/// Adds the `any` and `all` groups of one level, converting each member
/// with `to_alarm` (the member type is one level down).
fn push_groups<T>(
    found: &mut Vec<Alarm>,
    any: &Option<Vec<T>>,
    all: &Option<Vec<T>>,
    to_alarm: impl Fn(&T) -> Result<Alarm, AlarmShapeError>,
) -> Result<(), AlarmShapeError> {
    if let Some(v) = any {
        found.push(Alarm::Any(
            v.iter().map(&to_alarm).collect::<Result<_, _>>()?,
        ));
    }
    if let Some(v) = all {
        found.push(Alarm::All(
            v.iter().map(&to_alarm).collect::<Result<_, _>>()?,
        ));
    }
    Ok(())
}

impl AlarmTerm {
    /// The domain form.
    pub fn to_alarm(&self) -> Result<Alarm, AlarmShapeError> {
        let mut found = leaf(self.slo, self.alarm, &self.query);
        push_groups(&mut found, &self.any, &self.all, AlarmLeaf::to_alarm)?;
        if let Some(n) = &self.not {
            found.push(Alarm::Not(Box::new(n.to_alarm()?)));
        }
        exactly_one(found)
    }
}

impl AlarmExpr {
    /// The domain form.
    pub fn to_alarm(&self) -> Result<Alarm, AlarmShapeError> {
        let mut found = leaf(self.slo, self.alarm, &self.query);
        push_groups(&mut found, &self.any, &self.all, AlarmTerm::to_alarm)?;
        if let Some(n) = &self.not {
            found.push(Alarm::Not(Box::new(n.to_alarm()?)));
        }
        exactly_one(found)
    }

    /// `any` over plain SLO / built-in leaves; used for the default.
    pub(crate) fn any_of_defaults(items: &[(Option<SloSignal>, Option<AlarmKind>)]) -> Self {
        Self {
            any: Some(
                items
                    .iter()
                    .map(|(slo, alarm)| AlarmTerm {
                        slo: *slo,
                        alarm: *alarm,
                        ..AlarmTerm::default()
                    })
                    .collect(),
            ),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_sketch_rollback_tree_becomes_domain_alarm() {
        let yaml = r#"
any:
  - slo: ttftP99
  - alarm: errorRate
  - all: [ { alarm: latencySpike }, { alarm: errorRise } ]
  - query: { promql: "rate(x[1m])", above: 0.2, for: 1m }
  - not: { alarm: kvCacheSaturation }
"#;
        let expr: AlarmExpr = serde_yaml::from_str(yaml).unwrap();
        let alarm = expr.to_alarm().unwrap();
        let Alarm::Any(children) = alarm else {
            panic!("not any: {alarm:?}")
        };
        assert_eq!(children.len(), 5);
        assert_eq!(children[0], Alarm::Slo(SloSignal::TtftP99));
        assert_eq!(
            children[2],
            Alarm::All(vec![
                Alarm::Builtin(AlarmKind::LatencySpike),
                Alarm::Builtin(AlarmKind::ErrorRise)
            ])
        );
        assert!(matches!(&children[3], Alarm::Query(q) if q.above == Some(0.2)));
    }

    #[test]
    fn node_with_two_keys_is_a_shape_error() {
        let expr: AlarmExpr = serde_yaml::from_str("{ slo: ttftP99, alarm: errorRate }").unwrap();
        assert_eq!(expr.to_alarm(), Err(AlarmShapeError { found: 2 }));
    }
}
