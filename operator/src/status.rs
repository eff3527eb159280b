//! Status as a value: computed from the rollout plan and the observed pods,
//! merged with the previous status so condition transition times only move
//! when a condition's status changes. The caller writes it only when it
//! differs from what is stored, so a converged object gets no status write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{InferenceServiceStatus, Phase, ReplicaStatus, RevisionStatus};
use crate::observe::{count, Observed};
use crate::rollout::{Progress, RolloutPlan};

/// Condition types.
pub mod condition {
    /// The stable revision serves with all its pods ready.
    pub const READY: &str = "Ready";
    /// A revision change or drain is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// The desired revision cannot become ready.
    pub const DEGRADED: &str = "Degraded";
}

/// What status is computed from.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// The decision of this pass.
    pub plan: &'a RolloutPlan,
    /// The children as they are.
    pub observed: &'a Observed,
    /// Pods each active revision should have.
    pub desired_replicas: i32,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The stored status.
    pub previous: &'a InferenceServiceStatus,
    /// The time to stamp on conditions that change.
    pub now: Time,
}

struct Cond {
    type_: &'static str,
    status: bool,
    reason: String,
    message: String,
}

/// Computes the status of this pass.
pub fn compute(input: &StatusInput<'_>) -> InferenceServiceStatus {
    let plan = input.plan;
    let obs = input.observed;
    let desired = input.desired_replicas;
    let live = || obs.pods.iter().filter(|p| p.ready && !p.terminating);
    let replicas = ReplicaStatus {
        serving: count(live().filter(|p| !p.warm)),
        warm: count(live().filter(|p| p.warm)),
        ready: count(live()),
        desired: plan.replicas.values().sum(),
    };

    let stable_ready = plan.stable.as_deref().map(|s| obs.ready_of(s));
    let ready_cond = match (&plan.stable, stable_ready) {
        (Some(s), Some(n)) if n >= desired => Cond {
            type_: condition::READY,
            status: true,
            reason: "RevisionReady".into(),
            message: format!("revision {s} serves with {n}/{desired} pods ready"),
        },
        (Some(s), Some(n)) => Cond {
            type_: condition::READY,
            status: false,
            reason: "ReplicasNotReady".into(),
            message: format!("revision {s} has {n}/{desired} pods ready"),
        },
        _ => Cond {
            type_: condition::READY,
            status: false,
            reason: "NoStableRevision".into(),
            message: "no revision has all its pods ready yet".into(),
        },
    };
    let target = plan
        .canary
        .clone()
        .or_else(|| plan.stable.clone())
        .or_else(|| plan.traffic.first().map(|t| t.revision.clone()))
        .unwrap_or_default();
    let (phase, progressing, degraded) = match &plan.progress {
        Progress::Settled => (
            Phase::Ready,
            Cond {
                type_: condition::PROGRESSING,
                status: false,
                reason: "RolloutComplete".into(),
                message: format!("revision {target} is rolled out"),
            },
            None,
        ),
        Progress::WaitingForPods { ready, desired } => (
            if plan.stable.is_some() {
                Phase::Progressing
            } else {
                Phase::Pending
            },
            Cond {
                type_: condition::PROGRESSING,
                status: true,
                reason: "RevisionRollingOut".into(),
                message: format!("revision {target}: {ready}/{desired} pods ready"),
            },
            None,
        ),
        Progress::Draining { revisions, pods } => (
            Phase::Progressing,
            Cond {
                type_: condition::PROGRESSING,
                status: true,
                reason: "DrainingPreviousRevisions".into(),
                message: format!(
                    "revision {target} takes all traffic; {pods} pods of {} draining",
                    revisions.join(", ")
                ),
            },
            None,
        ),
        Progress::Stuck(problem) => (
            Phase::Degraded,
            Cond {
                type_: condition::PROGRESSING,
                status: false,
                reason: "RolloutStalled".into(),
                message: format!("revision {target} cannot become ready"),
            },
            Some(Cond {
                type_: condition::DEGRADED,
                status: true,
                reason: problem.reason.clone(),
                message: problem.message.clone(),
            }),
        ),
    };
    let degraded = degraded.unwrap_or(Cond {
        type_: condition::DEGRADED,
        status: false,
        reason: "AsExpected".into(),
        message: "no pod of the desired revision is stuck".into(),
    });

    let conditions = [ready_cond, progressing, degraded]
        .into_iter()
        .map(|c| merge_condition(c, input))
        .collect();
    let revisions = plan
        .roles
        .iter()
        .map(|(rev, role)| RevisionStatus {
            name: rev.clone(),
            role: *role,
            desired: plan.replicas.get(rev).copied().unwrap_or(0),
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
        step: None,
        ready: Some(format!("{}/{}", replicas.ready, replicas.desired)),
        serving_warm: Some(format!("{}/{}", replicas.serving, replicas.warm)),
        replicas,
        ttft_p99: input.previous.ttft_p99.clone(),
        revisions,
        alarms: input.previous.alarms.clone(),
        conditions,
    }
}

/// Keeps the previous transition time when the condition's status did not
/// change.
fn merge_condition(c: Cond, input: &StatusInput<'_>) -> Condition {
    let status = if c.status { "True" } else { "False" };
    let last_transition_time = input
        .previous
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
    use super::*;
    use crate::observe::build::{deployment, observed, pod};
    use crate::observe::PodProblem;
    use crate::rollout::{decide, RolloutInput};
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn status_of(
        target: &str,
        stable: Option<&str>,
        obs: &Observed,
        prev: &InferenceServiceStatus,
        now: i64,
    ) -> InferenceServiceStatus {
        let plan = decide(&RolloutInput {
            target,
            desired_replicas: 2,
            previous_stable: stable,
            observed: obs,
        });
        compute(&StatusInput {
            plan: &plan,
            observed: obs,
            desired_replicas: 2,
            generation: Some(3),
            previous: prev,
            now: at(now),
        })
    }

    fn settled() -> Observed {
        observed(
            vec![deployment("r1", 2, "t1")],
            vec![pod("a", "r1", true), pod("b", "r1", true)],
        )
    }

    #[test]
    fn settled_service_is_ready_with_printer_fields() {
        let s = status_of("r1", Some("r1"), &settled(), &Default::default(), 10);
        assert_eq!(s.phase, Phase::Ready);
        assert_eq!(s.ready.as_deref(), Some("2/2"));
        assert_eq!(s.serving_warm.as_deref(), Some("2/0"));
        assert_eq!(s.stable_revision.as_deref(), Some("r1"));
        assert_eq!(s.observed_generation, Some(3));
        assert!(is_true(&s, condition::READY));
        assert!(!is_true(&s, condition::PROGRESSING));
        assert!(!is_true(&s, condition::DEGRADED));
    }

    #[test]
    fn recomputing_a_converged_status_gives_an_equal_value() {
        let first = status_of("r1", Some("r1"), &settled(), &Default::default(), 10);
        let second = status_of("r1", Some("r1"), &settled(), &first, 99);
        assert_eq!(first, second, "a later pass must not change anything");
    }

    #[test]
    fn first_rollout_is_pending_until_pods_are_ready() {
        let obs = observed(vec![deployment("r1", 2, "t1")], vec![pod("a", "r1", true)]);
        let s = status_of("r1", None, &obs, &Default::default(), 10);
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(s.traffic[0].revision, "r1");
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
            vec![deployment("r1", 2, "t1"), deployment("r2", 2, "t2")],
            vec![pod("a", "r1", true), pod("b", "r1", true), stuck],
        );
        let prev = status_of("r1", Some("r1"), &settled(), &Default::default(), 10);
        let s = status_of("r2", Some("r1"), &obs, &prev, 20);
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
        let s1 = status_of("r1", None, &settled(), &Default::default(), 10);
        assert!(matches!(
            transitions(&Default::default(), &s1)[..],
            [Transition::BecameReady { .. }]
        ));
        let s2 = status_of("r1", Some("r1"), &settled(), &s1, 20);
        assert!(transitions(&s1, &s2).is_empty());
    }
}
