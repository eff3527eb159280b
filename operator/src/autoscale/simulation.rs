//! Flapping, pinned on the pure decision: `autoscale` driven pass after
//! pass (every 2 s, as the poller's snapshots arrive) by a simulated
//! revision whose demand moves around the target, counting scale events.
//!
//! The bound (docs/operator.md, "Flapping"): over a time `T` with
//! `W = scaleInAfter`, scale events ≤ `2·⌊T / W⌋ + (max − min)`. A
//! scale-in needs `W` of low readings since the last change, so at most
//! `⌊T / W⌋` happen; each scale-out adds at least one pod and the count
//! stays within `[min, max]`, so scale-outs are at most the scale-ins plus
//! `max − min`. And a steady demand never flaps: a scale-in lands only on
//! a count whose pods run below `target × (1 − tolerance)`, at least 10%
//! under the reading where the next scale-out starts.
//!
//! The model: demand is in pods' worth of utilisation; the instantaneous
//! reading of a serving pod is `min(1, demand / serving)`; the reading
//! the autoscaler gets is its mean over the last 30 s (the analysis
//! window's `avg_over_time`). Pods start instantly (cold starts do not
//! change how many decisions are taken), a draining pod is removed by the
//! decision that says so.

use std::collections::VecDeque;
use std::f64::consts::TAU;

use super::*;
use crate::crd::GoDuration;

const PASS: i64 = 2;
const WINDOW: i64 = 30;
const T0: i64 = 2_000_000;

struct Run {
    events: Vec<ScaleEvent>,
    /// (second, serving) at every change.
    timeline: Vec<(i64, i32)>,
}

fn simulate(
    replicas: ReplicasSpec,
    scale_in_after: u64,
    secs: i64,
    demand: impl Fn(i64) -> f64,
) -> Run {
    let spec = AutoscalingSpec {
        mode: crate::crd::AutoscalingMode::Builtin,
        target_utilization: 70,
        scale_in_after: GoDuration::from_secs(scale_in_after),
    };
    let mut memory = AutoscalingStatus::default();
    let mut serving = replicas.min;
    let mut draining: Vec<(String, i64)> = Vec::new();
    let mut samples: VecDeque<(i64, f64)> = VecDeque::new();
    let mut events = Vec::new();
    let mut timeline = vec![(0, serving)];
    let mut t = 0;
    while t <= secs {
        let now = Timestamp::from_second(T0 + t).expect("time");
        samples.push_back((t, (demand(t) / f64::from(serving.max(1))).min(1.0)));
        while samples.front().is_some_and(|(s, _)| *s <= t - WINDOW) {
            samples.pop_front();
        }
        let reading = samples.iter().map(|(_, v)| v).sum::<f64>() / samples.len() as f64;
        let mut pods: Vec<PodState> = (0..serving)
            .map(|i| PodState {
                name: format!("s{i:03}"),
                rotation: Some(Rotation::Serving),
                ready: true,
                terminating: false,
                draining_since: None,
                load: Some(reading),
                unschedulable: None,
            })
            .collect();
        pods.extend((0..replicas.warm).map(|i| PodState {
            name: format!("w{i:03}"),
            rotation: Some(Rotation::Warm),
            ready: true,
            terminating: false,
            draining_since: None,
            load: None,
            unschedulable: None,
        }));
        pods.extend(draining.iter().map(|(n, since)| PodState {
            name: n.clone(),
            rotation: Some(Rotation::Draining),
            ready: true,
            terminating: false,
            draining_since: Some(Timestamp::from_second(T0 + since).expect("time")),
            load: None,
            unschedulable: None,
        }));
        let d = autoscale(&AutoscaleInput {
            revision: "r1",
            replicas: &replicas,
            autoscaling: &spec,
            signals: &Signals::Fresh(Load {
                executor: Some(reading),
                kv_cache: Some(reading),
                queue_per_pod: Some(0.0),
                ..Load::default()
            }),
            pods: &pods,
            memory: &memory,
            now,
            drain_delay: Duration::from_secs(2),
        });
        draining.retain(|(n, _)| !d.remove.contains(n));
        if let Some(v) = &d.drain {
            draining.push((format!("{v}-drained-at-{t}"), t));
        }
        if d.plan.serving != serving {
            serving = d.plan.serving;
            timeline.push((t, serving));
        }
        events.extend(d.event.clone());
        memory = d.memory;
        t += PASS;
    }
    Run { events, timeline }
}

fn bound(secs: i64, scale_in_after: u64, r: &ReplicasSpec) -> usize {
    let max = r.max.unwrap_or(r.min);
    2 * (secs as u64 / scale_in_after) as usize + (max - r.min) as usize
}

/// `mean × (1 + amplitude × sin(2πt / period))`.
fn wave(mean: f64, amplitude: f64, period: i64) -> impl Fn(i64) -> f64 {
    move |t| mean * (1.0 + amplitude * (TAU * t as f64 / period as f64).sin())
}

fn replicas() -> ReplicasSpec {
    ReplicasSpec {
        min: 2,
        max: Some(6),
        warm: 1,
    }
}

#[test]
fn noise_below_the_target_makes_no_scale_event() {
    // Two pods at 66% ± 4% for five minutes: under the target, inside the
    // tolerance below it: nothing moves.
    let r = simulate(replicas(), 60, 300, wave(1.32, 0.04 / 0.66, 40));
    assert!(r.events.is_empty(), "{:?}", r.timeline);
}

#[test]
fn noise_across_the_target_scales_out_once_and_never_back() {
    // Two pods at 70% ± 8%: the first reading at 70% adds a pod (47% each
    // after), and 3 pods at 47% would run at 70% on two, above the
    // scale-in line: no out-in-out cycle in five minutes.
    let r = simulate(replicas(), 30, 300, wave(1.4, 0.08, 40));
    let counts: Vec<i32> = r.timeline.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, vec![2, 3], "{:?}", r.timeline);
    assert_eq!(r.events.len(), 1);
}

#[test]
fn a_steady_load_just_above_the_band_scales_out_once_and_stays() {
    // 2 × 80%: out to 3 pods (53% each, below the band) — but
    // ceil(3 × 0.53 / 0.63) = 3, so no scale-in: no out-in-out cycle.
    let r = simulate(replicas(), 30, 600, |_| 1.6);
    let counts: Vec<i32> = r.timeline.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, vec![2, 3], "{:?}", r.timeline);
    assert_eq!(r.events.len(), 1);
}

#[test]
fn oscillation_faster_than_the_scale_in_window_only_scales_out() {
    // ±30% around two pods at target, period 60 s, window 60 s: the low
    // half never lasts a window, so the count only grows (to what the
    // peaks need) and never comes back down.
    let r = simulate(replicas(), 60, 300, wave(1.4, 0.3, 60));
    assert!(
        r.events.iter().all(|e| e.direction == Direction::Out),
        "{:?}",
        r.timeline
    );
    assert!(!r.events.is_empty());
    assert!(r.events.len() <= (6 - 2), "{:?}", r.timeline);
}

#[test]
fn slow_oscillation_scales_both_ways_within_the_bound() {
    // ±50% with a 240 s period and a 30 s window: the load really rises
    // and falls, so the count follows it; over five minutes the events
    // stay within 2·⌊T/W⌋ + (max − min), and scale-ins are a window apart.
    let r = simulate(replicas(), 30, 300, wave(1.4, 0.5, 240));
    let ins: Vec<&ScaleEvent> = r
        .events
        .iter()
        .filter(|e| e.direction == Direction::In)
        .collect();
    assert!(!ins.is_empty(), "{:?}", r.timeline);
    assert!(
        r.events.len() <= bound(300, 30, &replicas()),
        "{:?}",
        r.timeline
    );
    assert!(ins.iter().all(|e| e.to == e.from - 1), "one pod at a time");
    let in_times: Vec<i64> = r
        .timeline
        .windows(2)
        .filter(|w| w[1].1 < w[0].1)
        .map(|w| w[1].0)
        .collect();
    assert!(
        in_times.windows(2).all(|w| w[1] - w[0] >= 30),
        "scale-ins a window apart: {:?}",
        r.timeline
    );
}

#[test]
fn the_bound_holds_for_a_grid_of_oscillations() {
    for period in [20, 40, 60, 120, 240, 600] {
        for amplitude in [0.05, 0.15, 0.3, 0.6, 0.9] {
            for window in [10, 30, 60, 300] {
                let r = simulate(replicas(), window, 300, wave(1.4, amplitude, period));
                assert!(
                    r.events.len() <= bound(300, window, &replicas()),
                    "period {period}, amplitude {amplitude}, window {window}: {} events {:?}",
                    r.events.len(),
                    r.timeline
                );
            }
        }
    }
}
