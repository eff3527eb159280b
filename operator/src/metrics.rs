//! Operator metrics, all under the `steward_operator_` prefix (names are
//! documented in docs/metrics-operator.md).
//!
//! `api_writes_total` counts every create/patch/delete the operator sends,
//! by kind and verb; tests read [`Metrics::writes`] to prove that a pass over
//! a converged object writes nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::controller::quality::QualityMetrics;
use crate::reason::Reason;

/// Labels of `api_writes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `Deployment`, `Service`, `InferenceService/status`, `Event`, `Lease`.
    pub kind: &'static str,
    /// `apply`, `delete`, `create`, `replace`.
    pub verb: &'static str,
}

/// Labels of `reconcile_errors_total` and `rollbacks_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's stable reason string ([`Reason::as_str`]).
    pub reason: &'static str,
}

/// Labels of `prometheus_queries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `value`, `no_data`, `invalid` (Prometheus refused the query) or
    /// `error` (unreachable, 5xx, timeout).
    pub outcome: &'static str,
}

/// Labels of `scale_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    /// `out` or `in`.
    pub direction: &'static str,
    /// What moved the count: `executor_utilization`, `kv_cache_usage`,
    /// `queue`, `low_utilization`, `bounds`.
    pub reason: &'static str,
}

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    api_writes: Family<WriteLabels, Counter>,
    write_timeouts: Family<WriteLabels, Counter>,
    leader: Gauge,
    writes_total: AtomicU64,
    prom_queries: Family<OutcomeLabels, Counter>,
    prom_duration: Histogram,
    pollers: Gauge,
    wakes_dropped: Counter,
    rollbacks: Family<ErrorLabels, Counter>,
    scale_events: Family<ScaleLabels, Counter>,
    quality: QualityMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("steward_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconcile passes started", reconciles.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed, by reason",
            errors.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile pass took",
            duration.clone(),
        );
        let api_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Writes sent to the API server, by kind and verb",
            api_writes.clone(),
        );
        let write_timeouts = Family::<WriteLabels, Counter>::default();
        registry.register(
            "api_write_timeouts",
            "Writes that got no answer within the write timeout, by kind and verb",
            write_timeouts.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        let prom_queries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "prometheus_queries",
            "Prometheus queries sent by the signal pollers, by outcome",
            prom_queries.clone(),
        );
        let prom_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "prometheus_query_duration_seconds",
            "Time one Prometheus query took, answer or not",
            prom_duration.clone(),
        );
        let pollers = Gauge::default();
        registry.register(
            "signal_pollers",
            "Signal pollers running (one per InferenceService)",
            pollers.clone(),
        );
        let wakes_dropped = Counter::default();
        registry.register(
            "signal_wakes_dropped",
            "Reconcile wake-ups after a signal change dropped because the queue was full",
            wakes_dropped.clone(),
        );
        let rollbacks = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "rollbacks",
            "Canaries rolled back, by reason (QualityGateFailed, Aborted)",
            rollbacks.clone(),
        );
        let scale_events = Family::<ScaleLabels, Counter>::default();
        registry.register(
            "scale_events",
            "Serving-count changes by the autoscaler, by direction and reason",
            scale_events.clone(),
        );
        let quality = QualityMetrics::register(&mut registry);
        Self {
            registry,
            reconciles,
            errors,
            duration,
            api_writes,
            write_timeouts,
            leader,
            writes_total: AtomicU64::new(0),
            prom_queries,
            prom_duration,
            pollers,
            wakes_dropped,
            rollbacks,
            scale_events,
            quality,
        }
    }

    /// A Prometheus query ended with `outcome` after `took`.
    pub fn prometheus_query(&self, outcome: &'static str, took: Duration) {
        self.prom_queries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.prom_duration.observe(took.as_secs_f64());
    }

    /// Queries that ended with `outcome` so far.
    pub fn prometheus_queries(&self, outcome: &'static str) -> u64 {
        self.prom_queries
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// The number of running signal pollers.
    pub fn pollers_running(&self, n: usize) {
        self.pollers.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A wake-up was dropped (queue full).
    pub fn poller_wake_dropped(&self) {
        self.wakes_dropped.inc();
    }

    /// A reconcile pass started.
    pub fn reconcile_started(&self) {
        self.reconciles.inc();
    }

    /// A reconcile pass ended after `took`.
    pub fn reconcile_finished(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    /// A canary was rolled back.
    pub fn rolled_back(&self, reason: Reason) {
        self.rollbacks
            .get_or_create(&ErrorLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Rollbacks with `reason` so far.
    pub fn rollbacks(&self, reason: Reason) -> u64 {
        self.rollbacks
            .get_or_create(&ErrorLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    /// The autoscaler changed a serving count.
    pub fn scaled(&self, direction: &'static str, reason: &'static str) {
        self.scale_events
            .get_or_create(&ScaleLabels { direction, reason })
            .inc();
    }

    /// Scale events with these labels so far.
    pub fn scale_events(&self, direction: &'static str, reason: &'static str) -> u64 {
        self.scale_events
            .get_or_create(&ScaleLabels { direction, reason })
            .get()
    }

    /// A reconcile pass failed.
    pub fn reconcile_failed(&self, reason: Reason) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// A write ran out of time (it is not counted in `api_writes_total`).
    pub fn write_timed_out(&self, kind: &'static str, verb: &'static str) {
        self.write_timeouts
            .get_or_create(&WriteLabels { kind, verb })
            .inc();
    }

    /// One write was sent.
    pub fn write(&self, kind: &'static str, verb: &'static str) {
        self.api_writes
            .get_or_create(&WriteLabels { kind, verb })
            .inc();
        self.writes_total.fetch_add(1, Ordering::Relaxed);
    }

    /// All writes so far (excluding Lease renewals, which are not about
    /// any InferenceService).
    pub fn writes(&self) -> u64 {
        self.writes_total.load(Ordering::Relaxed)
    }

    /// Reconcile passes so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }

    /// The golden-set runner's metrics (`steward_operator_quality_*`).
    pub fn quality(&self) -> QualityMetrics {
        self.quality.clone()
    }

    /// Leadership changed.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_the_operator_prefix_and_counts_writes() {
        let m = Metrics::new();
        m.reconcile_started();
        m.write("Deployment", "apply");
        m.reconcile_finished(Duration::from_millis(3));
        m.reconcile_failed(Reason::WriteTimedOut);
        m.write_timed_out("Deployment", "apply");
        m.scaled("out", "executor_utilization");
        let text = m.encode().unwrap();
        assert!(text.contains(
            "steward_operator_scale_events_total{direction=\"out\",reason=\"executor_utilization\"} 1"
        ));
        assert!(
            text.contains("steward_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(text
            .contains("steward_operator_api_writes_total{kind=\"Deployment\",verb=\"apply\"} 1"));
        assert!(text.contains("steward_operator_reconcile_duration_seconds_count 1"));
        assert!(
            text.contains("steward_operator_reconcile_errors_total{reason=\"WriteTimedOut\"} 1")
        );
        assert!(text.contains(
            "steward_operator_api_write_timeouts_total{kind=\"Deployment\",verb=\"apply\"} 1"
        ));
        assert_eq!(m.writes(), 1);
    }
}
