//! The rollout state machine: which revisions run, at what size, and which
//! one gets the traffic.
//!
//! Until canary analysis exists the policy is: a new revision is brought up
//! beside the stable one while the stable one keeps 100% of the traffic;
//! once every pod of the new revision is ready it takes 100% (promotion);
//! every other revision is then scaled to zero and its pods drain. A spec
//! change in the middle of a rollout simply makes a newer target: the
//! unfinished canary is not in {stable, target}, so it goes to zero too and
//! nothing is left half-scaled.
//!
//! The only remembered state is `status.stableRevision`; everything else is
//! derived from what is observed, so a restarted operator reaches the same
//! decisions.

use std::collections::BTreeMap;

use crate::crd::{RevisionRole, TrafficTarget};
use crate::observe::{Observed, PodProblem};

/// How many revisions at zero are kept for a quick rollback.
pub const RETIRED_KEPT: usize = 2;

/// What the decision needs.
#[derive(Clone, Debug)]
pub struct RolloutInput<'a> {
    /// The revision of the current spec.
    pub target: &'a str,
    /// Pods each active revision should have.
    pub desired_replicas: i32,
    /// `status.stableRevision` as last written.
    pub previous_stable: Option<&'a str>,
    /// The children as they are.
    pub observed: &'a Observed,
}

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
    /// The target is stable; older revisions still have pods draining.
    Draining {
        /// Revisions still holding pods.
        revisions: Vec<String>,
        /// Their pods, terminating ones included.
        pods: i32,
    },
    /// The target cannot become ready: the reason comes from its pods.
    Stuck(PodProblem),
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
    /// An old revision's Deployment is deleted (beyond the kept history).
    Pruned { revision: String },
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutPlan {
    /// Replica count per revision that should have a Deployment.
    pub replicas: BTreeMap<String, i32>,
    /// Revisions whose Deployments are deleted.
    pub prune: Vec<String>,
    /// The revision that serves.
    pub stable: Option<String>,
    /// The revision being brought up, if any.
    pub canary: Option<String>,
    /// The traffic split for status.
    pub traffic: Vec<TrafficTarget>,
    /// What each revision with a Deployment is doing.
    pub roles: BTreeMap<String, RevisionRole>,
    /// Where things stand.
    pub progress: Progress,
    /// Event-worthy decisions.
    pub decisions: Vec<Decision>,
}

/// True when a revision has a Deployment at the desired size and all of
/// those pods are ready.
fn fully_ready(observed: &Observed, revision: &str, desired: i32) -> bool {
    observed
        .deployments
        .get(revision)
        .is_some_and(|d| d.replicas == desired)
        && observed.ready_of(revision) >= desired
}

/// Decides the next step.
pub fn decide(input: &RolloutInput<'_>) -> RolloutPlan {
    let obs = input.observed;
    let target = input.target.to_owned();
    let desired = input.desired_replicas;
    let target_ready = fully_ready(obs, &target, desired);
    // A stable revision whose Deployment vanished is gone; start over from
    // the target.
    let previous = input
        .previous_stable
        .filter(|s| obs.deployments.contains_key(*s))
        .map(str::to_owned);

    let mut decisions = Vec::new();
    let (stable, canary) = match previous {
        Some(s) if s == target => (Some(s), None),
        Some(s) if target_ready => {
            decisions.push(Decision::Promoted {
                from: Some(s),
                to: target.clone(),
            });
            (Some(target.clone()), None)
        }
        Some(s) => (Some(s), Some(target.clone())),
        None if target_ready => {
            decisions.push(Decision::Promoted {
                from: None,
                to: target.clone(),
            });
            (Some(target.clone()), None)
        }
        None => (None, None),
    };
    let serving = stable.clone().unwrap_or_else(|| target.clone());
    let traffic = vec![TrafficTarget {
        revision: serving.clone(),
        weight: 100,
    }];

    // Sizes: the target and the serving revision run; the rest go to zero.
    let mut replicas = BTreeMap::new();
    replicas.insert(target.clone(), desired);
    replicas.insert(serving.clone(), desired);
    let mut retired: Vec<(&str, &str)> = Vec::new();
    for (rev, d) in &obs.deployments {
        if !replicas.contains_key(rev) {
            if d.replicas == 0 && obs.existing_of(rev) == 0 {
                retired.push((d.created.as_str(), rev.as_str()));
            }
            replicas.insert(rev.clone(), 0);
        }
    }
    // Keep the newest few retired revisions; prune the rest.
    retired.sort();
    let excess = retired.len().saturating_sub(RETIRED_KEPT);
    let prune: Vec<String> = retired[..excess]
        .iter()
        .map(|(_, r)| (*r).to_owned())
        .collect();
    for r in &prune {
        replicas.remove(r);
        decisions.push(Decision::Pruned {
            revision: r.clone(),
        });
    }

    for (rev, want) in &replicas {
        match obs.deployments.get(rev) {
            None => decisions.push(Decision::RevisionCreated {
                revision: rev.clone(),
                replicas: *want,
            }),
            Some(d) if d.replicas != *want => decisions.push(Decision::Scaled {
                revision: rev.clone(),
                from: d.replicas,
                to: *want,
            }),
            Some(_) => {}
        }
    }

    let mut roles = BTreeMap::new();
    for rev in replicas.keys() {
        let role = if Some(rev) == stable.as_ref() {
            RevisionRole::Stable
        } else if Some(rev) == canary.as_ref() || *rev == target {
            RevisionRole::Canary
        } else if obs.existing_of(rev) > 0 {
            RevisionRole::Retiring
        } else {
            RevisionRole::Retired
        };
        roles.insert(rev.clone(), role);
    }

    let draining: Vec<String> = obs
        .pods
        .iter()
        .filter(|p| p.revision != target && p.revision != serving)
        .map(|p| p.revision.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let progress = if !target_ready {
        match target_problem(obs, &target) {
            Some(problem) => Progress::Stuck(problem),
            None => Progress::WaitingForPods {
                ready: obs.ready_of(&target),
                desired,
            },
        }
    } else if !draining.is_empty() || stable.as_deref() != Some(target.as_str()) {
        let pods = draining.iter().map(|r| obs.existing_of(r)).sum();
        Progress::Draining {
            revisions: draining,
            pods,
        }
    } else {
        Progress::Settled
    };

    RolloutPlan {
        replicas,
        prune,
        stable,
        canary,
        traffic,
        roles,
        progress,
        decisions,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::build::{deployment, observed, pod};

    fn decide_with(target: &str, stable: Option<&str>, obs: &Observed) -> RolloutPlan {
        decide(&RolloutInput {
            target,
            desired_replicas: 2,
            previous_stable: stable,
            observed: obs,
        })
    }

    #[test]
    fn first_revision_is_created_and_gets_all_traffic() {
        let plan = decide_with("r1", None, &Observed::default());
        assert_eq!(plan.replicas, BTreeMap::from([("r1".into(), 2)]));
        assert_eq!(
            plan.traffic,
            vec![TrafficTarget {
                revision: "r1".into(),
                weight: 100
            }]
        );
        assert_eq!(plan.stable, None);
        assert_eq!(
            plan.decisions,
            vec![Decision::RevisionCreated {
                revision: "r1".into(),
                replicas: 2
            }]
        );
        assert_eq!(
            plan.progress,
            Progress::WaitingForPods {
                ready: 0,
                desired: 2
            }
        );
    }

    #[test]
    fn first_revision_becomes_stable_when_all_pods_ready() {
        let obs = observed(
            vec![deployment("r1", 2, "t1")],
            vec![pod("a", "r1", true), pod("b", "r1", true)],
        );
        let plan = decide_with("r1", None, &obs);
        assert_eq!(plan.stable.as_deref(), Some("r1"));
        assert_eq!(plan.progress, Progress::Settled);
        assert_eq!(
            plan.decisions,
            vec![Decision::Promoted {
                from: None,
                to: "r1".into()
            }]
        );
    }

    #[test]
    fn converged_service_decides_nothing() {
        let obs = observed(
            vec![deployment("r1", 2, "t1")],
            vec![pod("a", "r1", true), pod("b", "r1", true)],
        );
        let plan = decide_with("r1", Some("r1"), &obs);
        assert!(plan.decisions.is_empty());
        assert_eq!(plan.progress, Progress::Settled);
    }

    #[test]
    fn new_revision_waits_beside_stable_which_keeps_all_traffic() {
        let obs = observed(
            vec![deployment("r1", 2, "t1"), deployment("r2", 2, "t2")],
            vec![
                pod("a", "r1", true),
                pod("b", "r1", true),
                pod("c", "r2", true),
                pod("d", "r2", false),
            ],
        );
        let plan = decide_with("r2", Some("r1"), &obs);
        assert_eq!(plan.stable.as_deref(), Some("r1"));
        assert_eq!(plan.canary.as_deref(), Some("r2"));
        assert_eq!(
            plan.traffic,
            vec![TrafficTarget {
                revision: "r1".into(),
                weight: 100
            }]
        );
        assert_eq!(plan.replicas["r1"], 2);
        assert_eq!(plan.replicas["r2"], 2);
        assert_eq!(
            plan.progress,
            Progress::WaitingForPods {
                ready: 1,
                desired: 2
            }
        );
    }

    #[test]
    fn ready_revision_is_promoted_and_the_old_one_scaled_to_zero() {
        let obs = observed(
            vec![deployment("r1", 2, "t1"), deployment("r2", 2, "t2")],
            vec![
                pod("a", "r1", true),
                pod("b", "r1", true),
                pod("c", "r2", true),
                pod("d", "r2", true),
            ],
        );
        let plan = decide_with("r2", Some("r1"), &obs);
        assert_eq!(plan.stable.as_deref(), Some("r2"));
        assert_eq!(plan.canary, None);
        assert_eq!(
            plan.traffic,
            vec![TrafficTarget {
                revision: "r2".into(),
                weight: 100
            }]
        );
        assert_eq!(plan.replicas["r1"], 0);
        assert_eq!(plan.roles["r1"], RevisionRole::Retiring);
        assert!(plan.decisions.contains(&Decision::Promoted {
            from: Some("r1".into()),
            to: "r2".into()
        }));
        assert!(plan.decisions.contains(&Decision::Scaled {
            revision: "r1".into(),
            from: 2,
            to: 0
        }));
        // Not done while the old pods still exist.
        assert_eq!(
            plan.progress,
            Progress::Draining {
                revisions: vec!["r1".into()],
                pods: 2
            }
        );
    }

    #[test]
    fn rollout_is_done_only_after_old_pods_are_gone() {
        let mut terminating = pod("a", "r1", false);
        terminating.terminating = true;
        let obs = observed(
            vec![deployment("r1", 0, "t1"), deployment("r2", 2, "t2")],
            vec![terminating, pod("c", "r2", true), pod("d", "r2", true)],
        );
        let plan = decide_with("r2", Some("r2"), &obs);
        assert!(matches!(plan.progress, Progress::Draining { pods: 1, .. }));
        let obs = observed(
            vec![deployment("r1", 0, "t1"), deployment("r2", 2, "t2")],
            vec![pod("c", "r2", true), pod("d", "r2", true)],
        );
        let plan = decide_with("r2", Some("r2"), &obs);
        assert_eq!(plan.progress, Progress::Settled);
        assert_eq!(plan.roles["r1"], RevisionRole::Retired);
        assert!(plan.decisions.is_empty());
    }

    #[test]
    fn update_mid_rollout_scales_the_unfinished_canary_to_zero() {
        let obs = observed(
            vec![deployment("r1", 2, "t1"), deployment("r2", 2, "t2")],
            vec![
                pod("a", "r1", true),
                pod("b", "r1", true),
                pod("c", "r2", false),
            ],
        );
        let plan = decide_with("r3", Some("r1"), &obs);
        assert_eq!(plan.stable.as_deref(), Some("r1"));
        assert_eq!(plan.canary.as_deref(), Some("r3"));
        assert_eq!(plan.replicas["r2"], 0);
        assert_eq!(plan.replicas["r3"], 2);
        assert_eq!(plan.traffic[0].revision, "r1");
    }

    #[test]
    fn stuck_target_reports_the_pod_reason_and_keeps_stable_serving() {
        let mut stuck = pod("c", "r2", false);
        stuck.problem = Some(PodProblem {
            reason: "ErrImagePull".into(),
            message: "image not found".into(),
        });
        let obs = observed(
            vec![deployment("r1", 2, "t1"), deployment("r2", 2, "t2")],
            vec![pod("a", "r1", true), pod("b", "r1", true), stuck],
        );
        let plan = decide_with("r2", Some("r1"), &obs);
        assert_eq!(plan.traffic[0].revision, "r1");
        let Progress::Stuck(p) = plan.progress else {
            panic!("not stuck")
        };
        assert_eq!(p.reason, "ErrImagePull");
        assert!(p.message.contains("pod c"));
    }

    #[test]
    fn old_retired_revisions_beyond_the_kept_history_are_pruned() {
        let obs = observed(
            vec![
                deployment("r1", 0, "t1"),
                deployment("r2", 0, "t2"),
                deployment("r3", 0, "t3"),
                deployment("r4", 2, "t4"),
            ],
            vec![pod("a", "r4", true), pod("b", "r4", true)],
        );
        let plan = decide_with("r4", Some("r4"), &obs);
        assert_eq!(plan.prune, vec!["r1".to_owned()]);
        assert!(!plan.replicas.contains_key("r1"));
        assert_eq!(plan.replicas["r2"], 0);
    }

    #[test]
    fn vanished_stable_deployment_restarts_from_the_target() {
        let plan = decide_with("r2", Some("r1"), &Observed::default());
        assert_eq!(plan.stable, None);
        assert_eq!(plan.traffic[0].revision, "r2");
        assert!(!plan.replicas.contains_key("r1"));
    }
}
