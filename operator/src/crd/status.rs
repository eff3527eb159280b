//! The `InferenceService` status: what the operator observed and decided.
//!
//! The router reads `traffic` (which revision gets what share); people read
//! the printer columns (`ready`, `servingWarm`, `stableRevision`,
//! `canaryRevision`, `canaryWeight`, `phase`, `ttftP99`) and the conditions.
//! Everything here is computed as a value by `status::compute` and written
//! only when it differs from what is stored.
//!
//! Memory: `stableRevision`, `rollout` and `autoscaling` are the only state
//! the operator reads back to decide; they are what survives a restart or a
//! leader change. Everything else is derived again from what is observed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a service stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Nothing ready yet.
    #[default]
    Pending,
    /// The desired revision serves all traffic and nothing else is left.
    Ready,
    /// A revision change is under way.
    Progressing,
    /// A canary is being rolled back.
    RollingBack,
    /// The spec's revision was rolled back and its pods are gone; the
    /// stable revision serves (change the spec, or retry the revision).
    RolledBack,
    /// The desired revision cannot become ready (see the Degraded condition).
    Degraded,
    /// The spec cannot be acted on at all.
    Failed,
}

impl Phase {
    /// The name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Ready => "Ready",
            Phase::Progressing => "Progressing",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Degraded => "Degraded",
            Phase::Failed => "Failed",
        }
    }
}

/// One revision's share of traffic. Weights in `status.traffic` sum to 100.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TrafficTarget {
    /// The revision hash (the `serving.steward.dev/revision` pod label).
    pub revision: String,
    /// Percent of requests, 0 to 100.
    pub weight: i32,
}

/// Pod counts over all revisions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ReplicaStatus {
    /// Ready pods labelled `rotation=serving`.
    pub serving: i32,
    /// Ready pods labelled `rotation=warm`.
    pub warm: i32,
    /// Ready pods of every revision.
    pub ready: i32,
    /// Pods the desired state asks for.
    pub desired: i32,
}

/// The state of one alarm node (docs/alarms.md).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmState {
    /// Within bounds.
    Ok,
    /// Out of bounds, but not yet for the node's `for:` time.
    Pending,
    /// Out of bounds (for at least `for:`).
    Firing,
    /// No value: no series, a failed query, or signals unavailable or stale.
    NoData,
    /// Too few requests in the window to decide.
    Inconclusive,
}

impl AlarmState {
    /// The state as status and events write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlarmState::Ok => "Ok",
            AlarmState::Pending => "Pending",
            AlarmState::Firing => "Firing",
            AlarmState::NoData => "NoData",
            AlarmState::Inconclusive => "Inconclusive",
        }
    }
}

/// One alarm node's last evaluation for one revision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlarmStatus {
    /// The node: an SLO name (`ttftP99`), a built-in alarm (`errorRate`),
    /// `query-N`, or `any-N` / `all-N` / `not-N` for groups with `for:`.
    pub name: String,
    /// The revision judged.
    #[serde(default)]
    pub revision: String,
    /// Its state.
    pub state: AlarmState,
    /// The revision's value, formatted for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The stable revision's value, for relative alarms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_value: Option<String>,
    /// What the value is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    /// When the node entered this state (pending timers resume from it
    /// after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Why the state is NoData or Inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the operator does with one revision (a revision's role; a pod's
/// place in rotation is its `serving.steward.dev/rotation` label).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionRole {
    /// The first revision of a service, coming up; it is stable once all its
    /// pods are ready.
    Starting,
    /// Serves the traffic.
    Stable,
    /// Being brought up beside the stable revision to take over.
    Canary,
    /// Out of traffic; its pods drain and it scales to zero.
    Retiring,
    /// At zero, kept for a quick rollback.
    Retired,
}

/// One revision as the operator sees it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// The revision hash.
    pub name: String,
    /// Its role.
    pub role: RevisionRole,
    /// Pods the operator asks for.
    pub desired: i32,
    /// Ready, not terminating pods.
    pub ready: i32,
    /// Pods that still exist (terminating ones included).
    pub pods: i32,
}

/// Rollout memory: where the rollout stands, kept in status because it
/// cannot be derived from the children after a restart.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The canary step in progress (1-based), if a canary is in steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    /// When the current traffic split was written: a step's pause counts
    /// from here, and a revision that lost its weight keeps its pods until
    /// the traffic hand-off has passed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// A revision that was rolled back; it is not tried again until the
    /// spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_revision: Option<String>,
    /// Why it was rolled back: `AlarmFiring`, `AnalysisUnavailable`,
    /// `QualityGateFailed` or `Aborted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<String>,
    /// The rollback's message (the failing category with both scores, or
    /// who aborted), kept for the RolledBack condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_message: Option<String>,
    /// Analysis checks of the current step that came back firing, in a row.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_checks: i32,
    /// Since when the canary's alarm verdict at the current step has been
    /// unknown (`analysis.unknownTimeout` counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_unknown_since: Option<Time>,
}

/// Autoscaling memory, kept in status for the same reason.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Since when utilisation has been below target (scale-in waits
    /// `autoscaling.scaleInAfter` from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_since: Option<Time>,
    /// When the serving count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_at: Option<Time>,
    /// Why it last changed, for people: the signal, its value and target,
    /// and the counts (`executor_utilization 92% > 70%: serving 2 -> 3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// The serving count the autoscaler decided last: the count it scales
    /// from (pod labels cannot say it: a new pod starts labelled serving
    /// before the pool makes it warm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<i32>,
    /// Warm pods kept beyond `replicas.warm` by the cold-start rule (see
    /// `status.capacity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_warm: Option<i32>,
    /// When the projection last asked for them: they go once it has stayed
    /// below the target for `scaleInAfter` from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_since: Option<Time>,
}

/// Demand and capacity of the revision the autoscaler scales, in tokens
/// (Little's law), and the cold-start projection (docs/operator.md,
/// "Capacity"). Shown for people and platform teams; recomputed from every
/// fresh snapshot, absent without one.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CapacityStatus {
    /// The revision measured.
    pub revision: String,
    /// Generated tokens per second over the window, all its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand_tokens_per_second: Option<i64>,
    /// Sequences running or waiting, all its pods, averaged over the
    /// window (Little's law's L).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<i64>,
    /// Responses per second of the generation routes (λ), two decimals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<String>,
    /// One pod's measured capacity: tokens per second of model-step time at
    /// the batch it runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_tokens_per_second: Option<i64>,
    /// Serving pods the demand needs at the target:
    /// `ceil(demand / (pod capacity × target))`; compare with
    /// `replicas.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_needed: Option<i32>,
    /// Engine start to ready, the slowest pod (whole seconds, rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_seconds: Option<i64>,
    /// How fast utilisation moves (`+4.2%/min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_trend: Option<String>,
    /// Utilisation one cold start from now at that trend (`81%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_utilization: Option<String>,
    /// Warm pods kept beyond `replicas.warm` for the projected scale-out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub early_warm: i32,
    /// The same, for people.
    pub message: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A quality check's outcome.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QualityState {
    /// Within bounds.
    Pass,
    /// Out of bounds: the gate rolls the canary back.
    Fail,
    /// Not decided (no answers yet, a pod unreachable, a malformed golden
    /// set): the rollout holds.
    Unknown,
}

/// One golden-set category, scored on both revisions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CategoryQuality {
    /// The category named in the golden set (`overall` when
    /// `perCategory` is false).
    pub name: String,
    /// Entries in the category.
    pub entries: i32,
    /// The canary's share of entries answered right, 0 to 1.
    pub canary: f64,
    /// The stable revision's share, 0 to 1.
    pub stable: f64,
    /// Whether the canary passes this category.
    pub state: QualityState,
}

/// Perplexity of both revisions on the golden references.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PerplexityQuality {
    /// The canary's perplexity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<f64>,
    /// The stable revision's perplexity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<f64>,
    /// `canary / stable - 1`; positive means the canary is less sure of
    /// the references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<f64>,
    /// Reference tokens scored per revision.
    pub tokens: i32,
    /// The `qualityRegression` alarm's state.
    pub state: QualityState,
    /// Why it is unknown, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The golden-set gate's results for one canary step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QualityStatus {
    /// The canary revision these results are for.
    pub canary_revision: String,
    /// The stable revision it was compared with.
    pub stable_revision: String,
    /// The canary step the golden set ran at (1-based).
    pub step: i32,
    /// The gate's decision over the categories.
    pub state: QualityState,
    /// Why, for people: the failing category with both scores, or why it
    /// is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Scores per category, both revisions.
    #[serde(default)]
    pub categories: Vec<CategoryQuality>,
    /// Perplexity drift (the `qualityRegression` alarm), when the golden
    /// set has references to score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<PerplexityQuality>,
}

/// Observed state of an `InferenceService`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// Where the service stands.
    #[serde(default)]
    pub phase: Phase,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The revision that has been rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The revision being rolled out, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    /// The canary's share of traffic, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<i32>,
    /// Which revision gets what share; the router routes by this.
    #[serde(default)]
    pub traffic: Vec<TrafficTarget>,
    /// Rollout memory (survives restarts and leader changes).
    #[serde(default)]
    pub rollout: RolloutStatus,
    /// Autoscaling memory (survives restarts and leader changes).
    #[serde(default)]
    pub autoscaling: AutoscalingStatus,
    /// Demand and capacity in tokens, and the cold-start projection, of the
    /// revision the autoscaler scales; absent without a fresh snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityStatus>,
    /// Pod counts.
    #[serde(default)]
    pub replicas: ReplicaStatus,
    /// `ready/desired`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// `serving/warm`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_warm: Option<String>,
    /// The observed TTFT p99, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p99: Option<String>,
    /// The scaled revision's utilisation from the latest fresh signals (the
    /// higher of executor utilisation and KV-cache usage, `82%`), for the
    /// `-o wide` printer column; blank without data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<String>,
    /// The label selector of the serving pods, for the scale subresource
    /// (an HPA or KEDA reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The firing alarm of each revision whose `rollbackOn` tree fires, as
    /// `leaf (revision)`, for the `-o wide` printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firing: Option<String>,
    /// Each revision that still has a Deployment.
    #[serde(default)]
    pub revisions: Vec<RevisionStatus>,
    /// Every alarm node of every judged revision (leaves, and groups with
    /// `for:`), from the latest signals.
    #[serde(default)]
    pub alarms: Vec<AlarmStatus>,
    /// The golden-set quality gate of the current canary step, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityStatus>,
    /// Ready, Progressing, Degraded (and RolledBack once rollback exists).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
