//! The load poller: `GET /load` on every routed endpoint each interval.
//!
//! A good answer updates the endpoint's load and lifts any ejection (the
//! endpoint is seen healthy again); a refused connection ejects it, so a
//! dead engine stops receiving requests within one interval even before a
//! request fails on it. Timeouts only count as poll failures: a busy engine
//! is slow, not dead. Polls run concurrently and are bounded by the timeout,
//! so one slow engine never delays the others' next poll.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::MissedTickBehavior;

use crate::config::PollConfig;
use crate::endpoints::{EjectCause, EndpointState, EndpointStates, LoadReport};
use crate::index::SharedIndex;
use crate::metrics::Metrics;
use crate::table::Endpoint;
use crate::upstream::UpstreamClient;

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("connect failed")]
    Connect,
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out")]
    Timeout,
    #[error("status {0}")]
    Status(StatusCode),
    #[error("body is not a load report: {0}")]
    Body(#[source] serde_json::Error),
}

/// Everything the poller needs.
pub struct Poller {
    pub cfg: PollConfig,
    pub index: SharedIndex,
    pub endpoints: EndpointStates,
    pub metrics: Metrics,
    pub client: UpstreamClient,
    pub eject_duration: Duration,
}

impl Poller {
    /// Polls forever.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.poll_all().await;
        }
    }

    /// One round over the current table's endpoints.
    pub async fn poll_all(&self) {
        let table = self.index.table();
        let live = table.endpoints();
        self.endpoints.retain(&live);
        self.metrics.endpoints.set(live.len() as i64);
        self.metrics.services.set(table.models().count() as i64);
        self.metrics.set_conflicts(&table.conflicts);
        join_all(live.iter().map(|ep| self.poll_one(ep))).await;
    }

    async fn poll_one(&self, ep: &Endpoint) {
        let addr = ep.addr;
        let state: Arc<EndpointState> = self.endpoints.get(ep);
        match tokio::time::timeout(self.cfg.timeout, fetch(&self.client, addr)).await {
            Ok(Ok(report)) => state.record_load(report),
            Ok(Err(e)) => {
                self.metrics.load_poll_failures.inc();
                tracing::debug!(endpoint = %addr, error = %e, "load poll failed");
                if matches!(e, PollError::Connect)
                    && state.record_connect_failure(Instant::now(), self.eject_duration)
                {
                    self.metrics.ejected(EjectCause::Connect);
                    tracing::warn!(endpoint = %addr, "endpoint ejected: /load connect failed");
                }
            }
            Err(_) => {
                self.metrics.load_poll_failures.inc();
                tracing::debug!(endpoint = %addr, error = %PollError::Timeout, "load poll failed");
            }
        }
    }
}

async fn fetch(client: &UpstreamClient, addr: SocketAddr) -> Result<LoadReport, PollError> {
    let req = Request::get(format!("http://{addr}/load"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| PollError::Request(e.to_string()))?;
    let resp = client.request(req).await.map_err(|e| {
        if e.is_connect() {
            PollError::Connect
        } else {
            PollError::Request(e.to_string())
        }
    })?;
    if resp.status() != StatusCode::OK {
        return Err(PollError::Status(resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| PollError::Request(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(PollError::Body)
}
