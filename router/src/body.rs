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

use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures::stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::error_body;
use crate::metrics::{Metrics, ReasonLabels, RouteLabels};
use crate::sse::SseCounter;

/// Things held until the response ends.
pub type Holds = Vec<Box<dyn Send + Sync>>;

/// Why a stream was cut.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("engine connection failed mid-stream")]
    Upstream(#[source] hyper::Error),
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

/// What the body needs to record its metrics.
pub struct BodyContext {
    pub metrics: Metrics,
    pub labels: RouteLabels,
    pub start: Instant,
    pub idle_timeout: Duration,
    pub sse: bool,
    pub holds: Holds,
}

struct State {
    body: Incoming,
    ctx: BodyContext,
    counter: SseCounter,
    first_byte_seen: bool,
    finished: bool,
    abort_next: bool,
}

impl State {
    fn finish(&mut self) {
        self.finished = true;
        self.ctx
            .metrics
            .request_duration
            .get_or_create(&self.ctx.labels)
            .observe(self.ctx.start.elapsed().as_secs_f64());
    }

    fn on_data(&mut self, data: &Bytes) {
        if !self.first_byte_seen && !data.is_empty() {
            self.first_byte_seen = true;
            self.ctx
                .metrics
                .ttft
                .get_or_create(&self.ctx.labels)
                .observe(self.ctx.start.elapsed().as_secs_f64());
        }
        if self.ctx.sse {
            let n = self.counter.feed(data);
            if n > 0 {
                self.ctx
                    .metrics
                    .streamed_tokens
                    .get_or_create(&self.ctx.labels)
                    .inc_by(n);
            }
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if !self.finished {
            self.ctx
                .metrics
                .client_disconnects
                .get_or_create(&self.ctx.labels)
                .inc();
            tracing::debug!(service = %self.ctx.labels.service, revision = %self.ctx.labels.revision, "client went away mid-response; upstream closed");
        }
    }
}

/// Wraps the engine's body for the client.
pub fn stream_body(body: Incoming, ctx: BodyContext) -> Body {
    let state = State {
        body,
        ctx,
        counter: SseCounter::default(),
        first_byte_seen: false,
        finished: false,
        abort_next: false,
    };
    let s = stream::unfold(state, |mut st| async move {
        if st.abort_next {
            // After the in-band error event: abort rather than end cleanly.
            // Yield once first so hyper flushes the event before it sees the error.
            st.abort_next = false;
            tokio::task::yield_now().await;
            return Some((
                Err(std::io::Error::other("stream aborted after upstream error")),
                st,
            ));
        }
        if st.finished {
            return None;
        }
        loop {
            let next = tokio::time::timeout(st.ctx.idle_timeout, st.body.frame()).await;
            let err = match next {
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        st.on_data(&data);
                        return Some((Ok(data), st));
                    }
                    Err(_) => continue, // trailers: not forwarded
                },
                Ok(None) => {
                    st.finish();
                    return None;
                }
                Ok(Some(Err(e))) => StreamError::Upstream(e),
                Err(_) => StreamError::Idle(st.ctx.idle_timeout),
            };
            st.finished = true;
            let l = &st.ctx.labels;
            st.ctx
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
            if st.ctx.sse {
                st.abort_next = true;
                let event = format!(
                    "data: {}\n\n",
                    error_body(&err.to_string(), "upstream_stream_error")
                );
                return Some((Ok(Bytes::from(event)), st));
            }
            return Some((Err(std::io::Error::other(err)), st));
        }
    });
    Body::from_stream(s)
}
