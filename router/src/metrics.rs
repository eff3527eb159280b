//! The router's metrics, all under `steward_router_` (docs/metrics-router.md).
//!
//! Request metrics carry `namespace`, `service` and `revision` (the
//! InferenceService and revision that served the request, empty when the
//! request never reached one), so canary analysis can compare revisions.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Which service and revision a request went to.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub namespace: String,
    pub service: String,
    pub revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub namespace: String,
    pub service: String,
    pub revision: String,
    /// `2xx`, `4xx`, `5xx`, ...
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub namespace: String,
    pub service: String,
    pub revision: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    pub namespace: String,
    pub service: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectLabels {
    /// `connect` or `errors`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    /// The conflicting InferenceService (it gets no traffic).
    pub namespace: String,
    pub service: String,
    pub model: String,
    /// The owner of the name, `namespace/name`.
    pub owner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscoveryLabels {
    pub kind: String,
    pub event: String,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// The series of one (namespace, service, revision), looked up once per
/// request instead of once per metric (each lookup hashes the labels).
#[derive(Debug)]
pub struct RouteMetrics {
    pub labels: RouteLabels,
    /// `requests_total` by status class `1xx`..`5xx`, created on first use.
    requests: [std::sync::OnceLock<Counter>; 5],
    family: Family<StatusLabels, Counter>,
    pub ttft: Histogram,
    pub request_duration: Histogram,
    pub streamed_tokens: Counter,
    pub in_flight: Gauge,
    pub client_disconnects: Counter,
}

impl RouteMetrics {
    /// Counts one answered request by its status.
    pub fn count(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class]
            .get_or_init(|| {
                self.family
                    .get_or_create(&StatusLabels {
                        namespace: self.labels.namespace.clone(),
                        service: self.labels.service.clone(),
                        revision: self.labels.revision.clone(),
                        class: status_class(status),
                    })
                    .clone()
            })
            .inc();
    }
}

type RouteCache = std::sync::Arc<
    std::sync::RwLock<std::collections::HashMap<RouteLabels, std::sync::Arc<RouteMetrics>>>,
>;

/// All router metrics.
#[derive(Clone)]
pub struct Metrics {
    routes: RouteCache,
    pub requests: Family<StatusLabels, Counter>,
    pub ttft: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub streamed_tokens: Family<RouteLabels, Counter>,
    pub retries: Family<ReasonLabels, Counter>,
    pub upstream_failures: Family<ReasonLabels, Counter>,
    pub stream_errors: Family<ReasonLabels, Counter>,
    pub client_disconnects: Family<RouteLabels, Counter>,
    pub throttled: Family<ThrottleLabels, Counter>,
    pub in_flight: Family<RouteLabels, Gauge>,
    pub retry_budget_exhausted: Counter,
    pub endpoint_ejections: Family<EjectLabels, Counter>,
    pub model_name_conflicts: Family<ConflictLabels, Gauge>,
    /// The conflict series set now, so an update removes only stale ones.
    conflicts_set: std::sync::Arc<std::sync::Mutex<Vec<ConflictLabels>>>,
    pub buffered_body_bytes: Gauge,
    pub body_read_timeouts: Counter,
    pub shutting_down: Gauge,
    pub connections: Gauge,
    pub endpoints: Gauge,
    pub services: Gauge,
    pub load_poll_failures: Counter,
    pub discovery_events: Family<DiscoveryLabels, Counter>,
    pub discovery_malformed: Family<DiscoveryLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under `steward_router_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            routes: RouteCache::default(),
            requests: Family::default(),
            ttft: Family::new_with_constructor(latency),
            request_duration: Family::new_with_constructor(latency),
            streamed_tokens: Family::default(),
            retries: Family::default(),
            upstream_failures: Family::default(),
            stream_errors: Family::default(),
            client_disconnects: Family::default(),
            throttled: Family::default(),
            in_flight: Family::default(),
            retry_budget_exhausted: Counter::default(),
            endpoint_ejections: Family::default(),
            model_name_conflicts: Family::default(),
            conflicts_set: Default::default(),
            buffered_body_bytes: Gauge::default(),
            body_read_timeouts: Counter::default(),
            shutting_down: Gauge::default(),
            connections: Gauge::default(),
            endpoints: Gauge::default(),
            services: Gauge::default(),
            load_poll_failures: Counter::default(),
            discovery_events: Family::default(),
            discovery_malformed: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("steward_router");
        r.register(
            "requests",
            "Requests answered, by status class",
            m.requests.clone(),
        );
        r.register_with_unit(
            "ttft",
            "Time from request arrival to the first response body byte",
            Unit::Seconds,
            m.ttft.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from request arrival to the end of the response body",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register(
            "streamed_tokens",
            "SSE data events streamed to clients",
            m.streamed_tokens.clone(),
        );
        r.register(
            "retries",
            "Requests retried on another endpoint, by first failure",
            m.retries.clone(),
        );
        r.register(
            "upstream_failures",
            "Failures talking to an engine before its first byte, by reason",
            m.upstream_failures.clone(),
        );
        r.register(
            "stream_errors",
            "Responses cut off after the first byte",
            m.stream_errors.clone(),
        );
        r.register(
            "client_disconnects",
            "Responses abandoned by the client before the end",
            m.client_disconnects.clone(),
        );
        r.register(
            "throttled",
            "Requests refused by edge limits, by reason",
            m.throttled.clone(),
        );
        r.register(
            "in_flight",
            "Requests being proxied now",
            m.in_flight.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retryable failures not retried because the retry budget was spent",
            m.retry_budget_exhausted.clone(),
        );
        r.register(
            "endpoint_ejections",
            "Endpoints ejected, by reason (connect failure or a run of errors)",
            m.endpoint_ejections.clone(),
        );
        r.register(
            "model_name_conflicts",
            "InferenceServices refused their model name because an older one owns it",
            m.model_name_conflicts.clone(),
        );
        r.register_with_unit(
            "buffered_body",
            "Request body bytes held in memory now (bounded by --max-buffered-body-bytes)",
            Unit::Bytes,
            m.buffered_body_bytes.clone(),
        );
        r.register(
            "body_read_timeouts",
            "Requests answered 408 because their body did not arrive within --body-read-timeout",
            m.body_read_timeouts.clone(),
        );
        r.register(
            "connections",
            "Client connections open now (bounded by --max-connections)",
            m.connections.clone(),
        );
        r.register(
            "shutting_down",
            "1 from SIGTERM until exit (serving through the shutdown delay, then draining)",
            m.shutting_down.clone(),
        );
        r.register(
            "endpoints",
            "Routable endpoints in the routing table",
            m.endpoints.clone(),
        );
        r.register(
            "services",
            "InferenceServices in the routing table",
            m.services.clone(),
        );
        r.register(
            "load_poll_failures",
            "Failed GET /load polls",
            m.load_poll_failures.clone(),
        );
        r.register(
            "discovery_events",
            "Watch events applied to the index",
            m.discovery_events.clone(),
        );
        r.register(
            "discovery_malformed",
            "Watched objects skipped because they could not be read",
            m.discovery_malformed.clone(),
        );
        m
    }
}

impl Metrics {
    /// The series of `labels` (created on first use, then shared).
    pub fn route(&self, labels: &RouteLabels) -> std::sync::Arc<RouteMetrics> {
        if let Ok(m) = self.routes.read() {
            if let Some(r) = m.get(labels) {
                return r.clone();
            }
        }
        let make = || {
            std::sync::Arc::new(RouteMetrics {
                labels: labels.clone(),
                requests: Default::default(),
                family: self.requests.clone(),
                ttft: self.ttft.get_or_create(labels).clone(),
                request_duration: self.request_duration.get_or_create(labels).clone(),
                streamed_tokens: self.streamed_tokens.get_or_create(labels).clone(),
                in_flight: self.in_flight.get_or_create(labels).clone(),
                client_disconnects: self.client_disconnects.get_or_create(labels).clone(),
            })
        };
        match self.routes.write() {
            Ok(mut m) => m.entry(labels.clone()).or_insert_with(make).clone(),
            Err(_) => make(),
        }
    }

    /// Counts one ejection.
    pub fn ejected(&self, cause: crate::endpoints::EjectCause) {
        self.endpoint_ejections
            .get_or_create(&EjectLabels {
                reason: cause.as_str().to_string(),
            })
            .inc();
    }

    /// Replaces the conflict series with the routing table's current conflicts.
    pub fn set_conflicts(&self, conflicts: &[crate::table::Conflict]) {
        let now: Vec<ConflictLabels> = conflicts
            .iter()
            .map(|c| ConflictLabels {
                namespace: c.claim.namespace.clone(),
                service: c.claim.name.clone(),
                model: c.model.clone(),
                owner: c.owner.to_string(),
            })
            .collect();
        let Ok(mut set) = self.conflicts_set.lock() else {
            return;
        };
        if *set == now {
            return;
        }
        for stale in set.iter().filter(|l| !now.contains(l)) {
            self.model_name_conflicts.remove(stale);
        }
        for l in &now {
            self.model_name_conflicts.get_or_create(l).set(1);
        }
        *set = now;
    }
}

/// `2xx`-style class of a status code.
pub fn status_class(status: u16) -> String {
    format!("{}xx", status / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_under_the_router_prefix() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        let l = RouteLabels {
            namespace: "ns".into(),
            service: "chat".into(),
            revision: "r1".into(),
        };
        m.ttft.get_or_create(&l).observe(0.01);
        m.requests
            .get_or_create(&StatusLabels {
                namespace: "ns".into(),
                service: "chat".into(),
                revision: "r1".into(),
                class: status_class(200),
            })
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        assert!(out.contains("steward_router_ttft_seconds_bucket{"), "{out}");
        assert!(out.contains(r#"steward_router_requests_total{namespace="ns",service="chat",revision="r1",class="2xx"} 1"#), "{out}");
    }
}
