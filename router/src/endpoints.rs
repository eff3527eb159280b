//! Per-endpoint runtime state: the last `/load` report, the router's own
//! in-flight count, and passive health.
//!
//! Two kinds of ejection. A connect failure (on a request or a `/load`
//! poll) ejects until the poller sees the endpoint answer again, so a
//! restarted engine comes back within one poll interval. A run of
//! consecutive errors from an engine that does answer (5xx other than 503,
//! an in-band `{"error"}` event after a 200 head, a stream cut or stalled,
//! no head in time) ejects for a time that no poll lifts, since such an
//! engine answers its polls fine: `base · 2^k` (k = error ejections since
//! the last success, at most 3), and after it expires a single further
//! error ejects again. No ejection is permanent.
//!
//! State is keyed by [`Endpoint`] (address and pod UID), so a new pod that
//! gets a dead pod's IP starts fresh; state for endpoints that left the
//! routing table is pruned by the poller.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::table::Endpoint;

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

/// Passive-health settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EjectPolicy {
    /// Base ejection time (doubles on repeats, up to 8x).
    pub base: Duration,
    /// Consecutive errors that eject an endpoint; 0 turns error ejection off.
    pub consecutive_errors: u32,
}

impl Default for EjectPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            consecutive_errors: 5,
        }
    }
}

/// How one request ended, as evidence about the endpoint's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A complete answer (any 2xx/3xx body read to its end without an in-band error).
    Success,
    /// The engine failed the request: 5xx other than 503, an in-band error
    /// event, a stream cut or stalled, no response head in time.
    Error,
    /// Says nothing about health: 4xx (the request's fault or the engine's
    /// own limit), 503 (draining or shedding), a client that went away.
    Neutral,
}

impl Outcome {
    /// The evidence in a response head's status (a 2xx waits for the body's end).
    pub fn of_status(status: u16) -> Option<Self> {
        match status {
            503 => Some(Self::Neutral),
            500..=599 => Some(Self::Error),
            400..=499 => Some(Self::Neutral),
            _ => None,
        }
    }
}

/// Why an endpoint is ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectCause {
    /// Lifted by the next good `/load` poll.
    Connect,
    /// Lifted only by time.
    Errors,
}

impl EjectCause {
    /// Stable metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Errors => "errors",
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    ejected_until: Option<Instant>,
    cause: Option<EjectCause>,
    consecutive_failures: u32,
    consecutive_errors: u32,
    /// Error ejections since the last success: the back-off exponent, and
    /// while non-zero, one error is enough to eject again.
    error_ejections: u32,
}

impl Health {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| t > now)
    }
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

    /// A good `/load` answer: records it and lifts a connect ejection.
    pub fn record_load(&self, report: LoadReport) {
        let inflight = self.inflight();
        if let Ok(mut l) = self.load.lock() {
            *l = (report, inflight);
        }
        if let Ok(mut h) = self.health.lock() {
            h.consecutive_failures = 0;
            if h.cause == Some(EjectCause::Connect) {
                h.ejected_until = None;
                h.cause = None;
            }
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
        let was_healthy = !h.ejected(now);
        h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        let factor = 1u32 << h.consecutive_failures.saturating_sub(1).min(3);
        let until = now + base * factor;
        if was_healthy || h.cause != Some(EjectCause::Errors) {
            h.cause = Some(EjectCause::Connect);
        }
        h.ejected_until = Some(h.ejected_until.map_or(until, |t| t.max(until)));
        was_healthy
    }

    /// Records how a request ended. Returns true when this call ejected the
    /// endpoint (a run of `policy.consecutive_errors` errors, or one error
    /// right after an error ejection ended).
    pub fn record_outcome(&self, outcome: Outcome, now: Instant, policy: &EjectPolicy) -> bool {
        let Ok(mut h) = self.health.lock() else {
            return false;
        };
        match outcome {
            Outcome::Neutral => false,
            Outcome::Success => {
                h.consecutive_errors = 0;
                h.error_ejections = 0;
                false
            }
            Outcome::Error => {
                if policy.consecutive_errors == 0 || h.ejected(now) {
                    // Requests already in flight when it was ejected do not extend it.
                    return false;
                }
                h.consecutive_errors = h.consecutive_errors.saturating_add(1);
                if h.consecutive_errors < policy.consecutive_errors && h.error_ejections == 0 {
                    return false;
                }
                let factor = 1u32 << h.error_ejections.min(3);
                h.ejected_until = Some(now + policy.base * factor);
                h.cause = Some(EjectCause::Errors);
                h.error_ejections = h.error_ejections.saturating_add(1);
                h.consecutive_errors = 0;
                true
            }
        }
    }

    pub fn ejected(&self, now: Instant) -> bool {
        self.health.lock().map(|h| h.ejected(now)).unwrap_or(false)
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

/// All endpoint states, by endpoint (address and pod UID).
#[derive(Debug, Default, Clone)]
pub struct EndpointStates {
    map: Arc<RwLock<HashMap<Endpoint, Arc<EndpointState>>>>,
}

impl EndpointStates {
    pub fn get(&self, ep: &Endpoint) -> Arc<EndpointState> {
        if let Ok(m) = self.map.read() {
            if let Some(s) = m.get(ep) {
                return s.clone();
            }
        }
        match self.map.write() {
            Ok(mut m) => m.entry(ep.clone()).or_default().clone(),
            Err(_) => Arc::new(EndpointState::default()),
        }
    }

    /// The state of whichever endpoint has this address (tests, diagnostics).
    pub fn find_addr(&self, addr: std::net::SocketAddr) -> Option<Arc<EndpointState>> {
        let m = self.map.read().ok()?;
        m.iter()
            .find(|(e, _)| e.addr == addr)
            .map(|(_, s)| s.clone())
    }

    /// Drops state of endpoints no longer routed (keeps those with requests open).
    pub fn retain(&self, live: &BTreeSet<Endpoint>) {
        if let Ok(mut m) = self.map.write() {
            m.retain(|ep, s| live.contains(ep) || s.inflight() > 0);
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

    fn policy() -> EjectPolicy {
        EjectPolicy {
            base: Duration::from_secs(1),
            consecutive_errors: 3,
        }
    }

    #[test]
    fn a_run_of_errors_ejects_and_a_good_poll_does_not_lift_it() {
        let s = EndpointState::default();
        let now = Instant::now();
        let p = policy();
        assert!(!s.record_outcome(Outcome::Error, now, &p));
        assert!(!s.record_outcome(Outcome::Error, now, &p));
        assert!(s.available(now));
        assert!(
            s.record_outcome(Outcome::Error, now, &p),
            "third in a row ejects"
        );
        assert!(!s.available(now));
        s.record_load(LoadReport::default());
        assert!(
            !s.available(now + Duration::from_millis(500)),
            "an engine failing its requests still answers /load"
        );
        assert!(s.available(now + Duration::from_millis(1001)));
    }

    #[test]
    fn successes_and_neutral_outcomes_break_or_keep_the_run() {
        let s = EndpointState::default();
        let now = Instant::now();
        let p = policy();
        for _ in 0..10 {
            s.record_outcome(Outcome::Error, now, &p);
            s.record_outcome(Outcome::Error, now, &p);
            s.record_outcome(Outcome::Success, now, &p);
        }
        assert!(s.available(now), "never 3 errors in a row");
        s.record_outcome(Outcome::Error, now, &p);
        s.record_outcome(Outcome::Neutral, now, &p);
        s.record_outcome(Outcome::Error, now, &p);
        assert!(
            s.record_outcome(Outcome::Error, now, &p),
            "4xx/503 do not break a run"
        );
    }

    #[test]
    fn after_an_error_ejection_one_more_error_ejects_again_for_twice_as_long() {
        let s = EndpointState::default();
        let t0 = Instant::now();
        let p = policy();
        for _ in 0..3 {
            s.record_outcome(Outcome::Error, t0, &p);
        }
        let t1 = t0 + Duration::from_millis(1001);
        assert!(s.available(t1));
        assert!(s.record_outcome(Outcome::Error, t1, &p));
        assert!(!s.available(t1 + Duration::from_millis(1999)));
        assert!(s.available(t1 + Duration::from_millis(2001)));
        // A success ends the probation: it takes a whole run again.
        let t2 = t1 + Duration::from_millis(2001);
        s.record_outcome(Outcome::Success, t2, &p);
        assert!(!s.record_outcome(Outcome::Error, t2, &p));
        assert!(s.available(t2));
    }

    #[test]
    fn errors_while_ejected_do_not_extend_it_and_zero_turns_it_off() {
        let s = EndpointState::default();
        let t0 = Instant::now();
        let p = policy();
        for _ in 0..3 {
            s.record_outcome(Outcome::Error, t0, &p);
        }
        for _ in 0..10 {
            assert!(!s.record_outcome(Outcome::Error, t0 + Duration::from_millis(900), &p));
        }
        assert!(s.available(t0 + Duration::from_millis(1001)));
        let off = EjectPolicy {
            consecutive_errors: 0,
            ..p
        };
        let s = EndpointState::default();
        for _ in 0..100 {
            assert!(!s.record_outcome(Outcome::Error, t0, &off));
        }
        assert!(s.available(t0));
    }

    #[test]
    fn status_evidence_ignores_4xx_and_503() {
        assert_eq!(Outcome::of_status(500), Some(Outcome::Error));
        assert_eq!(Outcome::of_status(502), Some(Outcome::Error));
        assert_eq!(Outcome::of_status(503), Some(Outcome::Neutral));
        assert_eq!(Outcome::of_status(429), Some(Outcome::Neutral));
        assert_eq!(Outcome::of_status(400), Some(Outcome::Neutral));
        assert_eq!(Outcome::of_status(200), None);
    }

    #[test]
    fn state_is_per_pod_so_a_reused_ip_starts_fresh() {
        let states = EndpointStates::default();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 2], 8000));
        let old = Endpoint::new(addr, "pod-a");
        let new = Endpoint::new(addr, "pod-b");
        let now = Instant::now();
        for _ in 0..5 {
            states
                .get(&old)
                .record_outcome(Outcome::Error, now, &EjectPolicy::default());
        }
        assert!(!states.get(&old).available(now));
        assert!(states.get(&new).available(now));
        states.retain(&[new.clone()].into_iter().collect());
        assert_eq!(states.len(), 1);
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
