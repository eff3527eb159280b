//! Canary steps and rollback: every step × verdict × pause combination,
//! the unknown timeout, manual control at a step, a spec change and a
//! restart in the middle of a step.

use super::*;
use crate::alarm::{FiringValues, Verdict as AlarmVerdict};
use crate::crd::GoDuration;
use crate::rollout::manual::{Action, Decision as Request};

/// Two steps: 20% for 10 s, then 50% for 10 s.
fn two_steps() -> Vec<RolloutStep> {
    [(20, 10), (50, 10)]
        .into_iter()
        .map(|(weight, secs)| RolloutStep {
            weight,
            pause: GoDuration::from_secs(secs),
        })
        .collect()
}

/// Stable r1 and canary r2, both fully ready and long in rotation; the
/// stored status has r2 at `step` (None: before step 1) since `started`.
fn at_step(step: Option<i32>, started: i64) -> Observed {
    let obs = with_stable(
        observed(
            vec![deployment("r1", 2, 1), deployment("r2", 2, 2)],
            [two_ready("r1", ["a", "b"]), two_ready("r2", ["c", "d"])].concat(),
        ),
        Some("r1"),
    );
    canary_at(obs, step, started)
}

/// The stored status of canary r2 at `step` of [`two_steps`] since
/// `started`, with that step's split.
fn canary_at(mut obs: Observed, step: Option<i32>, started: i64) -> Observed {
    obs.status.canary_revision = Some("r2".into());
    obs.status.rollout.step = step;
    obs.status.rollout.step_started_at = Some(Time(at(started)));
    if let Some(k) = step {
        let w = two_steps()[usize::try_from(k - 1).unwrap()].weight;
        obs.status.traffic = split(100 - w, w);
    }
    obs
}

fn split(stable: i32, canary: i32) -> Vec<TrafficTarget> {
    vec![
        TrafficTarget {
            revision: "r1".into(),
            weight: stable,
        },
        TrafficTarget {
            revision: "r2".into(),
            weight: canary,
        },
    ]
}

fn only(rev: &str) -> Vec<TrafficTarget> {
    vec![TrafficTarget {
        revision: rev.into(),
        weight: 100,
    }]
}

fn firing() -> AlarmVerdict {
    AlarmVerdict::Firing {
        leaf: "ttftP99".into(),
        values: FiringValues {
            value: Some("1.02s".into()),
            baseline: Some("41ms".into()),
            threshold: Some("600ms".into()),
        },
    }
}

fn unknown() -> AlarmVerdict {
    AlarmVerdict::Unknown {
        why: "ttftP99: 3 requests in the window, 10 needed".into(),
    }
}

struct Case<'a> {
    obs: &'a Observed,
    now: i64,
    verdict: Option<AlarmVerdict>,
    manual: ManualControl,
    unknown_timeout: Option<Duration>,
    /// The stable revision's plan (the canary gets its share of it).
    scale: ScalePlan,
}

impl<'a> Case<'a> {
    fn new(obs: &'a Observed, now: i64, verdict: Option<AlarmVerdict>) -> Self {
        Case {
            obs,
            now,
            verdict,
            manual: ManualControl::default(),
            unknown_timeout: None,
            scale: ScalePlan {
                serving: 2,
                warm: 0,
                draining: 0,
            },
        }
    }

    fn decide(&self) -> RolloutPlan {
        let steps = two_steps();
        let verdicts: BTreeMap<String, AlarmVerdict> = self
            .verdict
            .iter()
            .map(|v| ("r2".to_owned(), v.clone()))
            .chain([("r1".to_owned(), AlarmVerdict::Ok)])
            .collect();
        decide(&RolloutInput {
            target: "r2",
            scale: self.scale,
            observed: self.obs,
            now: at(self.now),
            handoff: HANDOFF,
            steps: &steps,
            unknown_timeout: self.unknown_timeout,
            manual: &self.manual,
            quality: &QualityVerdict::NotConfigured,
            verdicts: &verdicts,
        })
    }
}

/// What a pass did with the canary.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Entered this step now.
    Entered(i32),
    /// Stays at this step; `held`: its pause is over but analysis is
    /// unknown.
    Stays {
        step: i32,
        held: bool,
    },
    Promoted,
    RolledBack,
}

fn outcome(plan: &RolloutPlan, before: &Observed, now: i64) -> Outcome {
    if plan.memory.rolled_back_revision.as_deref() == Some("r2") {
        assert_eq!(plan.traffic, only("r1"), "weight 0 in the same pass");
        assert_eq!(plan.canary, None);
        return Outcome::RolledBack;
    }
    if plan.stable.as_deref() == Some("r2") {
        assert_eq!(plan.traffic, only("r2"));
        assert_eq!(plan.memory.step, None);
        return Outcome::Promoted;
    }
    let step = plan.step.clone().expect("a canary in steps");
    assert_eq!(plan.memory.step, Some(step.step));
    assert_eq!(plan.traffic, split(100 - step.weight, step.weight));
    assert_eq!(
        plan.progress,
        Progress::Canary {
            from: "r1".into(),
            step: step.clone()
        }
    );
    if before.status.rollout.step == Some(step.step) {
        assert_eq!(
            plan.memory.step_started_at, before.status.rollout.step_started_at,
            "a held step keeps its start (the pause resumes after a restart)"
        );
        Outcome::Stays {
            step: step.step,
            held: step.held.is_some(),
        }
    } else {
        assert_eq!(plan.memory.step_started_at, Some(Time(at(now))));
        Outcome::Entered(step.step)
    }
}

/// Every step × verdict × pause: before step 1 the verdict is not read
/// (no canary traffic yet); firing at a step rolls back at once, pause or
/// not; Ok after the pause moves on (promotion after the last step);
/// unknown or missing holds, saying so once the pause is over.
#[test]
fn every_step_verdict_and_pause_combination() {
    let verdicts = [
        ("ok", Some(AlarmVerdict::Ok)),
        ("unknown", Some(unknown())),
        ("missing", None),
        ("firing", Some(firing())),
    ];
    for step in [None, Some(1), Some(2)] {
        for pause_over in [false, true] {
            let now = if pause_over { NOW + 10 } else { NOW + 9 };
            let obs = at_step(step, NOW);
            for (name, v) in &verdicts {
                let plan = Case::new(&obs, now, v.clone()).decide();
                let got = outcome(&plan, &obs, now);
                let want = match (step, *name, pause_over) {
                    (None, _, _) => Outcome::Entered(1),
                    (Some(_), "firing", _) => Outcome::RolledBack,
                    (Some(k), _, false) => Outcome::Stays {
                        step: k,
                        held: false,
                    },
                    (Some(2), "ok", true) => Outcome::Promoted,
                    (Some(k), "ok", true) => Outcome::Entered(k + 1),
                    (Some(k), _, true) => Outcome::Stays {
                        step: k,
                        held: true,
                    },
                };
                assert_eq!(
                    got, want,
                    "step {step:?}, verdict {name}, pause over {pause_over}"
                );
                // Never promoted without an Ok verdict.
                if got == Outcome::Promoted {
                    assert_eq!(*name, "ok");
                }
                if let Outcome::Stays { held: false, .. } = got {
                    assert_eq!(
                        plan.requeue_after,
                        Some(Duration::from_secs(1)),
                        "the pause's end"
                    );
                }
            }
        }
    }
}

#[test]
fn a_rollback_names_the_leaf_and_both_values_and_scales_the_canary_to_zero_after_the_handoff() {
    let obs = at_step(Some(1), NOW);
    let plan = Case::new(&obs, NOW + 3, Some(firing())).decide();
    assert_eq!(plan.memory.rollback_reason.as_deref(), Some("AlarmFiring"));
    let message = plan.memory.rollback_message.clone().unwrap_or_default();
    assert_eq!(
        message,
        "alarm ttftP99 fired on canary r2: 1.02s against stable r1: 41ms (threshold 600ms)"
    );
    assert!(plan.decisions.contains(&Decision::RolledBack {
        revision: "r2".into(),
        stable: "r1".into(),
        cause: RollbackCause::Alarm,
        message: message.clone(),
    }));
    // Its pods stay for the hand-off (the router stops sending first).
    assert_eq!(plan.replicas_of("r2"), 2);
    assert_eq!(plan.replicas_of("r1"), 2);
    assert!(matches!(plan.progress, Progress::RolledBack { .. }));
    assert_eq!(plan.memory.step, None);

    // The next pass, after the hand-off: zero, and it stays out even if
    // the alarm resolves.
    let mut after = obs.clone();
    after.status.traffic = plan.traffic.clone();
    after.status.rollout = plan.memory.clone();
    after.status.canary_revision = None;
    let later = Case::new(&after, NOW + 3 + 2, Some(AlarmVerdict::Ok)).decide();
    assert_eq!(later.replicas_of("r2"), 0);
    assert_eq!(later.traffic, only("r1"));
    assert_eq!(later.memory.rolled_back_revision.as_deref(), Some("r2"));
    assert!(!later
        .decisions
        .iter()
        .any(|d| matches!(d, Decision::RolledBack { .. })));
}

#[test]
fn unknown_holds_and_records_since_when_then_fails_after_the_unknown_timeout() {
    let obs = at_step(Some(1), NOW);
    let mut case = Case::new(&obs, NOW + 12, Some(unknown()));
    case.unknown_timeout = Some(Duration::from_secs(30));
    let first = case.decide();
    assert_eq!(
        first.memory.analysis_unknown_since,
        Some(Time(at(NOW + 12)))
    );
    let held = first.step.clone().and_then(|s| s.held);
    assert!(
        matches!(&held, Some(HoldCause::AnalysisUnknown { why }) if why.contains("10 needed")),
        "{held:?}"
    );
    assert_eq!(first.requeue_after, Some(Duration::from_secs(30)));

    let mut later = obs.clone();
    later.status.rollout = first.memory.clone();
    let mut case = Case::new(&later, NOW + 41, Some(unknown()));
    case.unknown_timeout = Some(Duration::from_secs(30));
    let still = case.decide();
    assert_eq!(still.memory.rolled_back_revision, None);
    assert_eq!(still.requeue_after, Some(Duration::from_secs(1)));
    assert_eq!(
        still.memory.analysis_unknown_since,
        first.memory.analysis_unknown_since
    );

    case.now = NOW + 42;
    let failed = case.decide();
    assert_eq!(
        failed.memory.rollback_reason.as_deref(),
        Some("AnalysisUnavailable")
    );
    assert_eq!(failed.traffic, only("r1"));
    let msg = failed.memory.rollback_message.unwrap_or_default();
    assert!(msg.contains("stayed unknown for 30s at step 1"), "{msg}");

    // Without a timeout it holds for ever; an Ok clears the memory.
    case.unknown_timeout = None;
    case.now = NOW + 100_000;
    assert_eq!(case.decide().memory.rolled_back_revision, None);
    case.verdict = Some(AlarmVerdict::Ok);
    let ok = case.decide();
    assert_eq!(ok.memory.analysis_unknown_since, None);
    assert_eq!(ok.memory.step, Some(2));
}

fn request(action: Action) -> ManualControl {
    ManualControl {
        paused: false,
        decisions: vec![Request::Apply {
            action,
            revision: "r2".into(),
        }],
        consumed: vec![action.annotation()],
    }
}

#[test]
fn at_a_step_pause_holds_the_weight_promote_skips_abort_and_firing_roll_back() {
    let obs = at_step(Some(1), NOW);
    let paused = ManualControl {
        paused: true,
        ..ManualControl::default()
    };
    let mut case = Case::new(&obs, NOW + 60, Some(AlarmVerdict::Ok));
    case.manual = paused.clone();
    let plan = case.decide();
    assert_eq!(
        outcome(&plan, &obs, NOW + 60),
        Outcome::Stays {
            step: 1,
            held: true
        }
    );
    assert_eq!(plan.step.and_then(|s| s.held), Some(HoldCause::Paused));

    case.verdict = Some(firing());
    assert_eq!(outcome(&case.decide(), &obs, NOW + 60), Outcome::RolledBack);

    let mut case = Case::new(&obs, NOW + 1, Some(unknown()));
    case.manual = request(Action::Promote);
    assert_eq!(outcome(&case.decide(), &obs, NOW + 1), Outcome::Promoted);
    case.manual = request(Action::Abort);
    let aborted = case.decide();
    assert_eq!(outcome(&aborted, &obs, NOW + 1), Outcome::RolledBack);
    assert_eq!(aborted.memory.rollback_reason.as_deref(), Some("Aborted"));
}

/// A newer spec mid-canary: the unfinished canary loses its weight (and
/// its pods after the hand-off), the newest revision starts before step 1.
#[test]
fn a_spec_change_mid_canary_drains_it_and_starts_the_new_target_before_step_one() {
    let mut obs = at_step(Some(2), NOW);
    obs.deployments.insert("r3".into(), deployment("r3", 2, 3));
    let plan = decide(&RolloutInput {
        target: "r3",
        scale: ScalePlan {
            serving: 2,
            warm: 0,
            draining: 0,
        },
        observed: &obs,
        now: at(NOW + 1),
        handoff: HANDOFF,
        steps: &two_steps(),
        unknown_timeout: None,
        manual: &ManualControl::default(),
        quality: &QualityVerdict::NotConfigured,
        verdicts: &BTreeMap::from([("r2".to_owned(), AlarmVerdict::Ok)]),
    });
    assert_eq!(plan.traffic, only("r1"));
    assert_eq!(plan.canary.as_deref(), Some("r3"));
    assert_eq!(plan.memory.step, None);
    assert_eq!(plan.revisions["r2"].role, RevisionRole::Retiring);
    assert_eq!(plan.replicas_of("r2"), 2, "kept for the hand-off");
}

/// A new leader (same status, same observation) takes the same decision:
/// the pause resumes with its remaining time, and a promotion already
/// written is not made again.
#[test]
fn a_restart_mid_pause_resumes_the_same_step_and_never_promotes_twice() {
    let obs = at_step(Some(2), NOW);
    let a = Case::new(&obs, NOW + 4, Some(AlarmVerdict::Ok)).decide();
    let b = Case::new(&obs, NOW + 4, Some(AlarmVerdict::Ok)).decide();
    assert_eq!(a, b);
    assert_eq!(a.requeue_after, Some(Duration::from_secs(6)));

    let promoted = Case::new(&obs, NOW + 10, Some(AlarmVerdict::Ok)).decide();
    let mut after = obs.clone();
    after.status.stable_revision = promoted.stable.clone();
    after.status.canary_revision = None;
    after.status.traffic = promoted.traffic.clone();
    after.status.rollout = promoted.memory.clone();
    let again = Case::new(&after, NOW + 11, Some(AlarmVerdict::Ok)).decide();
    assert!(!again
        .decisions
        .iter()
        .any(|d| matches!(d, Decision::Promoted { .. })));
    assert_eq!(again.traffic, only("r2"));
}

/// Stable r1 with four serving pods and one warm; canary r2 with `ready`
/// ready pods (of as many in its Deployment) at `step` since `started`.
fn sized_canary(step: Option<i32>, ready: usize, started: i64) -> Observed {
    let names = ["c", "d", "e", "f", "g"];
    let r2 = i32::try_from(ready).unwrap();
    let obs = with_stable(
        observed(
            vec![deployment("r1", 5, 1), deployment("r2", r2, 2)],
            ["a", "b", "x", "y", "z"]
                .iter()
                .map(|n| pod(n, "r1", true))
                .chain(names[..ready].iter().map(|n| pod(n, "r2", true)))
                .collect(),
        ),
        Some("r1"),
    );
    canary_at(obs, step, started)
}

/// The canary runs its share of the stable's serving pods (20% and 50% of
/// 4: one pod, then two), is sized for the next step when a pause ends,
/// and the weight rises only once those pods are ready; before the
/// promotion it gets the full plan, warm pod included. The stable keeps
/// its full size throughout.
#[test]
fn canary_pods_follow_its_weight_and_the_weight_waits_for_the_pods() {
    let plan_of = |obs: &Observed, now: i64| {
        let mut case = Case::new(obs, now, Some(AlarmVerdict::Ok));
        case.scale = ScalePlan {
            serving: 4,
            warm: 1,
            draining: 0,
        };
        case.decide()
    };
    // Before step 1: created at one pod; with it ready, step 1 (20%).
    let mut fresh = sized_canary(None, 0, NOW);
    fresh.deployments.remove("r2");
    let plan = plan_of(&fresh, NOW);
    assert_eq!(plan.replicas_of("r2"), 1);
    assert_eq!(plan.replicas_of("r1"), 5);
    assert_eq!(plan.traffic, only("r1"));
    let ready1 = sized_canary(None, 1, NOW);
    let plan = plan_of(&ready1, NOW);
    assert_eq!(outcome(&plan, &ready1, NOW), Outcome::Entered(1));
    assert_eq!(plan.replicas_of("r2"), 1);

    // Step 1 (20%) during its pause: still one pod.
    let step1 = sized_canary(Some(1), 1, NOW);
    let plan = plan_of(&step1, NOW + 5);
    assert_eq!(plan.replicas_of("r2"), 1);
    // Pause over, verdict Ok: two pods for 50%, and the step holds until
    // they are ready, saying why; the weight stays at 20%.
    let plan = plan_of(&step1, NOW + 10);
    assert_eq!(plan.replicas_of("r2"), 2);
    assert_eq!(plan.replicas_of("r1"), 5);
    assert_eq!(
        outcome(&plan, &step1, NOW + 10),
        Outcome::Stays {
            step: 1,
            held: true
        }
    );
    assert_eq!(
        plan.step.and_then(|s| s.held),
        Some(HoldCause::CanaryScaling {
            ready: 1,
            desired: 2
        })
    );
    let two = sized_canary(Some(1), 2, NOW);
    let plan = plan_of(&two, NOW + 12);
    assert_eq!(outcome(&plan, &two, NOW + 12), Outcome::Entered(2));
    assert_eq!(plan.replicas_of("r2"), 2);

    // After the last pause: the full plan (4 serving + 1 warm) before the
    // promotion; promoted once all five are ready.
    let step2 = sized_canary(Some(2), 2, NOW);
    let plan = plan_of(&step2, NOW + 10);
    assert_eq!(plan.replicas_of("r2"), 5);
    assert_eq!(plan.traffic, split(50, 50));
    // (the pool has made the fifth pod warm by then)
    let mut full = sized_canary(Some(2), 5, NOW);
    for p in full.pods.iter_mut().filter(|p| p.name == "g") {
        p.rotation = Some(crate::pool::Rotation::Warm);
    }
    let plan = plan_of(&full, NOW + 10);
    assert_eq!(outcome(&plan, &full, NOW + 10), Outcome::Promoted);
    assert_eq!(plan.replicas_of("r2"), 5);
}

#[test]
fn a_canary_share_is_rounded_up_and_never_zero() {
    let full = |serving| ScalePlan {
        serving,
        warm: 2,
        draining: 1,
    };
    let share = |serving, weight| crate::rollout::steps::share(full(serving), weight);
    assert_eq!(share(4, 20).serving, 1);
    assert_eq!(share(4, 50).serving, 2);
    assert_eq!(share(10, 33).serving, 4);
    assert_eq!(share(10, 99).serving, 10);
    assert_eq!(share(0, 1).serving, 1, "min 0: still one pod to judge");
    assert_eq!(share(1, 1).serving, 1);
    assert_eq!(share(i32::MAX, 100).serving, i32::MAX);
    assert_eq!(share(4, 20).warm, 0);
    assert_eq!(share(4, 20).draining, 0);
}
