//! Steps: who holds the traffic after this pass.
//!
//! Today's moves are *hold* (the stable revision keeps 100% while the
//! target comes up), *promote* (the target takes 100%) and *roll back*
//! (the target is kept out and goes to zero). Before a target replaces a
//! stable revision it passes the [`gate`](super::gate): the user's manual
//! control and the quality gate. A first revision has nothing to hand off
//! from: it is named in traffic from the start and becomes stable once all
//! its pods are ready. Canary steps (advance by weight) slot in here as
//! more [`Move`]s.
//!
//! Rising side of the hand-off: the target is promoted only when all its
//! pods are ready, the pool has nothing left to relabel, and its serving
//! pods have been ready for the hand-off time, so a router whose pod view
//! lags its weight view still finds them.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::gate::{self, GateInput, Verdict};
use super::manual::Action;
use super::{elapsed, Decision, RolloutInput};
use crate::crd::{RolloutStatus, TrafficTarget};
use crate::observe::Observed;
use crate::pool::{self, Rotation};

/// What this pass does with the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Move {
    /// A first revision is coming up; it is named in traffic already.
    Start,
    /// The stable revision keeps the traffic (the target, if different,
    /// comes up beside it).
    Hold,
    /// The target takes all traffic and becomes stable.
    Promote,
    /// The target is rolled back: no traffic, scaled to zero, not tried
    /// again until the spec changes or the user retries it.
    RollBack,
}

/// The traffic decision of one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Steps {
    /// What happened.
    pub mv: Move,
    /// The revision that serves after this pass.
    pub stable: Option<String>,
    /// The target while it comes up beside a stable revision.
    pub canary: Option<String>,
    /// The split for status.
    pub traffic: Vec<TrafficTarget>,
    /// The rollout memory to store.
    pub memory: RolloutStatus,
    /// The promotion, for an event.
    pub promoted: Option<Decision>,
    /// The rollback, for an event.
    pub rolled_back: Option<Decision>,
    /// How long until the target may take traffic, if only time holds it.
    pub wait: Option<Duration>,
    /// The gate's verdict on a target beside a stable revision.
    pub gate: Option<Verdict>,
}

/// Whether the target can take traffic now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    /// Pods missing, not ready, or not yet labelled.
    NotReady,
    /// In rotation, but for less than the hand-off time.
    Settling(Duration),
    /// May take traffic.
    Ready,
}

pub(super) fn decide(input: &RolloutInput<'_>) -> Steps {
    let obs = input.observed;
    let target = input.target.to_owned();
    // A stable revision whose Deployment vanished is gone; start over from
    // the target.
    let previous = obs
        .status
        .stable_revision
        .clone()
        .filter(|s| obs.deployments.contains_key(s));
    let readiness = readiness(input);
    let from = previous.clone().filter(|s| *s != target);
    let mut memory = obs.status.rollout.clone();
    // A rolled-back revision is remembered only while it is the target (a
    // spec change is a new try) and until the user retries it.
    let retried = input.manual.apply() == Some((Action::Retry, target.as_str()));
    if retried || memory.rolled_back_revision.as_deref() != Some(target.as_str()) {
        memory.rolled_back_revision = None;
        memory.rollback_reason = None;
        memory.rollback_message = None;
    }
    let verdict = from.as_ref().map(|_| {
        gate::decide(&GateInput {
            target: &target,
            rolled_back: memory.rolled_back_revision.as_deref(),
            manual: input.manual,
            quality: input.quality,
        })
    });
    let (mv, stable, canary, wait) = match (previous, &verdict) {
        (Some(s), _) if s == target => (Move::Hold, Some(s), None, None),
        (Some(s), Some(Verdict::RolledBack)) => (Move::Hold, Some(s), None, None),
        (Some(s), Some(Verdict::RollBack { cause, message })) => {
            memory.rolled_back_revision = Some(target.clone());
            memory.rollback_reason = Some(cause.as_str().to_owned());
            memory.rollback_message = Some(message.clone());
            (Move::RollBack, Some(s), None, None)
        }
        (Some(s), Some(Verdict::Hold(_))) => (Move::Hold, Some(s), Some(target.clone()), None),
        (Some(s), _) => match readiness {
            Readiness::Ready => (Move::Promote, Some(target.clone()), None, None),
            Readiness::Settling(w) => (Move::Hold, Some(s), Some(target.clone()), Some(w)),
            Readiness::NotReady => (Move::Hold, Some(s), Some(target.clone()), None),
        },
        // Nothing to hand off from: all pods ready is enough.
        (None, _) if fully_ready(obs, &target, input.scale.total()) => {
            (Move::Promote, Some(target.clone()), None, None)
        }
        (None, _) => (Move::Start, None, None, None),
    };
    let promoted = (mv == Move::Promote).then(|| Decision::Promoted {
        from: from.clone(),
        to: target.clone(),
    });
    let rolled_back = match (&verdict, &stable) {
        (Some(Verdict::RollBack { cause, message }), Some(s)) => Some(Decision::RolledBack {
            revision: target.clone(),
            stable: s.clone(),
            cause: *cause,
            message: message.clone(),
        }),
        _ => None,
    };
    let serving = stable.clone().unwrap_or_else(|| target.clone());
    let traffic = vec![TrafficTarget {
        revision: serving,
        weight: 100,
    }];
    if traffic != obs.status.traffic {
        memory.step_started_at = Some(Time(input.now));
    }
    Steps {
        mv,
        stable,
        canary,
        traffic,
        memory,
        promoted,
        rolled_back,
        wait,
        gate: verdict,
    }
}

/// True when a revision has a Deployment at the desired size and all of
/// those pods are ready.
pub(super) fn fully_ready(observed: &Observed, revision: &str, desired: i32) -> bool {
    observed
        .deployments
        .get(revision)
        .is_some_and(|d| d.replicas == desired)
        && observed.ready_of(revision) >= desired
}

fn readiness(input: &RolloutInput<'_>) -> Readiness {
    let obs = input.observed;
    if !fully_ready(obs, input.target, input.scale.total())
        || !pool::assign(obs, input.target, input.scale).is_empty()
    {
        return Readiness::NotReady;
    }
    // The newest Ready transition among the pods in rotation; a clock ahead
    // of ours or a missing time counts as long enough.
    let newest = obs
        .pods_of(input.target)
        .filter(|p| p.ready && !p.terminating && p.rotation == Some(Rotation::Serving))
        .filter_map(|p| p.ready_since)
        .max();
    let settled_for = newest.and_then(|t| elapsed(t, input.now));
    match settled_for {
        Some(d) if d < input.handoff => Readiness::Settling(input.handoff - d),
        _ => Readiness::Ready,
    }
}
