//! Signals: what the operator knows about each revision from Prometheus.
//!
//! Three pieces, in the order data flows:
//! - [`promql`]: pure builders of the PromQL text of every [`Signal`], for
//!   one InferenceService over a window, grouped by revision. The alarm
//!   poller, the generated alert rules and the dashboard all use these
//!   builders, so a signal has exactly one definition.
//! - the I/O (`controller::prometheus`, `controller::poller`): runs the
//!   queries every `analysis.interval` outside the reconcile and keeps the
//!   latest [`Snapshot`] per InferenceService.
//! - consumers (`alarm::evaluate`, the autoscaler, status) read a
//!   [`Latest`] value and never talk to Prometheus.
//!
//! Invariants: a missing value is [`Reading::NoData`] or
//! [`Reading::Error`], never zero; a snapshot older than two intervals is
//! stale ([`Snapshot::is_stale`]) and consumers treat every reading in it as
//! unknown.

pub mod promql;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

pub use promql::{Scope, Window};

/// A per-revision signal the operator reads. Each has one PromQL definition
/// ([`promql::query`]), over the engine metrics of docs/metrics-engine.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// Time to first token, 99th percentile (seconds).
    TtftP99,
    /// Inter-token latency, 99th percentile (seconds).
    ItlP99,
    /// Arrival to last token, 99th percentile (seconds).
    E2eP99,
    /// Share of non-4xx responses that were 5xx (0-1). 4xx never counts.
    ServerErrorRatio,
    /// KV-cache usage averaged over the revision's serving pods (0-1).
    KvCacheUsage,
    /// Executor utilisation averaged over the serving pods (0-1).
    ExecutorUtilization,
    /// Requests waiting, averaged over the serving pods.
    QueueWaitingPerPod,
    /// Prefix-cache hits / lookups (0-1).
    PrefixCacheHitRate,
    /// Generated tokens per second, all pods.
    OutputTokensPerSecond,
    /// HTTP responses per second of the generation routes, all classes.
    RequestRate,
    /// Non-4xx responses in the window: the sample count that decides
    /// whether a latency or error reading is conclusive.
    Requests,
    /// Sequences in flight (running or waiting), all pods, averaged over
    /// the window: Little's law's `L`.
    InFlight,
    /// Generated tokens per second of model-step time: what one pod makes
    /// while it steps, at its current batch (its measured capacity).
    PodTokensPerSecond,
    /// Engine start to ready (seconds), the slowest pod of the revision.
    ColdStartSeconds,
    /// How fast utilisation moves (per second), the steeper of executor
    /// utilisation and KV-cache usage, averaged over the serving pods.
    UtilizationTrend,
}

impl Signal {
    /// Every signal, in a stable order (the poller queries these).
    pub const ALL: [Signal; 15] = [
        Signal::TtftP99,
        Signal::ItlP99,
        Signal::E2eP99,
        Signal::ServerErrorRatio,
        Signal::KvCacheUsage,
        Signal::ExecutorUtilization,
        Signal::QueueWaitingPerPod,
        Signal::PrefixCacheHitRate,
        Signal::OutputTokensPerSecond,
        Signal::RequestRate,
        Signal::Requests,
        Signal::InFlight,
        Signal::PodTokensPerSecond,
        Signal::ColdStartSeconds,
        Signal::UtilizationTrend,
    ];

    /// The stable name (metric labels, logs, the dashboard).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::TtftP99 => "ttft_p99",
            Signal::ItlP99 => "itl_p99",
            Signal::E2eP99 => "e2e_p99",
            Signal::ServerErrorRatio => "server_error_ratio",
            Signal::KvCacheUsage => "kv_cache_usage",
            Signal::ExecutorUtilization => "executor_utilization",
            Signal::QueueWaitingPerPod => "queue_waiting_per_pod",
            Signal::PrefixCacheHitRate => "prefix_cache_hit_rate",
            Signal::OutputTokensPerSecond => "output_tokens_per_second",
            Signal::RequestRate => "request_rate",
            Signal::Requests => "requests",
            Signal::InFlight => "in_flight",
            Signal::PodTokensPerSecond => "pod_tokens_per_second",
            Signal::ColdStartSeconds => "cold_start_seconds",
            Signal::UtilizationTrend => "utilization_trend",
        }
    }

    /// How a value of this signal is written for people.
    pub fn unit(self) -> Unit {
        match self {
            Signal::TtftP99 | Signal::ItlP99 | Signal::E2eP99 | Signal::ColdStartSeconds => {
                Unit::Seconds
            }
            Signal::ServerErrorRatio
            | Signal::KvCacheUsage
            | Signal::ExecutorUtilization
            | Signal::PrefixCacheHitRate => Unit::Ratio,
            Signal::OutputTokensPerSecond
            | Signal::RequestRate
            | Signal::PodTokensPerSecond
            | Signal::UtilizationTrend => Unit::PerSecond,
            Signal::QueueWaitingPerPod | Signal::Requests | Signal::InFlight => Unit::Plain,
        }
    }

    /// True for signals computed from requests, whose readings need a
    /// minimum number of requests in the window to mean anything.
    pub fn needs_samples(self) -> bool {
        matches!(
            self,
            Signal::TtftP99 | Signal::ItlP99 | Signal::E2eP99 | Signal::ServerErrorRatio
        )
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a value is written for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// `412ms`, `1.25s`.
    Seconds,
    /// `0.12%`, `87.5%`.
    Ratio,
    /// `12.5/s`.
    PerSecond,
    /// `3.5`.
    Plain,
}

impl Unit {
    /// Formats `v` with three significant digits (so status does not change
    /// on every wiggle of the last digit).
    pub fn format(self, v: f64) -> String {
        if v.is_nan() {
            return "NaN".into();
        }
        if v.is_infinite() {
            return if v > 0.0 {
                "+Inf".into()
            } else {
                "-Inf".into()
            };
        }
        match self {
            Unit::Seconds if v.abs() < 1.0 => format!("{}ms", sig3(v * 1000.0)),
            Unit::Seconds => format!("{}s", sig3(v)),
            Unit::Ratio => format!("{}%", sig3(v * 100.0)),
            Unit::PerSecond => format!("{}/s", sig3(v)),
            Unit::Plain => sig3(v),
        }
    }
}

/// `v` with three significant digits, without a trailing `.0`.
fn sig3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32;
    let decimals = (2 - digits).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Why a query gave no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryErrorKind {
    /// Prometheus could not be reached, answered 5xx, or timed out.
    Unavailable,
    /// Prometheus refused the query text (`bad_data`): the query is wrong,
    /// not the server.
    Invalid,
}

/// A failed query, with Prometheus' message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError {
    /// What kind of failure.
    pub kind: QueryErrorKind,
    /// The message, for conditions and logs.
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One value as a consumer sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// A number (NaN never appears: 0/0 is `NoData`).
    Value(f64),
    /// The query ran and returned nothing for this revision.
    NoData,
    /// The query failed.
    Error(QueryError),
}

impl Reading {
    /// The number, if there is one.
    pub fn value(&self) -> Option<f64> {
        match self {
            Reading::Value(v) => Some(*v),
            _ => None,
        }
    }
}

/// One signal over every revision: values by revision, or the error that
/// the query returned.
pub type Series = Result<BTreeMap<String, f64>, QueryError>;

/// Every signal of one InferenceService at one moment, by revision, plus
/// the custom PromQL leaves of its alarm tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// When the queries were sent.
    pub taken_at: Timestamp,
    /// The window every rate and quantile covers.
    pub window: Duration,
    /// The standard signals, one grouped query each.
    pub signals: BTreeMap<Signal, Series>,
    /// Custom PromQL leaves: leaf name → revision → reading.
    pub queries: BTreeMap<String, BTreeMap<String, Reading>>,
    /// Each serving pod's load, by pod name: the higher of its executor
    /// utilisation and KV-cache usage over the window
    /// ([`promql::per_pod`]). A pod missing here has no known load (never
    /// zero); scale-in takes the least loaded pod.
    pub pod_loads: BTreeMap<String, f64>,
}

impl Snapshot {
    /// The reading of `signal` for `revision`; a revision missing from a
    /// successful result is `NoData`, NaN is `NoData`.
    pub fn reading(&self, signal: Signal, revision: &str) -> Reading {
        match self.signals.get(&signal) {
            None => Reading::NoData,
            Some(Err(e)) => Reading::Error(e.clone()),
            Some(Ok(by_rev)) => match by_rev.get(revision) {
                Some(v) if !v.is_nan() => Reading::Value(*v),
                _ => Reading::NoData,
            },
        }
    }

    /// The load of serving pod `pod`, when known.
    pub fn pod_load(&self, pod: &str) -> Option<f64> {
        self.pod_loads.get(pod).copied().filter(|v| v.is_finite())
    }

    /// The reading of the custom leaf `leaf` for `revision`.
    pub fn query(&self, leaf: &str, revision: &str) -> Reading {
        match self.queries.get(leaf).and_then(|m| m.get(revision)) {
            Some(Reading::Value(v)) if v.is_nan() => Reading::NoData,
            Some(r) => r.clone(),
            None => Reading::NoData,
        }
    }

    /// Older than two intervals at `now`: every reading counts as unknown.
    pub fn is_stale(&self, now: Timestamp, interval: Duration) -> bool {
        let age = now.duration_since(self.taken_at);
        age.as_secs_f64() > 2.0 * interval.as_secs_f64()
    }

    /// The first query error, if every standard signal failed the same way
    /// (Prometheus down), for the `SignalsUnavailable` condition.
    pub fn unavailable(&self) -> Option<&QueryError> {
        let mut errors = self.signals.values().map(|s| s.as_ref().err());
        let first = errors.next()??;
        let all_failed = self.signals.values().all(|s| s.is_err());
        (all_failed && first.kind == QueryErrorKind::Unavailable).then_some(first)
    }

    /// The custom leaves whose PromQL Prometheus refused, with its message.
    pub fn invalid_queries(&self) -> impl Iterator<Item = (&str, &QueryError)> {
        self.queries.iter().filter_map(|(leaf, by_rev)| {
            by_rev.values().find_map(|r| match r {
                Reading::Error(e) if e.kind == QueryErrorKind::Invalid => Some((leaf.as_str(), e)),
                _ => None,
            })
        })
    }
}

/// What the operator knows about an InferenceService's signals right now.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Latest {
    /// No Prometheus address is configured: signals are unavailable (never
    /// zero).
    #[default]
    NotConfigured,
    /// Configured, but the first snapshot has not been taken yet.
    Waiting,
    /// The latest snapshot.
    Taken(Arc<Snapshot>),
}

impl Latest {
    /// The snapshot, if one was taken and is not stale at `now`.
    pub fn fresh(&self, now: Timestamp, interval: Duration) -> Option<&Snapshot> {
        match self {
            Latest::Taken(s) if !s.is_stale(now, interval) => Some(s),
            _ => None,
        }
    }

    /// Why no fresh snapshot is available at `now`, for conditions and the
    /// `Unknown` verdict; `None` when a fresh one is.
    pub fn unavailable_reason(&self, now: Timestamp, interval: Duration) -> Option<String> {
        match self {
            Latest::NotConfigured => Some("no Prometheus address is configured".into()),
            Latest::Waiting => Some("no signal snapshot has been taken yet".into()),
            Latest::Taken(s) if s.is_stale(now, interval) => Some(format!(
                "the latest signal snapshot is from {} (older than two intervals of {})",
                s.taken_at,
                humantime::format_duration(interval)
            )),
            Latest::Taken(s) => s
                .unavailable()
                .map(|e| format!("Prometheus is unavailable: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at: i64) -> Snapshot {
        let mut signals = BTreeMap::new();
        signals.insert(
            Signal::TtftP99,
            Ok(BTreeMap::from([
                ("a".to_string(), 0.4),
                ("b".to_string(), f64::NAN),
            ])),
        );
        signals.insert(
            Signal::ItlP99,
            Err(QueryError {
                kind: QueryErrorKind::Unavailable,
                message: "connection refused".into(),
            }),
        );
        Snapshot {
            taken_at: Timestamp::from_second(at).unwrap(),
            window: Duration::from_secs(30),
            signals,
            queries: BTreeMap::new(),
            pod_loads: BTreeMap::from([("p1".to_string(), 0.5), ("p2".to_string(), f64::NAN)]),
        }
    }

    #[test]
    fn missing_revision_and_nan_read_as_no_data_never_zero() {
        let s = snap(100);
        assert_eq!(s.reading(Signal::TtftP99, "a"), Reading::Value(0.4));
        assert_eq!(s.reading(Signal::TtftP99, "b"), Reading::NoData);
        assert_eq!(s.reading(Signal::TtftP99, "c"), Reading::NoData);
        assert_eq!(s.reading(Signal::E2eP99, "a"), Reading::NoData);
        assert!(matches!(
            s.reading(Signal::ItlP99, "a"),
            Reading::Error(QueryError {
                kind: QueryErrorKind::Unavailable,
                ..
            })
        ));
    }

    #[test]
    fn pod_loads_are_known_or_absent_never_zero() {
        let s = snap(100);
        assert_eq!(s.pod_load("p1"), Some(0.5));
        assert_eq!(s.pod_load("p2"), None);
        assert_eq!(s.pod_load("p3"), None);
    }

    #[test]
    fn snapshot_is_stale_after_two_intervals() {
        let s = snap(100);
        let i = Duration::from_secs(15);
        assert!(!s.is_stale(Timestamp::from_second(130).unwrap(), i));
        assert!(s.is_stale(Timestamp::from_second(131).unwrap(), i));
        let latest = Latest::Taken(Arc::new(s));
        assert!(latest
            .fresh(Timestamp::from_second(131).unwrap(), i)
            .is_none());
        assert!(latest
            .unavailable_reason(Timestamp::from_second(131).unwrap(), i)
            .unwrap()
            .contains("older than two intervals"));
    }

    #[test]
    fn prometheus_down_means_unavailable_only_when_every_signal_failed() {
        let mut s = snap(0);
        assert!(s.unavailable().is_none());
        s.signals.insert(
            Signal::TtftP99,
            Err(QueryError {
                kind: QueryErrorKind::Unavailable,
                message: "connection refused".into(),
            }),
        );
        assert_eq!(s.unavailable().unwrap().message, "connection refused");
        assert_eq!(
            Latest::NotConfigured
                .unavailable_reason(Timestamp::UNIX_EPOCH, Duration::from_secs(1))
                .as_deref(),
            Some("no Prometheus address is configured")
        );
    }

    #[test]
    fn values_are_formatted_with_three_significant_digits() {
        assert_eq!(Unit::Seconds.format(0.41234), "412ms");
        assert_eq!(Unit::Seconds.format(0.0123), "12.3ms");
        assert_eq!(Unit::Seconds.format(1.25), "1.25s");
        assert_eq!(Unit::Seconds.format(12.0), "12s");
        assert_eq!(Unit::Ratio.format(0.0012), "0.12%");
        assert_eq!(Unit::Ratio.format(0.875), "87.5%");
        assert_eq!(Unit::PerSecond.format(12.54), "12.5/s");
        assert_eq!(Unit::Plain.format(0.0), "0");
        assert_eq!(Unit::Seconds.format(f64::INFINITY), "+Inf");
    }
}
