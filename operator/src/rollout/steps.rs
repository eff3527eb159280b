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
//!
//! Size: a canary in steps runs the pods its share of the traffic needs
//! ([`share`]: its weight of the stable revision's serving count, rounded
//! up, at least one, no warm pods); the stable revision keeps its full
//! size. When a step's pause is over the canary is sized for the next
//! step (the full plan before the promotion) and the weight rises only
//! once those pods are ready and handed off (`CanaryScaling` while they
//! come up): the canary never carries more than its pods were sized for.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::gate::{self, GateInput, HoldCause, RollbackCause, Verdict};
use super::manual::Action;
use super::{elapsed, remaining, Decision, RolloutInput};
use crate::alarm::Verdict as AlarmVerdict;
use crate::autoscale::ScalePlan;
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
    /// The target's pods while it is the canary (or starts): its share of
    /// the traffic's pods in steps, the full plan otherwise.
    pub target_size: ScalePlan,
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
    /// The canary's size after this pass.
    size: ScalePlan,
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
    let full = input.scale;
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
    // The target's size: the full plan unless it is a canary in steps.
    let mut size = full;
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
            if count > 0 {
                size = share(full, weight_of(input, current.unwrap_or(1)));
            }
            (Move::Hold, Some(s), Some(target.clone()), None)
        }
        (Some(s), Some(Verdict::Go { forced: true })) => match readiness(input, full) {
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
            let w = walk(input, current, alarm.as_ref(), &mut memory);
            at = w.at;
            held = w.held;
            size = w.size;
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
        target_size: size,
    }
}

/// The pods a canary needs for `weight`% of the traffic: that share of
/// the full plan's serving pods, rounded up, at least one; no warm pods
/// (the stable revision keeps the warm pool until the promotion).
pub(super) fn share(full: ScalePlan, weight: i32) -> ScalePlan {
    let base = i64::from(full.serving.max(1));
    let weight = i64::from(weight.clamp(1, 100));
    let serving = (base * weight + 99) / 100;
    ScalePlan {
        serving: i32::try_from(serving.max(1)).unwrap_or(i32::MAX),
        warm: 0,
        draining: 0,
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
    current: Option<i32>,
    alarm: Option<&AlarmVerdict>,
    memory: &mut RolloutStatus,
) -> Walk {
    let count = i32::try_from(input.steps.len()).unwrap_or(i32::MAX);
    let full = input.scale;
    // The size for step `k` (past the last step: the full plan).
    let size_at = |k: i32| {
        if k > count {
            full
        } else {
            share(full, weight_of(input, k))
        }
    };
    let hold = |at, size, wait| Walk {
        mv: Move::Hold,
        size,
        at,
        held: None,
        wait,
        unavailable: None,
    };
    let Some(k) = current else {
        let size = size_at(1);
        return match readiness(input, size) {
            Readiness::Ready if count == 0 => Walk {
                mv: Move::Promote,
                ..hold(None, size, None)
            },
            Readiness::Ready => Walk {
                mv: Move::Step(1),
                ..hold(Some(1), size, None)
            },
            Readiness::Settling(w) => hold(None, size, Some(w)),
            Readiness::NotReady => hold(None, size, None),
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
                        ..hold(Some(k), size_at(k), None)
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
        return hold(
            Some(k),
            size_at(k),
            super::earliest(Some(left), timeout_left),
        );
    }
    // The pause is over: size for the next step (the full plan before the
    // promotion) and move on once those pods are ready and handed off.
    let next = size_at(k + 1);
    if let Some(why) = unknown {
        return Walk {
            held: Some(HoldCause::AnalysisUnknown { why }),
            ..hold(Some(k), next, timeout_left)
        };
    }
    match readiness(input, next) {
        Readiness::NotReady => Walk {
            held: Some(HoldCause::CanaryScaling {
                ready: input.observed.ready_of(input.target),
                desired: next.total(),
            }),
            ..hold(Some(k), next, timeout_left)
        },
        Readiness::Settling(w) => hold(Some(k), next, super::earliest(Some(w), timeout_left)),
        Readiness::Ready if k >= count => Walk {
            mv: Move::Promote,
            ..hold(None, next, None)
        },
        Readiness::Ready => Walk {
            mv: Move::Step(k + 1),
            ..hold(Some(k + 1), next, None)
        },
    }
}

/// True when a revision has a Deployment of at least the desired size and
/// that many of its pods are ready (a canary shrinking with the stable
/// revision's plan is ready before its surplus pods have gone).
pub(super) fn fully_ready(observed: &Observed, revision: &str, desired: i32) -> bool {
    observed
        .deployments
        .get(revision)
        .is_some_and(|d| d.replicas >= desired)
        && observed.ready_of(revision) >= desired
}

/// Whether the target, at `size`, may take (more) traffic now.
fn readiness(input: &RolloutInput<'_>, size: ScalePlan) -> Readiness {
    let obs = input.observed;
    if !fully_ready(obs, input.target, size.total())
        || !pool::assign(obs, input.target, size).is_empty()
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
