//! The response body the router streams back: engine frames pass through
//! one by one, never buffered.
//!
//! It owns everything the request holds (concurrency permits, the
//! endpoint's in-flight guard, the upstream body), so when the client goes
//! away and hyper drops the body, the upstream connection closes and the
//! engine sees the cancellation. It records TTFT at the first byte, streamed
//! tokens per SSE event, and the end-to-end duration (or a disconnect) when
//! it ends. A failure after the first byte is never retried: an SSE client
//! gets an error event, then the response is aborted so the client cannot
//! mistake it for a complete one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;

use crate::endpoints::{EjectCause, EjectPolicy, EndpointState, InflightGuard, Outcome};
use crate::error::error_body;
use crate::limits::TenantPermit;
use crate::metrics::{Metrics, ReasonLabels, RouteMetrics};
use crate::sse::SseCounter;
use crate::upstream::UpstreamBody;

/// Things held until the response ends: a unit of the global cap, of the
/// tenant's concurrency, and of the endpoint's in-flight count.
#[derive(Default)]
pub struct Holds {
    pub global: Option<tokio::sync::OwnedSemaphorePermit>,
    pub tenant: Option<TenantPermit>,
    pub endpoint: Option<InflightGuard>,
}

/// Why a stream was cut.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("engine connection failed mid-stream")]
    Upstream(#[source] std::io::Error),
    #[error("engine sent nothing for {0:?}")]
    Idle(Duration),
}

impl StreamError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Upstream(_) => "upstream",
            Self::Idle(_) => "idle_timeout",
        }
    }
}

/// The endpoint whose answer this is, to tell its passive health how it ended.
pub struct EndpointHealth {
    pub state: std::sync::Arc<EndpointState>,
    pub addr: std::net::SocketAddr,
    pub policy: EjectPolicy,
}

/// What the body needs to record its metrics.
pub struct BodyContext {
    /// The serving thread's handle on the metrics (its own `Arc`, so
    /// taking it per request touches no cache line another thread writes).
    pub metrics: std::sync::Arc<Metrics>,
    /// This request's series (its labels are namespace, service, revision).
    pub route: std::sync::Arc<RouteMetrics>,
    pub start: Instant,
    pub idle_timeout: Duration,
    pub sse: bool,
    pub holds: Holds,
    /// `None` when the response head already said how it went (e.g. a 500).
    pub health: Option<EndpointHealth>,
}

struct State {
    ctx: BodyContext,
    counter: SseCounter,
    first_byte_seen: bool,
    finished: bool,
}

impl State {
    /// Tells the endpoint's passive health how this answer ended (once).
    fn outcome(&mut self, outcome: Outcome) {
        let Some(h) = self.ctx.health.take() else {
            return;
        };
        if h.state.record_outcome(outcome, Instant::now(), &h.policy) {
            self.ctx.metrics.ejected(EjectCause::Errors);
            let l = &self.ctx.route.labels;
            tracing::warn!(endpoint = %h.addr, service = %l.service, revision = %l.revision,
                errors = h.policy.consecutive_errors, "endpoint ejected after a run of errors");
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        let in_band_error = self.ctx.sse && self.counter.error_events() > 0;
        self.outcome(if in_band_error {
            Outcome::Error
        } else {
            Outcome::Success
        });
        self.ctx
            .route
            .request_duration
            .observe(self.ctx.start.elapsed().as_secs_f64());
    }

    fn on_data(&mut self, data: &Bytes) {
        if !self.first_byte_seen && !data.is_empty() {
            self.first_byte_seen = true;
            self.ctx
                .route
                .ttft
                .observe(self.ctx.start.elapsed().as_secs_f64());
        }
        if self.ctx.sse {
            let n = self.counter.feed(data);
            if n > 0 {
                self.ctx.route.streamed_tokens.inc_by(n);
            }
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.ctx.route.in_flight.dec();
        if !self.finished {
            self.ctx.route.client_disconnects.inc();
            let l = &self.ctx.route.labels;
            tracing::debug!(service = %l.service, revision = %l.revision, "client went away mid-response; upstream closed");
        }
    }
}

/// Where the body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Streaming,
    /// The in-band error event went out; yield once so hyper writes it, then fail.
    AbortAfterYield,
    Abort,
    Done,
}

/// The engine's body as the client's body (see the module docs).
pub struct ProxyBody {
    inner: UpstreamBody,
    st: State,
    phase: Phase,
    /// When the next chunk must have arrived.
    deadline: tokio::time::Instant,
    /// Created only when the engine makes us wait (small answers never do).
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ProxyBody {
    fn fail(&mut self, err: StreamError) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.st.finished = true;
        self.st.outcome(Outcome::Error);
        let l = &self.st.ctx.route.labels;
        self.st
            .ctx
            .metrics
            .stream_errors
            .get_or_create(&ReasonLabels {
                namespace: l.namespace.clone(),
                service: l.service.clone(),
                revision: l.revision.clone(),
                reason: err.reason().to_string(),
            })
            .inc();
        tracing::warn!(service = %l.service, revision = %l.revision, error = %err, "stream cut after first byte; not retried");
        if self.st.ctx.sse {
            self.phase = Phase::AbortAfterYield;
            let event = format!(
                "data: {}\n\n",
                error_body(&err.to_string(), "upstream_stream_error")
            );
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
        }
        self.phase = Phase::Done;
        Poll::Ready(Some(Err(std::io::Error::other(err))))
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        loop {
            match this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::AbortAfterYield => {
                    this.phase = Phase::Abort;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Phase::Abort => {
                    this.phase = Phase::Done;
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "stream aborted after upstream error",
                    ))));
                }
                Phase::Streaming => {}
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.st.on_data(&data);
                        if this.inner.is_end_stream() {
                            // A sized body may not be polled again once complete.
                            this.st.finish();
                            this.phase = Phase::Done;
                        } else {
                            this.deadline = tokio::time::Instant::now() + this.st.ctx.idle_timeout;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(_) => continue, // trailers: not forwarded
                },
                Poll::Ready(None) => {
                    this.st.finish();
                    this.phase = Phase::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return this.fail(StreamError::Upstream(e)),
                Poll::Pending => {
                    let deadline = this.deadline;
                    let idle = this
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if idle.deadline() != deadline {
                        idle.as_mut().reset(deadline);
                    }
                    if idle.as_mut().poll(cx).is_ready() {
                        let timeout = this.st.ctx.idle_timeout;
                        return this.fail(StreamError::Idle(timeout));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.phase {
            Phase::Streaming => self.inner.size_hint(),
            _ => http_body::SizeHint::default(),
        }
    }
}

/// Wraps the engine's body for the client; counts it in flight until it ends.
pub fn stream_body(body: UpstreamBody, ctx: BodyContext) -> Body {
    ctx.route.in_flight.inc();
    let deadline = tokio::time::Instant::now() + ctx.idle_timeout;
    let st = State {
        ctx,
        counter: SseCounter::default(),
        first_byte_seen: false,
        finished: false,
    };
    Body::new(ProxyBody {
        inner: body,
        st,
        phase: Phase::Streaming,
        deadline,
        idle: None,
    })
}
