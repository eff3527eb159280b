//! Table tests of the autoscaler: one behaviour per test, small builders.

use super::*;
use crate::crd::GoDuration;

const T0: i64 = 1_000_000;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(s).expect("test time")
}

fn bounds(min: i32, max: Option<i32>, warm: i32) -> ReplicasSpec {
    ReplicasSpec { min, max, warm }
}

fn spec(after_secs: u64) -> AutoscalingSpec {
    AutoscalingSpec {
        mode: AutoscalingMode::Builtin,
        target_utilization: 70,
        scale_in_after: GoDuration::from_secs(after_secs),
    }
}

fn pod(name: &str, rotation: Rotation) -> PodState {
    PodState {
        name: name.into(),
        rotation: Some(rotation),
        ready: true,
        terminating: false,
        draining_since: None,
        load: None,
        unschedulable: None,
    }
}

fn serving(name: &str) -> PodState {
    pod(name, Rotation::Serving)
}

fn warm(name: &str) -> PodState {
    pod(name, Rotation::Warm)
}

fn draining(name: &str, since: Option<i64>) -> PodState {
    PodState {
        draining_since: since.map(at),
        ..pod(name, Rotation::Draining)
    }
}

fn loaded(name: &str, load: f64) -> PodState {
    PodState {
        load: Some(load),
        ..serving(name)
    }
}

fn load(executor: f64, kv: f64, queue: f64) -> Signals {
    Signals::Fresh(Load {
        executor: Some(executor),
        kv_cache: Some(kv),
        queue_per_pod: Some(queue),
        ..Load::default()
    })
}

fn memory(serving: i32) -> AutoscalingStatus {
    AutoscalingStatus {
        serving: Some(serving),
        ..AutoscalingStatus::default()
    }
}

fn low_since(serving: i32, since: i64) -> AutoscalingStatus {
    AutoscalingStatus {
        low_since: Some(Time(at(since))),
        ..memory(serving)
    }
}

/// One case: bounds, signals, pods, memory, time.
struct Case {
    replicas: ReplicasSpec,
    autoscaling: AutoscalingSpec,
    signals: Signals,
    pods: Vec<PodState>,
    memory: AutoscalingStatus,
    now: i64,
}

impl Case {
    fn new(replicas: ReplicasSpec, signals: Signals, pods: Vec<PodState>) -> Self {
        Case {
            replicas,
            autoscaling: spec(60),
            signals,
            pods,
            memory: AutoscalingStatus::default(),
            now: T0,
        }
    }

    fn memory(mut self, m: AutoscalingStatus) -> Self {
        self.memory = m;
        self
    }

    fn now(mut self, s: i64) -> Self {
        self.now = s;
        self
    }

    fn run(&self) -> ScaleDecision {
        autoscale(&AutoscaleInput {
            revision: "r1",
            replicas: &self.replicas,
            autoscaling: &self.autoscaling,
            signals: &self.signals,
            pods: &self.pods,
            memory: &self.memory,
            now: at(self.now),
            drain_delay: Duration::from_secs(2),
        })
    }
}

fn plan(serving: i32, warm: i32) -> ScalePlan {
    ScalePlan {
        serving,
        warm,
        draining: 0,
    }
}

fn with_draining(serving: i32, warm: i32, draining: i32) -> ScalePlan {
    ScalePlan {
        serving,
        warm,
        draining,
    }
}

/// Two serving pods and one warm: the usual starting point.
fn pool_2_1() -> Vec<PodState> {
    vec![serving("a"), serving("b"), warm("c")]
}

// --- Bounds only ----------------------------------------------------------

#[test]
fn plan_is_min_serving_and_the_warm_pool() {
    let p = decide(&ScaleInput {
        replicas: &bounds(2, Some(8), 1),
    });
    assert_eq!(p, plan(2, 1));
    assert_eq!(p.total(), 3);
}

#[test]
fn out_of_range_bounds_are_clamped_not_trusted() {
    let p = decide(&ScaleInput {
        replicas: &bounds(5, Some(3), -1),
    });
    assert_eq!(p, plan(3, 0));
    let p = decide(&ScaleInput {
        replicas: &bounds(-2, None, 0),
    });
    assert_eq!(p, ScalePlan::ZERO);
}

#[test]
fn total_saturates_instead_of_overflowing() {
    assert_eq!(plan(i32::MAX, 1).total(), i32::MAX);
    assert_eq!(with_draining(2, 1, 1).total(), 4);
}

// --- Autoscaling off --------------------------------------------------------

#[test]
fn without_a_range_the_plan_is_the_bounds_and_status_is_untouched() {
    // max unset: whatever the signals say, min serving and the pool, no
    // memory written, no condition (today's behaviour).
    for signals in [
        load(1.0, 1.0, 9.0),
        load(0.0, 0.0, 0.0),
        Signals::Unavailable("no Prometheus address is configured".into()),
    ] {
        let d = Case::new(bounds(2, None, 1), signals, pool_2_1()).run();
        assert_eq!(d.plan, plan(2, 1));
        assert_eq!(d.plan.total(), 3);
        assert_eq!(d.memory, AutoscalingStatus::default());
        assert_eq!(d.metrics_unavailable, None);
        assert_eq!(d.cold_start, None);
        assert_eq!(d.event, None);
        assert_eq!(d.drain, None);
    }
}

#[test]
fn a_fresh_object_starts_at_min() {
    let d = Case::new(bounds(2, Some(8), 1), load(0.5, 0.5, 0.5), vec![]).run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(d.memory.serving, Some(2));
    assert_eq!(d.event, None);
    // Nothing is ready yet: the two serving pods are cold-starting.
    assert_eq!(
        d.cold_start,
        Some(ColdStart {
            wanted: 2,
            ready: 0
        })
    );
}

// --- Scale-out --------------------------------------------------------------

#[test]
fn scale_out_above_target_takes_the_warm_pod_first_and_backfills() {
    // 2 serving at 90% against 70%: ceil(2 × 0.9 / 0.7) = 3.
    let d = Case::new(bounds(1, Some(8), 1), load(0.9, 0.3, 0.0), pool_2_1())
        .memory(memory(2))
        .run();
    assert_eq!(d.plan, plan(3, 1));
    // The Deployment grows by one: the warm pool is backfilled.
    assert_eq!(d.plan.total(), 4);
    let e = d.event.expect("a scale-out event");
    assert_eq!(
        (e.direction, e.cause, e.from, e.to, e.from_warm),
        (Direction::Out, Cause::ExecutorUtilization, 2, 3, 1)
    );
    assert!(
        e.message.contains("executor_utilization 90% against 70%"),
        "{}",
        e.message
    );
    assert_eq!(d.memory.serving, Some(3));
    assert_eq!(d.memory.last_scale_at, Some(Time(at(T0))));
    assert_eq!(d.memory.last_scale_reason, Some(e.message));
    // The warm pod covers it: nothing is cold-starting.
    assert_eq!(d.cold_start, None);
}

#[test]
fn scale_out_beyond_the_warm_pool_cold_starts_the_rest() {
    // 3 serving at 100%: ceil(3 / 0.7) = 5; one warm pod, one cold start.
    let pods = vec![serving("a"), serving("b"), serving("c"), warm("d")];
    let d = Case::new(bounds(1, Some(8), 1), load(1.0, 0.2, 0.0), pods)
        .memory(memory(3))
        .run();
    assert_eq!(d.plan, plan(5, 1));
    assert_eq!(d.event.as_ref().map(|e| e.from_warm), Some(1));
    assert_eq!(
        d.cold_start,
        Some(ColdStart {
            wanted: 5,
            ready: 4
        })
    );
}

#[test]
fn without_a_warm_pool_every_added_pod_cold_starts() {
    let d = Case::new(
        bounds(1, Some(8), 0),
        load(1.0, 0.0, 0.0),
        vec![serving("a")],
    )
    .memory(memory(1))
    .run();
    assert_eq!(d.plan, plan(2, 0));
    assert_eq!(d.event.as_ref().map(|e| e.from_warm), Some(0));
    assert_eq!(
        d.cold_start,
        Some(ColdStart {
            wanted: 2,
            ready: 1
        })
    );
}

#[test]
fn scale_out_is_clamped_to_max() {
    let d = Case::new(bounds(1, Some(3), 1), load(1.0, 1.0, 50.0), pool_2_1())
        .memory(memory(2))
        .run();
    assert_eq!(d.plan, plan(3, 1));
    // At max, more load changes nothing.
    let d = Case::new(bounds(1, Some(3), 1), load(1.0, 1.0, 50.0), pool_2_1())
        .memory(memory(3))
        .run();
    assert_eq!(d.plan, plan(3, 1));
    assert_eq!(d.event, None);
}

#[test]
fn inside_the_tolerance_nothing_moves() {
    // 66% against 70% is below the target by less than 10%.
    let d = Case::new(bounds(1, Some(8), 1), load(0.66, 0.5, 0.5), pool_2_1())
        .memory(memory(2))
        .run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(d.event, None);
    assert_eq!(d.memory.low_since, None);
}

#[test]
fn scale_out_starts_at_the_target_not_above_a_band() {
    // 70% against 70%: one more pod, from the warm pool.
    let d = Case::new(bounds(1, Some(8), 1), load(0.70, 0.5, 0.5), pool_2_1())
        .memory(memory(2))
        .run();
    assert_eq!(d.plan, plan(3, 1));
    let e = d.event.expect("a scale-out at the target");
    assert_eq!(
        (e.direction, e.cause, e.from, e.to, e.from_warm),
        (Direction::Out, Cause::ExecutorUtilization, 2, 3, 1)
    );
}

#[test]
fn the_highest_signal_wins() {
    // Utilisation low, but 3 requests wait per pod: ceil(2 × 3 / 1) = 6.
    let d = Case::new(bounds(1, Some(8), 1), load(0.3, 0.3, 3.0), pool_2_1())
        .memory(memory(2))
        .run();
    assert_eq!(d.plan.serving, 6);
    assert_eq!(d.event.map(|e| e.cause), Some(Cause::Queue));
    // KV cache above executor: ceil(3 × 0.8 / 0.7) = 4 against
    // ceil(3 × 1.0 / 0.7) = 5; the KV cache names the cause.
    let d = Case::new(bounds(1, Some(8), 1), load(0.8, 1.0, 0.0), pool_2_1())
        .memory(memory(3))
        .run();
    assert_eq!(d.plan.serving, 5);
    assert_eq!(d.event.map(|e| e.cause), Some(Cause::KvCacheUsage));
}

#[test]
fn scale_out_clears_a_running_scale_in_window() {
    let d = Case::new(bounds(1, Some(8), 1), load(0.9, 0.3, 0.0), pool_2_1())
        .memory(low_since(2, T0 - 30))
        .run();
    assert_eq!(d.plan.serving, 3);
    assert_eq!(d.memory.low_since, None);
}

// --- Scale-in ---------------------------------------------------------------

#[test]
fn low_load_starts_the_window_and_asks_to_look_again_when_it_ends() {
    let d = Case::new(bounds(1, Some(8), 1), load(0.1, 0.1, 0.0), pool_2_1())
        .memory(memory(2))
        .run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(d.memory.low_since, Some(Time(at(T0))));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(60)));
    assert_eq!(d.drain, None);
    // Half-way: still waiting, with the rest of the window.
    let d = Case::new(bounds(1, Some(8), 1), load(0.1, 0.1, 0.0), pool_2_1())
        .memory(low_since(2, T0 - 45))
        .run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(d.memory.low_since, Some(Time(at(T0 - 45))));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(15)));
}

#[test]
fn after_the_window_one_pod_drains_and_the_deployment_keeps_it() {
    let pods = vec![
        loaded("a", 0.3),
        loaded("b", 0.05),
        loaded("c", 0.2),
        warm("d"),
    ];
    let d = Case::new(bounds(1, Some(8), 1), load(0.1, 0.1, 0.0), pods)
        .memory(low_since(3, T0 - 60))
        .run();
    assert_eq!(d.plan, with_draining(2, 1, 1));
    // The least loaded serving pod leaves rotation; the warm pod is never
    // chosen.
    assert_eq!(d.drain.as_deref(), Some("b"));
    // It stays in the Deployment until its drain is over.
    assert_eq!(d.plan.draining, 1);
    assert_eq!(d.plan.total(), 4);
    assert!(d.remove.is_empty());
    let e = d.event.expect("a scale-in event");
    assert_eq!(
        (e.direction, e.cause, e.from, e.to),
        (Direction::In, Cause::LowUtilization, 3, 2)
    );
    // One pod per window: the window starts again.
    assert_eq!(d.memory.low_since, None);
    assert_eq!(d.memory.serving, Some(2));
    assert_eq!(d.memory.last_scale_at, Some(Time(at(T0))));
}

#[test]
fn scale_in_is_one_pod_even_when_the_rule_asks_for_fewer() {
    // Idle: the rule says min, but only one pod goes per window.
    let pods = vec![serving("a"), serving("b"), serving("c"), serving("e")];
    let d = Case::new(bounds(1, Some(8), 0), load(0.0, 0.0, 0.0), pods)
        .memory(low_since(4, T0 - 600))
        .run();
    assert_eq!(d.plan.serving, 3);
    assert!(d.drain.is_some());
}

#[test]
fn never_below_min() {
    let d = Case::new(bounds(2, Some(8), 1), load(0.0, 0.0, 0.0), pool_2_1())
        .memory(low_since(2, T0 - 600))
        .run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(d.drain, None);
    assert_eq!(d.event, None);
    // At min the window is not even kept.
    assert_eq!(d.memory.low_since, None);
}

#[test]
fn no_second_scale_in_while_a_pod_is_still_draining() {
    let pods = vec![
        serving("a"),
        serving("b"),
        draining("c", Some(T0 - 1)),
        warm("d"),
    ];
    let d = Case::new(bounds(1, Some(8), 1), load(0.0, 0.0, 0.0), pods)
        .memory(low_since(2, T0 - 600))
        .run();
    assert_eq!(d.plan, with_draining(2, 1, 1));
    assert_eq!(d.drain, None);
    // The window is kept: the next pod goes once the draining one is gone.
    assert_eq!(d.memory.low_since, Some(Time(at(T0 - 600))));
    assert_eq!(d.plan.draining, 1);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(1)));
}

#[test]
fn load_back_in_band_resets_the_window() {
    let d = Case::new(bounds(1, Some(8), 1), load(0.68, 0.1, 0.0), pool_2_1())
        .memory(low_since(2, T0 - 50))
        .run();
    assert_eq!(d.memory.low_since, None);
    assert_eq!(d.requeue_after, None);
}

#[test]
fn one_signal_not_low_holds_the_scale_in() {
    // Utilisation idle, but requests still wait: not low.
    let d = Case::new(bounds(1, Some(8), 1), load(0.1, 0.1, 0.95), pool_2_1())
        .memory(low_since(2, T0 - 600))
        .run();
    assert_eq!(d.plan.serving, 2);
    assert_eq!(d.drain, None);
    assert_eq!(d.memory.low_since, None);
}

#[test]
fn the_victim_is_the_least_loaded_ready_serving_pod() {
    // (pods, expected victim)
    let cases: Vec<(Vec<PodState>, Option<&str>)> = vec![
        // Known loads: the least.
        (
            vec![loaded("a", 0.2), loaded("b", 0.1), loaded("c", 0.3)],
            Some("b"),
        ),
        // Unknown loads: the last by name (the pool keeps the first ones).
        (vec![serving("a"), serving("b"), serving("c")], Some("c")),
        // A known load is preferred to an unknown one.
        (
            vec![serving("a"), loaded("b", 0.9), serving("c")],
            Some("b"),
        ),
        // Ties: the last by name.
        (vec![loaded("a", 0.1), loaded("b", 0.1)], Some("b")),
        // Terminating, warm: never chosen (a pod that is not ready goes
        // without draining: see the next test).
        (
            vec![
                PodState {
                    terminating: true,
                    ..loaded("b", 0.0)
                },
                PodState {
                    load: Some(0.0),
                    ..warm("c")
                },
                loaded("d", 0.5),
                loaded("e", 0.6),
            ],
            Some("d"),
        ),
        // A NaN load is unknown, not least.
        (vec![loaded("a", f64::NAN), loaded("b", 0.4)], Some("b")),
    ];
    for (pods, want) in cases {
        let names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
        let d = Case::new(bounds(1, Some(8), 0), load(0.0, 0.0, 0.0), pods)
            .memory(low_since(2, T0 - 600))
            .run();
        assert_eq!(d.drain.as_deref(), want, "pods {names:?}");
    }
}

#[test]
fn no_ready_serving_pod_means_no_scale_in() {
    let pods = vec![PodState {
        ready: false,
        ..serving("a")
    }];
    let d = Case::new(bounds(1, Some(8), 0), load(0.0, 0.0, 0.0), pods)
        .memory(low_since(2, T0 - 600))
        .run();
    assert_eq!(d.plan.serving, 2);
    assert_eq!(d.drain, None);
}

// --- Draining pods ------------------------------------------------------------

#[test]
fn a_draining_pod_is_removed_after_the_drain_delay() {
    // Labelled 1 s ago, delay 2 s: kept, look again in 1 s.
    let pods = vec![serving("a"), draining("b", Some(T0 - 1)), warm("c")];
    let d = Case::new(bounds(1, Some(8), 1), load(0.5, 0.5, 0.5), pods.clone())
        .memory(memory(1))
        .run();
    assert!(d.remove.is_empty());
    assert_eq!(d.plan.total(), 3);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(1)));
    // 2 s later: removed, the Deployment shrinks by exactly it.
    let d = Case::new(bounds(1, Some(8), 1), load(0.5, 0.5, 0.5), pods)
        .memory(memory(1))
        .now(T0 + 1)
        .run();
    assert_eq!(d.remove, vec!["b".to_string()]);
    assert_eq!(d.plan.draining, 0);
    assert_eq!(d.plan.total(), 2);
}

#[test]
fn a_draining_pod_waits_while_another_pod_is_unready() {
    // A ReplicaSet removes unready pods before any pod-deletion-cost
    // applies, so shrinking now could remove the starting pod instead.
    let pods = vec![
        serving("a"),
        draining("b", Some(T0 - 100)),
        PodState {
            ready: false,
            ..warm("c")
        },
    ];
    let d = Case::new(bounds(1, Some(8), 1), load(0.5, 0.5, 0.5), pods)
        .memory(memory(1))
        .run();
    assert!(d.remove.is_empty());
    assert_eq!(d.plan.total(), 3);
}

#[test]
fn a_draining_pod_without_its_annotation_counts_as_long_drained() {
    let pods = vec![serving("a"), draining("b", None)];
    let d = Case::new(bounds(1, Some(8), 0), load(0.5, 0.5, 0.5), pods)
        .memory(memory(1))
        .run();
    assert_eq!(d.remove, vec!["b".to_string()]);
}

#[test]
fn terminating_pods_are_not_counted() {
    let pods = vec![
        serving("a"),
        PodState {
            terminating: true,
            ..draining("b", Some(T0 - 100))
        },
        PodState {
            terminating: true,
            ready: false,
            ..serving("c")
        },
    ];
    let d = Case::new(bounds(1, Some(8), 0), load(0.5, 0.5, 0.5), pods)
        .memory(memory(1))
        .run();
    assert!(d.remove.is_empty());
    assert_eq!(d.plan.draining, 0);
    assert_eq!(d.plan.total(), 1);
    assert_eq!(d.cold_start, None);
}

// --- No data ------------------------------------------------------------------

#[test]
fn no_snapshot_holds_the_count_and_says_why() {
    let why = "Prometheus is unavailable: connection refused";
    // Even after a long low window, nothing scales in; the window is
    // dropped so it starts again once data is back.
    let d = Case::new(
        bounds(1, Some(8), 1),
        Signals::Unavailable(why.into()),
        pool_2_1(),
    )
    .memory(low_since(2, T0 - 600))
    .run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(d.drain, None);
    assert_eq!(d.event, None);
    assert_eq!(d.memory.low_since, None);
    assert_eq!(d.memory.serving, Some(2));
    assert_eq!(d.metrics_unavailable.as_deref(), Some(why));
}

#[test]
fn no_data_is_never_zero() {
    // Every signal without data: hold, even at a count the rule would cut.
    let d = Case::new(
        bounds(1, Some(8), 1),
        Signals::Fresh(Load::default()),
        pool_2_1(),
    )
    .memory(low_since(2, T0 - 600))
    .run();
    assert_eq!(d.plan.serving, 2);
    assert_eq!(d.drain, None);
    assert_eq!(d.memory.low_since, None);
    assert_eq!(
        d.metrics_unavailable.as_deref(),
        Some(
            "no data for executor_utilization, kv_cache_usage, queue_waiting_per_pod: scaling held"
        )
    );
}

#[test]
fn a_missing_signal_blocks_scale_in_but_not_scale_out() {
    // KV cache without data: low utilisation does not scale in.
    let partial = |executor: f64| {
        Signals::Fresh(Load {
            executor: Some(executor),
            kv_cache: None,
            queue_per_pod: Some(0.0),
            ..Load::default()
        })
    };
    let d = Case::new(bounds(1, Some(8), 1), partial(0.05), pool_2_1())
        .memory(low_since(2, T0 - 600))
        .run();
    assert_eq!(d.plan.serving, 2);
    assert_eq!(d.drain, None);
    assert_eq!(d.memory.low_since, None);
    assert_eq!(
        d.metrics_unavailable.as_deref(),
        Some("no data for kv_cache_usage: scaling held")
    );
    // High executor utilisation still scales out.
    let d = Case::new(bounds(1, Some(8), 1), partial(0.95), pool_2_1())
        .memory(memory(2))
        .run();
    assert_eq!(d.plan.serving, 3);
    assert_eq!(
        d.metrics_unavailable.as_deref(),
        Some("no data for kv_cache_usage: scale-in held")
    );
}

#[test]
fn draining_pods_are_still_removed_without_data() {
    let pods = vec![serving("a"), draining("b", Some(T0 - 100))];
    let d = Case::new(
        bounds(1, Some(8), 0),
        Signals::Unavailable("stale".into()),
        pods,
    )
    .memory(memory(1))
    .run();
    assert_eq!(d.remove, vec!["b".to_string()]);
}

// --- Memory and bounds ------------------------------------------------------------

#[test]
fn the_stored_count_survives_a_restart() {
    // In band: the remembered 4 holds (not min, not the pod labels).
    let pods = vec![
        serving("a"),
        serving("b"),
        serving("c"),
        serving("e"),
        serving("f"),
    ];
    let d = Case::new(bounds(1, Some(8), 0), load(0.65, 0.5, 0.5), pods)
        .memory(memory(4))
        .run();
    assert_eq!(d.plan.serving, 4);
    assert_eq!(d.event, None);
}

#[test]
fn a_bounds_change_moves_the_count_at_once() {
    // max lowered below the stored count.
    let d = Case::new(bounds(1, Some(3), 1), load(0.65, 0.5, 0.5), pool_2_1())
        .memory(memory(6))
        .run();
    assert_eq!(d.plan.serving, 3);
    let e = d.event.expect("a bounds event");
    assert_eq!(
        (e.direction, e.cause, e.from, e.to),
        (Direction::In, Cause::Bounds, 6, 3)
    );
    // min raised above it, with no data at all.
    let d = Case::new(
        bounds(4, Some(8), 1),
        Signals::Unavailable("down".into()),
        pool_2_1(),
    )
    .memory(memory(2))
    .run();
    assert_eq!(d.plan.serving, 4);
    assert_eq!(
        d.event.map(|e| (e.direction, e.cause)),
        Some((Direction::Out, Cause::Bounds))
    );
    // Autoscaling switched off (max = min): back to min, memory cleared.
    let d = Case::new(bounds(2, Some(2), 1), load(0.9, 0.9, 0.0), pool_2_1())
        .memory(memory(5))
        .run();
    assert_eq!(d.plan.serving, 2);
    assert_eq!(d.memory.serving, None);
    assert_eq!(d.event.map(|e| e.cause), Some(Cause::Bounds));
}

#[test]
fn a_low_since_written_by_a_clock_ahead_of_ours_waits_the_whole_window() {
    let d = Case::new(bounds(1, Some(8), 1), load(0.0, 0.0, 0.0), pool_2_1())
        .memory(low_since(2, T0 + 30))
        .run();
    assert_eq!(d.drain, None);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(60)));
}

#[test]
fn a_target_of_fifty_scales_out_earlier() {
    let mut c = Case::new(bounds(1, Some(8), 1), load(0.6, 0.0, 0.0), pool_2_1()).memory(memory(2));
    // 60% against 70%: below the band, but ceil(2 × 0.86) is still 2.
    assert_eq!(c.run().plan.serving, 2);
    // 60% against 50%: ceil(2 × 1.2) = 3.
    c.autoscaling.target_utilization = 50;
    assert_eq!(c.run().plan.serving, 3);
}

// --- From the poller's snapshot -----------------------------------------------

mod from_latest {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::signals::{QueryError, QueryErrorKind, Signal, Snapshot};

    const I: Duration = Duration::from_secs(5);

    fn snapshot(taken: i64, signals: BTreeMap<Signal, crate::signals::Series>) -> Latest {
        Latest::Taken(Arc::new(Snapshot {
            taken_at: at(taken),
            window: Duration::from_secs(30),
            signals,
            queries: BTreeMap::new(),
            pod_loads: BTreeMap::new(),
        }))
    }

    fn ok(rev: &str, v: f64) -> crate::signals::Series {
        Ok(BTreeMap::from([(rev.to_string(), v)]))
    }

    #[test]
    fn fresh_values_of_the_revision_are_read_and_missing_ones_stay_none() {
        let latest = snapshot(
            T0 - 1,
            BTreeMap::from([
                (Signal::ExecutorUtilization, ok("r1", 0.8)),
                (Signal::KvCacheUsage, ok("r2", 0.9)),
                (Signal::QueueWaitingPerPod, ok("r1", f64::NAN)),
            ]),
        );
        assert_eq!(
            Signals::from_latest(&latest, at(T0), I, "r1"),
            Signals::Fresh(Load {
                executor: Some(0.8),
                kv_cache: None,
                queue_per_pod: None,
                ..Load::default()
            })
        );
    }

    #[test]
    fn no_prometheus_no_snapshot_stale_or_down_is_unavailable() {
        let why = |l: &Latest| match Signals::from_latest(l, at(T0), I, "r1") {
            Signals::Unavailable(w) => w,
            other => panic!("expected unavailable, got {other:?}"),
        };
        assert!(why(&Latest::NotConfigured).contains("no Prometheus address"));
        assert!(why(&Latest::Waiting).contains("no signal snapshot"));
        let stale = snapshot(
            T0 - 11,
            BTreeMap::from([(Signal::ExecutorUtilization, ok("r1", 0.8))]),
        );
        assert!(why(&stale).contains("older than two intervals"));
        let refused = || {
            Err(QueryError {
                kind: QueryErrorKind::Unavailable,
                message: "connection refused".into(),
            })
        };
        let down = snapshot(
            T0,
            BTreeMap::from([
                (Signal::ExecutorUtilization, refused()),
                (Signal::KvCacheUsage, refused()),
            ]),
        );
        assert!(why(&down).contains("connection refused"));
    }
}

fn external(mut c: Case) -> Case {
    c.autoscaling.mode = AutoscalingMode::External;
    c
}

/// External mode: `replicas.min` (written through the scale subresource)
/// is the count; signals are not read, even when they would scale the
/// other way or are missing; scale-out comes from the warm pool first.
#[test]
fn external_mode_follows_replicas_min_not_the_signals() {
    let pods = vec![serving("a"), serving("b"), warm("w")];
    // Asked 3, signals idle: out to 3, the warm pod first.
    let d = external(Case::new(
        bounds(3, None, 1),
        load(0.0, 0.0, 0.0),
        pods.clone(),
    ))
    .memory(memory(2))
    .run();
    assert!(d.enabled && d.external);
    assert_eq!(d.plan, plan(3, 1));
    let e = d.event.expect("a scale event");
    assert_eq!(
        (e.direction, e.cause, e.from_warm),
        (Direction::Out, Cause::External, 1)
    );
    assert_eq!(d.metrics_unavailable, None);
    // Asked 2 with the load far above target: held at 2.
    let d = external(Case::new(
        bounds(2, None, 1),
        load(0.99, 0.99, 9.0),
        pods.clone(),
    ))
    .memory(memory(2))
    .run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(d.event, None);
    // No signals at all: the asked count still holds, no condition.
    let d = external(Case::new(
        bounds(2, None, 1),
        Signals::Unavailable("Prometheus down".into()),
        pods,
    ))
    .memory(memory(2))
    .run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(d.metrics_unavailable, None);
}

/// External scale-in: one pod at a time, the least loaded, at once (no
/// window), through draining; never two draining at once.
#[test]
fn external_mode_scales_in_one_draining_pod_at_a_time_without_a_window() {
    let pods = vec![loaded("a", 0.5), loaded("b", 0.1), loaded("c", 0.9)];
    let d = external(Case::new(bounds(1, None, 0), load(0.9, 0.9, 0.0), pods))
        .memory(memory(3))
        .run();
    assert_eq!(d.drain.as_deref(), Some("b"));
    assert_eq!(d.plan.serving, 2);
    assert_eq!(d.plan.draining, 1);
    let e = d.event.expect("a scale event");
    assert_eq!((e.direction, e.cause), (Direction::In, Cause::External));
    assert_eq!(d.memory.low_since, None);
    // The next pass, with b still draining: no second victim yet.
    let pods = vec![loaded("a", 0.5), draining("b", Some(T0)), loaded("c", 0.9)];
    let d = external(Case::new(bounds(1, None, 0), load(0.9, 0.9, 0.0), pods))
        .memory(memory(2))
        .now(T0 + 1)
        .run();
    assert_eq!(d.drain, None);
    assert_eq!(d.plan.serving, 2);
}

/// External mode with `replicas.max` set: the asked count is capped there.
#[test]
fn external_mode_is_capped_at_replicas_max() {
    let pods = vec![serving("a"), serving("b")];
    let d = external(Case::new(bounds(2, Some(3), 0), load(0.1, 0.1, 0.0), pods))
        .memory(memory(3))
        .run();
    assert_eq!(d.plan.serving, 2, "min 2 asked: scales in towards it");
    let replicas = ReplicasSpec {
        min: 9,
        max: Some(3),
        warm: 0,
    };
    let d = external(Case::new(replicas, load(0.1, 0.1, 0.0), vec![]))
        .memory(memory(3))
        .run();
    assert_eq!(
        d.plan.serving, 3,
        "a min above max (bypassed validation) is capped"
    );
}

#[test]
fn utilization_column_is_the_higher_signal_and_blank_without_data() {
    assert_eq!(
        load(0.42, 0.815, 3.0).utilization_text().as_deref(),
        Some("82%")
    );
    let only_kv = Signals::Fresh(Load {
        executor: None,
        kv_cache: Some(0.3),
        queue_per_pod: None,
        ..Load::default()
    });
    assert_eq!(only_kv.utilization_text().as_deref(), Some("30%"));
    assert_eq!(Signals::Fresh(Load::default()).utilization_text(), None);
    assert_eq!(Signals::Unavailable("down".into()).utilization_text(), None);
}

fn pending(name: &str, message: &str) -> PodState {
    PodState {
        ready: false,
        unschedulable: Some(message.into()),
        ..serving(name)
    }
}

const NO_GPU: &str = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.";

/// A pod no node can take holds scale-out (no pile of Pending pods) and is
/// named; scale-in still works; once it is scheduled, scale-out goes on.
#[test]
fn unschedulable_pods_hold_scale_out_and_name_the_shortfall() {
    let pods = vec![serving("a"), serving("b"), pending("c", NO_GPU)];
    let d = Case::new(bounds(1, Some(8), 0), load(0.95, 0.5, 0.0), pods)
        .memory(memory(3))
        .run();
    assert_eq!(d.plan.serving, 3, "held at the current count");
    assert_eq!(d.event, None);
    let s = d.shortfall.expect("a shortfall");
    assert_eq!(s.pending, 1);
    assert!(s.gpu);
    assert_eq!(s.message, NO_GPU);
    assert_eq!(s.held_at, Some(5), "ceil(3 x 0.95 / 0.7) = 5 wanted");

    // Not about GPUs: still a shortfall, gpu false; low load scales in.
    let pods = vec![
        serving("a"),
        serving("b"),
        pending("c", "0/1 nodes are available: 1 Insufficient cpu."),
    ];
    let d = Case::new(bounds(1, Some(8), 0), load(0.05, 0.05, 0.0), pods)
        .memory(low_since(3, T0 - 120))
        .run();
    let s = d.shortfall.expect("a shortfall");
    assert!(!s.gpu);
    assert_eq!(s.held_at, None);
    assert_eq!(d.plan.serving, 2, "scale-in is not held");

    // Scheduled now: the scale-out goes ahead.
    let pods = vec![serving("a"), serving("b"), serving("c")];
    let d = Case::new(bounds(1, Some(8), 0), load(0.95, 0.5, 0.0), pods)
        .memory(memory(3))
        .run();
    assert_eq!(d.shortfall, None);
    assert_eq!(d.plan.serving, 5);
}

/// A scale-in with a pod that is not ready (starting, or Pending with no
/// GPU): the Deployment shrinks without draining anybody, since the
/// ReplicaSet removes the unready pod first; serving pods stay.
#[test]
fn scale_in_takes_a_pod_that_is_not_ready_before_draining_a_serving_one() {
    let pods = vec![serving("a"), serving("b"), pending("c", NO_GPU)];
    let d = external(Case::new(bounds(1, None, 0), load(0.9, 0.9, 0.0), pods))
        .memory(memory(3))
        .run();
    assert_eq!(d.drain, None, "nobody drains");
    assert_eq!(d.plan, plan(2, 0));
    let e = d.event.expect("a scale event");
    assert!(
        e.message.contains("a pod that is not ready goes"),
        "{}",
        e.message
    );
}

// --- During a canary -------------------------------------------------------

#[test]
fn during_a_canary_the_count_follows_the_load_of_both_revisions() {
    // 4 stable pods at 40% carry 60% of the traffic; 2 canary pods at 60%
    // carry 40%: the service's load on 4 pods is (0.4 × 4 + 0.6 × 2) / 4
    // = 70%, at the target, where the stable's reading alone (40%) would
    // scale in.
    let stable = Load {
        executor: Some(0.4),
        kv_cache: Some(0.2),
        queue_per_pod: Some(0.5),
        demand: Demand {
            tokens_per_second: Some(600.0),
            requests_per_second: Some(3.0),
            in_flight: Some(12.0),
            pod_tokens_per_second: Some(250.0),
            cold_start_seconds: Some(20.0),
            trend_per_second: Some(0.001),
        },
    };
    let canary = Load {
        executor: Some(0.6),
        kv_cache: None,
        queue_per_pod: Some(1.0),
        demand: Demand {
            tokens_per_second: Some(400.0),
            requests_per_second: Some(2.0),
            in_flight: Some(8.0),
            pod_tokens_per_second: Some(200.0),
            cold_start_seconds: Some(35.0),
            trend_per_second: None,
        },
    };
    let l = with_canary(&stable, 4, &canary, 2);
    assert!((l.executor.expect("executor") - 0.7).abs() < 1e-9);
    // The canary has no KV reading: the stable's stays, never zero.
    assert_eq!(l.kv_cache, Some(0.2));
    assert!((l.queue_per_pod.expect("queue") - 1.0).abs() < 1e-9);
    assert_eq!(l.demand.tokens_per_second, Some(1000.0));
    assert_eq!(l.demand.requests_per_second, Some(5.0));
    assert_eq!(l.demand.in_flight, Some(20.0));
    assert_eq!(l.demand.pod_tokens_per_second, Some(250.0));
    assert_eq!(l.demand.cold_start_seconds, Some(35.0));
    // At the target: one more pod, not a scale-in.
    let d = Case::new(
        bounds(2, Some(8), 0),
        Signals::Fresh(l),
        vec![serving("a"), serving("b"), serving("c"), serving("d")],
    )
    .memory(memory(4))
    .run();
    assert_eq!(d.plan.serving, 5);
    // Without stable pods nothing is combined.
    assert_eq!(with_canary(&stable, 0, &canary, 2), stable);
    // A canary with no pods yet adds nothing to the averages.
    assert_eq!(with_canary(&stable, 4, &canary, 0).executor, Some(0.4));
}

// --- The cold-start rule over passes ----------------------------------------

fn rising(u: f64, slope: f64) -> Signals {
    Signals::Fresh(Load {
        executor: Some(u),
        kv_cache: Some(u / 2.0),
        queue_per_pod: Some(0.0),
        demand: Demand {
            tokens_per_second: Some(100.0),
            requests_per_second: Some(1.0),
            in_flight: Some(4.0),
            pod_tokens_per_second: Some(400.0),
            cold_start_seconds: Some(20.0),
            trend_per_second: Some(slope),
        },
    })
}

fn early(n: i32, since: i64) -> AutoscalingStatus {
    AutoscalingStatus {
        early_warm: Some(n),
        early_since: Some(Time(at(since))),
        ..memory(2)
    }
}

#[test]
fn a_projected_rise_starts_a_warm_pod_and_remembers_it() {
    // 2 serving at 40% rising 2%/s, 20 s cold starts: 80% by then, one
    // more pod needed; no warm pool: one early warm pod.
    let d = Case::new(
        bounds(2, Some(4), 0),
        rising(0.4, 0.02),
        vec![serving("a"), serving("b")],
    )
    .memory(memory(2))
    .run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(
        d.event, None,
        "no scale event: the pod is warm, not serving"
    );
    assert_eq!(d.memory.early_warm, Some(1));
    assert_eq!(d.memory.early_since, Some(Time(at(T0))));
    assert_eq!(d.capacity.as_ref().map(|c| c.early_warm), Some(1));
}

#[test]
fn early_pods_stay_while_the_slope_wobbles_and_go_after_the_window() {
    let pods = vec![serving("a"), serving("b"), warm("c")];
    // The slope flattened 30 s later: the pod stays (window 60 s).
    let d = Case::new(bounds(2, Some(4), 0), rising(0.45, 0.0), pods.clone())
        .memory(early(1, T0 - 30))
        .run();
    assert_eq!(d.plan, plan(2, 1));
    assert_eq!(d.memory.early_warm, Some(1));
    assert_eq!(d.memory.early_since, Some(Time(at(T0 - 30))));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
    assert!(d
        .capacity
        .as_ref()
        .is_some_and(|c| c.message.contains("held until")));
    // A window after the last ask: it goes.
    let d = Case::new(bounds(2, Some(4), 0), rising(0.45, 0.0), pods.clone())
        .memory(early(1, T0 - 60))
        .run();
    assert_eq!(d.plan, plan(2, 0));
    assert_eq!(
        (d.memory.early_warm, d.memory.early_since.clone()),
        (None, None)
    );
    // No data: held as it is.
    let d = Case::new(
        bounds(2, Some(4), 0),
        Signals::Unavailable("down".into()),
        pods,
    )
    .memory(early(1, T0 - 600))
    .run();
    assert_eq!(d.plan, plan(2, 1));
}

#[test]
fn a_scale_out_uses_the_early_pod_up_and_a_shortfall_or_external_mode_drops_it() {
    // The reading reached 70%: the warm pod goes into rotation, nothing is
    // kept early any more.
    let pods = vec![serving("a"), serving("b"), warm("c")];
    let d = Case::new(bounds(2, Some(4), 0), rising(0.72, 0.0), pods.clone())
        .memory(early(1, T0 - 10))
        .run();
    assert_eq!(d.plan, plan(3, 0));
    assert_eq!(d.event.as_ref().map(|e| e.from_warm), Some(1));
    assert_eq!(d.memory.early_warm, None);
    // External mode: the rule does not act.
    let mut c =
        Case::new(bounds(2, Some(4), 0), rising(0.4, 0.02), pods.clone()).memory(early(1, T0));
    c.autoscaling.mode = crate::crd::AutoscalingMode::External;
    assert_eq!(c.run().plan.warm, 0);
    // Pods that cannot be scheduled: no early pods on top of them.
    let mut stuck = pods;
    stuck.push(PodState {
        unschedulable: Some("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into()),
        ready: false,
        ..serving("d")
    });
    let d = Case::new(bounds(2, Some(4), 0), rising(0.4, 0.02), stuck)
        .memory(early(1, T0))
        .run();
    assert_eq!(d.plan.warm, 0);
}
