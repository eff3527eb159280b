//! Progress: where the rollout stands after this pass, for status and for
//! how soon to look again.

use std::collections::{BTreeMap, BTreeSet};

use super::gate::{HoldCause, Verdict};
use super::steps::{fully_ready, CanaryStep, Steps};
use super::{RevisionPlan, RolloutInput};
use crate::observe::{Observed, PodProblem};

/// Where the rollout stands after this decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The target is stable, ready, and nothing else has pods.
    Settled,
    /// The target's pods are coming up.
    WaitingForPods {
        /// Ready, non-terminating pods of the target.
        ready: i32,
        /// Pods the target should have.
        desired: i32,
    },
    /// The target's pods are ready; its weight rises once they have been
    /// in rotation for the hand-off time.
    HandingOff {
        /// The revision that keeps the traffic meanwhile.
        from: String,
    },
    /// The target is stable; older revisions still have pods, handing off
    /// or draining.
    Draining {
        /// Revisions still holding pods.
        revisions: Vec<String>,
        /// Their pods, terminating ones included.
        pods: i32,
    },
    /// The target cannot become ready: the reason comes from its pods.
    Stuck(PodProblem),
    /// The canary walks `spec.rollout.steps`: it has its step's weight,
    /// the stable revision the rest.
    Canary {
        /// The stable revision.
        from: String,
        /// The step, its weight, and what holds it if anything does.
        step: CanaryStep,
    },
    /// The target is ready but waits at the gate (paused, or the quality
    /// gate is running or undecided); the stable revision keeps the
    /// traffic.
    Held {
        /// Why.
        cause: HoldCause,
        /// The revision that keeps the traffic.
        from: String,
    },
    /// The target was rolled back; the stable revision serves.
    RolledBack {
        /// The rolled-back revision.
        revision: String,
        /// `QualityGateFailed` or `Aborted`.
        reason: String,
        /// The gate's or the user's words.
        message: String,
        /// Its pods still there (draining).
        pods: i32,
    },
}

pub(super) fn of(
    input: &RolloutInput<'_>,
    steps: &Steps,
    revisions: &BTreeMap<String, RevisionPlan>,
) -> Progress {
    let obs = input.observed;
    let target = input.target;
    if matches!(
        steps.gate,
        Some(Verdict::RollBack { .. } | Verdict::RolledBack)
    ) {
        return Progress::RolledBack {
            revision: target.to_owned(),
            reason: steps.memory.rollback_reason.clone().unwrap_or_default(),
            message: steps.memory.rollback_message.clone().unwrap_or_default(),
            pods: obs.existing_of(target),
        };
    }
    let desired = revisions.get(target).map_or(0, |r| r.replicas);
    if !fully_ready(obs, target, desired) {
        match target_problem(obs, target) {
            Some(problem) => return Progress::Stuck(problem),
            // A canary at a step growing for the next one says so in its
            // step (`CanaryScaling`).
            None if steps.step.is_some() => {}
            None => {
                return Progress::WaitingForPods {
                    ready: obs.ready_of(target),
                    desired,
                }
            }
        }
    }
    match &steps.stable {
        Some(s) if s != target => {
            if let Some(step) = &steps.step {
                return Progress::Canary {
                    from: s.clone(),
                    step: step.clone(),
                };
            }
            return match &steps.gate {
                Some(Verdict::Hold(cause)) => Progress::Held {
                    cause: cause.clone(),
                    from: s.clone(),
                },
                _ => Progress::HandingOff { from: s.clone() },
            };
        }
        None => {
            return Progress::WaitingForPods {
                ready: obs.ready_of(target),
                desired,
            }
        }
        Some(_) => {}
    }
    let draining: Vec<String> = obs
        .pods
        .iter()
        .filter(|p| p.revision != target)
        .map(|p| p.revision.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if draining.is_empty() {
        return Progress::Settled;
    }
    let pods = draining.iter().map(|r| obs.existing_of(r)).sum();
    Progress::Draining {
        revisions: draining,
        pods,
    }
}

/// Why the target cannot become ready: the first stuck pod, else a
/// Deployment past its progress deadline.
fn target_problem(obs: &Observed, target: &str) -> Option<PodProblem> {
    obs.pods_of(target)
        .filter(|p| !p.terminating)
        .find_map(|p| {
            p.problem.as_ref().map(|pr| PodProblem {
                reason: pr.reason.clone(),
                message: format!("pod {}: {}", p.name, pr.message),
            })
        })
        .or_else(|| {
            obs.deployments
                .get(target)
                .and_then(|d| d.deadline_exceeded.clone())
                .map(|message| PodProblem {
                    reason: "ProgressDeadlineExceeded".into(),
                    message,
                })
        })
}
