//! The router's own HTTP/1.1 connection loop: the hot path of the server.
//!
//! One task per connection, one request at a time: read the head into the
//! connection's buffer, parse it ([`crate::h1_server`]), call the proxy
//! (`POST /v1/...`) or the axum routes (a body-less `GET`), write the
//! response head and body (`Content-Length` or chunked, each frame as it
//! comes, so SSE streams pass through unbuffered), then the next request;
//! pipelined requests wait in the buffer for their turn. Whatever the loop
//! does not serve goes to hyper for the rest of the connection's life
//! ([`Ended::Handoff`]), with the bytes already read in front.
//!
//! Guarantees kept from the hyper-only server:
//! - a head must arrive within `header_read_timeout` from when the loop
//!   starts waiting for it (idle keep-alive included): with part of a head
//!   read the client gets a 408, idle it is just closed;
//! - a head over `max_head` bytes (or with too many headers) goes to hyper,
//!   which answers 431 as before;
//! - once the shutdown's closing phase has begun, every response carries
//!   `Connection: close` and the connection ends after it; when draining
//!   starts (`stop`), an idle connection closes at once;
//! - a client that closes while its request is with the engine or its
//!   response is streaming drops the response body, which closes the
//!   engine connection (the engine sees the cancel).
//!
//! The disconnect watch runs while the proxy waits for the engine only when
//! the request body was already in the buffer (nearly always): a body that
//! is still arriving is read by the proxy itself, which sees a close there.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::conn_io::{client_gone, write_all, ConnBody, ReqBody, READ_CHUNK};
use crate::error::error_body;
use crate::h1::{bodiless, Decoder};
use crate::h1_server::{
    chunk_header, encode_response_head, parse_request, BodyFraming, RequestHead, ResponseFraming,
    Route, Step, LAST_CHUNK,
};
use crate::proxy::Worker;

/// What every connection of one server thread shares.
#[derive(Clone)]
pub struct ConnContext {
    pub worker: Arc<Worker>,
    pub routes: axum::Router,
    /// Set from the start of the shutdown (closing phase).
    pub closing: Arc<AtomicBool>,
    pub header_read_timeout: Duration,
    /// The largest request head the loop buffers before handing over.
    pub max_head: usize,
}

/// How the loop left a connection.
pub enum Ended {
    /// Closed (or to be closed by dropping the socket).
    Closed,
    /// For hyper to serve, starting with `buffered`.
    Handoff { io: TcpStream, buffered: BytesMut },
}

/// The deadline for the head being read. The timer is created once per
/// connection and moved only when it fires early, so a request that
/// arrives in time costs a clock read, not a timer-wheel insert.
struct HeadTimer {
    deadline: Instant,
    sleep: Option<std::pin::Pin<Box<Sleep>>>,
}

/// How waiting for more of a head ended.
enum Wait {
    /// This many bytes arrived (0: the client closed).
    Read(usize),
    Failed(std::io::Error),
    /// Draining began while nothing of a head had arrived.
    Stopped,
    TimedOut,
}

impl HeadTimer {
    /// Reads more of a head into `buf`, until the deadline; `stopped` counts
    /// only while nothing of a head has arrived (`idle`). Reads through
    /// `AsyncRead`, which forgets the socket's readiness after a short read,
    /// so the disconnect watch that follows costs no system call.
    async fn read<S: Future + Unpin>(
        &mut self,
        io: &mut TcpStream,
        buf: &mut BytesMut,
        stopped: &mut S,
        idle: bool,
    ) -> Wait {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_CHUNK);
        }
        loop {
            let deadline = self.deadline;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            tokio::select! {
                biased;
                r = io.read_buf(buf) => return match r {
                    Ok(n) => Wait::Read(n),
                    Err(e) => Wait::Failed(e),
                },
                _ = &mut *stopped, if idle => return Wait::Stopped,
                _ = sleep.as_mut() => {
                    if Instant::now() >= self.deadline {
                        return Wait::TimedOut;
                    }
                    sleep.as_mut().reset(self.deadline);
                }
            }
        }
    }
}

/// Serves HTTP/1.1 on `io` until it closes or goes to hyper (see the module docs).
pub async fn serve(
    mut io: TcpStream,
    ctx: &ConnContext,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let mut buf = BytesMut::with_capacity(8 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(1 << 10);
    let mut timer = HeadTimer {
        deadline: Instant::now() + ctx.header_read_timeout,
        sleep: None,
    };
    // One drain watch for the connection's life: created per head read, it
    // joined and left the watch's waiter list (a lock each way) per request.
    let mut stopped = std::pin::pin!(stop.wait_for(|s| *s));
    loop {
        timer.deadline = Instant::now() + ctx.header_read_timeout;
        let head = loop {
            match parse_request(&buf, ctx.max_head) {
                Step::Serve(head) => break head,
                Step::Handoff(why) => {
                    tracing::debug!(?why, "request handed to hyper");
                    return Ended::Handoff { io, buffered: buf };
                }
                Step::Partial => {}
            }
            let idle = buf.is_empty();
            match timer.read(&mut io, &mut buf, &mut stopped, idle).await {
                Wait::Read(0) | Wait::Stopped => return Ended::Closed,
                Wait::Read(_) => {}
                Wait::Failed(e) => {
                    tracing::debug!(error = %e, "client connection failed while reading a head");
                    return Ended::Closed;
                }
                Wait::TimedOut => {
                    if !buf.is_empty() {
                        request_timeout(&io, ctx.header_read_timeout).await;
                    }
                    tracing::debug!(timeout = ?ctx.header_read_timeout, partial = buf.len(),
                        "request head did not arrive in time; connection closed");
                    return Ended::Closed;
                }
            }
        };
        buf.advance(head.len);
        match exchange(&io, &mut buf, &mut out, ctx, *head).await {
            Next::KeepAlive => {}
            Next::Close => return Ended::Closed,
        }
    }
}

/// Whether the connection may carry another request.
enum Next {
    KeepAlive,
    Close,
}

/// Serves one request whose head was taken off `buf`.
async fn exchange(
    io: &TcpStream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    ctx: &ConnContext,
    head: RequestHead,
) -> Next {
    let RequestHead {
        method,
        uri,
        headers,
        body,
        close,
        route,
        ..
    } = head;
    let mut decoder = Decoder::Done;
    let req_body = match body {
        BodyFraming::Length(0) => ReqBody::Ready(None),
        BodyFraming::Length(n) if n <= buf.len() as u64 => {
            // n fits in usize: it is at most the buffer's length.
            ReqBody::Ready(Some(buf.split_to(n as usize).freeze()))
        }
        BodyFraming::Length(n) => {
            decoder = Decoder::Length(n);
            ReqBody::Conn(ConnBody::new(io, buf, &mut decoder))
        }
        BodyFraming::Chunked => {
            decoder = Decoder::Size;
            ReqBody::Conn(ConnBody::new(io, buf, &mut decoder))
        }
    };
    let watch_client = matches!(req_body, ReqBody::Ready(_));
    let mut req = http::Request::new(req_body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let handled = async {
        match route {
            Route::Proxy => ctx.worker.proxy.handle(req, &ctx.worker).await,
            Route::Routes => {
                let mut routes = ctx.routes.clone();
                match tower_service::Service::call(
                    &mut routes,
                    req.map(|_| axum::body::Body::empty()),
                )
                .await
                {
                    Ok(r) => r,
                    Err(e) => match e {},
                }
            }
        }
    };
    let resp = if watch_client {
        tokio::select! {
            biased;
            r = handled => r,
            _ = client_gone(io) => {
                tracing::debug!("client went away before the response head; request dropped");
                return Next::Close;
            }
        }
    } else {
        handled.await
    };
    // The request body must be read to its end for the next request to be found.
    let close = close || !decoder.is_done() || ctx.closing.load(Ordering::Relaxed);
    match respond(io, out, resp, close).await {
        Ok(()) if !close => Next::KeepAlive,
        Ok(()) => Next::Close,
        Err(e) => {
            tracing::debug!(error = %e, "response not delivered; connection closed");
            Next::Close
        }
    }
}

/// Why a response could not be delivered whole.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("writing to the client failed")]
    Io(#[from] std::io::Error),
    #[error("the client went away mid-response")]
    ClientGone,
    #[error("the response body failed mid-way: {0}")]
    Body(String),
    #[error("the response body did not match its content-length ({sent} of {len} bytes)")]
    Length { sent: u64, len: u64 },
}

/// Writes `resp`: the head, then each body frame as it comes (the head goes
/// out together with the first frame when that is ready at once).
async fn respond(
    io: &TcpStream,
    out: &mut Vec<u8>,
    resp: Response,
    close: bool,
) -> Result<(), WriteError> {
    let (parts, mut body) = resp.into_parts();
    let framing = match http_body::Body::size_hint(&body).exact() {
        Some(n) => ResponseFraming::Length(n),
        None => ResponseFraming::Chunked,
    };
    out.clear();
    // Proxied answers carry the engine's own `Date`.
    if parts.headers.contains_key(http::header::DATE) {
        encode_response_head(out, parts.status, &parts.headers, framing, None, close);
    } else {
        with_date(|d| {
            encode_response_head(out, parts.status, &parts.headers, framing, Some(d), close)
        });
    }
    if bodiless(parts.status) {
        write_all(io, &[out]).await?;
        return Ok(());
    }
    let chunked = framing == ResponseFraming::Chunked;
    let mut sent: u64 = 0;
    let mut line: Vec<u8> = Vec::new();
    loop {
        let frame = {
            let mut next = std::pin::pin!(body.frame());
            match futures::poll!(next.as_mut()) {
                std::task::Poll::Ready(f) => f,
                std::task::Poll::Pending => {
                    if !out.is_empty() {
                        write_all(io, &[out]).await?;
                        out.clear();
                    }
                    tokio::select! {
                        biased;
                        f = next => f,
                        _ = client_gone(io) => return Err(WriteError::ClientGone),
                    }
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // What came before is sent; the missing end tells the client it is cut.
                write_all(io, &[out]).await?;
                return Err(WriteError::Body(e.to_string()));
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue, // trailers, empty frames
            },
        };
        sent += data.len() as u64;
        line.clear();
        if chunked {
            chunk_header(out, data.len());
            line.extend_from_slice(b"\r\n");
            if http_body::Body::is_end_stream(&body) {
                line.extend_from_slice(LAST_CHUNK);
            }
        } else if let ResponseFraming::Length(len) = framing {
            if sent > len {
                return Err(WriteError::Length { sent, len });
            }
        }
        write_all(io, &[out, &data, &line]).await?;
        out.clear();
        if chunked && http_body::Body::is_end_stream(&body) {
            return Ok(());
        }
    }
    match framing {
        ResponseFraming::Chunked => out.extend_from_slice(LAST_CHUNK),
        ResponseFraming::Length(len) if sent != len => {
            write_all(io, &[out]).await?;
            return Err(WriteError::Length { sent, len });
        }
        ResponseFraming::Length(_) => {}
    }
    write_all(io, &[out]).await?;
    Ok(())
}

/// Answers a head that did not arrive in time with a 408 (best effort: the
/// connection closes right after).
async fn request_timeout(io: &TcpStream, timeout: Duration) {
    let body = error_body(
        &format!("the request headers did not arrive within {timeout:?}; send them in one go or raise --header-read-timeout"),
        "request_timeout",
    );
    let mut out = Vec::with_capacity(body.len() + 128);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    with_date(|d| {
        encode_response_head(
            &mut out,
            http::StatusCode::REQUEST_TIMEOUT,
            &headers,
            ResponseFraming::Length(body.len() as u64),
            Some(d),
            true,
        )
    });
    out.extend_from_slice(body.as_bytes());
    let _ = tokio::time::timeout(Duration::from_secs(1), write_all(io, &[&out])).await;
}

/// Calls `f` with the current `Date` value (RFC 9110 §6.6.1: an origin
/// server sends one; hyper's server added it to the router's own answers),
/// formatted at most once a second per thread.
fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        f(&cached.1)
    })
}
