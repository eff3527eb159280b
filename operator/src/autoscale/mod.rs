//! Sizing: how many pods of a revision are in rotation, how many are kept
//! warm (loaded, ready, out of rotation), and which pod leaves on a
//! scale-in.
//!
//! Two entry points, both pure:
//! - [`decide`]: the bounds alone (`replicas.min` serving, `replicas.warm`
//!   warm), what the rollout sizes revisions with until the signal
//!   snapshot is wired in.
//! - [`autoscale`]: the autoscaler over the signals ([`Signals`]), the
//!   revision's pods ([`PodState`]) and its memory in `status.autoscaling`.
//!   It returns a [`ScaleDecision`]: the plan, the pod that goes to
//!   draining, the draining pods whose hand-off is over (removed now), the
//!   memory to store, the conditions and the event.
//!
//! The rules (docs/operator.md, "Autoscaling"):
//! - Per signal, HPA-style: `ceil(serving × value / target)` with a 10%
//!   tolerance band ([`rule`]); the highest answer over the signals, clamped
//!   to `[min, max]`. Signals: executor utilisation and KV-cache usage
//!   (averaged over the serving pods; target `targetUtilization`%) and the
//!   waiting queue per serving pod (target [`QUEUE_TARGET_PER_POD`]).
//! - Scale-out is immediate and may add several pods at once; the pool
//!   promotes warm pods first (a label flip), the Deployment grows by the
//!   same number, so the warm pool is backfilled by new pods.
//! - Scale-in waits until every signal has stayed below its band for
//!   `scaleInAfter` (`status.autoscaling.lowSince`), removes one pod at a
//!   time (the least loaded serving pod goes to draining), never below
//!   `min`, and not while another pod is still draining. The window starts
//!   again after each change.
//! - A draining pod is removed once it has been out of rotation for the
//!   drain delay (the traffic hand-off: the router has stopped sending to
//!   it) and every other pod of the revision is ready (a ReplicaSet
//!   removes unready pods before any pod-deletion-cost applies). Its
//!   streams finish in the engine's own drain on SIGTERM.
//! - No data is never zero: without a fresh snapshot, or with no value for
//!   any signal, the count holds (no scale-in, no scale-out) and
//!   `MetricsUnavailable` says why. With some signals missing, scale-out on
//!   the others still happens; scale-in does not.
//!
//! Memory (`status.autoscaling`): `serving` (the count to scale from),
//! `lowSince`, `lastScaleAt`, `lastScaleReason`. With `max` unset or equal
//! to `min` nothing is decided from signals: the plan is the bounds.
//!
//! `autoscaling.mode: external`: an HPA or KEDA owns the count and writes
//! `replicas.min` through the scale subresource; the signals are not read.
//! The operator follows the asked count the same way (scale-out at once,
//! warm pool first; scale-in one draining pod at a time, no window),
//! capped at `replicas.max` when it is set, so the two never fight.

pub mod capacity;
pub mod report;
pub mod rule;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{AutoscalingMode, AutoscalingSpec, AutoscalingStatus, ReplicasSpec};
use crate::pool::Rotation;
use crate::signals::{Latest, Signal};

/// The waiting-queue target: one request waiting per serving pod. A
/// steady queue means every batch is full; above this the pods are too few
/// however the utilisation reads.
pub const QUEUE_TARGET_PER_POD: f64 = 1.0;

/// What sizing by the bounds needs.
#[derive(Clone, Debug)]
pub struct ScaleInput<'a> {
    /// The spec's bounds.
    pub replicas: &'a ReplicasSpec,
}

/// Pods of one revision: in rotation, warm, and draining on their way out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalePlan {
    /// Pods in rotation.
    pub serving: i32,
    /// Pods loaded and ready but out of rotation.
    pub warm: i32,
    /// Pods out of rotation that the Deployment still keeps until their
    /// drain is over (a scale-in's pod).
    pub draining: i32,
}

impl ScalePlan {
    /// No pods at all.
    pub const ZERO: ScalePlan = ScalePlan {
        serving: 0,
        warm: 0,
        draining: 0,
    };

    /// The Deployment's replica count: serving, warm and draining.
    pub fn total(self) -> i32 {
        self.serving
            .saturating_add(self.warm)
            .saturating_add(self.draining)
    }
}

/// The spec's bounds, clamped: the API server keeps `min <= max` and both
/// non-negative, but a spec that bypassed validation is clamped, never
/// trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bounds {
    min: i32,
    max: i32,
    warm: i32,
}

impl Bounds {
    fn of(r: &ReplicasSpec) -> Self {
        let max = r.effective_max().max(0);
        Bounds {
            min: r.min.clamp(0, max),
            max,
            warm: r.warm.max(0),
        }
    }
}

/// Decides the serving and warm counts from the bounds alone.
pub fn decide(input: &ScaleInput<'_>) -> ScalePlan {
    let b = Bounds::of(input.replicas);
    ScalePlan {
        serving: b.min,
        warm: b.warm,
        draining: 0,
    }
}

/// The cap on serving pods in external mode when `replicas.max` is unset
/// (the schema's own maximum for `replicas.min`).
const EXTERNAL_CAP: i32 = 1000;

/// The load of the revision, from the latest fresh signal snapshot.
/// `None` is no data (never read as zero).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Executor utilisation averaged over the serving pods, 0-1.
    pub executor: Option<f64>,
    /// KV-cache usage averaged over the serving pods, 0-1.
    pub kv_cache: Option<f64>,
    /// Requests waiting, averaged over the serving pods.
    pub queue_per_pod: Option<f64>,
    /// What the capacity report and the cold-start rule read
    /// ([`capacity`]); none of it scales on its own.
    pub demand: Demand,
}

/// Demand and measured capacity of the revision, from the same snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    /// Generated tokens per second, all pods.
    pub tokens_per_second: Option<f64>,
    /// Responses per second of the generation routes.
    pub requests_per_second: Option<f64>,
    /// Sequences running or waiting, all pods.
    pub in_flight: Option<f64>,
    /// Tokens per second of model-step time: one pod's rate while busy.
    pub pod_tokens_per_second: Option<f64>,
    /// Engine start to ready, the slowest pod (seconds).
    pub cold_start_seconds: Option<f64>,
    /// Utilisation's slope per second (the steeper signal).
    pub trend_per_second: Option<f64>,
}

/// What the autoscaler knows about the load.
#[derive(Clone, Debug, PartialEq)]
pub enum Signals {
    /// No fresh snapshot (no Prometheus configured, none taken yet, stale,
    /// or Prometheus down): why, for the condition.
    Unavailable(String),
    /// A fresh snapshot's readings.
    Fresh(Load),
}

impl Signals {
    /// The `-o wide` UTIL value: the higher of executor utilisation and
    /// KV-cache usage, as a whole percent; `None` without fresh data (a
    /// blank column, never 0%).
    pub fn utilization_text(&self) -> Option<String> {
        let Signals::Fresh(load) = self else {
            return None;
        };
        let u = [load.executor, load.kv_cache]
            .into_iter()
            .flatten()
            .filter(|v| v.is_finite())
            .reduce(f64::max)?;
        Some(format!("{:.0}%", u * 100.0))
    }

    /// The readings of `revision` in the latest snapshot, if it is fresh at
    /// `now` (younger than two `interval`s) and Prometheus answered; why
    /// not otherwise.
    pub fn from_latest(
        latest: &Latest,
        now: Timestamp,
        interval: Duration,
        revision: &str,
    ) -> Self {
        if let Some(why) = latest.unavailable_reason(now, interval) {
            return Signals::Unavailable(why);
        }
        let Some(snapshot) = latest.fresh(now, interval) else {
            return Signals::Unavailable("no fresh signal snapshot".into());
        };
        let value = |s| snapshot.reading(s, revision).value();
        Signals::Fresh(Load {
            executor: value(Signal::ExecutorUtilization),
            kv_cache: value(Signal::KvCacheUsage),
            queue_per_pod: value(Signal::QueueWaitingPerPod),
            demand: Demand {
                tokens_per_second: value(Signal::OutputTokensPerSecond),
                requests_per_second: value(Signal::RequestRate),
                in_flight: value(Signal::InFlight),
                pod_tokens_per_second: value(Signal::PodTokensPerSecond),
                cold_start_seconds: value(Signal::ColdStartSeconds),
                trend_per_second: value(Signal::UtilizationTrend),
            },
        })
    }
}

/// The service's load during a canary, on the stable revision's serving
/// pods: each pod-averaged reading becomes `(stable × S + canary × C) / S`
/// (S, C: the revisions' ready serving pods), the load both revisions
/// carry as if the stable's pods carried all of it; demand rates and
/// sequences in flight add up. The stable's own readings alone under-read
/// by the canary's share (its pods carry `100 − weight`%), which would
/// shrink the count — and with it the canary's share, `ceil(serving ×
/// weight / 100)` — while the total load has not moved.
///
/// A reading the canary lacks keeps the stable's (never read as zero);
/// without stable pods nothing is combined.
pub fn with_canary(stable: &Load, stable_pods: i32, canary: &Load, canary_pods: i32) -> Load {
    if stable_pods <= 0 {
        return *stable;
    }
    let (s, c) = (f64::from(stable_pods), f64::from(canary_pods.max(0)));
    let avg = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b.is_finite() => Some((a * s + b * c) / s),
        (a, _) => a,
    };
    let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b.is_finite() => Some(a + b),
        (a, _) => a,
    };
    let sd = &stable.demand;
    let cd = &canary.demand;
    Load {
        executor: avg(stable.executor, canary.executor),
        kv_cache: avg(stable.kv_cache, canary.kv_cache),
        queue_per_pod: avg(stable.queue_per_pod, canary.queue_per_pod),
        demand: Demand {
            tokens_per_second: add(sd.tokens_per_second, cd.tokens_per_second),
            requests_per_second: add(sd.requests_per_second, cd.requests_per_second),
            in_flight: add(sd.in_flight, cd.in_flight),
            pod_tokens_per_second: sd.pod_tokens_per_second,
            cold_start_seconds: match (sd.cold_start_seconds, cd.cold_start_seconds) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            trend_per_second: sd.trend_per_second,
        },
    }
}

/// One pod of the revision being scaled, as the autoscaler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// Its rotation label.
    pub rotation: Option<Rotation>,
    /// Ready.
    pub ready: bool,
    /// Has a deletion timestamp (already on its way out; not counted).
    pub terminating: bool,
    /// When it was labelled draining (its annotation); `None` for a pod
    /// labelled draining without one, which counts as long ago.
    pub draining_since: Option<Timestamp>,
    /// Its own load (the higher of its executor utilisation and KV-cache
    /// usage), when known; the least loaded serving pod leaves first.
    pub load: Option<f64>,
    /// The scheduler's message while the pod is Pending `Unschedulable`
    /// (no node has the GPUs, CPU or memory it asks for).
    pub unschedulable: Option<String>,
}

/// What the autoscaler needs.
#[derive(Clone, Debug)]
pub struct AutoscaleInput<'a> {
    /// The revision scaled (for the capacity report).
    pub revision: &'a str,
    /// The spec's bounds.
    pub replicas: &'a ReplicasSpec,
    /// Target and scale-in window.
    pub autoscaling: &'a AutoscalingSpec,
    /// The load.
    pub signals: &'a Signals,
    /// The pods of the revision being scaled (the stable one, or the first
    /// revision while it starts).
    pub pods: &'a [PodState],
    /// `status.autoscaling` as stored.
    pub memory: &'a AutoscalingStatus,
    /// The time of this pass.
    pub now: Timestamp,
    /// How long a draining pod stays out of rotation before it is removed
    /// (the traffic hand-off: the router stops sending within it).
    pub drain_delay: Duration,
}

/// Which way the serving count moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// More serving pods.
    Out,
    /// Fewer serving pods.
    In,
}

impl Direction {
    /// The `direction` label of `steward_operator_scale_events_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// What moved the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Executor utilisation.
    ExecutorUtilization,
    /// KV-cache usage.
    KvCacheUsage,
    /// The waiting queue.
    Queue,
    /// Every signal stayed low for `scaleInAfter`.
    LowUtilization,
    /// The spec's bounds changed (`min`, `max`).
    Bounds,
    /// An external autoscaler (`autoscaling.mode: external`) changed
    /// `replicas.min` through the scale subresource.
    External,
}

impl Cause {
    /// The `reason` label of `steward_operator_scale_events_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::ExecutorUtilization => "executor_utilization",
            Cause::KvCacheUsage => "kv_cache_usage",
            Cause::Queue => "queue",
            Cause::LowUtilization => "low_utilization",
            Cause::Bounds => "bounds",
            Cause::External => "external",
        }
    }
}

/// A change of the serving count, for the event and the metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleEvent {
    /// Which way.
    pub direction: Direction,
    /// Why.
    pub cause: Cause,
    /// Serving pods before.
    pub from: i32,
    /// Serving pods after.
    pub to: i32,
    /// Of the added pods, how many come from the warm pool (the rest
    /// cold-start).
    pub from_warm: i32,
    /// For people: the signal's value against its target, and the counts.
    pub message: String,
}

/// More serving pods are wanted than are ready: the rest are starting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColdStart {
    /// Serving pods wanted.
    pub wanted: i32,
    /// Ready pods that can serve (serving or warm, not draining).
    pub ready: i32,
}

/// Pods of the scaled revision that no node can take: scale-out holds
/// (no pile of Pending pods) until they are scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// Pods Pending `Unschedulable`.
    pub pending: i32,
    /// The scheduler's message for the first of them.
    pub message: String,
    /// The scheduler names `nvidia.com/gpu` (GPUs are what is short).
    pub gpu: bool,
    /// A scale-out this pass would have made, held: serving pods wanted.
    pub held_at: Option<i32>,
}

/// The resource whose shortage the scheduler names for GPU pods.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The autoscaler's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleDecision {
    /// `max` is above `min`, or the mode is external: the count moves
    /// (otherwise the plan is the bounds and no condition is shown).
    pub enabled: bool,
    /// `autoscaling.mode: external`: the count follows `replicas.min` as an
    /// external autoscaler writes it; the signals are not read.
    pub external: bool,
    /// Serving, warm and still-draining counts for the pool and the
    /// Deployment (whose size is `plan.total()`).
    pub plan: ScalePlan,
    /// The pod that leaves rotation this pass (label → draining).
    pub drain: Option<String>,
    /// Draining pods removed this pass: their Deployment no longer counts
    /// them, and their pod-deletion-cost makes the ReplicaSet remove
    /// exactly them.
    pub remove: Vec<String>,
    /// `status.autoscaling` to store.
    pub memory: AutoscalingStatus,
    /// Why signals could not be used, when they could not (the
    /// `MetricsUnavailable` condition): the count holds.
    pub metrics_unavailable: Option<String>,
    /// Serving pods wanted but not ready yet (`CapacityColdStarting`).
    pub cold_start: Option<ColdStart>,
    /// Pods no node can take (`CapacityShortfall`); scale-out holds.
    pub shortfall: Option<Shortfall>,
    /// The change of this pass, if any.
    pub event: Option<ScaleEvent>,
    /// When a time-based decision (a scale-in, a removal) is due.
    pub requeue_after: Option<Duration>,
    /// Demand and capacity in tokens and the cold-start projection
    /// (`status.capacity`), from a fresh snapshot only.
    pub capacity: Option<crate::crd::CapacityStatus>,
}

/// One signal's reading against its target.
struct Reading {
    cause: Cause,
    name: &'static str,
    value: Option<f64>,
    target: f64,
    percent: bool,
}

impl Reading {
    fn text(&self, v: f64) -> String {
        if self.percent {
            format!(
                "{} {:.0}% against {:.0}%",
                self.name,
                v * 100.0,
                self.target * 100.0
            )
        } else {
            format!("{} {v:.2} against {:.2}", self.name, self.target)
        }
    }
}

fn readings(load: &Load, target_utilization: i32) -> [Reading; 3] {
    let target = f64::from(target_utilization.clamp(1, 100)) / 100.0;
    [
        Reading {
            cause: Cause::ExecutorUtilization,
            name: "executor_utilization",
            value: load.executor,
            target,
            percent: true,
        },
        Reading {
            cause: Cause::KvCacheUsage,
            name: "kv_cache_usage",
            value: load.kv_cache,
            target,
            percent: true,
        },
        Reading {
            cause: Cause::Queue,
            name: "queue_waiting_per_pod",
            value: load.queue_per_pod,
            target: QUEUE_TARGET_PER_POD,
            percent: false,
        },
    ]
}

/// Time from `since` to `now`; zero when `since` is ahead of `now`.
fn since(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// What is left of `wait` after `from`, if anything.
fn left(from: Timestamp, now: Timestamp, wait: Duration) -> Option<Duration> {
    wait.checked_sub(since(from, now)).filter(|d| !d.is_zero())
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The serving count to change to, before the scale-in window.
enum Want {
    /// Hold the current count (no data, or nothing to do).
    Hold,
    /// More pods, now.
    Out { to: i32, cause: Cause, text: String },
    /// Fewer pods would do: after `window` (every signal low for
    /// `scaleInAfter`), or at once (`None`: an external autoscaler asked).
    Low {
        text: String,
        window: Option<Duration>,
    },
}

/// Decides the serving count from the signals (see the module docs).
pub fn autoscale(input: &AutoscaleInput<'_>) -> ScaleDecision {
    let external = input.autoscaling.mode == AutoscalingMode::External;
    let spec_bounds = Bounds::of(input.replicas);
    // External mode: `replicas.min` is the count asked for (written through
    // the scale subresource); the operator scales between 0 and `max` (when
    // set) to follow it.
    let (b, asked) = if external {
        let cap = input.replicas.max.unwrap_or(EXTERNAL_CAP).max(0);
        let asked = input.replicas.min.clamp(0, cap);
        (
            Bounds {
                min: 0,
                max: cap,
                warm: spec_bounds.warm,
            },
            Some(asked),
        )
    } else {
        (spec_bounds, None)
    };
    let now = input.now;
    let live: Vec<&PodState> = input.pods.iter().filter(|p| !p.terminating).collect();
    let draining: Vec<&PodState> = live
        .iter()
        .copied()
        .filter(|p| p.rotation == Some(Rotation::Draining))
        .collect();
    let others_ready = live
        .iter()
        .filter(|p| p.rotation != Some(Rotation::Draining))
        .all(|p| p.ready);

    // Draining pods: removed once out of rotation for the drain delay and
    // nothing else of the revision is unready.
    let mut remove = Vec::new();
    let mut requeue = None;
    for p in &draining {
        let wait = p
            .draining_since
            .and_then(|t| left(t, now, input.drain_delay));
        if wait.is_none() && others_ready {
            remove.push(p.name.clone());
        }
        requeue = earliest(requeue, wait);
    }
    let draining_kept = i32::try_from(draining.len() - remove.len()).unwrap_or(i32::MAX);

    let current = input
        .memory
        .serving
        .or(asked)
        .unwrap_or(b.min)
        .clamp(b.min, b.max);
    let mut memory = AutoscalingStatus {
        serving: Some(current),
        ..input.memory.clone()
    };
    let mut metrics_unavailable = None;
    let mut event = None;
    let mut drain = None;
    let mut serving = current;

    let enabled = external || b.max > b.min;
    let want = if let Some(asked) = asked {
        let text = format!("replicas.min is {asked} (autoscaling.mode: external)");
        match asked.cmp(&current) {
            std::cmp::Ordering::Greater => Want::Out {
                to: asked,
                cause: Cause::External,
                text,
            },
            std::cmp::Ordering::Less => Want::Low { text, window: None },
            std::cmp::Ordering::Equal => Want::Hold,
        }
    } else if !enabled {
        // No range to scale in: the bounds are the plan.
        Want::Hold
    } else {
        match input.signals {
            Signals::Unavailable(why) => {
                metrics_unavailable = Some(why.clone());
                Want::Hold
            }
            Signals::Fresh(load) => {
                let (want, missing) = from_load(load, input.autoscaling, current, b);
                if !missing.is_empty() {
                    let held = if matches!(want, Want::Out { .. }) {
                        "scale-in held"
                    } else {
                        "scaling held"
                    };
                    metrics_unavailable =
                        Some(format!("no data for {}: {held}", missing.join(", ")));
                }
                want
            }
        }
    };

    // Pods no node can take: asking for more would only pile up Pending
    // pods, so a scale-out holds until they are scheduled.
    let pending: Vec<&PodState> = live
        .iter()
        .copied()
        .filter(|p| p.unschedulable.is_some())
        .collect();
    let mut shortfall = pending.first().map(|p| {
        let message = p.unschedulable.clone().unwrap_or_default();
        Shortfall {
            pending: count(pending.iter()),
            gpu: message.contains(GPU_RESOURCE),
            message,
            held_at: None,
        }
    });
    let want = match (want, shortfall.as_mut()) {
        (Want::Out { to, .. }, Some(s)) => {
            s.held_at = Some(to);
            Want::Hold
        }
        (want, _) => want,
    };

    let stored = input.memory.serving;
    match want {
        Want::Out { to, cause, text } => {
            serving = to;
            let ready_warm = count(
                live.iter()
                    .filter(|p| p.ready && p.rotation == Some(Rotation::Warm)),
            );
            let from_warm = ready_warm.min(to - current);
            let message = format!(
                "{text}: serving {current} -> {to} ({from_warm} from the warm pool, {} cold-starting)",
                to - current - from_warm
            );
            memory.low_since = None;
            memory.last_scale_at = Some(Time(now));
            memory.last_scale_reason = Some(message.clone());
            event = Some(ScaleEvent {
                direction: Direction::Out,
                cause,
                from: current,
                to,
                from_warm,
                message,
            });
        }
        Want::Low { text, window } => {
            let low_since = input.memory.low_since.as_ref().map_or(now, |t| t.0);
            let wait = window.and_then(|w| left(low_since, now, w));
            let victim = (wait.is_none() && draining.is_empty())
                .then(|| victim(&live))
                .flatten();
            match victim {
                Some(v) => {
                    serving = current - 1;
                    let text = match window {
                        Some(w) => format!("{text} for {}", humantime::format_duration(w)),
                        None => text,
                    };
                    let who = match &v {
                        Leaving::Drains(name) => format!("{name} drains"),
                        Leaving::Unready => "a pod that is not ready goes".to_owned(),
                    };
                    let message = format!("{text}: serving {current} -> {serving} ({who})");
                    // The window starts again: one pod per window.
                    memory.low_since = None;
                    memory.last_scale_at = Some(Time(now));
                    memory.last_scale_reason = Some(message.clone());
                    event = Some(ScaleEvent {
                        direction: Direction::In,
                        cause: if window.is_some() {
                            Cause::LowUtilization
                        } else {
                            Cause::External
                        },
                        from: current,
                        to: serving,
                        from_warm: 0,
                        message,
                    });
                    if let Leaving::Drains(name) = v {
                        drain = Some(name);
                    }
                }
                None => {
                    memory.low_since = window.map(|_| Time(low_since));
                    requeue = earliest(requeue, wait);
                }
            }
        }
        Want::Hold => {
            memory.low_since = None;
            // A bounds change moves a stored count into `[min, max]` at
            // once; that is a scale event too.
            if let Some(before) = stored.filter(|s| *s != current) {
                let direction = if current > before {
                    Direction::Out
                } else {
                    Direction::In
                };
                let message = format!(
                    "replicas.min/max are {}/{}: serving {before} -> {current}",
                    b.min, b.max
                );
                memory.last_scale_at = Some(Time(now));
                memory.last_scale_reason = Some(message.clone());
                event = Some(ScaleEvent {
                    direction,
                    cause: Cause::Bounds,
                    from: before,
                    to: current,
                    from_warm: 0,
                    message,
                });
            }
        }
    }
    // Without a range there is nothing to remember: status stays as it
    // was before autoscaling existed.
    memory.serving = enabled.then_some(serving);

    let ready = count(live.iter().filter(|p| {
        p.ready && p.rotation != Some(Rotation::Draining) && drain.as_deref() != Some(&p.name)
    }));
    let cold_start = (enabled && serving > ready).then_some(ColdStart {
        wanted: serving,
        ready,
    });
    let draining_kept = draining_kept + i32::from(drain.is_some());
    // Capacity in tokens, and the cold-start rule: pods a rising load will
    // need within a cold start are kept warm now (built-in mode only).
    let assessment = match input.signals {
        Signals::Fresh(load) => Some(capacity::assess(&capacity::CapacityInput {
            revision: input.revision,
            load,
            target: f64::from(input.autoscaling.target_utilization.clamp(1, 100)) / 100.0,
            current,
            serving,
            warm: b.warm,
            max: b.max,
            early_allowed: !external && enabled && shortfall.is_none(),
        })),
        Signals::Unavailable(_) => None,
    };
    // Early warm pods are kept like serving ones: they go only once the
    // projection has stayed below the target for `scaleInAfter` (a noisy
    // slope must not start and stop pods that take minutes to load); a
    // scale-out that puts them in rotation uses them up; no data holds them.
    let allowed = !external && enabled && shortfall.is_none();
    let kept = input
        .memory
        .early_warm
        .unwrap_or(0)
        .saturating_sub((serving - current).max(0))
        .max(0);
    let asked = assessment.as_ref().map_or(0, |a| a.warm - b.warm).max(0);
    let kept_since = input.memory.early_since.as_ref().map_or(now, |t| t.0);
    let (early, early_since) = if !allowed {
        (0, None)
    } else if asked > 0 && asked >= kept {
        (asked, Some(now))
    } else if kept == 0 {
        (0, None)
    } else if assessment.is_none() {
        (kept, Some(kept_since))
    } else {
        match left(kept_since, now, input.autoscaling.scale_in_after.get()) {
            Some(wait) => {
                requeue = earliest(requeue, Some(wait));
                (kept, Some(kept_since))
            }
            None => (asked, (asked > 0).then_some(now)),
        }
    };
    memory.early_warm = (early > 0).then_some(early);
    memory.early_since = early_since.map(Time);
    let warm = b.warm.saturating_add(early);
    let mut assessment = assessment;
    if let Some(a) = assessment.as_mut() {
        if early > asked {
            a.status.message.push_str(&format!(
                "; {early} early warm pod(s) held until the projection stays below the target for scaleInAfter"
            ));
        }
        a.status.early_warm = early;
    }
    ScaleDecision {
        enabled,
        external,
        plan: ScalePlan {
            serving,
            warm,
            draining: draining_kept,
        },
        drain,
        remove,
        memory,
        metrics_unavailable,
        cold_start,
        shortfall,
        event,
        requeue_after: requeue,
        capacity: assessment.map(|a| a.status),
    }
}

/// The serving count the readings ask for, and the signals with no data.
fn from_load(
    load: &Load,
    autoscaling: &AutoscalingSpec,
    current: i32,
    b: Bounds,
) -> (Want, Vec<&'static str>) {
    let target_utilization = autoscaling.target_utilization;
    let readings = readings(load, target_utilization);
    let missing: Vec<&'static str> = readings
        .iter()
        .filter(|r| r.value.is_none())
        .map(|r| r.name)
        .collect();
    // The highest answer; the first signal wins ties (utilisation first).
    let mut best: Option<(i32, &Reading, f64)> = None;
    for r in &readings {
        let Some(v) = r.value else { continue };
        let d = rule::desired(current, v, r.target);
        if best.is_none_or(|(bd, _, _)| d > bd) {
            best = Some((d, r, v));
        }
    }
    let Some((desired, reading, value)) = best else {
        return (Want::Hold, missing);
    };
    let to = desired.clamp(b.min, b.max);
    let want = if to > current {
        Want::Out {
            to,
            cause: reading.cause,
            text: reading.text(value),
        }
    } else if missing.is_empty()
        && current > b.min
        && readings.iter().all(|r| {
            r.value
                .is_some_and(|v| rule::band(v, r.target) == rule::Band::Low)
        })
        && to < current
    {
        let text = readings
            .iter()
            .filter_map(|r| r.value.map(|v| r.text(v)))
            .collect::<Vec<_>>()
            .join(", ");
        Want::Low {
            text: format!("low ({text})"),
            window: Some(autoscaling.scale_in_after.get()),
        }
    } else {
        Want::Hold
    };
    (want, missing)
}

/// Who leaves on a scale-in.
enum Leaving {
    /// This serving pod goes to draining (its streams finish first).
    Drains(String),
    /// A pod that is not ready (starting, or Pending with nowhere to run):
    /// the Deployment shrinks and the ReplicaSet removes such a pod before
    /// any ready one, so nothing needs to drain.
    Unready,
}

/// Who leaves on a scale-in (nobody while no ready pod serves): a pod that
/// is not ready if there is one (it serves nothing); otherwise the serving
/// pod that is ready, in
/// rotation and the least loaded; pods with no known load count as more
/// loaded than any known one; ties go to the last by name (the pool keeps
/// serving pods by name, so the others stay where they are).
fn victim(live: &[&PodState]) -> Option<Leaving> {
    let mut serving = live
        .iter()
        .filter(|p| p.ready && p.rotation == Some(Rotation::Serving))
        .peekable();
    // Nothing ready serves: the low readings say nothing; hold.
    serving.peek()?;
    if live
        .iter()
        .any(|p| !p.ready && p.rotation != Some(Rotation::Draining))
    {
        return Some(Leaving::Unready);
    }
    serving
        .min_by(|a, b| {
            let load = |p: &PodState| p.load.filter(|v| v.is_finite());
            match (load(a), load(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
            .then_with(|| b.name.cmp(&a.name))
        })
        .map(|p| Leaving::Drains(p.name.clone()))
}

fn count<T>(it: impl Iterator<Item = T>) -> i32 {
    i32::try_from(it.count()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
