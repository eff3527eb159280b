use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::observe::build::{deployment, observed, pod};
use crate::observe::{PodProblem, PodView};

const HANDOFF: Duration = Duration::from_secs(2);
/// "Now" in these tests: long after the builders' pods became ready.
const NOW: i64 = 1_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("valid time")
}

fn with_stable(mut obs: Observed, stable: Option<&str>) -> Observed {
    obs.status.stable_revision = stable.map(str::to_owned);
    if let Some(s) = stable {
        obs.status.traffic = vec![TrafficTarget {
            revision: s.into(),
            weight: 100,
        }];
    }
    obs
}

fn decide_at(target: &str, obs: &Observed, now: i64) -> RolloutPlan {
    decide(&RolloutInput {
        target,
        scale: ScalePlan {
            serving: 2,
            warm: 0,
            draining: 0,
        },
        observed: obs,
        now: at(now),
        handoff: HANDOFF,
        steps: &[],
        unknown_timeout: None,
        manual: &ManualControl::default(),
        quality: &QualityVerdict::NotConfigured,
        verdicts: &BTreeMap::new(),
    })
}

fn decide_with(target: &str, stable: Option<&str>, obs: &Observed) -> RolloutPlan {
    decide_at(target, &with_stable(obs.clone(), stable), NOW)
}

fn sizes(plan: &RolloutPlan) -> BTreeMap<String, i32> {
    plan.revisions
        .iter()
        .map(|(r, p)| (r.clone(), p.replicas))
        .collect()
}

fn two_ready(rev: &str, names: [&str; 2]) -> Vec<PodView> {
    names.iter().map(|n| pod(n, rev, true)).collect()
}

#[test]
fn first_revision_is_created_starting_and_named_in_traffic() {
    let plan = decide_with("r1", None, &Observed::default());
    assert_eq!(sizes(&plan), BTreeMap::from([("r1".into(), 2)]));
    assert_eq!(
        plan.traffic,
        vec![TrafficTarget {
            revision: "r1".into(),
            weight: 100
        }]
    );
    assert_eq!(plan.stable, None);
    assert_eq!(plan.canary, None);
    // Not a canary: there is nothing beside it.
    assert_eq!(plan.revisions["r1"].role, RevisionRole::Starting);
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
    let obs = observed(vec![deployment("r1", 2, 1)], two_ready("r1", ["a", "b"]));
    let plan = decide_with("r1", None, &obs);
    assert_eq!(plan.stable.as_deref(), Some("r1"));
    assert_eq!(plan.revisions["r1"].role, RevisionRole::Stable);
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
    let obs = observed(vec![deployment("r1", 2, 1)], two_ready("r1", ["a", "b"]));
    let plan = decide_with("r1", Some("r1"), &obs);
    assert!(plan.decisions.is_empty());
    assert_eq!(plan.progress, Progress::Settled);
    assert_eq!(plan.requeue_after, None);
}

#[test]
fn new_revision_waits_beside_stable_which_keeps_all_traffic() {
    let obs = observed(
        vec![deployment("r1", 2, 1), deployment("r2", 2, 2)],
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
    assert_eq!(plan.revisions["r2"].role, RevisionRole::Canary);
    assert_eq!(plan.traffic[0].revision, "r1");
    assert_eq!(plan.traffic.len(), 1);
    assert_eq!(
        sizes(&plan),
        BTreeMap::from([("r1".into(), 2), ("r2".into(), 2)])
    );
    assert_eq!(
        plan.progress,
        Progress::WaitingForPods {
            ready: 1,
            desired: 2
        }
    );
}

#[test]
fn ready_revision_is_promoted_and_the_old_one_holds_its_pods_for_the_handoff() {
    let mut pods = two_ready("r1", ["a", "b"]);
    pods.extend(two_ready("r2", ["c", "d"]));
    let obs = with_stable(
        observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods),
        Some("r1"),
    );
    let plan = decide_at("r2", &obs, NOW);
    assert_eq!(plan.stable.as_deref(), Some("r2"));
    assert_eq!(plan.canary, None);
    assert_eq!(plan.traffic[0].revision, "r2");
    assert_eq!(plan.memory.step_started_at, Some(Time(at(NOW))));
    // The weight fell this pass: r1 keeps its pods until the router has
    // had the hand-off time to see the new split.
    assert_eq!(plan.replicas_of("r1"), 2);
    assert_eq!(plan.revisions["r1"].role, RevisionRole::Retiring);
    assert_eq!(plan.requeue_after, Some(HANDOFF));
    assert_eq!(
        plan.decisions,
        vec![Decision::Promoted {
            from: Some("r1".into()),
            to: "r2".into()
        }]
    );
    assert!(matches!(plan.progress, Progress::Draining { pods: 2, .. }));

    // The next pass, within the hand-off: still held.
    let mut obs = obs;
    obs.status.stable_revision = plan.stable.clone();
    obs.status.traffic = plan.traffic.clone();
    obs.status.rollout = plan.memory.clone();
    let held = decide_at("r2", &obs, NOW + 1);
    assert_eq!(held.replicas_of("r1"), 2);
    assert_eq!(held.requeue_after, Some(Duration::from_secs(1)));
    assert!(held.decisions.is_empty());

    // After it: to zero.
    let after = decide_at("r2", &obs, NOW + 2);
    assert_eq!(after.replicas_of("r1"), 0);
    assert_eq!(after.requeue_after, None);
    assert_eq!(
        after.decisions,
        vec![Decision::Scaled {
            revision: "r1".into(),
            from: 2,
            to: 0
        }]
    );
    assert_eq!(
        after.progress,
        Progress::Draining {
            revisions: vec!["r1".into()],
            pods: 2
        }
    );
}

#[test]
fn weight_rises_only_onto_pods_in_rotation_for_the_handoff() {
    let fresh = |name: &str| PodView {
        ready_since: Some(at(NOW - 1)),
        ..pod(name, "r2", true)
    };
    let mut pods = two_ready("r1", ["a", "b"]);
    pods.extend([fresh("c"), fresh("d")]);
    let obs = observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods);
    let plan = decide_with("r2", Some("r1"), &obs);
    assert_eq!(plan.traffic[0].revision, "r1", "promoted onto fresh pods");
    assert_eq!(plan.progress, Progress::HandingOff { from: "r1".into() });
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(1)));

    // Ready pods not labelled serving are not in rotation yet.
    let mut pods = two_ready("r1", ["a", "b"]);
    pods.extend(two_ready("r2", ["c", "d"]));
    pods[3].rotation = None;
    let obs = observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods);
    let plan = decide_with("r2", Some("r1"), &obs);
    assert_eq!(
        plan.traffic[0].revision, "r1",
        "promoted onto unlabelled pods"
    );

    // A kubelet clock ahead of ours does not hold the rollout.
    let ahead = |name: &str| PodView {
        ready_since: Some(at(NOW + 60)),
        ..pod(name, "r2", true)
    };
    let mut pods = two_ready("r1", ["a", "b"]);
    pods.extend([ahead("c"), ahead("d")]);
    let obs = observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods);
    assert_eq!(
        decide_with("r2", Some("r1"), &obs).traffic[0].revision,
        "r2"
    );
}

#[test]
fn rollout_is_done_only_after_old_pods_are_gone() {
    let mut terminating = pod("a", "r1", false);
    terminating.terminating = true;
    let mut pods = vec![terminating];
    pods.extend(two_ready("r2", ["c", "d"]));
    let obs = observed(vec![deployment("r1", 0, 1), deployment("r2", 2, 2)], pods);
    let plan = decide_with("r2", Some("r2"), &obs);
    assert!(matches!(plan.progress, Progress::Draining { pods: 1, .. }));
    let obs = observed(
        vec![deployment("r1", 0, 1), deployment("r2", 2, 2)],
        two_ready("r2", ["c", "d"]),
    );
    let plan = decide_with("r2", Some("r2"), &obs);
    assert_eq!(plan.progress, Progress::Settled);
    assert_eq!(plan.revisions["r1"].role, RevisionRole::Retired);
    assert!(plan.decisions.is_empty());
}

#[test]
fn update_mid_rollout_scales_the_unfinished_canary_to_zero() {
    let mut pods = two_ready("r1", ["a", "b"]);
    pods.push(pod("c", "r2", false));
    let obs = observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods);
    let plan = decide_with("r3", Some("r1"), &obs);
    assert_eq!(plan.stable.as_deref(), Some("r1"));
    assert_eq!(plan.canary.as_deref(), Some("r3"));
    assert_eq!(plan.replicas_of("r2"), 0);
    assert_eq!(plan.replicas_of("r3"), 2);
    assert_eq!(plan.traffic[0].revision, "r1");
}

#[test]
fn stuck_target_reports_the_pod_reason_and_keeps_stable_serving() {
    let mut stuck = pod("c", "r2", false);
    stuck.problem = Some(PodProblem {
        reason: "ErrImagePull".into(),
        message: "image not found".into(),
    });
    let mut pods = two_ready("r1", ["a", "b"]);
    pods.push(stuck);
    let obs = observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods);
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
            deployment("r1", 0, 1),
            deployment("r2", 0, 2),
            deployment("r3", 0, 3),
            deployment("r4", 2, 4),
        ],
        two_ready("r4", ["a", "b"]),
    );
    let plan = decide_with("r4", Some("r4"), &obs);
    assert_eq!(plan.prune, vec!["r1".to_owned()]);
    assert!(!plan.revisions.contains_key("r1"));
    assert_eq!(plan.replicas_of("r2"), 0);
    assert_eq!(
        plan.decisions,
        vec![Decision::Pruned {
            revision: "r1".into()
        }]
    );
}

#[test]
fn retired_history_is_ordered_by_creation_time_not_by_name() {
    let obs = observed(
        vec![
            deployment("a-newest", 0, 30),
            deployment("b-oldest", 0, 10),
            deployment("c-middle", 0, 20),
            deployment("r4", 2, 40),
        ],
        two_ready("r4", ["a", "b"]),
    );
    let plan = decide_with("r4", Some("r4"), &obs);
    assert_eq!(plan.prune, vec!["b-oldest".to_owned()]);
}

#[test]
fn vanished_stable_deployment_restarts_from_the_target() {
    let plan = decide_with("r2", Some("r1"), &Observed::default());
    assert_eq!(plan.stable, None);
    assert_eq!(plan.traffic[0].revision, "r2");
    assert!(!plan.revisions.contains_key("r1"));
}

#[test]
fn warm_pods_count_toward_the_revision_size() {
    let obs = Observed::default();
    let plan = decide(&RolloutInput {
        target: "r1",
        scale: ScalePlan {
            serving: 2,
            warm: 1,
            draining: 0,
        },
        observed: &obs,
        now: at(NOW),
        handoff: HANDOFF,
        steps: &[],
        unknown_timeout: None,
        manual: &ManualControl::default(),
        quality: &QualityVerdict::NotConfigured,
        verdicts: &BTreeMap::new(),
    });
    assert_eq!(plan.replicas_of("r1"), 3);
    assert_eq!(
        plan.revisions["r1"].pool,
        Some(ScalePlan {
            serving: 2,
            warm: 1,
            draining: 0,
        })
    );
}

#[test]
fn a_restarted_operator_resumes_the_handoff_from_status() {
    // Status says the split moved 1 s ago; a fresh process (no memory but
    // status) keeps the old pods for the rest of the hand-off.
    let mut pods = two_ready("r1", ["a", "b"]);
    pods.extend(two_ready("r2", ["c", "d"]));
    let mut obs = with_stable(
        observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods),
        Some("r2"),
    );
    obs.status.rollout.step_started_at = Some(Time(at(NOW - 1)));
    let plan = decide_at("r2", &obs, NOW);
    assert_eq!(plan.replicas_of("r1"), 2);
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(1)));
    assert!(plan.decisions.is_empty());
}

// The gate: manual control and the quality gate before a promotion.

fn decide_gated(
    target: &str,
    obs: &Observed,
    manual: &ManualControl,
    quality: &QualityVerdict,
) -> RolloutPlan {
    decide(&RolloutInput {
        target,
        scale: ScalePlan {
            serving: 2,
            warm: 0,
            draining: 0,
        },
        observed: obs,
        now: at(NOW),
        handoff: HANDOFF,
        steps: &[],
        unknown_timeout: None,
        manual,
        quality,
        verdicts: &BTreeMap::new(),
    })
}

/// r1 stable with 2 ready pods, r2 ready beside it.
fn canary_ready() -> Observed {
    let mut pods = two_ready("r1", ["a", "b"]);
    pods.extend(two_ready("r2", ["c", "d"]));
    with_stable(
        observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods),
        Some("r1"),
    )
}

fn asked(action: manual::Action, rev: &str) -> ManualControl {
    ManualControl {
        paused: false,
        decisions: vec![manual::Decision::Apply {
            action,
            revision: rev.into(),
        }],
        consumed: vec![action.annotation()],
    }
}

fn failed_gate() -> QualityVerdict {
    QualityVerdict::Decided(crate::quality::Gate::Fail(
        "category `facts` scored 0.40 on canary r2 and 1.00 on stable r1, below minScore 0.90"
            .into(),
    ))
}

#[test]
fn a_ready_target_holds_while_the_golden_set_runs_and_stable_keeps_the_traffic() {
    let obs = canary_ready();
    let plan = decide_gated(
        "r2",
        &obs,
        &ManualControl::default(),
        &QualityVerdict::Running,
    );
    assert_eq!(plan.traffic[0].revision, "r1");
    assert_eq!(plan.canary.as_deref(), Some("r2"));
    assert_eq!(plan.replicas_of("r2"), 2, "the canary keeps its pods");
    assert!(plan.decisions.is_empty(), "{:?}", plan.decisions);
    assert!(matches!(
        plan.progress,
        Progress::Held {
            cause: HoldCause::QualityRunning,
            ..
        }
    ));
    assert_eq!(plan.requeue_after, Some(QUALITY_POLL));
}

#[test]
fn a_failed_quality_gate_rolls_the_canary_back_to_zero_and_remembers_why() {
    let obs = canary_ready();
    let plan = decide_gated("r2", &obs, &ManualControl::default(), &failed_gate());
    assert_eq!(plan.stable.as_deref(), Some("r1"));
    assert_eq!(plan.canary, None);
    assert_eq!(plan.traffic, obs.status.traffic, "r1 keeps 100%");
    // The canary never had weight: no hand-off to wait for.
    assert_eq!(plan.replicas_of("r2"), 0);
    assert_eq!(plan.revisions["r2"].role, RevisionRole::Retiring);
    assert_eq!(plan.replicas_of("r1"), 2);
    assert_eq!(plan.memory.rolled_back_revision.as_deref(), Some("r2"));
    assert_eq!(
        plan.memory.rollback_reason.as_deref(),
        Some("QualityGateFailed")
    );
    assert!(plan
        .memory
        .rollback_message
        .as_deref()
        .is_some_and(|m| m.contains("category `facts`")));
    assert!(plan.decisions.iter().any(|d| matches!(d,
        Decision::RolledBack { revision, stable, cause: RollbackCause::QualityGate, .. }
            if revision == "r2" && stable == "r1")));
    assert!(matches!(
        plan.progress,
        Progress::RolledBack { pods: 2, .. }
    ));

    // The next pass: the rollback is remembered, even once the gate's
    // result is gone and no run is under way; r2 stays at zero.
    let mut next = obs.clone();
    next.status.rollout = plan.memory.clone();
    next.deployments.get_mut("r2").expect("r2").replicas = 0;
    next.pods.retain(|p| p.revision != "r2");
    let again = decide_gated(
        "r2",
        &next,
        &ManualControl::default(),
        &QualityVerdict::NotStarted,
    );
    assert_eq!(again.replicas_of("r2"), 0);
    assert_eq!(again.traffic[0].revision, "r1");
    assert!(again.decisions.is_empty(), "{:?}", again.decisions);
    assert_eq!(again.memory, plan.memory);
    assert!(matches!(
        again.progress,
        Progress::RolledBack { pods: 0, .. }
    ));

    // A retry clears the memory and the canary comes up again.
    let retried = decide_gated(
        "r2",
        &next,
        &asked(manual::Action::Retry, "r2"),
        &QualityVerdict::NotStarted,
    );
    assert_eq!(retried.memory.rolled_back_revision, None);
    assert_eq!(retried.memory.rollback_reason, None);
    assert_eq!(retried.replicas_of("r2"), 2);
    assert_eq!(retried.canary.as_deref(), Some("r2"));

    // A spec change is a new try: r3 is not held by r2's rollback.
    let newer = decide_gated(
        "r3",
        &next,
        &ManualControl::default(),
        &QualityVerdict::NotConfigured,
    );
    assert_eq!(newer.memory.rolled_back_revision, None);
    assert_eq!(newer.canary.as_deref(), Some("r3"));
}

#[test]
fn abort_rolls_back_even_before_the_canary_is_ready() {
    let mut pods = two_ready("r1", ["a", "b"]);
    pods.push(pod("c", "r2", false));
    let obs = with_stable(
        observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods),
        Some("r1"),
    );
    let plan = decide_gated(
        "r2",
        &obs,
        &asked(manual::Action::Abort, "r2"),
        &QualityVerdict::NotStarted,
    );
    assert_eq!(plan.replicas_of("r2"), 0);
    assert_eq!(plan.memory.rollback_reason.as_deref(), Some("Aborted"));
    assert!(plan.decisions.iter().any(|d| matches!(
        d,
        Decision::RolledBack {
            cause: RollbackCause::Aborted,
            ..
        }
    )));
}

#[test]
fn promote_skips_the_gate_once_ready_and_waits_for_the_pods_otherwise() {
    let obs = canary_ready();
    let plan = decide_gated(
        "r2",
        &obs,
        &asked(manual::Action::Promote, "r2"),
        &QualityVerdict::Running,
    );
    assert_eq!(plan.traffic[0].revision, "r2");
    assert!(!plan.promote_pending);

    let mut pods = two_ready("r1", ["a", "b"]);
    pods.push(pod("c", "r2", false));
    let not_ready = with_stable(
        observed(vec![deployment("r1", 2, 1), deployment("r2", 2, 2)], pods),
        Some("r1"),
    );
    let plan = decide_gated(
        "r2",
        &not_ready,
        &asked(manual::Action::Promote, "r2"),
        &QualityVerdict::NotStarted,
    );
    assert_eq!(plan.traffic[0].revision, "r1");
    assert!(plan.promote_pending, "the request must wait, not vanish");
}

#[test]
fn pause_holds_a_ready_canary_that_would_otherwise_be_promoted() {
    let obs = canary_ready();
    let paused = ManualControl {
        paused: true,
        ..ManualControl::default()
    };
    let plan = decide_gated("r2", &obs, &paused, &QualityVerdict::NotConfigured);
    assert_eq!(plan.traffic[0].revision, "r1");
    assert!(matches!(
        plan.progress,
        Progress::Held {
            cause: HoldCause::Paused,
            ..
        }
    ));
    // Pause and gate do not apply to a first revision: nothing to compare.
    let first = observed(vec![deployment("r1", 2, 1)], two_ready("r1", ["a", "b"]));
    let plan = decide_gated("r1", &first, &paused, &failed_gate());
    assert_eq!(plan.stable.as_deref(), Some("r1"));
    assert_eq!(plan.memory.rolled_back_revision, None);
}

mod canary;
