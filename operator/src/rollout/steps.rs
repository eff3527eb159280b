//! Steps: who holds the traffic after this pass.
//!
//! The moves are *start* (a first revision, named in traffic from the
//! start; stable once all its pods are ready), *hold* (the stable revision
//! keeps the traffic, with the canary at its current step's weight if it
//! has one), *step* (the canary enters a step of `spec.rollout.steps`:
//! that step's weight, the rest on the stable revision), *promote* (the
//! target takes 100% and becomes stable) and *roll back* (the target's
//! weight goes to 0 in this pass; it is kept out and goes to zero, not
//! tried again until the spec changes or the user retries it).
//!
//! Before a target replaces a stable revision it passes the
//! [`gate`](super::gate) (manual control, the quality gate, `rollbackOn`
//! firing for a canary in a step). Then it walks the steps: it enters step
//! 1 once ready and handed off; a step ends when its pause has passed since
//! `status.rollout.stepStartedAt` and the canary's alarm verdict is Ok;
//! the next step follows, and after the last one the promotion. An unknown
//! verdict holds the step (never promote blind); with
//! `analysis.unknownTimeout` set, an unknown that lasts that long (since
//! `status.rollout.analysisUnknownSince`) rolls back with reason
//! `AnalysisUnavailable`. Without steps the target is promoted once ready.
//!
//! The step in progress is `status.rollout.step` of the canary named in
//! `status.canaryRevision`; a newer target (a spec change) starts again
//! before step 1. Everything is read from status and the observed
//! objects, so a new leader resumes the same step with the pause's
//! remaining time and cannot promote twice.
//!
//! Rising side of the hand-off: the target takes weight only when all its
//! pods are ready, the pool has nothing left to relabel, and its serving
//! pods have been ready for the hand-off time, so a router whose pod view
//! lags its weight view still finds them.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::gate::{self, GateInput, HoldCause, RollbackCause, Verdict};
use super::manual::Action;
use super::{elapsed, remaining, Decision, RolloutInput};
use crate::alarm::Verdict as AlarmVerdict;
use crate::crd::{RolloutStatus, TrafficTarget};
use crate::observe::Observed;
use crate::pool::{self, Rotation};

/// What this pass does with the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Move {
    /// A first revision is coming up; it is named in traffic already.
    Start,
    /// The stable revision keeps the traffic (the target, if different,
    /// comes up beside it or stays at its step).
    Hold,
    /// The canary enters this step (1-based).
    Step(i32),
    /// The target takes all traffic and becomes stable.
    Promote,
    /// The target is rolled back: no traffic, scaled to zero, not tried
    /// again until the spec changes or the user retries it.
    RollBack,
}

/// Where a canary in steps stands after this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryStep {
    /// The step (1-based).
    pub step: i32,
    /// How many steps there are.
    pub of: i32,
    /// Its share of the traffic.
    pub weight: i32,
    /// Why it does not move on although its pause is over (or what holds
    /// it at the gate).
    pub held: Option<HoldCause>,
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
    /// The canary's step, while it walks the steps.
    pub step: Option<CanaryStep>,
    /// The split for status.
    pub traffic: Vec<TrafficTarget>,
    /// The rollout memory to store.
    pub memory: RolloutStatus,
    /// The promotion, for an event.
    pub promoted: Option<Decision>,
    /// The rollback, for an event.
    pub rolled_back: Option<Decision>,
    /// How long until a time-based decision is due (a hand-off, a step's
    /// pause, an unknown timeout).
    pub wait: Option<Duration>,
    /// The gate's verdict on a target beside a stable revision (a rollback
    /// for an unknown timeout shows here too).
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

/// The outcome of walking the steps for a target the gate lets through.
struct Walk {
    mv: Move,
    /// The step after this pass (`None`: before step 1, or promoted).
    at: Option<i32>,
    held: Option<HoldCause>,
    wait: Option<Duration>,
    /// A rollback for an unknown timeout.
    unavailable: Option<String>,
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
    let count = i32::try_from(input.steps.len()).unwrap_or(i32::MAX);
    // The step this target reached, from the memory of the canary in status.
    let current = obs
        .status
        .rollout
        .step
        .filter(|_| from.is_some() && !retried)
        .filter(|_| obs.status.canary_revision.as_deref() == Some(target.as_str()))
        .filter(|k| *k >= 1 && count > 0)
        .map(|k| k.min(count));
    let alarm = current.map(|_| {
        input
            .verdicts
            .get(&target)
            .cloned()
            .unwrap_or_else(|| AlarmVerdict::Unknown {
                why: format!("no ready pod of {target} to judge"),
            })
    });
    let mut verdict = from.as_ref().map(|s| {
        gate::decide(&GateInput {
            target: &target,
            stable: s,
            rolled_back: memory.rolled_back_revision.as_deref(),
            manual: input.manual,
            quality: input.quality,
            alarm: alarm.as_ref(),
        })
    });
    let mut at = None;
    let mut held = None;
    let (mv, stable, canary, wait) = match (previous, verdict.clone()) {
        (Some(s), _) if s == target => (Move::Hold, Some(s), None, None),
        (Some(s), Some(Verdict::RolledBack)) => (Move::Hold, Some(s), None, None),
        (Some(s), Some(Verdict::RollBack { cause, message })) => {
            memory.rolled_back_revision = Some(target.clone());
            memory.rollback_reason = Some(cause.as_str().to_owned());
            memory.rollback_message = Some(message);
            (Move::RollBack, Some(s), None, None)
        }
        (Some(s), Some(Verdict::Hold(cause))) => {
            at = current;
            held = Some(cause);
            (Move::Hold, Some(s), Some(target.clone()), None)
        }
        (Some(s), Some(Verdict::Go { forced: true })) => match readiness {
            Readiness::Ready => (Move::Promote, Some(target.clone()), None, None),
            Readiness::Settling(w) => {
                at = current;
                (Move::Hold, Some(s), Some(target.clone()), Some(w))
            }
            Readiness::NotReady => {
                at = current;
                (Move::Hold, Some(s), Some(target.clone()), None)
            }
        },
        (Some(s), _) => {
            let w = walk(input, readiness, current, alarm.as_ref(), &mut memory);
            at = w.at;
            held = w.held;
            match w.unavailable {
                Some(message) => {
                    let cause = RollbackCause::AnalysisUnavailable;
                    memory.rolled_back_revision = Some(target.clone());
                    memory.rollback_reason = Some(cause.as_str().to_owned());
                    memory.rollback_message = Some(message.clone());
                    verdict = Some(Verdict::RollBack { cause, message });
                    (Move::RollBack, Some(s), None, None)
                }
                None if w.mv == Move::Promote => (Move::Promote, Some(target.clone()), None, None),
                None => (w.mv, Some(s), Some(target.clone()), w.wait),
            }
        }
        // Nothing to hand off from: all pods ready is enough.
        (None, _) if fully_ready(obs, &target, input.scale.total()) => {
            (Move::Promote, Some(target.clone()), None, None)
        }
        (None, _) => (Move::Start, None, None, None),
    };
    // Only a canary beside the stable revision has a step.
    let at = at.filter(|_| canary.is_some());
    memory.step = at;
    if at.is_none() {
        memory.analysis_unknown_since = None;
    }
    let step = at.map(|k| CanaryStep {
        step: k,
        of: count,
        weight: weight_of(input, k),
        held: held.clone(),
    });
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
    let traffic = match (&step, &canary) {
        (Some(st), Some(c)) => vec![
            TrafficTarget {
                revision: serving,
                weight: 100 - st.weight,
            },
            TrafficTarget {
                revision: c.clone(),
                weight: st.weight,
            },
        ],
        _ => vec![TrafficTarget {
            revision: serving,
            weight: 100,
        }],
    };
    if traffic != obs.status.traffic {
        memory.step_started_at = Some(Time(input.now));
    }
    Steps {
        mv,
        stable,
        canary,
        step,
        traffic,
        memory,
        promoted,
        rolled_back,
        wait,
        gate: verdict,
    }
}

/// The weight of step `k` (1-based), within 1..=99.
fn weight_of(input: &RolloutInput<'_>, k: i32) -> i32 {
    usize::try_from(k - 1)
        .ok()
        .and_then(|i| input.steps.get(i))
        .map_or(0, |s| s.weight)
        .clamp(1, 99)
}

/// Walks the steps for a target the gate lets through: enter step 1 once
/// ready, move on when a step's pause is over and the verdict is Ok,
/// promote after the last; hold on an unknown verdict.
fn walk(
    input: &RolloutInput<'_>,
    readiness: Readiness,
    current: Option<i32>,
    alarm: Option<&AlarmVerdict>,
    memory: &mut RolloutStatus,
) -> Walk {
    let count = i32::try_from(input.steps.len()).unwrap_or(i32::MAX);
    let hold = |at, wait| Walk {
        mv: Move::Hold,
        at,
        held: None,
        wait,
        unavailable: None,
    };
    let Some(k) = current else {
        return match readiness {
            Readiness::Ready if count == 0 => Walk {
                mv: Move::Promote,
                ..hold(None, None)
            },
            Readiness::Ready => Walk {
                mv: Move::Step(1),
                ..hold(Some(1), None)
            },
            Readiness::Settling(w) => hold(None, Some(w)),
            Readiness::NotReady => hold(None, None),
        };
    };
    // Unknown since when (kept across passes and leaders).
    let unknown = match alarm {
        Some(AlarmVerdict::Unknown { why }) => Some(why.clone()),
        _ => None,
    };
    match &unknown {
        Some(_) => {
            memory.analysis_unknown_since.get_or_insert(Time(input.now));
        }
        None => memory.analysis_unknown_since = None,
    }
    let timeout_left = match (input.unknown_timeout, &memory.analysis_unknown_since) {
        (Some(limit), Some(since)) if unknown.is_some() => {
            match remaining(since.0, input.now, limit) {
                None if elapsed(since.0, input.now).is_some() => {
                    return Walk {
                        unavailable: Some(format!(
                            "analysis of canary {} stayed unknown for {} at step {k}: {}",
                            input.target,
                            crate::crd::GoDuration::new(limit),
                            unknown.unwrap_or_default()
                        )),
                        ..hold(Some(k), None)
                    };
                }
                left => left,
            }
        }
        _ => None,
    };
    let pause = usize::try_from(k - 1)
        .ok()
        .and_then(|i| input.steps.get(i))
        .map(|s| Duration::from(s.pause));
    let pause_left = match (pause, &memory.step_started_at) {
        (Some(p), Some(t)) => remaining(t.0, input.now, p),
        _ => None,
    };
    if let Some(left) = pause_left {
        return hold(Some(k), super::earliest(Some(left), timeout_left));
    }
    if !fully_ready(input.observed, input.target, input.scale.total()) {
        return hold(Some(k), timeout_left);
    }
    match unknown {
        Some(why) => Walk {
            held: Some(HoldCause::AnalysisUnknown { why }),
            ..hold(Some(k), timeout_left)
        },
        None if k >= count => Walk {
            mv: Move::Promote,
            ..hold(None, None)
        },
        None => Walk {
            mv: Move::Step(k + 1),
            ..hold(Some(k + 1), None)
        },
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
