//! Capacity in tokens (Little's law) and the cold-start rule.
//!
//! Pure, over one fresh snapshot's [`Demand`]:
//! - **Capacity**: demand is the revision's generated tokens per second and
//!   its sequences in flight (Little's law: in flight = arrival rate × time
//!   in the system, so `in_flight / requests_per_second` is the mean time a
//!   request spends); a pod's measured capacity is its tokens per second of
//!   model-step time at the batch it runs now; the serving pods the demand
//!   needs at the target are `ceil(demand / (pod capacity × target))`. That
//!   is the number a platform team checks against `replicas.max`. It is
//!   shown, not obeyed: a batch grows with load, so a pod's capacity at a
//!   small batch understates what it can do at a large one.
//! - **Cold start**: a pod takes `cold_start_seconds` (the engine's own
//!   start-to-ready time, the slowest pod of the revision) to serve. If
//!   utilisation, rising at its current slope, would reach the target
//!   within that time, the pods that projection needs are started now as
//!   warm pods (ready, out of rotation), so that when the reading does
//!   reach the target the scale-out is a label flip, not a cold start. The
//!   warm pool is `max(replicas.warm, pods the projection needs)`, never
//!   more than `replicas.max` serving would use; with a falling or flat
//!   trend it is `replicas.warm` again (the Deployment shrinks and the warm
//!   pods' deletion cost makes the ReplicaSet remove warm pods first).

use super::{rule, Load};
use crate::crd::CapacityStatus;

/// What the assessment needs besides the load.
#[derive(Clone, Copy, Debug)]
pub struct CapacityInput<'a> {
    /// The revision measured.
    pub revision: &'a str,
    /// The readings of the fresh snapshot.
    pub load: &'a Load,
    /// `targetUtilization` as a fraction (0.7).
    pub target: f64,
    /// Serving pods the readings were taken on (before this pass).
    pub current: i32,
    /// Serving pods after this pass's decision.
    pub serving: i32,
    /// `replicas.warm`.
    pub warm: i32,
    /// `replicas.max`.
    pub max: i32,
    /// Whether the cold-start rule may add warm pods: built-in autoscaling
    /// with a range, fresh signals, nothing unschedulable.
    pub early_allowed: bool,
}

/// The report and the warm pool to keep.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    /// `status.capacity`.
    pub status: CapacityStatus,
    /// Warm pods to keep: `replicas.warm`, or more ahead of a projected
    /// scale-out.
    pub warm: i32,
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

fn whole(v: f64) -> i64 {
    // Finite and rounded; far beyond any real rate.
    v.round().clamp(-1e15, 1e15) as i64
}

/// Assesses demand, capacity and the cold-start projection.
pub fn assess(input: &CapacityInput<'_>) -> Assessment {
    let d = &input.load.demand;
    let demand = finite(d.tokens_per_second).map(|v| v.max(0.0));
    let pod = finite(d.pod_tokens_per_second).filter(|v| *v > 0.0);
    let in_flight = finite(d.in_flight).map(|v| v.max(0.0));
    let rps = finite(d.requests_per_second).filter(|v| *v > 0.0);
    let target = if input.target.is_finite() && input.target > 0.0 {
        input.target
    } else {
        0.7
    };
    let pods_needed = match (demand, pod) {
        (Some(t), Some(p)) => {
            let n = (t / (p * target) - 1e-9).ceil().max(0.0);
            Some(if n >= f64::from(i32::MAX) {
                i32::MAX
            } else {
                n as i32
            })
        }
        _ => None,
    };
    let utilization = [input.load.executor, input.load.kv_cache]
        .into_iter()
        .filter_map(finite)
        .reduce(f64::max);
    let lead = finite(d.cold_start_seconds).filter(|v| *v >= 0.0);
    let slope = finite(d.trend_per_second);
    let projected = match (utilization, lead, slope) {
        (Some(u), Some(l), Some(s)) => Some((u + s.max(0.0) * l).max(0.0)),
        _ => None,
    };
    // Pods the projected reading needs beyond the serving count decided
    // now: kept warm (started now, in rotation only at the crossing).
    let ahead = match projected {
        Some(p) if input.early_allowed && rule::band(p, target) == rule::Band::High => {
            let then = rule::desired(input.current, p, target).min(input.max.max(0));
            (then - input.serving).max(0)
        }
        _ => 0,
    };
    let warm = input.warm.max(0).max(ahead);
    let early = warm - input.warm.max(0);

    let mut parts = Vec::new();
    match demand {
        Some(t) => {
            let mut s = format!("demand {t:.0} tok/s");
            if let Some(l) = in_flight {
                s.push_str(&format!(", {l:.1} sequences in flight"));
                if let Some(r) = rps {
                    s.push_str(&format!(" ({r:.2} req/s × {:.1} s each)", l / r));
                }
            }
            parts.push(s);
        }
        None => parts.push("no demand reading".to_owned()),
    }
    match (pod, pods_needed) {
        (Some(p), Some(n)) => parts.push(format!(
            "a pod makes {p:.0} tok/s at its current batch, so {n} serving pod(s) at the {:.0}% target (max {})",
            target * 100.0,
            input.max
        )),
        _ => parts.push("no per-pod capacity yet (no model steps in the window)".to_owned()),
    }
    match (utilization, lead, slope, projected) {
        (Some(u), Some(l), Some(s), Some(p)) => {
            let mut t = format!(
                "utilisation {:.0}% moving {:+.1}%/min; a pod starts in {l:.1} s, by then {:.0}%",
                u * 100.0,
                s * 6000.0,
                p * 100.0
            );
            if early > 0 {
                t.push_str(&format!(
                    ": {warm} warm pod(s) kept ({early} beyond replicas.warm) for the projected scale-out"
                ));
            }
            parts.push(t);
        }
        _ => parts.push(
            "no cold-start projection (needs utilisation, its trend and a measured start time)"
                .to_owned(),
        ),
    }

    Assessment {
        status: CapacityStatus {
            revision: input.revision.to_owned(),
            demand_tokens_per_second: demand.map(whole),
            in_flight: in_flight.map(whole),
            requests_per_second: rps.map(|r| format!("{r:.2}")),
            pod_tokens_per_second: pod.map(whole),
            pods_needed,
            cold_start_seconds: lead.map(|l| whole(l.ceil())),
            utilization_trend: slope.map(|s| format!("{:+.1}%/min", s * 6000.0)),
            projected_utilization: projected.map(|p| format!("{:.0}%", p * 100.0)),
            early_warm: early,
            message: parts.join("; "),
        },
        warm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::Demand;

    fn load(u: f64, demand: Demand) -> Load {
        Load {
            executor: Some(u),
            kv_cache: Some(u / 2.0),
            queue_per_pod: Some(0.0),
            demand,
        }
    }

    fn input<'a>(l: &'a Load, current: i32, serving: i32, warm: i32) -> CapacityInput<'a> {
        CapacityInput {
            revision: "r1",
            load: l,
            target: 0.7,
            current,
            serving,
            warm,
            max: 6,
            early_allowed: true,
        }
    }

    fn demand(tps: f64, pod: f64, cold: f64, slope: f64) -> Demand {
        Demand {
            tokens_per_second: Some(tps),
            requests_per_second: Some(2.0),
            in_flight: Some(8.0),
            pod_tokens_per_second: Some(pod),
            cold_start_seconds: Some(cold),
            trend_per_second: Some(slope),
        }
    }

    #[test]
    fn pods_needed_is_demand_over_a_pods_capacity_at_the_target() {
        // 900 tok/s; a pod makes 400 tok/s busy: 900 / (400 × 0.7) = 3.2 -> 4.
        let l = load(0.5, demand(900.0, 400.0, 20.0, 0.0));
        let a = assess(&input(&l, 3, 3, 1));
        assert_eq!(a.status.pods_needed, Some(4));
        assert_eq!(a.status.demand_tokens_per_second, Some(900));
        assert_eq!(a.status.pod_tokens_per_second, Some(400));
        assert_eq!(a.status.in_flight, Some(8));
        assert_eq!(a.status.requests_per_second.as_deref(), Some("2.00"));
        // Little's law: 8 in flight at 2 req/s is 4 s each.
        assert!(
            a.status.message.contains("2.00 req/s × 4.0 s each"),
            "{}",
            a.status.message
        );
        assert!(a
            .status
            .message
            .contains("4 serving pod(s) at the 70% target (max 6)"));
        // Exactly at a whole number: no extra pod from float noise.
        let l = load(0.5, demand(0.7 * 400.0 * 3.0, 400.0, 20.0, 0.0));
        assert_eq!(assess(&input(&l, 3, 3, 1)).status.pods_needed, Some(3));
    }

    #[test]
    fn idle_pods_have_no_capacity_reading_and_nothing_is_made_up() {
        let mut d = demand(0.0, 400.0, 20.0, 0.0);
        d.pod_tokens_per_second = None;
        let l = load(0.0, d);
        let a = assess(&input(&l, 2, 2, 1));
        assert_eq!(a.status.pods_needed, None);
        assert_eq!(a.status.pod_tokens_per_second, None);
        assert_eq!(a.status.demand_tokens_per_second, Some(0));
        let a = assess(&input(&Load::default(), 2, 2, 1));
        assert_eq!(a.status.demand_tokens_per_second, None);
        assert_eq!(a.status.projected_utilization, None);
        assert_eq!(a.warm, 1);
        for bad in [f64::NAN, f64::INFINITY, -5.0] {
            let l = load(0.5, demand(100.0, bad, 20.0, 0.0));
            assert_eq!(
                assess(&input(&l, 2, 2, 1)).status.pods_needed,
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_rise_that_reaches_the_target_within_a_cold_start_starts_pods_now() {
        // 2 serving at 60%, +1%/s, pods start in 20 s: 80% by then, which
        // needs ceil(2 × 0.8 / 0.7) = 3 serving: one pod more than now.
        // The warm pool (1) already covers it: nothing early.
        let l = load(0.6, demand(100.0, 400.0, 20.0, 0.01));
        let a = assess(&input(&l, 2, 2, 1));
        assert_eq!(a.status.projected_utilization.as_deref(), Some("80%"));
        assert_eq!((a.warm, a.status.early_warm), (1, 0));
        // Faster, +2%/s: 100% by then, ceil(2 / 0.7) = 3... 2 × 1.0 / 0.7
        // = 2.86 -> 3; at +4%/s: 140% -> 4 serving, two more: warm 2.
        let l = load(0.6, demand(100.0, 400.0, 20.0, 0.04));
        let a = assess(&input(&l, 2, 2, 1));
        assert_eq!((a.warm, a.status.early_warm), (2, 1));
        assert!(
            a.status
                .message
                .contains("2 warm pod(s) kept (1 beyond replicas.warm)"),
            "{}",
            a.status.message
        );
        // Without a warm pool at all, the projection alone keeps pods warm.
        let a = assess(&input(&l, 2, 2, 0));
        assert_eq!((a.warm, a.status.early_warm), (2, 2));
    }

    #[test]
    fn flat_or_falling_load_and_slow_rises_keep_the_spec_pool() {
        for slope in [0.0, -0.02, 0.001] {
            let l = load(0.6, demand(100.0, 400.0, 20.0, slope));
            let a = assess(&input(&l, 2, 2, 1));
            assert_eq!((a.warm, a.status.early_warm), (1, 0), "slope {slope}");
        }
        // Unknown start time or trend: no projection, the spec's pool.
        let mut d = demand(100.0, 400.0, 20.0, 0.05);
        d.cold_start_seconds = None;
        let l = load(0.6, d);
        assert_eq!(assess(&input(&l, 2, 2, 0)).warm, 0);
    }

    #[test]
    fn early_pods_never_exceed_what_max_serving_would_use_and_obey_the_switch() {
        // A steep rise asks for far more, capped at max (6) - serving (2).
        let l = load(0.6, demand(100.0, 400.0, 60.0, 0.05));
        let a = assess(&input(&l, 2, 2, 1));
        assert_eq!(a.warm, 4);
        // Once the scale-out happened (serving 4 from 2), only the rest.
        let a = assess(&input(&l, 2, 4, 1));
        assert_eq!(a.warm, 2);
        // Not allowed (external mode, stale data, pods unschedulable).
        let mut i = input(&l, 2, 2, 1);
        i.early_allowed = false;
        assert_eq!(assess(&i).warm, 1);
        assert!(
            assess(&i).status.projected_utilization.is_some(),
            "still shown"
        );
    }
}
