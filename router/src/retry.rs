//! Retry policy: which failures are retried, how many, and after how long.
//!
//! Only transient failures before the first byte are retryable: the
//! connection refused or reset before a response, a 503 (engine draining or
//! shedding) and a 429 (the engine's own cap; the router's tenant 429s are
//! answered before any engine is tried). Everything else, including any
//! other 4xx and any failure after a byte was streamed, goes to the client.
//! A retry also needs a token from the [`RetryBudget`]: retries may be at
//! most `ratio` of the requests in the recent window, plus a small floor so
//! a quiet router can still retry.

use std::time::{Duration, Instant};

/// A failure seen before the response's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyFailure {
    /// TCP connect refused, reset or timed out.
    Connect,
    /// The connection closed or reset after the request was sent, before a response head.
    ClosedBeforeResponse,
    /// No response head within the first-byte timeout.
    FirstByteTimeout,
    /// A response head with this status.
    Status(u16),
}

impl EarlyFailure {
    /// Stable reason label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ClosedBeforeResponse => "closed_before_response",
            Self::FirstByteTimeout => "first_byte_timeout",
            Self::Status(429) => "engine_429",
            Self::Status(503) => "engine_503",
            Self::Status(_) => "status",
        }
    }
}

/// Whether this failure may be retried on another endpoint.
pub fn is_retryable(f: EarlyFailure) -> bool {
    match f {
        EarlyFailure::Connect | EarlyFailure::ClosedBeforeResponse => true,
        // A timeout may mean the engine is working on it; retrying doubles cost.
        EarlyFailure::FirstByteTimeout => false,
        EarlyFailure::Status(s) => s == 429 || s == 503,
    }
}

/// Jittered back-off: uniform in [base/2, 3·base/2]; `unit` is uniform in [0,1).
pub fn backoff(base: Duration, unit: f64) -> Duration {
    base.mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

/// Retry budget configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per request in the window (default 0.1).
    pub ratio: f64,
    /// Retries always allowed per second of window, regardless of traffic.
    pub min_per_second: f64,
    /// Length of the sliding window.
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.1,
            min_per_second: 1.0,
            window: Duration::from_secs(10),
        }
    }
}

const SLOTS: usize = 10;

/// A sliding-window retry budget in `SLOTS` buckets.
#[derive(Debug)]
pub struct RetryBudget {
    cfg: BudgetConfig,
    start: Instant,
    /// (slot epoch, requests, retries)
    slots: [(u64, u64, u64); SLOTS],
}

impl RetryBudget {
    pub fn new(cfg: BudgetConfig, now: Instant) -> Self {
        Self {
            cfg,
            start: now,
            slots: [(u64::MAX, 0, 0); SLOTS],
        }
    }

    fn slot_len(&self) -> Duration {
        (self.cfg.window / SLOTS as u32).max(Duration::from_millis(1))
    }

    fn slot(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let epoch = (now.saturating_duration_since(self.start).as_nanos()
            / self.slot_len().as_nanos()) as u64;
        let s = &mut self.slots[(epoch % SLOTS as u64) as usize];
        if s.0 != epoch {
            *s = (epoch, 0, 0);
        }
        s
    }

    fn totals(&self, now: Instant) -> (u64, u64) {
        let epoch = (now.saturating_duration_since(self.start).as_nanos()
            / self.slot_len().as_nanos()) as u64;
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 + (SLOTS as u64) > epoch && s.0 <= epoch)
            .fold((0, 0), |(r, t), s| (r + s.1, t + s.2))
    }

    /// Counts one client request (not retries).
    pub fn record_request(&mut self, now: Instant) {
        self.slot(now).1 += 1;
    }

    /// Takes a retry token if the budget allows one.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        let allowed = self.cfg.ratio * requests as f64
            + self.cfg.min_per_second * self.cfg.window.as_secs_f64();
        if (retries as f64) + 1.0 <= allowed {
            self.slot(now).2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(is_retryable(EarlyFailure::Connect));
        assert!(is_retryable(EarlyFailure::ClosedBeforeResponse));
        assert!(is_retryable(EarlyFailure::Status(503)));
        assert!(is_retryable(EarlyFailure::Status(429)));
        for s in [400, 401, 404, 413, 422, 500, 502, 504] {
            assert!(
                !is_retryable(EarlyFailure::Status(s)),
                "{s} must not be retried"
            );
        }
        assert!(!is_retryable(EarlyFailure::FirstByteTimeout));
    }

    #[test]
    fn budget_caps_retries_at_the_ratio_of_recent_requests() {
        let cfg = BudgetConfig {
            ratio: 0.1,
            min_per_second: 0.0,
            window: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut b = RetryBudget::new(cfg, t0);
        let mut granted = 0;
        for _ in 0..1000 {
            b.record_request(t0);
            if b.try_withdraw(t0) {
                granted += 1;
            }
        }
        assert_eq!(granted, 100);
    }

    #[test]
    fn budget_floor_allows_retries_on_a_quiet_router_and_window_slides() {
        let cfg = BudgetConfig {
            ratio: 0.1,
            min_per_second: 0.2,
            window: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut b = RetryBudget::new(cfg, t0);
        assert!(b.try_withdraw(t0));
        assert!(b.try_withdraw(t0));
        assert!(!b.try_withdraw(t0), "floor of 2 per window spent");
        assert!(
            b.try_withdraw(t0 + Duration::from_secs(11)),
            "old retries left the window"
        );
    }

    #[test]
    fn backoff_is_jittered_around_the_base() {
        let base = Duration::from_millis(20);
        assert_eq!(backoff(base, 0.0), Duration::from_millis(10));
        assert_eq!(backoff(base, 0.5), Duration::from_millis(20));
        assert!(backoff(base, 0.999) < Duration::from_millis(30));
    }
}
