//! What the autoscaler's decision shows people: `status.autoscaling`, the
//! `MetricsUnavailable` and `CapacityColdStarting` conditions, and events.
//!
//! Pure, like the decision: it writes onto the status value `status`
//! computed and returns event values; a condition's transition time moves
//! only when its status changes. Without an autoscaling range (`max` unset
//! or equal to `min`) neither condition is shown.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{Direction, ScaleDecision, Shortfall};
use crate::crd::InferenceServiceStatus;
use crate::events::{Note, Severity};
use crate::reason::Reason;

/// Condition types.
pub mod condition {
    /// True while the autoscaler holds the count for lack of data.
    pub const METRICS_UNAVAILABLE: &str = "MetricsUnavailable";
    /// True while more serving pods are wanted than are ready.
    pub const CAPACITY_COLD_STARTING: &str = "CapacityColdStarting";
    /// True while pods of the scaled revision cannot be scheduled (GPUs or
    /// other resources short): scale-out holds.
    pub const CAPACITY_SHORTFALL: &str = "CapacityShortfall";
}

/// Writes the decision's memory and conditions onto `status`.
pub fn write_into(
    decision: &ScaleDecision,
    status: &mut InferenceServiceStatus,
    previous: &InferenceServiceStatus,
    generation: Option<i64>,
    now: &Time,
) {
    status.autoscaling = decision.memory.clone();
    status.capacity = decision.capacity.clone();
    status.conditions.retain(|c| {
        c.type_ != condition::METRICS_UNAVAILABLE
            && c.type_ != condition::CAPACITY_COLD_STARTING
            && c.type_ != condition::CAPACITY_SHORTFALL
    });
    if !decision.enabled && decision.shortfall.is_none() {
        return;
    }
    let metrics = match &decision.metrics_unavailable {
        Some(why) => (
            true,
            Reason::NoFreshSignals,
            format!(
                "autoscaling holds at {} serving pods: {why}",
                decision.plan.serving
            ),
        ),
        None => (
            false,
            Reason::SignalsFresh,
            "every autoscaling signal has data".to_string(),
        ),
    };
    let cold = match decision.cold_start {
        Some(c) => (
            true,
            Reason::PodsStarting,
            format!(
                "{} serving pods wanted, {} ready; the rest are starting",
                c.wanted, c.ready
            ),
        ),
        None => (
            false,
            Reason::CapacityReady,
            format!("{} serving pods wanted and ready", decision.plan.serving),
        ),
    };
    let shortfall = match &decision.shortfall {
        Some(s) => (true, shortfall_reason(s), shortfall_message(s)),
        None => (
            false,
            Reason::CapacitySchedulable,
            "every pod of the scaled revision is scheduled".to_string(),
        ),
    };
    let shown = [
        (condition::METRICS_UNAVAILABLE, metrics),
        (condition::CAPACITY_COLD_STARTING, cold),
        (condition::CAPACITY_SHORTFALL, shortfall),
    ];
    for (type_, (on, reason, message)) in shown.into_iter().filter(|(t, _)| {
        // External mode: the signals do not drive the count. A fixed count
        // shows only a shortfall.
        !(decision.external && *t == condition::METRICS_UNAVAILABLE)
            && (decision.enabled || *t == condition::CAPACITY_SHORTFALL)
    }) {
        let value = if on { "True" } else { "False" };
        let last_transition_time = previous
            .conditions
            .iter()
            .find(|p| p.type_ == type_ && p.status == value)
            .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
        status.conditions.push(Condition {
            type_: type_.to_owned(),
            status: value.to_owned(),
            reason: reason.as_str().to_owned(),
            message,
            observed_generation: generation,
            last_transition_time,
        });
    }
}

fn shortfall_reason(s: &Shortfall) -> Reason {
    if s.gpu {
        Reason::InsufficientGpu
    } else {
        Reason::PodsUnschedulable
    }
}

fn shortfall_message(s: &Shortfall) -> String {
    let what = if s.gpu { "GPUs" } else { "resources" };
    let held = match s.held_at {
        Some(n) => format!("; scale-out to {n} serving pods holds until they are scheduled"),
        None => "; no more pods are asked for until they are scheduled".to_string(),
    };
    format!(
        "{} pod(s) cannot be scheduled, not enough {what} in the cluster ({}){held}",
        s.pending, s.message
    )
}

/// Events: every scale change, `MetricsUnavailable` and
/// `CapacityShortfall` turning true.
pub fn notes(decision: &ScaleDecision, previous: &InferenceServiceStatus) -> Vec<Note> {
    let mut out = Vec::new();
    if let Some(e) = &decision.event {
        let (reason, action) = match e.direction {
            Direction::Out => (Reason::ScaledOut, "ScaleOut"),
            Direction::In => (Reason::ScaledIn, "ScaleIn"),
        };
        out.push(Note {
            severity: Severity::Normal,
            reason,
            action,
            message: e.message.clone(),
        });
    }
    let was_unavailable = previous
        .conditions
        .iter()
        .any(|c| c.type_ == condition::METRICS_UNAVAILABLE && c.status == "True");
    if let (true, Some(why), false) = (
        decision.enabled,
        &decision.metrics_unavailable,
        was_unavailable,
    ) {
        out.push(Note {
            severity: Severity::Warning,
            reason: Reason::NoFreshSignals,
            action: "HoldScale",
            message: format!("autoscaling holds: {why}"),
        });
    }
    let was_short = previous
        .conditions
        .iter()
        .any(|c| c.type_ == condition::CAPACITY_SHORTFALL && c.status == "True");
    if let (Some(s), false) = (&decision.shortfall, was_short) {
        out.push(Note {
            severity: Severity::Warning,
            reason: shortfall_reason(s),
            action: "HoldScale",
            message: shortfall_message(s),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::autoscale::{Cause, ColdStart, ScaleEvent, ScalePlan, Shortfall};
    use crate::crd::AutoscalingStatus;

    fn decision() -> ScaleDecision {
        ScaleDecision {
            enabled: true,
            external: false,
            plan: ScalePlan {
                serving: 3,
                warm: 1,
                draining: 0,
            },
            drain: None,
            remove: Vec::new(),
            memory: AutoscalingStatus {
                serving: Some(3),
                ..AutoscalingStatus::default()
            },
            metrics_unavailable: None,
            cold_start: None,
            shortfall: None,
            event: None,
            requeue_after: None,
            capacity: None,
        }
    }

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).expect("time"))
    }

    fn cond<'a>(s: &'a InferenceServiceStatus, t: &str) -> Option<&'a Condition> {
        s.conditions.iter().find(|c| c.type_ == t)
    }

    #[test]
    fn conditions_say_why_and_keep_their_transition_time() {
        let mut d = decision();
        d.metrics_unavailable = Some("Prometheus is unavailable: connection refused".into());
        d.cold_start = Some(ColdStart {
            wanted: 3,
            ready: 2,
        });
        let previous = InferenceServiceStatus::default();
        let mut s = InferenceServiceStatus::default();
        write_into(&d, &mut s, &previous, Some(1), &t(10));
        let m = cond(&s, condition::METRICS_UNAVAILABLE).expect("condition");
        assert_eq!(
            (m.status.as_str(), m.reason.as_str()),
            ("True", "NoFreshSignals")
        );
        assert!(m
            .message
            .contains("holds at 3 serving pods: Prometheus is unavailable"));
        let c = cond(&s, condition::CAPACITY_COLD_STARTING).expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "PodsStarting")
        );
        assert_eq!(s.autoscaling.serving, Some(3));
        // The next pass, same state: same transition time.
        let mut again = InferenceServiceStatus::default();
        write_into(&d, &mut again, &s, Some(1), &t(20));
        assert_eq!(again.conditions, s.conditions);
        // Data back: False, new time.
        d.metrics_unavailable = None;
        let mut back = InferenceServiceStatus::default();
        write_into(&d, &mut back, &s, Some(1), &t(30));
        let m = cond(&back, condition::METRICS_UNAVAILABLE).expect("condition");
        assert_eq!(
            (m.status.as_str(), m.last_transition_time.clone()),
            ("False", t(30))
        );
    }

    #[test]
    fn without_a_range_no_condition_is_shown() {
        let mut d = decision();
        d.enabled = false;
        d.metrics_unavailable = Some("x".into());
        let mut s = InferenceServiceStatus::default();
        let mut previous = InferenceServiceStatus::default();
        write_into(
            &decision(),
            &mut previous,
            &InferenceServiceStatus::default(),
            None,
            &t(1),
        );
        s.conditions = previous.conditions.clone();
        write_into(&d, &mut s, &previous, None, &t(2));
        assert!(s.conditions.is_empty());
        assert!(notes(&d, &previous).is_empty());
    }

    #[test]
    fn a_scale_change_and_a_hold_are_events() {
        let mut d = decision();
        d.event = Some(ScaleEvent {
            direction: Direction::Out,
            cause: Cause::ExecutorUtilization,
            from: 2,
            to: 3,
            from_warm: 1,
            message: "m".into(),
        });
        d.metrics_unavailable = Some("no data for kv_cache_usage: scale-in held".into());
        let n = notes(&d, &InferenceServiceStatus::default());
        assert_eq!(
            n.iter().map(|n| (n.reason, n.severity)).collect::<Vec<_>>(),
            vec![
                (Reason::ScaledOut, Severity::Normal),
                (Reason::NoFreshSignals, Severity::Warning)
            ]
        );
        // Already unavailable: no second warning.
        let mut s = InferenceServiceStatus::default();
        write_into(&d, &mut s, &InferenceServiceStatus::default(), None, &t(1));
        d.event = None;
        assert!(notes(&d, &s).is_empty());
    }

    #[test]
    fn a_shortfall_names_the_gpus_and_warns_once_even_without_a_range() {
        let mut d = decision();
        d.enabled = false;
        d.shortfall = Some(Shortfall {
            pending: 2,
            message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into(),
            gpu: true,
            held_at: Some(6),
        });
        let mut s = InferenceServiceStatus::default();
        write_into(&d, &mut s, &InferenceServiceStatus::default(), None, &t(1));
        assert_eq!(s.conditions.len(), 1, "only the shortfall without a range");
        let c = cond(&s, condition::CAPACITY_SHORTFALL).expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "InsufficientGpu")
        );
        assert_eq!(
            c.message,
            "2 pod(s) cannot be scheduled, not enough GPUs in the cluster (0/1 nodes are \
             available: 1 Insufficient nvidia.com/gpu.); scale-out to 6 serving pods holds \
             until they are scheduled"
        );
        let n = notes(&d, &InferenceServiceStatus::default());
        assert_eq!(
            n.iter().map(|n| (n.reason, n.severity)).collect::<Vec<_>>(),
            vec![(Reason::InsufficientGpu, Severity::Warning)]
        );
        assert!(notes(&d, &s).is_empty(), "already short: no second warning");
        // Scheduled again (with a range): False.
        let mut d = decision();
        d.shortfall = None;
        let mut after = InferenceServiceStatus::default();
        write_into(&d, &mut after, &s, None, &t(2));
        let c = cond(&after, condition::CAPACITY_SHORTFALL).expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "CapacitySchedulable")
        );
    }
}
