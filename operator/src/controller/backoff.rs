//! Per-object back-off for failed passes: the delay doubles with each
//! failure of the same object in a row, up to a ceiling, and resets when a
//! pass over it succeeds. Only failing objects have an entry, so the map is
//! bounded by the number of objects failing at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Failures in a row per object.
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure and returns how long to wait before the next try.
    pub(crate) fn failed(&self, key: &str) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        let delay = self
            .base
            .checked_mul(2u32.saturating_pow(*n))
            .unwrap_or(self.max)
            .min(self.max);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets an object's failures.
    pub(crate) fn succeeded(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_per_failure_up_to_the_ceiling_and_resets_on_success() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (0..6).map(|_| b.failed("a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        // Another object is not slowed by the first.
        assert_eq!(b.failed("b"), Duration::from_secs(1));
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_secs(1));
    }

    #[test]
    fn many_failures_never_overflow() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..100 {
            assert!(b.failed("a") <= Duration::from_secs(300));
        }
    }
}
