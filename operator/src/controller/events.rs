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
