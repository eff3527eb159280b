//! The composite rollback alarm (`rollout.analysis.rollbackOn`).
//!
//! Users write a tree of `any` / `all` / `not` over leaves (`slo`, `alarm`,
//! `query`). A CRD schema cannot be recursive, so the wire types spell out
//! three levels ([`AlarmExpr`] → [`AlarmTerm`] → [`AlarmLeaf`]), which covers
//! every combination in the design (`any: [..., all: [a, b]]`) and `not` at
//! each level. CEL makes every node set exactly one key. Any node may carry
//! `for:` (how long it must hold before it fires). This is the wire shape
//! only: `alarm::compile` turns it into the evaluable tree, and nothing
//! past that edge looks at these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::{fields, GoDuration};

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
    /// The canary's perplexity on the golden references above the
    /// stable's by more than `quality.perplexityMargin` (the golden-set
    /// scores roll back on their own, see docs/rollouts.md).
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
    #[serde(
        default = "default_for",
        rename = "for",
        deserialize_with = "fields::query_for::deserialize"
    )]
    #[schemars(schema_with = "fields::query_for::schema")]
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
    /// How long this node's condition must hold before it fires (a query
    /// leaf's own `for` applies when this is unset).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<GoDuration>,
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
    /// How long this node's condition must hold before it fires (a query
    /// leaf's own `for` applies when this is unset).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<GoDuration>,
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
    /// How long this node's condition must hold before it fires (a query
    /// leaf's own `for` applies when this is unset).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<GoDuration>,
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

impl AlarmExpr {
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
