//! Issues requests by an arrival pattern until a bound is reached.
//!
//! Two patterns: a closed loop of `C` workers (each sends its next request
//! when the previous one ends), and an open loop where requests arrive at a
//! rate (Poisson or evenly spaced) regardless of how fast the target answers.
//! The open loop caps requests in flight; an arrival over the cap is counted
//! as `skipped` rather than delayed, so a slow target cannot silently lower
//! the offered rate.
//!
//! A run always ends by itself: it stops issuing at `--requests` or at
//! `--duration`, then waits at most `grace` for requests in flight, and
//! abandons (and counts) whatever is still running after that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{execute, Outcome, Target};
use crate::workload::Workload;

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// A closed loop of this many concurrent workers.
    Concurrency(usize),
    /// An open loop at `per_s` requests per second.
    Rate {
        per_s: f64,
        poisson: bool,
        max_in_flight: usize,
    },
}

/// When the run stops issuing, and how long it waits afterwards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub grace: Duration,
}

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct RunResult {
    pub outcomes: Vec<Outcome>,
    /// From the first send to the last completion (or the abandon point).
    pub wall: Duration,
    /// Open-loop arrivals dropped because `max_in_flight` were running.
    pub skipped: u64,
    /// Requests still running when the grace period ended.
    pub abandoned: u64,
}

/// The gap before the next open-loop arrival.
pub fn next_gap<R: Rng + ?Sized>(rng: &mut R, per_s: f64, poisson: bool) -> Duration {
    let mean = 1.0 / per_s;
    let secs = if poisson {
        -(1.0 - rng.random::<f64>()).ln() * mean
    } else {
        mean
    };
    Duration::from_secs_f64(secs.clamp(0.0, 3600.0))
}

struct Shared {
    target: Target,
    workload: Workload,
    start: Instant,
    outcomes: Mutex<Vec<Outcome>>,
}

impl Shared {
    async fn one(&self, index: u64) {
        let planned = self.workload.plan(index);
        let o = execute(&self.target, planned, self.start, self.workload.stream).await;
        if let Ok(mut v) = self.outcomes.lock() {
            v.push(o);
        }
    }
}

/// Runs the load and returns every finished request.
pub async fn run(
    target: Target,
    workload: Workload,
    arrival: Arrival,
    bounds: Bounds,
) -> RunResult {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        target,
        workload,
        start,
        outcomes: Mutex::new(Vec::new()),
    });
    let deadline = bounds.duration.map(|d| start + d);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let mut skipped = 0u64;

    match arrival {
        Arrival::Concurrency(c) => {
            for _ in 0..c.max(1) {
                let shared = shared.clone();
                let next = next.clone();
                tasks.spawn(async move {
                    loop {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if bounds.requests.is_some_and(|n| i >= n) {
                            break;
                        }
                        shared.one(i).await;
                    }
                });
            }
            // Issuing stops inside the workers; the grace clock starts at the deadline.
            let stop_at = deadline.map(|d| d + bounds.grace);
            wait_all(&mut tasks, stop_at).await;
        }
        Arrival::Rate {
            per_s,
            poisson,
            max_in_flight,
        } => {
            let mut rng = StdRng::seed_from_u64(shared.workload.seed.wrapping_add(0xA11));
            let mut at = start;
            let mut i = 0u64;
            loop {
                if bounds.requests.is_some_and(|n| i >= n) {
                    break;
                }
                if deadline.is_some_and(|d| at >= d) {
                    break;
                }
                tokio::time::sleep_until(at).await;
                while tasks.try_join_next().is_some() {}
                if tasks.len() >= max_in_flight {
                    skipped += 1;
                } else {
                    let shared = shared.clone();
                    let index = i;
                    tasks.spawn(async move { shared.one(index).await });
                }
                i += 1;
                at += next_gap(&mut rng, per_s, poisson);
            }
            wait_all(&mut tasks, Some(Instant::now() + bounds.grace)).await;
        }
    }

    let abandoned = tasks.len() as u64;
    tasks.abort_all();
    let outcomes = shared
        .outcomes
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    let last_end = outcomes.iter().map(|o| o.ended).max().unwrap_or_default();
    let wall = if abandoned > 0 {
        start.elapsed()
    } else {
        last_end
    };
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "requests still running at the end of the grace period were abandoned"
        );
    }
    RunResult {
        outcomes,
        wall,
        skipped,
        abandoned,
    }
}

async fn wait_all(tasks: &mut JoinSet<()>, stop_at: Option<Instant>) {
    loop {
        let next = match stop_at {
            Some(t) => match tokio::time::timeout_at(t, tasks.join_next()).await {
                Ok(n) => n,
                Err(_) => return,
            },
            None => tasks.join_next().await,
        };
        if next.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_to_the_inverse_rate() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| next_gap(&mut rng, 200.0, true).as_secs_f64())
            .sum();
        let mean = total / f64::from(n);
        assert!((mean - 0.005).abs() < 0.0003, "mean gap {mean}");
    }

    #[test]
    fn constant_gaps_are_exact() {
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(next_gap(&mut rng, 4.0, false), Duration::from_millis(250));
    }
}
