//! The one place that talks to Prometheus (`prometheus-http-query`): runs a
//! named PromQL query with a timeout and returns its vector, `NoData`
//! (empty) or an error classified as `Unavailable` (down, 5xx, timeout) or
//! `Invalid` (Prometheus refused the text). Every query is counted in
//! `steward_operator_prometheus_queries_total{outcome}` and timed in
//! `steward_operator_prometheus_query_duration_seconds`. Concurrency is
//! bounded by a semaphore so a slow Prometheus cannot pile up requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_http_query::response::Data;
use prometheus_http_query::{Client, Error as PromError};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::metrics::Metrics;
use crate::signals::{QueryError, QueryErrorKind};

/// How to reach Prometheus.
#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    pub url: String,
    /// Limit of one query (sent to Prometheus as its own timeout too).
    pub timeout: Duration,
    /// Queries in flight at once, over every InferenceService.
    pub max_in_flight: usize,
}

/// A bad Prometheus address.
#[derive(Debug, thiserror::Error)]
#[error("Prometheus address {url:?}: {source}")]
pub struct BadAddress {
    url: String,
    #[source]
    source: PromError,
}

/// One series of an instant-vector result: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// The Prometheus client with its limits and metrics.
pub struct Prometheus {
    client: Client,
    timeout: Duration,
    permits: Semaphore,
    metrics: Arc<Metrics>,
}

impl Prometheus {
    /// Builds the client; no request is sent yet.
    pub fn new(cfg: &PrometheusConfig, metrics: Arc<Metrics>) -> Result<Self, BadAddress> {
        let client = Client::try_from(cfg.url.as_str()).map_err(|source| BadAddress {
            url: cfg.url.clone(),
            source,
        })?;
        Ok(Self {
            client,
            timeout: cfg.timeout,
            permits: Semaphore::new(cfg.max_in_flight.max(1)),
            metrics,
        })
    }

    /// Runs an instant query. An empty vector is the caller's `NoData`.
    pub async fn query(&self, promql: &str, limit: Duration) -> Result<Vec<Sample>, QueryError> {
        let limit = limit.min(self.timeout);
        let started = Instant::now();
        let out = tokio::time::timeout(limit, self.send(promql, limit)).await;
        let out = out.unwrap_or_else(|_| {
            Err(QueryError {
                kind: QueryErrorKind::Unavailable,
                message: format!("no answer within {}", humantime::format_duration(limit)),
            })
        });
        let outcome = match &out {
            Ok(v) if v.is_empty() => "no_data",
            Ok(_) => "value",
            Err(e) if e.kind == QueryErrorKind::Invalid => "invalid",
            Err(_) => "error",
        };
        self.metrics.prometheus_query(outcome, started.elapsed());
        if let Err(e) = &out {
            debug!(outcome, error = %e, promql, "prometheus query failed");
        }
        out
    }

    async fn send(&self, promql: &str, limit: Duration) -> Result<Vec<Sample>, QueryError> {
        let _permit = self.permits.acquire().await.map_err(|_| QueryError {
            kind: QueryErrorKind::Unavailable,
            message: "the query limiter is closed".into(),
        })?;
        let res = self
            .client
            .query(promql)
            .timeout(limit.as_millis().min(i64::MAX as u128) as i64)
            .get()
            .await
            .map_err(classify)?;
        Ok(match res.data() {
            Data::Vector(v) => v
                .iter()
                .map(|s| {
                    let labels = s
                        .metric()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    (labels, s.sample().value())
                })
                .collect(),
            Data::Scalar(s) => vec![(BTreeMap::new(), s.value())],
            Data::Matrix(_) => {
                return Err(QueryError {
                    kind: QueryErrorKind::Invalid,
                    message: "the query returns a range vector; an instant value is needed".into(),
                })
            }
        })
    }
}

fn classify(e: PromError) -> QueryError {
    match &e {
        PromError::Prometheus(p) if p.is_bad_data() || p.is_execution() => QueryError {
            kind: QueryErrorKind::Invalid,
            message: p.message().to_string(),
        },
        _ => QueryError {
            kind: QueryErrorKind::Unavailable,
            message: error_chain(&e),
        },
    }
}

/// The error and its sources in one line ("error sending request: ...:
/// Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
