//! Per-endpoint runtime state: the last `/load` report, the router's own
//! in-flight count, and passive health (ejection after a connect failure).
//!
//! Ejection is lifted early when the load poller sees the endpoint answer
//! again, so a restarted engine comes back within one poll interval; it is
//! never permanent, so a missed poll cannot blackhole an endpoint either.
//! State for endpoints that left the routing table is pruned by the poller.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The engine's `GET /load` body (docs/architecture.md).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct LoadReport {
    #[serde(default)]
    pub running: u32,
    #[serde(default)]
    pub waiting: u32,
    #[serde(default)]
    pub kv_cache_usage: f64,
    #[serde(default)]
    pub utilization: f64,
    #[serde(default)]
    pub draining: bool,
}

/// The load score used by power-of-two-choices: lower is better.
///
/// Queued requests weigh twice a running one (they wait for KV blocks), a
/// full KV cache adds four, and requests this router sent since the last
/// report count as running so a burst between polls spreads out.
pub fn load_score(report: &LoadReport, sent_since_report: u32) -> f64 {
    f64::from(report.running)
        + 2.0 * f64::from(report.waiting)
        + 4.0 * report.kv_cache_usage.clamp(0.0, 1.0)
        + f64::from(sent_since_report)
}

#[derive(Debug, Default)]
struct Health {
    ejected_until: Option<Instant>,
    consecutive_failures: u32,
}

/// State of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointState {
    inflight: AtomicU32,
    /// Last report and the in-flight count when it arrived.
    load: Mutex<(LoadReport, u32)>,
    health: Mutex<Health>,
}

impl EndpointState {
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request to this endpoint until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }

    pub fn record_load(&self, report: LoadReport) {
        let inflight = self.inflight();
        if let Ok(mut l) = self.load.lock() {
            *l = (report, inflight);
        }
        if let Ok(mut h) = self.health.lock() {
            h.ejected_until = None;
            h.consecutive_failures = 0;
        }
    }

    pub fn load(&self) -> LoadReport {
        self.load.lock().map(|l| l.0.clone()).unwrap_or_default()
    }

    /// The score for [`load_score`].
    pub fn score(&self) -> f64 {
        let (report, at_report) = self.load.lock().map(|l| l.clone()).unwrap_or_default();
        load_score(&report, self.inflight().saturating_sub(at_report))
    }

    /// Whether the engine said it is draining.
    pub fn draining(&self) -> bool {
        self.load.lock().map(|l| l.0.draining).unwrap_or(false)
    }

    /// Ejects the endpoint until `now + base * 2^(failures-1)`, capped at 8x base.
    /// Returns true when this call ejected a healthy endpoint.
    pub fn record_connect_failure(&self, now: Instant, base: Duration) -> bool {
        let Ok(mut h) = self.health.lock() else {
            return false;
        };
        let was_healthy = h.ejected_until.is_none_or(|t| t <= now);
        h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        let factor = 1u32 << h.consecutive_failures.saturating_sub(1).min(3);
        h.ejected_until = Some(now + base * factor);
        was_healthy
    }

    pub fn ejected(&self, now: Instant) -> bool {
        self.health
            .lock()
            .map(|h| h.ejected_until.is_some_and(|t| t > now))
            .unwrap_or(false)
    }

    /// Usable for new requests: not ejected, not draining.
    pub fn available(&self, now: Instant) -> bool {
        !self.ejected(now) && !self.draining()
    }
}

/// Decrements the endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InflightGuard(Arc<EndpointState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All endpoint states, by address.
#[derive(Debug, Default, Clone)]
pub struct EndpointStates {
    map: Arc<RwLock<HashMap<SocketAddr, Arc<EndpointState>>>>,
}

impl EndpointStates {
    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointState> {
        if let Ok(m) = self.map.read() {
            if let Some(s) = m.get(&addr) {
                return s.clone();
            }
        }
        match self.map.write() {
            Ok(mut m) => m.entry(addr).or_default().clone(),
            Err(_) => Arc::new(EndpointState::default()),
        }
    }

    /// Drops state of endpoints no longer routed (keeps those with requests open).
    pub fn retain(&self, live: &BTreeSet<SocketAddr>) {
        if let Ok(mut m) = self.map.write() {
            m.retain(|addr, s| live.contains(addr) || s.inflight() > 0);
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failure_ejects_until_the_poller_sees_it_again() {
        let s = EndpointState::default();
        let now = Instant::now();
        assert!(s.available(now));
        assert!(s.record_connect_failure(now, Duration::from_secs(10)));
        assert!(!s.available(now + Duration::from_secs(1)));
        s.record_load(LoadReport::default());
        assert!(s.available(now + Duration::from_secs(1)));
    }

    #[test]
    fn ejection_expires_and_backs_off_on_repeated_failures() {
        let s = EndpointState::default();
        let now = Instant::now();
        let base = Duration::from_secs(1);
        s.record_connect_failure(now, base);
        assert!(s.available(now + Duration::from_millis(1001)));
        assert!(!s.record_connect_failure(now, base), "already ejected");
        assert!(
            !s.available(now + Duration::from_millis(1500)),
            "second failure doubles"
        );
        assert!(s.available(now + Duration::from_millis(2001)));
    }

    #[test]
    fn draining_endpoints_are_not_available() {
        let s = EndpointState::default();
        s.record_load(LoadReport {
            draining: true,
            ..Default::default()
        });
        assert!(!s.available(Instant::now()));
    }

    #[test]
    fn score_counts_requests_sent_since_the_last_report() {
        let s = Arc::new(EndpointState::default());
        s.record_load(LoadReport {
            running: 2,
            waiting: 1,
            kv_cache_usage: 0.5,
            ..Default::default()
        });
        assert_eq!(s.score(), 2.0 + 2.0 + 2.0);
        let _g = s.start_request();
        assert_eq!(s.score(), 7.0);
    }

    #[test]
    fn load_report_parses_the_engine_contract_and_tolerates_missing_fields() {
        let r: LoadReport = serde_json::from_str(
            r#"{"running":3,"waiting":1,"kv_cache_usage":0.25,"utilization":0.5,"draining":false}"#,
        )
        .expect("contract body parses");
        assert_eq!(r.running, 3);
        let r: LoadReport = serde_json::from_str(r#"{"running":1}"#).expect("partial parses");
        assert_eq!(r.waiting, 0);
    }
}
