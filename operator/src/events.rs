//! Events for every decision and status transition, as `kubectl describe`
//! shows them, built as values. Only a change makes one, so a converged
//! object publishes none; the controller publishes them last in a pass.

use crate::alarm;
use crate::reason::Reason;
use crate::rollout::manual::{self, Action, ManualControl};
use crate::rollout::Decision;
use crate::status::Transition;

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Something happened as planned.
    Normal,
    /// Someone should look.
    Warning,
}

/// One event to publish about the InferenceService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub severity: Severity,
    /// Why (the event's `reason`).
    pub reason: Reason,
    /// What the operator did (the event's `action`).
    pub action: &'static str,
    /// For people.
    pub message: String,
}

fn normal(reason: Reason, action: &'static str, message: String) -> Note {
    Note {
        severity: Severity::Normal,
        reason,
        action,
        message,
    }
}

/// Events for the rollout's decisions.
pub fn for_decisions(decisions: &[Decision]) -> Vec<Note> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::RevisionCreated { revision, replicas } => normal(
                Reason::RevisionCreated,
                "CreateRevision",
                format!("created revision {revision} with {replicas} pods"),
            ),
            Decision::Scaled { revision, from, to } => normal(
                Reason::RevisionScaled,
                "ScaleRevision",
                format!("scaled revision {revision} from {from} to {to} pods"),
            ),
            Decision::Promoted {
                from: Some(from),
                to,
            } => normal(
                Reason::RevisionPromoted,
                "Promote",
                format!("revision {to} takes 100% of traffic from {from}"),
            ),
            Decision::Promoted { from: None, to } => normal(
                Reason::RevisionPromoted,
                "Promote",
                format!("revision {to} is ready and stable"),
            ),
            Decision::RolledBack {
                revision,
                stable,
                cause,
                message,
            } => Note {
                severity: Severity::Warning,
                reason: cause.reason(),
                action: "RollBack",
                message: format!(
                    "revision {revision} rolled back, {stable} keeps the traffic: {message}"
                ),
            },
            Decision::Pruned { revision } => normal(
                Reason::RevisionPruned,
                "PruneRevision",
                format!("deleted retired revision {revision}"),
            ),
        })
        .collect()
}

/// Events for the user's requests: an ignored one says why (a Warning);
/// a retry says it starts over. Promote and abort show as the promotion or
/// rollback they cause.
pub fn for_manual(m: &ManualControl) -> Vec<Note> {
    m.decisions
        .iter()
        .filter_map(|d| match d {
            manual::Decision::Ignore {
                action,
                value,
                reason,
            } => Some(Note {
                severity: Severity::Warning,
                reason: Reason::ManualRequestIgnored,
                action: "ManualControl",
                message: format!(
                    "{} request `{}={value}` ignored: {reason}",
                    action.as_str(),
                    action.annotation()
                ),
            }),
            manual::Decision::Apply {
                action: Action::Retry,
                revision,
            } => Some(normal(
                Reason::Retried,
                "ManualControl",
                format!("revision {revision} is tried again at the user's request"),
            )),
            manual::Decision::Apply { .. } => None,
        })
        .collect()
}

/// Events for condition changes.
pub fn for_transitions(transitions: &[Transition]) -> Vec<Note> {
    transitions
        .iter()
        .map(|t| match t {
            Transition::BecameReady { message } => {
                normal(Reason::Ready, "Reconcile", message.clone())
            }
            Transition::BecameDegraded { reason, message } => Note {
                severity: Severity::Warning,
                reason: Reason::Degraded,
                action: "Reconcile",
                message: format!("{reason}: {message}"),
            },
            Transition::Recovered => normal(
                Reason::Recovered,
                "Reconcile",
                "the service is no longer degraded".into(),
            ),
        })
        .collect()
}

/// Events for alarm leaves that started or stopped firing: a Warning
/// naming the revision, the leaf, its value and threshold; when it stops,
/// what it is now (Ok, or unknown when its signal went away).
pub fn for_alarms(transitions: &[alarm::Transition]) -> Vec<Note> {
    transitions
        .iter()
        .map(|t| {
            let value = t.value.as_deref().unwrap_or("no value");
            let threshold = t.threshold.as_deref().unwrap_or("its threshold");
            if t.firing {
                Note {
                    severity: Severity::Warning,
                    reason: Reason::AlarmFiring,
                    action: "Analyse",
                    message: format!(
                        "revision {}: {} is firing: {value} (threshold {threshold})",
                        t.revision, t.node
                    ),
                }
            } else {
                normal(
                    Reason::AlarmResolved,
                    "Analyse",
                    format!(
                        "revision {}: {} stopped firing; now {} ({value})",
                        t.revision,
                        t.node,
                        t.state.as_str()
                    ),
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decision_and_transition_has_a_named_event() {
        let decisions = [
            Decision::RevisionCreated {
                revision: "r2".into(),
                replicas: 2,
            },
            Decision::Scaled {
                revision: "r1".into(),
                from: 2,
                to: 0,
            },
            Decision::Promoted {
                from: Some("r1".into()),
                to: "r2".into(),
            },
            Decision::Pruned {
                revision: "r0".into(),
            },
        ];
        let reasons: Vec<&str> = for_decisions(&decisions)
            .iter()
            .map(|e| e.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "RevisionCreated",
                "RevisionScaled",
                "RevisionPromoted",
                "RevisionPruned"
            ]
        );
        let t = [
            Transition::BecameReady {
                message: "m".into(),
            },
            Transition::BecameDegraded {
                reason: "Unschedulable".into(),
                message: "no gpu".into(),
            },
            Transition::Recovered,
        ];
        let events = for_transitions(&t);
        assert_eq!(events[1].severity, Severity::Warning);
        assert_eq!(events[1].message, "Unschedulable: no gpu");
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["Ready", "Degraded", "Recovered"]);
    }

    #[test]
    fn a_leaf_that_starts_firing_is_a_warning_and_one_that_stops_says_what_it_is_now() {
        let t = [
            alarm::Transition {
                revision: "b".into(),
                node: "ttftP99".into(),
                firing: true,
                state: alarm::State::Firing,
                value: Some("1.02s".into()),
                threshold: Some("> 600ms".into()),
            },
            alarm::Transition {
                revision: "b".into(),
                node: "ttftP99".into(),
                firing: false,
                state: alarm::State::NoData,
                value: None,
                threshold: Some("> 600ms".into()),
            },
        ];
        let e = for_alarms(&t);
        assert_eq!(e[0].severity, Severity::Warning);
        assert_eq!(e[0].reason, Reason::AlarmFiring);
        assert_eq!(
            e[0].message,
            "revision b: ttftP99 is firing: 1.02s (threshold > 600ms)"
        );
        assert_eq!(e[1].severity, Severity::Normal);
        assert_eq!(e[1].reason, Reason::AlarmResolved);
        assert_eq!(
            e[1].message,
            "revision b: ttftP99 stopped firing; now NoData (no value)"
        );
    }
}
