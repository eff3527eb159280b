//! The rollout: which revisions run, at what size, and which one gets the
//! traffic.
//!
//! A new revision is brought up beside the stable one while the stable one
//! keeps 100% of the traffic; once every pod of the new revision is ready
//! and in rotation it walks `spec.rollout.steps` as the canary (each
//! step's weight for the step's pause, moving on only when the canary's
//! alarm verdict is Ok: see [`steps`]); after the last step it takes 100%
//! (promotion) and every other revision scales to zero and drains.
//! Without steps it takes 100% as soon as it is ready. A spec change in
//! the middle of a rollout makes a newer target: the unfinished canary is
//! neither stable nor target, so it goes to zero too and the newer one
//! starts before step 1.
//!
//! Hand-off, so the data plane never has a gap while the router's views of
//! pods and of weights lag each other: weight rises only onto pods that
//! have been ready and in rotation for the hand-off time, and a revision
//! that lost its weight keeps its pods until the hand-off time has passed
//! since the new split was written (`status.rollout.stepStartedAt`).
//!
//! Memory: `status.stableRevision` and `status.rollout` (read from
//! [`Observed::status`]); everything else is derived from what is observed,
//! so a restarted operator or a new leader reaches the same decisions.
//!
//! Before a target replaces a stable revision it passes the [`gate`]: the
//! user's [`manual`] control (pause, promote, abort, retry) and the quality
//! gate's verdict; a failed gate or an abort rolls the target back (no
//! traffic, scaled to zero, remembered in `status.rollout` so it is not
//! tried again until the spec changes or the user retries it).
//!
//! One pass is [`decide`]: [`steps`] (who holds the traffic: hold, promote
//! or roll back, after the [`gate`]), [`sizing`] (pods per revision),
//! [`history`] (retire and prune), [`progress`] (where things stand).

pub mod gate;
mod history;
pub mod manual;
mod progress;
mod sizing;
mod steps;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

pub use gate::{HoldCause, QualityVerdict, RollbackCause, Verdict};
pub use history::RETIRED_KEPT;
pub use manual::ManualControl;
pub use progress::Progress;
pub use steps::CanaryStep;

use crate::alarm::Verdict as AlarmVerdict;
use crate::autoscale::ScalePlan;
use crate::crd::{RevisionRole, RolloutStatus, RolloutStep, TrafficTarget};
use crate::observe::Observed;

/// How often a pass looks again while the golden set runs.
pub const QUALITY_POLL: Duration = Duration::from_secs(2);

/// What the decision needs.
#[derive(Clone, Debug)]
pub struct RolloutInput<'a> {
    /// The revision of the current spec.
    pub target: &'a str,
    /// Serving and warm pods of each revision that takes or may take
    /// traffic (from `autoscale`).
    pub scale: ScalePlan,
    /// The children as they are, and the stored status (the memory).
    pub observed: &'a Observed,
    /// The time of this pass.
    pub now: Timestamp,
    /// How long the router's views are given to catch up around a traffic
    /// change (see the module docs).
    pub handoff: Duration,
    /// `spec.rollout.steps` (empty: promote once ready).
    pub steps: &'a [RolloutStep],
    /// `spec.rollout.analysis.unknownTimeout`: how long an unknown verdict
    /// may hold a step before the rollout fails (`None`: hold and warn).
    pub unknown_timeout: Option<Duration>,
    /// The user's requests of this pass (`spec.rollout.paused` and the
    /// request annotations).
    pub manual: &'a ManualControl,
    /// The quality gate's answer for the target.
    pub quality: &'a QualityVerdict,
    /// The alarm verdict of each judged revision (those with ready pods)
    /// over the latest signals: Ok, Firing (roll back) or Unknown (hold).
    /// Read for the canary while it is in a step.
    pub verdicts: &'a BTreeMap<String, AlarmVerdict>,
}

/// One revision in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevisionPlan {
    /// What the rollout does with it.
    pub role: RevisionRole,
    /// Its Deployment's size.
    pub replicas: i32,
    /// Serving and warm counts for the pool, for revisions whose pods the
    /// pool assigns to rotation (not for ones on their way out).
    pub pool: Option<ScalePlan>,
}

/// A decision worth an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A Deployment for a new revision is created.
    RevisionCreated { revision: String, replicas: i32 },
    /// An existing revision's Deployment changes size.
    Scaled {
        revision: String,
        from: i32,
        to: i32,
    },
    /// The target took all traffic from the previous stable revision.
    Promoted { from: Option<String>, to: String },
    /// The target was rolled back before it took the traffic.
    RolledBack {
        /// The rolled-back revision.
        revision: String,
        /// The revision that keeps serving.
        stable: String,
        /// Why.
        cause: RollbackCause,
        /// The gate's or the user's words (category and both scores).
        message: String,
    },
    /// An old revision's Deployment is deleted (beyond the kept history).
    Pruned { revision: String },
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutPlan {
    /// Every revision that keeps a Deployment, with its role and size.
    pub revisions: BTreeMap<String, RevisionPlan>,
    /// Revisions whose Deployments are deleted.
    pub prune: Vec<String>,
    /// The revision that serves.
    pub stable: Option<String>,
    /// The revision being brought up beside the stable one, if any.
    pub canary: Option<String>,
    /// The canary's step, while it walks the steps.
    pub step: Option<CanaryStep>,
    /// The traffic split for status.
    pub traffic: Vec<TrafficTarget>,
    /// The rollout memory to store.
    pub memory: RolloutStatus,
    /// Where things stand.
    pub progress: Progress,
    /// Event-worthy decisions.
    pub decisions: Vec<Decision>,
    /// When a time-based decision (a hand-off) is due, if one is pending.
    pub requeue_after: Option<Duration>,
    /// The gate's verdict on a target beside a stable revision.
    pub gate: Option<Verdict>,
    /// A promote request for the target that waits for its pods: its
    /// annotation stays until the promotion happens.
    pub promote_pending: bool,
}

impl RolloutPlan {
    /// The Deployment size of a revision (zero when it has none).
    pub fn replicas_of(&self, revision: &str) -> i32 {
        self.revisions.get(revision).map_or(0, |r| r.replicas)
    }

    /// Pods all planned Deployments add up to.
    pub fn total_replicas(&self) -> i32 {
        self.revisions
            .values()
            .fold(0i32, |n, r| n.saturating_add(r.replicas))
    }
}

/// Decides the next step.
pub fn decide(input: &RolloutInput<'_>) -> RolloutPlan {
    let step = steps::decide(input);
    let sized = sizing::size(input, &step);
    let mut revisions = sized.revisions;
    let prune = history::prune(input.observed, &mut revisions);
    let progress = progress::of(input, &step, &revisions);

    // A running golden set ends without a watch event: look again soon.
    let quality_wait =
        matches!(step.gate, Some(Verdict::Hold(HoldCause::QualityRunning))).then_some(QUALITY_POLL);
    let promote_pending =
        matches!(step.gate, Some(Verdict::Go { forced: true })) && step.promoted.is_none();
    let mut decisions: Vec<Decision> = step
        .promoted
        .clone()
        .into_iter()
        .chain(step.rolled_back.clone())
        .collect();
    decisions.extend(size_changes(input.observed, &revisions));
    decisions.extend(prune.iter().map(|r| Decision::Pruned {
        revision: r.clone(),
    }));
    RolloutPlan {
        revisions,
        prune,
        stable: step.stable,
        canary: step.canary,
        step: step.step,
        traffic: step.traffic,
        memory: step.memory,
        progress,
        decisions,
        requeue_after: earliest(earliest(step.wait, sized.wait), quality_wait),
        gate: step.gate,
        promote_pending,
    }
}

/// A creation or size change per revision, against what is observed.
fn size_changes<'a>(
    obs: &'a Observed,
    revisions: &'a BTreeMap<String, RevisionPlan>,
) -> impl Iterator<Item = Decision> + 'a {
    revisions
        .iter()
        .filter_map(|(rev, plan)| match obs.deployments.get(rev) {
            None => Some(Decision::RevisionCreated {
                revision: rev.clone(),
                replicas: plan.replicas,
            }),
            Some(d) if d.replicas != plan.replicas => Some(Decision::Scaled {
                revision: rev.clone(),
                from: d.replicas,
                to: plan.replicas,
            }),
            Some(_) => None,
        })
}

/// The sooner of two optional waits.
pub(crate) fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Time from `since` to `now`; `None` when `since` is in the future (a
/// clock ahead of ours), which callers treat as "no wait".
pub(crate) fn elapsed(since: Timestamp, now: Timestamp) -> Option<Duration> {
    Duration::try_from(now.duration_since(since)).ok()
}

/// What is left of `wait` after `since`; `None` when it is over (or the
/// clock that wrote `since` is ahead of ours).
pub(crate) fn remaining(since: Timestamp, now: Timestamp, wait: Duration) -> Option<Duration> {
    let passed = elapsed(since, now)?;
    wait.checked_sub(passed).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests;
