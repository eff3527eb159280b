//! Events for every decision and status transition, as `kubectl describe`
//! shows them. Emitted only when something changed, so a converged object
//! publishes none.

use kube::runtime::events::{Event, EventType};

use crate::rollout::Decision;
use crate::status::Transition;

fn normal(reason: &str, action: &str, note: String) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    }
}

pub(crate) fn decision_events(decisions: &[Decision]) -> Vec<Event> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::RevisionCreated { revision, replicas } => normal(
                "RevisionCreated",
                "CreateRevision",
                format!("created revision {revision} with {replicas} pods"),
            ),
            Decision::Scaled { revision, from, to } => normal(
                "RevisionScaled",
                "ScaleRevision",
                format!("scaled revision {revision} from {from} to {to} pods"),
            ),
            Decision::Promoted {
                from: Some(from),
                to,
            } => normal(
                "RevisionPromoted",
                "Promote",
                format!("revision {to} takes 100% of traffic from {from}"),
            ),
            Decision::Promoted { from: None, to } => normal(
                "RevisionPromoted",
                "Promote",
                format!("revision {to} is ready and stable"),
            ),
            Decision::Pruned { revision } => normal(
                "RevisionPruned",
                "PruneRevision",
                format!("deleted retired revision {revision}"),
            ),
        })
        .collect()
}

pub(crate) fn transition_events(transitions: &[Transition]) -> Vec<Event> {
    transitions
        .iter()
        .map(|t| match t {
            Transition::BecameReady { message } => normal("Ready", "Reconcile", message.clone()),
            Transition::BecameDegraded { reason, message } => Event {
                type_: EventType::Warning,
                reason: "Degraded".into(),
                note: Some(format!("{reason}: {message}")),
                action: "Reconcile".into(),
                secondary: None,
            },
            Transition::Recovered => normal(
                "Recovered",
                "Reconcile",
                "the desired revision is no longer stuck".into(),
            ),
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
        let reasons: Vec<String> = decision_events(&decisions)
            .into_iter()
            .map(|e| e.reason)
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
        let events = transition_events(&t);
        assert_eq!(events[1].type_, EventType::Warning);
        assert_eq!(events[1].note.as_deref(), Some("Unschedulable: no gpu"));
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["Ready", "Degraded", "Recovered"]);
    }
}
