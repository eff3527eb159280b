//! Status as a value: computed from the rollout plan and the observed pods,
//! merged with the previous status so condition transition times only move
//! when a condition's status changes. The caller writes it only when it
//! differs from what is stored, so a converged object gets no status write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{InferenceServiceStatus, Phase, QualityStatus, ReplicaStatus, RevisionStatus};
use crate::observe::{count, Observed, PodView};
use crate::pool::Rotation;
use crate::reason::Reason;
use crate::rollout::{HoldCause, Progress, RolloutPlan};

/// Condition types.
pub mod condition {
    /// The stable revision serves with all its pods ready and at least one
    /// pod in rotation.
    pub const READY: &str = "Ready";
    /// A revision change or drain is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// The desired revision cannot become ready, or nothing serves.
    pub const DEGRADED: &str = "Degraded";
    /// The spec's revision was rolled back (quality gate or abort); present
    /// only while it is remembered (`status.rollout.rolledBackRevision`).
    pub const ROLLED_BACK: &str = "RolledBack";
}

/// What status is computed from.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// The decision of this pass.
    pub plan: &'a RolloutPlan,
    /// The children as they are, and the stored status.
    pub observed: &'a Observed,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The time to stamp on conditions that change.
    pub now: Time,
    /// The quality gate's results of this pass, if it ran (otherwise the
    /// stored ones stay).
    pub quality: Option<QualityStatus>,
}

struct Cond {
    type_: &'static str,
    status: bool,
    reason: String,
    message: String,
}

impl Cond {
    fn new(type_: &'static str, status: bool, reason: Reason, message: String) -> Self {
        Self {
            type_,
            status,
            reason: reason.as_str().to_owned(),
            message,
        }
    }
}

fn live(p: &&PodView) -> bool {
    p.ready && !p.terminating
}

/// Ready pods in rotation whose revision has traffic: the pods the router
/// can send to.
fn routable(plan: &RolloutPlan, obs: &Observed) -> i32 {
    let weighted = |rev: &str| {
        plan.traffic
            .iter()
            .any(|t| t.revision == rev && t.weight > 0)
    };
    count(
        obs.pods
            .iter()
            .filter(live)
            .filter(|p| p.rotation == Some(Rotation::Serving) && weighted(&p.revision)),
    )
}

fn ready_condition(plan: &RolloutPlan, obs: &Observed, routable: i32) -> Cond {
    let Some(s) = plan.stable.as_deref() else {
        return Cond::new(
            condition::READY,
            false,
            Reason::NoStableRevision,
            "no revision has all its pods ready yet".into(),
        );
    };
    let n = obs.ready_of(s);
    let desired = plan.replicas_of(s);
    if routable == 0 {
        return Cond::new(
            condition::READY,
            false,
            Reason::NoServingPods,
            format!("revision {s} has {n}/{desired} pods ready but none in rotation"),
        );
    }
    if n >= desired {
        Cond::new(
            condition::READY,
            true,
            Reason::RevisionReady,
            format!("revision {s} serves with {n}/{desired} pods ready"),
        )
    } else {
        Cond::new(
            condition::READY,
            false,
            Reason::ReplicasNotReady,
            format!("revision {s} has {n}/{desired} pods ready"),
        )
    }
}

/// Phase, Progressing and (when something is wrong) Degraded.
fn progress_conditions(plan: &RolloutPlan, routable: i32) -> (Phase, Cond, Option<Cond>) {
    let target = plan
        .canary
        .clone()
        .or_else(|| plan.stable.clone())
        .or_else(|| plan.traffic.first().map(|t| t.revision.clone()))
        .unwrap_or_default();
    let progressing = |reason, message| Cond::new(condition::PROGRESSING, true, reason, message);
    match &plan.progress {
        Progress::Settled if routable == 0 => (
            Phase::Degraded,
            Cond::new(
                condition::PROGRESSING,
                false,
                Reason::RolloutComplete,
                format!("revision {target} is rolled out"),
            ),
            Some(Cond::new(
                condition::DEGRADED,
                true,
                Reason::NoServingPods,
                format!(
                    "no ready pod of revision {target} is in rotation (warm pods are not): requests get 503"
                ),
            )),
        ),
        Progress::Settled => (
            Phase::Ready,
            Cond::new(
                condition::PROGRESSING,
                false,
                Reason::RolloutComplete,
                format!("revision {target} is rolled out"),
            ),
            None,
        ),
        Progress::WaitingForPods { ready, desired } => (
            if plan.stable.is_some() {
                Phase::Progressing
            } else {
                Phase::Pending
            },
            progressing(
                Reason::RevisionRollingOut,
                format!("revision {target}: {ready}/{desired} pods ready"),
            ),
            None,
        ),
        Progress::HandingOff { from } => (
            Phase::Progressing,
            progressing(
                Reason::RevisionRollingOut,
                format!("revision {target} is ready; it takes the traffic from {from} after the hand-off"),
            ),
            None,
        ),
        Progress::Draining { revisions, pods } => (
            Phase::Progressing,
            progressing(
                Reason::DrainingPreviousRevisions,
                format!(
                    "revision {target} takes all traffic; {pods} pods of {} handing off or draining",
                    revisions.join(", ")
                ),
            ),
            None,
        ),
        Progress::Held { cause, from } => (
            Phase::Progressing,
            progressing(
                cause.reason(),
                format!(
                    "revision {target} is ready and held: {}; {from} keeps the traffic",
                    held_why(cause, &target, from)
                ),
            ),
            None,
        ),
        Progress::Canary { from, step } => {
            let at = format!(
                "canary {target} at step {}/{} with {}% of the traffic, {from} keeps {}%",
                step.step,
                step.of,
                step.weight,
                100 - step.weight
            );
            let (reason, message) = match &step.held {
                None => (Reason::RevisionRollingOut, at),
                Some(cause) => (
                    cause.reason(),
                    format!("{at}; held: {}", held_why(cause, &target, from)),
                ),
            };
            (Phase::Progressing, progressing(reason, message), None)
        }
        Progress::RolledBack {
            revision, pods, ..
        } => (
            if *pods > 0 {
                Phase::RollingBack
            } else {
                Phase::RolledBack
            },
            Cond::new(
                condition::PROGRESSING,
                false,
                Reason::RolloutRolledBack,
                format!(
                    "revision {revision} was rolled back; {} serves{}",
                    plan.stable.as_deref().unwrap_or("the stable revision"),
                    if *pods > 0 {
                        format!(" ({pods} pods of {revision} draining)")
                    } else {
                        String::new()
                    }
                ),
            ),
            None,
        ),
        Progress::Stuck(problem) => (
            Phase::Degraded,
            Cond::new(
                condition::PROGRESSING,
                false,
                Reason::RolloutStalled,
                format!("revision {target} cannot become ready"),
            ),
            Some(Cond {
                type_: condition::DEGRADED,
                status: true,
                // The kubelet's or scheduler's own word.
                reason: problem.reason.clone(),
                message: problem.message.clone(),
            }),
        ),
    }
}

/// Why a ready target (or a canary at a step) does not move on.
fn held_why(cause: &HoldCause, target: &str, from: &str) -> String {
    match cause {
        HoldCause::Paused => "the rollout is paused (spec.rollout.paused)".to_owned(),
        HoldCause::QualityRunning => format!("the golden set runs against {target} and {from}"),
        HoldCause::QualityUnknown { message, .. } => {
            format!("the quality gate cannot decide: {message}")
        }
        HoldCause::AnalysisUnknown { why } => format!(
            "analysis cannot decide ({why}); the step holds until it can, never promoting blind"
        ),
        HoldCause::CanaryScaling { ready, desired } => format!(
            "{target} scales to {desired} pods for the next step ({ready} ready); \
             the weight rises once they are ready"
        ),
    }
}

/// Computes the status of this pass.
pub fn compute(input: &StatusInput<'_>) -> InferenceServiceStatus {
    let plan = input.plan;
    let obs = input.observed;
    let previous = &obs.status;
    let live_pods = || obs.pods.iter().filter(live);
    let replicas = ReplicaStatus {
        serving: count(live_pods().filter(|p| p.rotation == Some(Rotation::Serving))),
        warm: count(live_pods().filter(|p| p.rotation == Some(Rotation::Warm))),
        ready: count(live_pods()),
        desired: plan.total_replicas(),
    };
    let routable = routable(plan, obs);
    let ready_cond = ready_condition(plan, obs, routable);
    let (phase, progressing, degraded) = progress_conditions(plan, routable);
    let degraded = degraded.unwrap_or_else(|| {
        Cond::new(
            condition::DEGRADED,
            false,
            Reason::AsExpected,
            "no pod of the desired revision is stuck".into(),
        )
    });
    let rolled_back = plan.memory.rolled_back_revision.as_ref().map(|rev| {
        let reason = plan.memory.rollback_reason.as_deref().unwrap_or_default();
        Cond {
            type_: condition::ROLLED_BACK,
            status: true,
            reason: reason.to_owned(),
            message: format!(
                "revision {rev} was rolled back: {}",
                plan.memory.rollback_message.as_deref().unwrap_or(reason)
            ),
        }
    });
    let conditions = [ready_cond, progressing, degraded]
        .into_iter()
        .chain(rolled_back)
        .map(|c| merge_condition(c, input))
        .collect();
    let revisions = plan
        .revisions
        .iter()
        .map(|(rev, p)| RevisionStatus {
            name: rev.clone(),
            role: p.role,
            desired: p.replicas,
            ready: obs.ready_of(rev),
            pods: obs.existing_of(rev),
        })
        .collect();

    InferenceServiceStatus {
        phase,
        observed_generation: input.generation,
        stable_revision: plan.stable.clone(),
        canary_revision: plan.canary.clone(),
        canary_weight: plan.canary.as_ref().map(|c| {
            plan.traffic
                .iter()
                .find(|t| &t.revision == c)
                .map_or(0, |t| t.weight)
        }),
        traffic: plan.traffic.clone(),
        rollout: plan.memory.clone(),
        autoscaling: previous.autoscaling.clone(),
        capacity: previous.capacity.clone(),
        ready: Some(format!("{}/{}", replicas.ready, replicas.desired)),
        serving_warm: Some(format!("{}/{}", replicas.serving, replicas.warm)),
        replicas,
        ttft_p99: previous.ttft_p99.clone(),
        firing: previous.firing.clone(),
        utilization: previous.utilization.clone(),
        selector: previous.selector.clone(),
        revisions,
        alarms: previous.alarms.clone(),
        quality: input.quality.clone().or_else(|| previous.quality.clone()),
        conditions,
    }
}

/// Keeps the previous transition time when the condition's status did not
/// change.
fn merge_condition(c: Cond, input: &StatusInput<'_>) -> Condition {
    let status = if c.status { "True" } else { "False" };
    let last_transition_time = input
        .observed
        .status
        .conditions
        .iter()
        .find(|p| p.type_ == c.type_ && p.status == status)
        .map_or_else(|| input.now.clone(), |p| p.last_transition_time.clone());
    Condition {
        type_: c.type_.to_owned(),
        status: status.to_owned(),
        reason: c.reason,
        message: c.message,
        observed_generation: input.generation,
        last_transition_time,
    }
}

/// A status change worth an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The Ready condition turned true.
    BecameReady { message: String },
    /// The Degraded condition turned true.
    BecameDegraded { reason: String, message: String },
    /// The Degraded condition turned false again.
    Recovered,
}

fn cond<'a>(s: &'a InferenceServiceStatus, t: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == t)
}

fn is_true(s: &InferenceServiceStatus, t: &str) -> bool {
    cond(s, t).is_some_and(|c| c.status == "True")
}

/// The condition changes between two statuses.
pub fn transitions(old: &InferenceServiceStatus, new: &InferenceServiceStatus) -> Vec<Transition> {
    let mut out = Vec::new();
    if is_true(new, condition::READY) && !is_true(old, condition::READY) {
        out.push(Transition::BecameReady {
            message: cond(new, condition::READY)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        });
    }
    match (
        is_true(old, condition::DEGRADED),
        is_true(new, condition::DEGRADED),
    ) {
        (false, true) => {
            let c = cond(new, condition::DEGRADED);
            out.push(Transition::BecameDegraded {
                reason: c.map(|c| c.reason.clone()).unwrap_or_default(),
                message: c.map(|c| c.message.clone()).unwrap_or_default(),
            });
        }
        (true, false) => out.push(Transition::Recovered),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::autoscale::ScalePlan;
    use crate::observe::build::{deployment, observed, pod};
    use crate::observe::PodProblem;
    use crate::rollout::{decide, ManualControl, QualityVerdict, RolloutInput};
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn status_with(
        target: &str,
        scale: ScalePlan,
        obs: &Observed,
        prev: &InferenceServiceStatus,
        now: i64,
    ) -> InferenceServiceStatus {
        let obs = Observed {
            status: prev.clone(),
            ..obs.clone()
        };
        let plan = decide(&RolloutInput {
            target,
            scale,
            observed: &obs,
            now: at(now).0,
            handoff: Duration::ZERO,
            steps: &[],
            unknown_timeout: None,
            manual: &ManualControl::default(),
            quality: &QualityVerdict::NotConfigured,
            verdicts: &std::collections::BTreeMap::new(),
        });
        compute(&StatusInput {
            plan: &plan,
            observed: &obs,
            generation: Some(3),
            now: at(now),
            quality: None,
        })
    }

    fn status_of(
        target: &str,
        obs: &Observed,
        prev: &InferenceServiceStatus,
        now: i64,
    ) -> InferenceServiceStatus {
        let scale = ScalePlan {
            serving: 2,
            warm: 0,
            draining: 0,
        };
        status_with(target, scale, obs, prev, now)
    }

    fn settled() -> Observed {
        observed(
            vec![deployment("r1", 2, 1)],
            vec![pod("a", "r1", true), pod("b", "r1", true)],
        )
    }

    /// The status a converged r1 has stored.
    fn stable_r1() -> InferenceServiceStatus {
        let first = status_of("r1", &settled(), &Default::default(), 10);
        status_of("r1", &settled(), &first, 10)
    }

    #[test]
    fn settled_service_is_ready_with_printer_fields() {
        let s = stable_r1();
        assert_eq!(s.phase, Phase::Ready);
        assert_eq!(s.ready.as_deref(), Some("2/2"));
        assert_eq!(s.serving_warm.as_deref(), Some("2/0"));
        assert_eq!(s.stable_revision.as_deref(), Some("r1"));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.rollout.step_started_at, Some(at(10)));
        assert!(is_true(&s, condition::READY));
        assert!(!is_true(&s, condition::PROGRESSING));
        assert!(!is_true(&s, condition::DEGRADED));
    }

    #[test]
    fn recomputing_a_converged_status_gives_an_equal_value() {
        let first = stable_r1();
        let second = status_of("r1", &settled(), &first, 99);
        assert_eq!(first, second, "a later pass must not change anything");
    }

    #[test]
    fn first_rollout_is_pending_until_pods_are_ready() {
        let obs = observed(vec![deployment("r1", 2, 1)], vec![pod("a", "r1", true)]);
        let s = status_of("r1", &obs, &Default::default(), 10);
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(s.traffic[0].revision, "r1");
        assert_eq!(s.canary_revision, None);
        assert!(is_true(&s, condition::PROGRESSING));
    }

    #[test]
    fn stuck_canary_is_degraded_with_the_pod_reason_while_stable_stays_ready() {
        let mut stuck = pod("c", "r2", false);
        stuck.problem = Some(PodProblem {
            reason: "Unschedulable".into(),
            message: "Insufficient nvidia.com/gpu".into(),
        });
        let obs = observed(
            vec![deployment("r1", 2, 1), deployment("r2", 2, 2)],
            vec![pod("a", "r1", true), pod("b", "r1", true), stuck],
        );
        let prev = stable_r1();
        let s = status_of("r2", &obs, &prev, 20);
        assert_eq!(s.phase, Phase::Degraded);
        assert_eq!(s.canary_revision.as_deref(), Some("r2"));
        assert_eq!(s.canary_weight, Some(0));
        let d = cond(&s, condition::DEGRADED).unwrap();
        assert_eq!(d.reason, "Unschedulable");
        assert!(d.message.contains("nvidia.com/gpu"));
        assert!(is_true(&s, condition::READY));
        // Ready did not change, so its transition time is kept.
        assert_eq!(
            cond(&s, condition::READY).unwrap().last_transition_time,
            at(10)
        );
        assert_eq!(
            transitions(&prev, &s),
            vec![Transition::BecameDegraded {
                reason: "Unschedulable".into(),
                message: "pod c: Insufficient nvidia.com/gpu".into()
            }]
        );
    }

    #[test]
    fn ready_transition_is_reported_once() {
        let s1 = status_of("r1", &settled(), &Default::default(), 10);
        assert!(matches!(
            transitions(&Default::default(), &s1)[..],
            [Transition::BecameReady { .. }]
        ));
        let s2 = status_of("r1", &settled(), &s1, 20);
        assert!(transitions(&s1, &s2).is_empty());
    }

    /// Issue 13, fault 9: `replicas {min: 0, warm: 1}` said Ready while the
    /// router answered 503.
    #[test]
    fn no_pod_in_rotation_is_never_ready() {
        let warm_only = ScalePlan {
            serving: 0,
            warm: 1,
            draining: 0,
        };
        let mut only = pod("a", "r1", true);
        only.rotation = Some(Rotation::Warm);
        let obs = observed(vec![deployment("r1", 1, 1)], vec![only]);
        let first = status_with("r1", warm_only, &obs, &Default::default(), 10);
        let s = status_with("r1", warm_only, &obs, &first, 20);
        assert_eq!(s.stable_revision.as_deref(), Some("r1"));
        assert_eq!(s.serving_warm.as_deref(), Some("0/1"));
        assert_ne!(s.phase, Phase::Ready);
        assert_eq!(s.phase, Phase::Degraded);
        let ready = cond(&s, condition::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NoServingPods")
        );
        assert_eq!(
            cond(&s, condition::DEGRADED).unwrap().reason,
            "NoServingPods"
        );

        // No pods at all (min 0, warm 0) is not Ready either.
        let none = status_with(
            "r1",
            ScalePlan::ZERO,
            &observed(vec![deployment("r1", 0, 1)], vec![]),
            &Default::default(),
            10,
        );
        assert!(!is_true(&none, condition::READY));
        assert_ne!(none.phase, Phase::Ready);
    }
}
