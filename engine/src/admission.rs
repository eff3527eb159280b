//! Admission control: decides whether a new request may enter the engine,
//! and classifies refusals so the client (and the router's retry policy)
//! can tell "try elsewhere/later" (503) from "you are over your share" (429).
//! `decide` is pure; `TenantSlots` holds the per-tenant counters behind RAII
//! guards so a slot is given back however the request ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a request was refused. `as_str` is the stable reason used in the
/// error body's `type` and in the `requests_refused` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotReady,
    Draining,
    TenantLimit,
    QueueFull,
    KvPressure,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotReady => "not_ready",
            Refusal::Draining => "draining",
            Refusal::TenantLimit => "tenant_concurrency_limit",
            Refusal::QueueFull => "queue_full",
            Refusal::KvPressure => "kv_cache_pressure",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NotReady => "the engine is still loading; retry shortly",
            Refusal::Draining => "this replica is draining; retry on another replica",
            Refusal::TenantLimit => "too many concurrent requests for this tenant",
            Refusal::QueueFull => "the waiting queue is full",
            Refusal::KvPressure => "the KV cache is saturated; shedding new requests",
        })
    }
}

#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    pub max_waiting: usize,
    pub tenant_max_concurrent: usize,
    /// Shed new work once KV usage has stayed above the level this long.
    pub shed_after: Duration,
}

/// What admission looks at for one request.
#[derive(Debug, Clone)]
pub struct AdmissionView {
    pub ready: bool,
    pub draining: bool,
    pub waiting: usize,
    pub tenant_active: usize,
    /// How long KV usage has stayed above the shedding level (None = below).
    pub kv_high_for: Option<Duration>,
}

/// Decides admission. Order matters: a replica that cannot serve at all
/// says so first; a tenant over its share gets 429 even when the replica has
/// room, so it is never queued behind its own long streams.
pub fn decide(l: &AdmissionLimits, v: &AdmissionView) -> Result<(), Refusal> {
    if !v.ready {
        return Err(Refusal::NotReady);
    }
    if v.draining {
        return Err(Refusal::Draining);
    }
    if v.tenant_active >= l.tenant_max_concurrent {
        return Err(Refusal::TenantLimit);
    }
    if v.waiting >= l.max_waiting {
        return Err(Refusal::QueueFull);
    }
    if v.kv_high_for.is_some_and(|d| d >= l.shed_after) {
        return Err(Refusal::KvPressure);
    }
    Ok(())
}

/// Per-tenant in-flight counts.
#[derive(Debug, Default, Clone)]
pub struct TenantSlots {
    inner: Arc<Mutex<HashMap<String, usize>>>,
}

/// Holds one tenant slot; released on drop.
#[derive(Debug)]
pub struct TenantGuard {
    slots: TenantSlots,
    tenant: String,
}

impl TenantSlots {
    pub fn active(&self, tenant: &str) -> usize {
        self.inner
            .lock()
            .map(|m| m.get(tenant).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Takes a slot if the tenant is below `cap` (check and take are atomic).
    pub fn try_take(&self, tenant: &str, cap: usize) -> Option<TenantGuard> {
        let mut m = self.inner.lock().ok()?;
        let n = m.entry(tenant.to_string()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(TenantGuard {
            slots: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for TenantGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.slots.inner.lock() {
            if let Some(n) = m.get_mut(&self.tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.tenant);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_waiting: 4,
            tenant_max_concurrent: 2,
            shed_after: Duration::from_secs(1),
        }
    }
    fn view() -> AdmissionView {
        AdmissionView {
            ready: true,
            draining: false,
            waiting: 0,
            tenant_active: 0,
            kv_high_for: None,
        }
    }

    #[test]
    fn healthy_replica_admits() {
        assert_eq!(decide(&limits(), &view()), Ok(()));
    }

    #[test]
    fn draining_refuses_before_anything_else_but_readiness() {
        let v = AdmissionView {
            draining: true,
            waiting: 99,
            ..view()
        };
        assert_eq!(decide(&limits(), &v), Err(Refusal::Draining));
        let v = AdmissionView { ready: false, ..v };
        assert_eq!(decide(&limits(), &v), Err(Refusal::NotReady));
    }

    #[test]
    fn tenant_over_its_cap_gets_429_class_refusal_even_with_room() {
        let v = AdmissionView {
            tenant_active: 2,
            ..view()
        };
        assert_eq!(decide(&limits(), &v), Err(Refusal::TenantLimit));
    }

    #[test]
    fn full_queue_refuses() {
        let v = AdmissionView {
            waiting: 4,
            ..view()
        };
        assert_eq!(decide(&limits(), &v), Err(Refusal::QueueFull));
    }

    #[test]
    fn kv_pressure_sheds_only_once_it_has_lasted() {
        let v = AdmissionView {
            kv_high_for: Some(Duration::from_millis(500)),
            ..view()
        };
        assert_eq!(decide(&limits(), &v), Ok(()));
        let v = AdmissionView {
            kv_high_for: Some(Duration::from_secs(2)),
            ..view()
        };
        assert_eq!(decide(&limits(), &v), Err(Refusal::KvPressure));
    }

    #[test]
    fn tenant_slots_are_returned_when_guards_drop() {
        let s = TenantSlots::default();
        let a = s.try_take("t", 2).unwrap();
        let _b = s.try_take("t", 2).unwrap();
        assert!(s.try_take("t", 2).is_none());
        assert!(s.try_take("other", 2).is_some());
        drop(a);
        assert_eq!(s.active("t"), 1);
        assert!(s.try_take("t", 2).is_some());
    }
}
