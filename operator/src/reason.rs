//! Every reason the operator gives, as one enum: condition reasons, event
//! reasons and the `reason` label of `steward_operator_reconcile_errors_total`.
//!
//! The strings are a contract (people grep events, alerts match metric
//! labels, tests match conditions), so they live in one place and never come
//! from `Debug` output. The one exception is the Degraded condition's reason
//! when a pod is stuck: that is the kubelet's or scheduler's own word
//! (`ErrImagePull`, `Unschedulable`, ...), carried through unchanged.

/// A stable reason string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // Ready condition.
    /// The stable revision serves with all its pods ready.
    RevisionReady,
    /// The stable revision has fewer ready pods than desired.
    ReplicasNotReady,
    /// No revision has had all its pods ready yet.
    NoStableRevision,
    /// No ready pod of a revision with traffic is in rotation (for example
    /// `replicas.min: 0`): the router has nowhere to send requests.
    NoServingPods,

    // Progressing condition.
    /// The target revision serves and nothing else is left.
    RolloutComplete,
    /// The target revision's pods are coming up.
    RevisionRollingOut,
    /// The target took the traffic; older revisions are handing off or
    /// draining.
    DrainingPreviousRevisions,
    /// The target revision cannot become ready.
    RolloutStalled,
    /// The target was rolled back; the stable revision serves.
    RolloutRolledBack,
    /// `spec.rollout.paused` holds the target at the gate.
    RolloutPaused,
    /// The golden set runs against the target; it holds until decided.
    QualityGateRunning,
    /// The golden set cannot be used (malformed, or an entry every
    /// revision refuses): the rollout holds until the ConfigMap is fixed.
    GoldenSetInvalid,
    /// The golden set's ConfigMap does not exist: the rollout holds.
    GoldenSetNotFound,
    /// A pod could not be asked for the golden set: the rollout holds.
    QualityUnavailable,
    /// The canary's step is over but its alarm verdict is unknown (no
    /// data, too few requests, stale or unavailable signals): it holds.
    AnalysisUnknown,
    /// The canary's step is over, but the pods the next step needs are
    /// still coming up: the weight rises once they are ready.
    CanaryScaling,

    // RolledBack condition, rollback events and
    // `steward_operator_rollbacks_total{reason}`.
    /// The quality gate failed: a category below `minScore` or below the
    /// stable's score minus the margin.
    QualityGateFailed,
    /// The user aborted the canary.
    Aborted,
    /// Analysis stayed unknown at a step for `analysis.unknownTimeout`.
    AnalysisUnavailable,

    // Degraded condition.
    /// Nothing is wrong.
    AsExpected,
    /// A stuck pod's reason; the condition carries the kubelet's word.
    PodProblem,

    // Events.
    /// A Deployment for a new revision was created.
    RevisionCreated,
    /// A revision's Deployment changed size.
    RevisionScaled,
    /// A revision took the traffic.
    RevisionPromoted,
    /// A retired revision's Deployment was deleted.
    RevisionPruned,
    /// A rolled-back revision is run again at the user's request.
    Retried,
    /// A manual request annotation was ignored (the event says why).
    ManualRequestIgnored,
    /// The Ready condition turned true.
    Ready,
    /// The Degraded condition turned true.
    Degraded,
    /// The Degraded condition turned false again.
    Recovered,

    // Autoscaling: events and the MetricsUnavailable / CapacityColdStarting
    // conditions.
    /// The autoscaler added serving pods.
    ScaledOut,
    /// The autoscaler took a serving pod out (it drains, then goes).
    ScaledIn,
    /// No fresh value for the autoscaling signals: the count holds.
    NoFreshSignals,
    /// Every autoscaling signal has a fresh value.
    SignalsFresh,
    /// More serving pods are wanted than are ready.
    PodsStarting,
    /// Every wanted serving pod is ready.
    CapacityReady,
    /// Pods of the scaled revision cannot be scheduled for lack of GPUs
    /// (`nvidia.com/gpu`): scale-out holds.
    InsufficientGpu,
    /// Pods of the scaled revision cannot be scheduled (CPU, memory, node
    /// selector): scale-out holds.
    PodsUnschedulable,
    /// Every pod of the scaled revision is scheduled.
    CapacitySchedulable,
    /// An alarm leaf of a revision started firing.
    AlarmFiring,
    /// An alarm leaf of a revision stopped firing.
    AlarmResolved,

    // SignalsUnavailable and AlarmQueryInvalid conditions.
    /// No `--prometheus-url`: every alarm is unknown.
    PrometheusNotConfigured,
    /// Prometheus is configured; the first snapshot is not taken yet.
    WaitingForFirstSnapshot,
    /// The latest snapshot is older than two poll intervals.
    SignalsStale,
    /// The latest poll could not reach Prometheus or had no answer.
    PrometheusUnavailable,
    /// The alarm tree from the spec does not compile.
    AlarmTreeInvalid,
    /// Prometheus accepts every alarm query.
    AlarmQueriesValid,
    /// Prometheus refuses the PromQL of a leaf.
    QueryRefused,

    // Reconcile errors.
    /// A read the pass needs (the HTTPRoute of a name the route watch does
    /// not hold) failed.
    ReadFailed,
    /// A write was refused or failed.
    WriteFailed,
    /// A write did not finish within the write timeout.
    WriteTimedOut,
    /// The object lacks a namespace or uid.
    IncompleteObject,
    /// The model uri cannot be placed in a pod.
    UnsupportedModelUri,
    /// The child caches did not finish their first list in time.
    CachesNotReady,
    /// A pass panicked; caught so one object cannot stop the others.
    Panicked,

    // Degraded condition, event and reconcile error at once.
    /// The spec cannot be acted on (a field the schema let through, or an
    /// object stored before a rule existed); the message names the field.
    InvalidSpec,

    // ModelNameConflict condition and its events (`claims`).
    /// An older InferenceService holds this one's `spec.model.name`: the
    /// router sends it no traffic.
    ModelNameTaken,
    /// This InferenceService owns its model name (after a conflict).
    ModelNameOwned,

    // GatewayRoute condition and its events (`route`).
    /// The HTTPRoute carries `status.traffic`'s weights.
    RouteApplied,
    /// An HTTPRoute of the same name exists and is not this
    /// InferenceService's: the operator leaves it alone.
    RouteNotOwned,
}

impl Reason {
    /// The stable string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::RevisionReady => "RevisionReady",
            Reason::ReplicasNotReady => "ReplicasNotReady",
            Reason::NoStableRevision => "NoStableRevision",
            Reason::NoServingPods => "NoServingPods",
            Reason::RolloutComplete => "RolloutComplete",
            Reason::RevisionRollingOut => "RevisionRollingOut",
            Reason::DrainingPreviousRevisions => "DrainingPreviousRevisions",
            Reason::RolloutStalled => "RolloutStalled",
            Reason::RolloutRolledBack => "RolloutRolledBack",
            Reason::RolloutPaused => "RolloutPaused",
            Reason::QualityGateRunning => "QualityGateRunning",
            Reason::GoldenSetInvalid => "GoldenSetInvalid",
            Reason::GoldenSetNotFound => "GoldenSetNotFound",
            Reason::QualityUnavailable => "QualityUnavailable",
            Reason::QualityGateFailed => "QualityGateFailed",
            Reason::Aborted => "Aborted",
            Reason::AnalysisUnavailable => "AnalysisUnavailable",
            Reason::AnalysisUnknown => "AnalysisUnknown",
            Reason::CanaryScaling => "CanaryScaling",
            Reason::AsExpected => "AsExpected",
            Reason::PodProblem => "PodProblem",
            Reason::RevisionCreated => "RevisionCreated",
            Reason::RevisionScaled => "RevisionScaled",
            Reason::RevisionPromoted => "RevisionPromoted",
            Reason::RevisionPruned => "RevisionPruned",
            Reason::Retried => "Retried",
            Reason::ManualRequestIgnored => "ManualRequestIgnored",
            Reason::Ready => "Ready",
            Reason::Degraded => "Degraded",
            Reason::Recovered => "Recovered",
            Reason::ScaledOut => "ScaledOut",
            Reason::ScaledIn => "ScaledIn",
            Reason::NoFreshSignals => "NoFreshSignals",
            Reason::SignalsFresh => "SignalsFresh",
            Reason::PodsStarting => "PodsStarting",
            Reason::CapacityReady => "CapacityReady",
            Reason::InsufficientGpu => "InsufficientGpu",
            Reason::PodsUnschedulable => "PodsUnschedulable",
            Reason::CapacitySchedulable => "CapacitySchedulable",
            Reason::AlarmFiring => "AlarmFiring",
            Reason::AlarmResolved => "AlarmResolved",
            Reason::WriteFailed => "WriteFailed",
            Reason::ReadFailed => "ReadFailed",
            Reason::WriteTimedOut => "WriteTimedOut",
            Reason::IncompleteObject => "IncompleteObject",
            Reason::UnsupportedModelUri => "UnsupportedModelUri",
            Reason::CachesNotReady => "CachesNotReady",
            Reason::Panicked => "Panicked",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::PrometheusNotConfigured => "PrometheusNotConfigured",
            Reason::WaitingForFirstSnapshot => "WaitingForFirstSnapshot",
            Reason::SignalsStale => "SignalsStale",
            Reason::PrometheusUnavailable => "PrometheusUnavailable",
            Reason::AlarmTreeInvalid => "AlarmTreeInvalid",
            Reason::AlarmQueriesValid => "AlarmQueriesValid",
            Reason::QueryRefused => "QueryRefused",
            Reason::ModelNameTaken => "ModelNameTaken",
            Reason::ModelNameOwned => "ModelNameOwned",
            Reason::RouteApplied => "RouteApplied",
            Reason::RouteNotOwned => "RouteNotOwned",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_are_their_variant_names() {
        // The strings are a contract; the variant names are chosen to match,
        // so a renamed variant shows up here as well as in the docs.
        for r in [
            Reason::RevisionReady,
            Reason::NoServingPods,
            Reason::DrainingPreviousRevisions,
            Reason::RevisionPromoted,
            Reason::QualityGateFailed,
            Reason::GoldenSetInvalid,
            Reason::ManualRequestIgnored,
            Reason::WriteTimedOut,
            Reason::CachesNotReady,
            Reason::Panicked,
            Reason::InvalidSpec,
            Reason::AlarmFiring,
            Reason::AlarmResolved,
            Reason::ScaledOut,
            Reason::ScaledIn,
            Reason::NoFreshSignals,
            Reason::SignalsFresh,
            Reason::PodsStarting,
            Reason::CapacityReady,
            Reason::InsufficientGpu,
            Reason::PodsUnschedulable,
            Reason::CapacitySchedulable,
            Reason::CanaryScaling,
            Reason::RouteApplied,
            Reason::RouteNotOwned,
            Reason::PrometheusNotConfigured,
            Reason::WaitingForFirstSnapshot,
            Reason::SignalsStale,
            Reason::PrometheusUnavailable,
            Reason::AlarmTreeInvalid,
            Reason::AlarmQueriesValid,
            Reason::QueryRefused,
            Reason::ModelNameTaken,
            Reason::ModelNameOwned,
        ] {
            assert_eq!(r.as_str(), format!("{r:?}"));
        }
    }
}
