//! The proxy: admit, pick, forward, retry once if allowed, stream back.
//!
//! Order of checks for one request: header size (431) → global cap (503,
//! taken before a byte of the body is read, so slow uploads count against
//! it) → body, read under [`upload`]'s size limit (413), byte budget (503)
//! and deadline (408) → parse (400) → model resolution (404, 409 for a
//! conflicting qualified name) → any endpoint at all (503 + Retry-After if
//! not) → tenant limits (429) → pick revision and endpoint → send. A failure
//! before the response head may be retried once on a different endpoint
//! when [`retry::is_retryable`] says so and the retry budget has a token;
//! after the head, the body streams through [`body::stream_body`] and is
//! never retried. How each attempt ended feeds the endpoint's passive
//! health ([`endpoints::Outcome`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::HeaderMap;
use http::HeaderValue;
use rand::Rng;

use crate::body::{stream_body, BodyContext, EndpointHealth, Holds};
use crate::config::ProxyConfig;
use crate::endpoints::{self, EjectCause, EjectPolicy, EndpointStates, Outcome};
use crate::error::ProxyError;
use crate::hashing::fnv1a;
use crate::index::{SharedIndex, TenantLimits};
use crate::limits::{GlobalLimit, TenantLimiter};
use crate::metrics::{Metrics, ReasonLabels, RouteLabels, ThrottleLabels};
use crate::pick::{pick_endpoint, pick_revision, Affinity, Candidate, RevisionChoice};
use crate::request::{self, ValidRequest};
use crate::retry::{self, EarlyFailure, RetryBudget};
use crate::table::{Endpoint, Resolved, ServiceRoute};
use crate::upload::{self, BodyBudget, ReadLimits};
use crate::upstream::{self, EnginePool, UpstreamBody};

/// Shared state of the proxy.
pub struct Proxy {
    pub cfg: ProxyConfig,
    pub index: SharedIndex,
    pub endpoints: EndpointStates,
    pub metrics: Metrics,
    tenants: Arc<TenantLimiter>,
    global: GlobalLimit,
    budget: Mutex<RetryBudget>,
    body_budget: BodyBudget,
    eject: EjectPolicy,
    /// Tenant limits for services that set none.
    default_limits: TenantLimits,
    /// Set once discovery has listed services and pods (or static routes
    /// are loaded); `/readyz` reads the same flag.
    discovered: Arc<AtomicBool>,
}

/// How long a request that arrives before the router's first discovery
/// list waits for it. A router that has just (re)started would otherwise
/// answer from an empty table: 404 for a model it is about to learn, 503
/// for one whose pods it has not listed yet (the chaos suite's router
/// restart saw one, 18 ms after "serving"). Past this, the request is
/// answered from whatever the table holds.
pub const DISCOVERY_WAIT: Duration = Duration::from_secs(5);

/// What one server thread owns for the requests it serves: its pool to the
/// engines and its own handles on the shared state (cloning a thread's own
/// `Arc` per request keeps reference counts off cache lines the other
/// threads write).
pub struct Worker {
    pub proxy: Arc<Proxy>,
    pub pool: EnginePool,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(proxy: Arc<Proxy>, pool: EnginePool) -> Arc<Self> {
        let metrics = Arc::new(proxy.metrics.clone());
        Arc::new(Self {
            proxy,
            pool,
            metrics,
        })
    }
}

/// Where one attempt went.
struct Target {
    revision: String,
    endpoint: Endpoint,
}

impl Proxy {
    pub fn new(
        cfg: ProxyConfig,
        index: SharedIndex,
        endpoints: EndpointStates,
        metrics: Metrics,
        discovered: Arc<AtomicBool>,
    ) -> Self {
        Self {
            discovered,
            tenants: TenantLimiter::new(cfg.max_tenants),
            global: GlobalLimit::new(cfg.max_concurrency),
            budget: Mutex::new(RetryBudget::new(cfg.retry_budget, Instant::now())),
            body_budget: BodyBudget::new(
                cfg.max_buffered_body_bytes,
                metrics.buffered_body_bytes.clone(),
            ),
            eject: EjectPolicy {
                base: cfg.eject_duration,
                consecutive_errors: cfg.eject_after_errors,
            },
            default_limits: TenantLimits {
                requests_per_second: cfg.default_tenant_rps,
                burst: cfg.default_tenant_burst,
                max_concurrent: cfg.default_tenant_max_concurrent,
            },
            cfg,
            index,
            endpoints,
            metrics,
        }
    }

    /// Serves one OpenAI request through `worker`'s pool (each server
    /// thread has its own, so a request never leaves the thread it arrived on).
    /// The body is hyper's (h2c and hand-offs) or the own HTTP/1.1 loop's.
    pub async fn handle<B>(&self, req: http::Request<B>, worker: &Worker) -> Response
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let start = Instant::now();
        let mut labels = RouteLabels::default();
        match self.route(req, worker, start, &mut labels).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(service = %labels.service, error = %e, kind = e.error_type(), "request refused");
                self.count(&labels, e.status().as_u16());
                e.into_response()
            }
        }
    }

    /// Waits (at most [`DISCOVERY_WAIT`]) for discovery's first list.
    async fn wait_for_discovery(&self) {
        let until = Instant::now() + DISCOVERY_WAIT;
        while !self.discovered.load(Ordering::Acquire) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !self.discovered.load(Ordering::Acquire) {
            tracing::warn!(
                waited_s = DISCOVERY_WAIT.as_secs(),
                "discovery has not listed yet; answering from an empty table"
            );
        }
    }

    fn count(&self, labels: &RouteLabels, status: u16) {
        self.metrics.route(labels).count(status);
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

    async fn route<B>(
        &self,
        req: http::Request<B>,
        worker: &Worker,
        start: Instant,
        labels: &mut RouteLabels,
    ) -> Result<Response, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
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
        // The cap first: a request whose body is still arriving holds a unit of it.
        let global = self.global.try_acquire().map_err(|t| {
            self.throttled(labels, t.reason.as_str());
            ProxyError::Overloaded {
                retry_after_secs: t.retry_after_secs,
                reason: t.reason,
            }
        })?;
        let content_length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let read_limits = ReadLimits {
            max_bytes: self.cfg.max_body_bytes,
            deadline: start + self.cfg.body_read_timeout,
            timeout: self.cfg.body_read_timeout,
        };
        let buffered =
            match upload::read(body, content_length, read_limits, &self.body_budget).await {
                Ok(b) => b,
                Err(e) => {
                    match &e {
                        ProxyError::Overloaded { reason, .. } => {
                            self.throttled(labels, reason.as_str())
                        }
                        ProxyError::BodyTimeout(_) => {
                            self.metrics.body_read_timeouts.inc();
                        }
                        _ => {}
                    }
                    return Err(e);
                }
            };
        let body = buffered.bytes.clone();
        let valid: ValidRequest = request::parse(
            &body,
            if self.cfg.prefix_affinity {
                self.cfg.prefix_block_bytes
            } else {
                0
            },
        )?;

        if !self.discovered.load(Ordering::Acquire) {
            self.wait_for_discovery().await;
        }
        let table = self.index.table();
        let svc = match table.resolve(&valid.model) {
            Resolved::Route(s) => s.clone(),
            Resolved::Conflict { owner } => {
                let namespace = valid
                    .model
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                return Err(ProxyError::ModelNameConflict {
                    model: valid.model.clone(),
                    namespace,
                    owner: owner.to_string(),
                });
            }
            Resolved::Unknown => return Err(ProxyError::UnknownModel(valid.model.clone())),
        };
        drop(table);
        labels.namespace = svc.key.namespace.clone();
        labels.service = svc.key.name.clone();
        let no_endpoint = || ProxyError::NoEndpoint {
            model: valid.model.clone(),
            retry_after_secs: self.cfg.no_endpoint_retry_after,
        };
        if !svc.has_endpoints() {
            return Err(no_endpoint());
        }

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
        // Non-streaming answers come whole when generation ends: they get the
        // long response timeout, not the stream-head timeout.
        let head_timeout = if valid.stream {
            self.cfg.first_byte_timeout
        } else {
            self.cfg.response_timeout
        };

        let mut tried: Vec<SocketAddr> = Vec::with_capacity(2);
        let mut target = self.pick(&svc, &affinity, &tried).ok_or_else(no_endpoint)?;
        loop {
            labels.revision = target.revision.clone();
            let addr = target.endpoint.addr;
            let ep = self.endpoints.get(&target.endpoint);
            let ep_guard = ep.start_request();
            tried.push(addr);
            let sent = upstream::send(
                &worker.pool,
                addr,
                &parts.method,
                path,
                &parts.headers,
                &body,
                head_timeout,
            )
            .await;
            let (failure, engine_resp) = match sent {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    let evidence = Outcome::of_status(code);
                    if let Some(o) = evidence {
                        self.record_outcome(&ep, addr, labels, o);
                    }
                    if !retry::is_retryable(EarlyFailure::Status(code)) {
                        drop(buffered);
                        let health = evidence.is_none().then(|| EndpointHealth {
                            state: ep.clone(),
                            addr,
                            policy: self.eject,
                        });
                        let holds = Holds {
                            global: Some(global),
                            tenant: Some(tenant_permit),
                            endpoint: Some(ep_guard),
                        };
                        return Ok(self.respond(worker, resp, labels, start, holds, health));
                    }
                    (EarlyFailure::Status(code), Some(resp))
                }
                Err(f) => (f, None),
            };
            if failure == EarlyFailure::FirstByteTimeout {
                self.record_outcome(&ep, addr, labels, Outcome::Error);
            }
            self.metrics
                .upstream_failures
                .get_or_create(&reason_labels(labels, failure.as_str()))
                .inc();
            if matches!(
                failure,
                EarlyFailure::Connect | EarlyFailure::ClosedBeforeResponse
            ) && ep.record_connect_failure(Instant::now(), self.cfg.eject_duration)
            {
                self.metrics.ejected(EjectCause::Connect);
                tracing::warn!(endpoint = %addr, service = %labels.service, reason = failure.as_str(), "endpoint ejected");
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
                    tracing::info!(from = %addr, to = %n.endpoint.addr, service = %labels.service, reason = failure.as_str(), "retrying on another endpoint");
                    let wait = retry::backoff(self.cfg.retry_backoff, rand::rng().random::<f64>());
                    tokio::time::sleep(wait).await;
                    target = n;
                }
                _ => {
                    return match (engine_resp, failure) {
                        // The engine's own 503/429 goes to the client as is (with its Retry-After).
                        (Some(resp), _) => {
                            let holds = Holds {
                                global: Some(global),
                                tenant: Some(tenant_permit),
                                endpoint: None,
                            };
                            Ok(self.respond(worker, resp, labels, start, holds, None))
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
                    .map(|ep| {
                        let st = self.endpoints.get(ep);
                        Candidate {
                            addr: ep.addr,
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
            endpoint: svc.revisions[ri].endpoints[ei].clone(),
        })
    }

    /// Feeds one outcome to the endpoint's passive health; counts and logs an ejection.
    fn record_outcome(
        &self,
        ep: &endpoints::EndpointState,
        addr: SocketAddr,
        labels: &RouteLabels,
        outcome: Outcome,
    ) {
        if ep.record_outcome(outcome, Instant::now(), &self.eject) {
            self.metrics.ejected(EjectCause::Errors);
            tracing::warn!(endpoint = %addr, service = %labels.service, revision = %labels.revision,
                errors = self.eject.consecutive_errors, "endpoint ejected after a run of errors");
        }
    }

    fn respond(
        &self,
        worker: &Worker,
        resp: http::Response<UpstreamBody>,
        labels: &RouteLabels,
        start: Instant,
        holds: Holds,
        health: Option<EndpointHealth>,
    ) -> Response {
        let status = resp.status();
        let route = self.metrics.route(labels);
        route.count(status.as_u16());
        let (parts, incoming) = resp.into_parts();
        let sse = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body: Body = stream_body(
            incoming,
            BodyContext {
                metrics: worker.metrics.clone(),
                route,
                start,
                idle_timeout: self.cfg.idle_timeout,
                sse,
                holds,
                health,
            },
        );
        let mut out = Response::new(body);
        *out.status_mut() = status;
        // Hop-by-hop headers were left out when the head was read.
        *out.headers_mut() = parts.headers;
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
