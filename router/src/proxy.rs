//! The proxy: admit, pick, forward, retry once if allowed, stream back.
//!
//! Order of checks for one request: header and body size → parse → model
//! lookup (404 if unknown) → any endpoint at all (503 + Retry-After if not)
//! → global cap (503) → tenant limits (429) → pick revision and endpoint →
//! send. A failure before the response head may be retried once on a
//! different endpoint when [`retry::is_retryable`] says so and the retry
//! budget has a token; after the head, the body streams through
//! [`body::stream_body`] and is never retried.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::HeaderMap;
use http::HeaderValue;
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;

use crate::body::{stream_body, BodyContext, Holds};
use crate::config::ProxyConfig;
use crate::endpoints::EndpointStates;
use crate::error::ProxyError;
use crate::hashing::fnv1a;
use crate::index::{SharedIndex, TenantLimits};
use crate::limits::{GlobalLimit, TenantLimiter};
use crate::metrics::{
    status_class, Metrics, ReasonLabels, RouteLabels, StatusLabels, ThrottleLabels,
};
use crate::pick::{pick_endpoint, pick_revision, Affinity, Candidate, RevisionChoice};
use crate::request::{self, ValidRequest};
use crate::retry::{self, EarlyFailure, RetryBudget};
use crate::table::ServiceRoute;
use crate::upstream::{self, UpstreamClient};

/// Shared state of the proxy.
pub struct Proxy {
    pub cfg: ProxyConfig,
    pub index: SharedIndex,
    pub endpoints: EndpointStates,
    pub metrics: Metrics,
    client: UpstreamClient,
    tenants: Arc<TenantLimiter>,
    global: GlobalLimit,
    budget: Mutex<RetryBudget>,
    /// Tenant limits for services that set none.
    default_limits: TenantLimits,
}

/// Decrements the in-flight gauge when dropped.
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where one attempt went.
struct Target {
    revision: String,
    addr: SocketAddr,
}

impl Proxy {
    pub fn new(
        cfg: ProxyConfig,
        index: SharedIndex,
        endpoints: EndpointStates,
        metrics: Metrics,
        client: UpstreamClient,
    ) -> Self {
        Self {
            tenants: TenantLimiter::new(cfg.max_tenants),
            global: GlobalLimit::new(cfg.max_concurrency),
            budget: Mutex::new(RetryBudget::new(cfg.retry_budget, Instant::now())),
            default_limits: TenantLimits {
                requests_per_second: cfg.default_tenant_rps,
                burst: cfg.default_tenant_burst,
                max_concurrent: cfg.default_tenant_max_concurrent,
            },
            cfg,
            index,
            endpoints,
            metrics,
            client,
        }
    }

    /// Serves one OpenAI request.
    pub async fn handle(self: Arc<Self>, req: Request) -> Response {
        let start = Instant::now();
        let mut labels = RouteLabels::default();
        match self.route(req, start, &mut labels).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(service = %labels.service, error = %e, kind = e.error_type(), "request refused");
                self.count(&labels, e.status().as_u16());
                e.into_response()
            }
        }
    }

    fn count(&self, labels: &RouteLabels, status: u16) {
        self.metrics
            .requests
            .get_or_create(&StatusLabels {
                namespace: labels.namespace.clone(),
                service: labels.service.clone(),
                revision: labels.revision.clone(),
                class: status_class(status),
            })
            .inc();
    }

    fn throttled(&self, labels: &RouteLabels, reason: &str) {
        self.metrics
            .throttled
            .get_or_create(&ThrottleLabels {
                namespace: labels.namespace.clone(),
                service: labels.service.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }

    async fn route(
        &self,
        req: Request,
        start: Instant,
        labels: &mut RouteLabels,
    ) -> Result<Response, ProxyError> {
        let (parts, body) = req.into_parts();
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if header_bytes > self.cfg.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge {
                limit: self.cfg.max_header_bytes,
            });
        }
        let limit = self.cfg.max_body_bytes;
        let body = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| ProxyError::BodyTooLarge { limit })?;
        let valid: ValidRequest = request::parse(
            &body,
            if self.cfg.prefix_affinity {
                self.cfg.prefix_block_bytes
            } else {
                0
            },
        )?;

        let table = self.index.table();
        let svc = table
            .lookup(&valid.model)
            .cloned()
            .ok_or_else(|| ProxyError::UnknownModel(valid.model.clone()))?;
        labels.namespace = svc.key.namespace.clone();
        labels.service = svc.key.name.clone();
        let no_endpoint = || ProxyError::NoEndpoint {
            model: valid.model.clone(),
            retry_after_secs: self.cfg.no_endpoint_retry_after,
        };
        if !svc.has_endpoints() {
            return Err(no_endpoint());
        }

        let global = self.global.try_acquire().map_err(|t| {
            self.throttled(labels, t.reason.as_str());
            ProxyError::Overloaded {
                retry_after_secs: t.retry_after_secs,
            }
        })?;
        let tenant = header_str(&parts.headers, &self.cfg.tenant_header).unwrap_or("anonymous");
        let limits = svc.tenant_limits.as_ref().unwrap_or(&self.default_limits);
        let tenant_permit = self
            .tenants
            .admit(&svc.key, tenant, limits, Instant::now())
            .map_err(|t| {
                self.throttled(labels, t.reason.as_str());
                ProxyError::TenantThrottled {
                    tenant: tenant.to_string(),
                    throttle: t,
                }
            })?;

        let affinity = Affinity {
            session: header_str(&parts.headers, &self.cfg.session_header)
                .map(|k| fnv1a(k.as_bytes())),
            prefix: valid.prefix_hash,
            prefix_tolerance: self.cfg.prefix_tolerance,
        };
        if let Ok(mut b) = self.budget.lock() {
            b.record_request(Instant::now());
        }
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let fwd_headers = upstream::forward_headers(&parts.headers);

        let mut tried: Vec<SocketAddr> = Vec::with_capacity(2);
        let mut target = self.pick(&svc, &affinity, &tried).ok_or_else(no_endpoint)?;
        loop {
            labels.revision = target.revision.clone();
            let ep = self.endpoints.get(target.addr);
            let ep_guard = ep.start_request();
            tried.push(target.addr);
            let sent = upstream::send(
                &self.client,
                target.addr,
                parts.method.clone(),
                path,
                &fwd_headers,
                body.clone(),
                self.cfg.first_byte_timeout,
            )
            .await;
            let (failure, engine_resp) = match sent {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    if !retry::is_retryable(EarlyFailure::Status(code)) {
                        let holds: Holds = vec![
                            Box::new(global),
                            Box::new(tenant_permit),
                            Box::new(ep_guard),
                        ];
                        return Ok(self.respond(resp, labels, start, holds));
                    }
                    (EarlyFailure::Status(code), Some(resp))
                }
                Err(f) => (f, None),
            };
            self.metrics
                .upstream_failures
                .get_or_create(&reason_labels(labels, failure.as_str()))
                .inc();
            if matches!(
                failure,
                EarlyFailure::Connect | EarlyFailure::ClosedBeforeResponse
            ) && ep.record_connect_failure(Instant::now(), self.cfg.eject_duration)
            {
                self.metrics.endpoint_ejections.inc();
                tracing::warn!(endpoint = %target.addr, service = %labels.service, reason = failure.as_str(), "endpoint ejected");
            }
            drop(ep_guard);
            let next = if tried.len() < 2 && retry::is_retryable(failure) {
                self.pick(&svc, &affinity, &tried)
            } else {
                None
            };
            let granted = next.is_some()
                && self
                    .budget
                    .lock()
                    .map(|mut b| b.try_withdraw(Instant::now()))
                    .unwrap_or(false);
            if next.is_some() && !granted {
                self.metrics.retry_budget_exhausted.inc();
            }
            match next {
                Some(n) if granted => {
                    drop(engine_resp);
                    self.metrics
                        .retries
                        .get_or_create(&reason_labels(labels, failure.as_str()))
                        .inc();
                    tracing::info!(from = %target.addr, to = %n.addr, service = %labels.service, reason = failure.as_str(), "retrying on another endpoint");
                    let wait = retry::backoff(self.cfg.retry_backoff, rand::rng().random::<f64>());
                    tokio::time::sleep(wait).await;
                    target = n;
                }
                _ => {
                    return match (engine_resp, failure) {
                        // The engine's own 503/429 goes to the client as is (with its Retry-After).
                        (Some(resp), _) => {
                            let holds: Holds = vec![Box::new(global), Box::new(tenant_permit)];
                            Ok(self.respond(resp, labels, start, holds))
                        }
                        (None, EarlyFailure::FirstByteTimeout) => Err(ProxyError::UpstreamTimeout),
                        (None, f) => Err(ProxyError::UpstreamUnavailable {
                            reason: f.as_str(),
                            retry_after_secs: 1,
                        }),
                    };
                }
            }
        }
    }

    /// Picks a revision by weight (or session) and an endpoint by load, skipping `tried`.
    fn pick(
        &self,
        svc: &ServiceRoute,
        affinity: &Affinity,
        tried: &[SocketAddr],
    ) -> Option<Target> {
        let now = Instant::now();
        let choices: Vec<RevisionChoice> = svc
            .revisions
            .iter()
            .map(|r| RevisionChoice {
                weight: r.weight,
                endpoints: r
                    .endpoints
                    .iter()
                    .map(|&addr| {
                        let st = self.endpoints.get(addr);
                        Candidate {
                            addr,
                            score: st.score(),
                            available: st.available(now),
                        }
                    })
                    .collect(),
            })
            .collect();
        let usable = |c: &Candidate| c.available && !tried.contains(&c.addr);
        let mut rng = rand::rng();
        let roll = affinity.session.unwrap_or_else(|| rng.random());
        let ri = pick_revision(&choices, roll, usable)?;
        let ei = pick_endpoint(
            &choices[ri].endpoints,
            affinity,
            rng.random(),
            rng.random(),
            usable,
        )?;
        Some(Target {
            revision: svc.revisions[ri].name.clone(),
            addr: choices[ri].endpoints[ei].addr,
        })
    }

    fn respond(
        &self,
        resp: http::Response<Incoming>,
        labels: &RouteLabels,
        start: Instant,
        mut holds: Holds,
    ) -> Response {
        let status = resp.status();
        self.count(labels, status.as_u16());
        let gauge = self.metrics.in_flight.get_or_create(labels).clone();
        gauge.inc();
        holds.push(Box::new(InFlight(gauge)));
        let (parts, incoming) = resp.into_parts();
        let sse = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body: Body = stream_body(
            incoming,
            BodyContext {
                metrics: self.metrics.clone(),
                labels: labels.clone(),
                start,
                idle_timeout: self.cfg.idle_timeout,
                sse,
                holds,
            },
        );
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = upstream::response_headers(&parts.headers);
        if let Ok(v) = HeaderValue::from_str(&labels.revision) {
            out.headers_mut().insert("x-steward-revision", v);
        }
        out.into_response()
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
}

fn reason_labels(l: &RouteLabels, reason: &str) -> ReasonLabels {
    ReasonLabels {
        namespace: l.namespace.clone(),
        service: l.service.clone(),
        revision: l.revision.clone(),
        reason: reason.to_string(),
    }
}
