//! Edge throttling: a token bucket and a concurrency cap per (service,
//! tenant), and a global concurrency cap.
//!
//! The bucket and the admission decision are pure over an explicit `now`.
//! The tenant table is bounded: idle tenants are evicted when it fills, and
//! if every tracked tenant is busy a new tenant is refused (counted as
//! `tenant_table_full`) rather than growing without limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::index::{ObjKey, TenantLimits};

/// Classic token bucket: `rate` tokens per second, at most `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// The longest `Retry-After` a throttled tenant is told to wait.
const LONGEST_WAIT: Duration = Duration::from_secs(60);

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self {
            // NaN would refill the bucket in full on every request.
            rate: if rate.is_nan() { 0.0 } else { rate },
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // A rate that is zero, negative, NaN or so small that the wait
            // overflows a Duration gets the longest wait we advertise,
            // never a panic (the rate comes from a tenant's spec).
            let wait = (1.0 - self.tokens) / self.rate;
            Err(Duration::try_from_secs_f64(wait)
                .ok()
                .filter(|_| self.rate > 0.0)
                .map_or(LONGEST_WAIT, |d| d.min(LONGEST_WAIT)))
        }
    }
}

/// Why a request was throttled (also the metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleReason {
    TenantRate,
    TenantConcurrency,
    TenantTableFull,
    GlobalConcurrency,
    /// The bytes of request bodies being read would exceed their budget.
    BodyBudget,
}

impl ThrottleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantRate => "tenant_rate",
            Self::TenantConcurrency => "tenant_concurrency",
            Self::TenantTableFull => "tenant_table_full",
            Self::GlobalConcurrency => "global_concurrency",
            Self::BodyBudget => "body_budget",
        }
    }
}

/// A refusal with the `Retry-After` to send (whole seconds, at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    pub reason: ThrottleReason,
    pub retry_after_secs: u64,
}

fn retry_after(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

#[derive(Debug)]
struct TenantEntry {
    bucket: Option<TokenBucket>,
    limits: TenantLimits,
    concurrent: u32,
    last_seen: Instant,
}

type TenantKey = (ObjKey, String);

/// Per-tenant admission state.
#[derive(Debug)]
pub struct TenantLimiter {
    entries: Mutex<HashMap<TenantKey, TenantEntry>>,
    max_tenants: usize,
}

impl TenantLimiter {
    pub fn new(max_tenants: usize) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            max_tenants: max_tenants.max(1),
        })
    }

    /// Admits one request of `tenant` on `service` under `limits`, or refuses it.
    pub fn admit(
        self: &Arc<Self>,
        service: &ObjKey,
        tenant: &str,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<TenantPermit, Throttled> {
        let unlimited = limits.requests_per_second.is_none() && limits.max_concurrent.is_none();
        if unlimited {
            return Ok(TenantPermit { release: None });
        }
        let Ok(mut entries) = self.entries.lock() else {
            return Ok(TenantPermit { release: None });
        };
        let key: TenantKey = (service.clone(), tenant.to_string());
        if !entries.contains_key(&key) && entries.len() >= self.max_tenants {
            evict_idle(&mut entries, self.max_tenants / 2);
            if entries.len() >= self.max_tenants {
                return Err(Throttled {
                    reason: ThrottleReason::TenantTableFull,
                    retry_after_secs: 1,
                });
            }
        }
        let entry = entries.entry(key.clone()).or_insert_with(|| TenantEntry {
            bucket: None,
            limits: TenantLimits::default(),
            concurrent: 0,
            last_seen: now,
        });
        if entry.limits != *limits {
            // Limits changed in the spec (or first use): start a fresh bucket.
            entry.bucket = limits.requests_per_second.map(|rate| {
                let burst = limits.burst.map(f64::from).unwrap_or(rate);
                TokenBucket::new(rate, burst, now)
            });
            entry.limits = limits.clone();
        }
        entry.last_seen = now;
        if let Some(max) = limits.max_concurrent {
            if entry.concurrent >= max {
                return Err(Throttled {
                    reason: ThrottleReason::TenantConcurrency,
                    retry_after_secs: 1,
                });
            }
        }
        if let Some(bucket) = entry.bucket.as_mut() {
            if let Err(wait) = bucket.try_take(now) {
                return Err(Throttled {
                    reason: ThrottleReason::TenantRate,
                    retry_after_secs: retry_after(wait),
                });
            }
        }
        entry.concurrent += 1;
        Ok(TenantPermit {
            release: Some((self.clone(), key)),
        })
    }

    pub fn tracked(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    fn release(&self, key: &TenantKey) {
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(e) = entries.get_mut(key) {
                e.concurrent = e.concurrent.saturating_sub(1);
            }
        }
    }
}

fn evict_idle(entries: &mut HashMap<TenantKey, TenantEntry>, keep: usize) {
    let mut idle: Vec<(Instant, TenantKey)> = entries
        .iter()
        .filter(|(_, e)| e.concurrent == 0)
        .map(|(k, e)| (e.last_seen, k.clone()))
        .collect();
    idle.sort_by_key(|(t, _)| *t);
    let excess = entries.len().saturating_sub(keep);
    for (_, k) in idle.into_iter().take(excess) {
        entries.remove(&k);
    }
}

/// Holds one unit of a tenant's concurrency until dropped.
#[derive(Debug)]
pub struct TenantPermit {
    release: Option<(Arc<TenantLimiter>, TenantKey)>,
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        if let Some((limiter, key)) = self.release.take() {
            limiter.release(&key);
        }
    }
}

/// The router-wide concurrency cap.
#[derive(Clone, Debug)]
pub struct GlobalLimit {
    sem: Arc<Semaphore>,
}

impl GlobalLimit {
    pub fn new(max: usize) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }

    pub fn try_acquire(&self) -> Result<OwnedSemaphorePermit, Throttled> {
        self.sem.clone().try_acquire_owned().map_err(|_| Throttled {
            reason: ThrottleReason::GlobalConcurrency,
            retry_after_secs: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rps: Option<f64>, burst: Option<u32>, conc: Option<u32>) -> TenantLimits {
        TenantLimits {
            requests_per_second: rps,
            burst,
            max_concurrent: conc,
        }
    }

    #[test]
    fn degenerate_rates_give_the_longest_wait_not_a_panic() {
        let t0 = Instant::now();
        for rate in [0.0, -1.0, f64::NAN, 1e-300, f64::MIN_POSITIVE] {
            let mut b = TokenBucket::new(rate, 1.0, t0);
            assert!(b.try_take(t0).is_ok(), "rate {rate}: the burst is served");
            assert_eq!(b.try_take(t0), Err(LONGEST_WAIT), "rate {rate}");
        }
        let mut b = TokenBucket::new(0.5, 1.0, t0);
        assert!(b.try_take(t0).is_ok());
        assert_eq!(b.try_take(t0), Err(Duration::from_secs(2)));
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).expect_err("burst spent");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6);
        assert!(b.try_take(t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn tenant_over_rate_gets_retry_after_and_others_are_unaffected() {
        let lim = TenantLimiter::new(100);
        let svc = ObjKey::new("ns", "chat");
        let l = limits(Some(1.0), Some(2), None);
        let now = Instant::now();
        let _a = lim.admit(&svc, "a", &l, now).expect("1");
        let _b = lim.admit(&svc, "a", &l, now).expect("2");
        let refused = lim.admit(&svc, "a", &l, now).expect_err("over burst");
        assert_eq!(refused.reason, ThrottleReason::TenantRate);
        assert_eq!(refused.retry_after_secs, 1);
        assert!(lim.admit(&svc, "b", &l, now).is_ok());
    }

    #[test]
    fn tenant_concurrency_frees_when_the_permit_drops() {
        let lim = TenantLimiter::new(100);
        let svc = ObjKey::new("ns", "chat");
        let l = limits(None, None, Some(1));
        let now = Instant::now();
        let p = lim.admit(&svc, "a", &l, now).expect("first");
        assert_eq!(
            lim.admit(&svc, "a", &l, now).expect_err("second").reason,
            ThrottleReason::TenantConcurrency
        );
        drop(p);
        assert!(lim.admit(&svc, "a", &l, now).is_ok());
    }

    #[test]
    fn tenant_table_stays_bounded_by_evicting_idle_tenants() {
        let lim = TenantLimiter::new(4);
        let svc = ObjKey::new("ns", "chat");
        let l = limits(Some(100.0), None, None);
        let now = Instant::now();
        for i in 0..50 {
            lim.admit(&svc, &format!("t{i}"), &l, now)
                .expect("idle ones are evicted");
            assert!(lim.tracked() <= 4);
        }
    }

    #[test]
    fn full_table_of_busy_tenants_refuses_new_ones() {
        let lim = TenantLimiter::new(2);
        let svc = ObjKey::new("ns", "chat");
        let l = limits(None, None, Some(5));
        let now = Instant::now();
        let _a = lim.admit(&svc, "a", &l, now).expect("a");
        let _b = lim.admit(&svc, "b", &l, now).expect("b");
        assert_eq!(
            lim.admit(&svc, "c", &l, now).expect_err("full").reason,
            ThrottleReason::TenantTableFull
        );
    }

    #[test]
    fn global_cap_refuses_beyond_max() {
        let g = GlobalLimit::new(1);
        let p = g.try_acquire().expect("first");
        assert!(g.try_acquire().is_err());
        drop(p);
        assert!(g.try_acquire().is_ok());
    }
}
