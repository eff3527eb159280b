//! HTTP/1.1 on the client side of the router, as pure functions: what a
//! request head in the connection's buffer asks for, and the bytes of a
//! response head and of chunked framing. No I/O; [`crate::h1_conn`] drives
//! these over the socket.
//!
//! The own loop serves only the plain, common case and says [`Step::Handoff`]
//! for anything else, so hyper (which served every connection before) keeps
//! answering those exactly as it did: an h2c preface, HTTP/1.0, a malformed
//! or oversized head (hyper's 400 / 431), `Expect`, `Upgrade`, a transfer
//! coding other than a lone `chunked`, both `Content-Length` and
//! `Transfer-Encoding`, conflicting lengths, and every method/path pair
//! other than `POST /v1/...` (the proxy) or a body-less `GET` (the axum
//! routes).

use std::io::Write;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};

use crate::h1::{bodiless, put_header, MAX_HEADERS};

/// What the loop may do with a request once its head is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/...`: the proxy.
    Proxy,
    /// A `GET` without a body: the axum routes (`/metrics`, `/readyz`, ...).
    Routes,
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    Length(u64),
    Chunked,
}

/// A request head the loop serves itself.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: BodyFraming,
    /// The client asked to close after this exchange (`Connection: close`).
    pub close: bool,
    pub route: Route,
    /// Bytes of the head, to take off the front of the buffer.
    pub len: usize,
}

/// Why a connection goes to hyper (a label for the debug log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    H2Preface,
    Malformed,
    HeadTooLarge,
    NotHttp11,
    Expect,
    Upgrade,
    Framing,
    OtherRoute,
}

/// What the start of the connection's buffer holds.
#[derive(Debug)]
pub enum Step {
    /// Not a whole head yet: read more.
    Partial,
    Serve(Box<RequestHead>),
    Handoff(Handoff),
}

/// The first bytes of an HTTP/2 prior-knowledge (h2c) connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Parses the request head at the start of `buf`; `max_head` bounds how
/// much may pile up before it is complete.
pub fn parse_request(buf: &[u8], max_head: usize) -> Step {
    let n = buf.len().min(H2_PREFACE.len());
    if n > 0 && buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Step::Handoff(Handoff::H2Preface)
        } else {
            Step::Partial
        };
    }
    // Uninitialised: the table is 100 entries (3.2 KiB) and a request has a
    // handful; writing it whole per parse showed up on the cold path.
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Step::Handoff(Handoff::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Step::Partial,
        Err(httparse::Error::TooManyHeaders) => return Step::Handoff(Handoff::HeadTooLarge),
        Err(_) => return Step::Handoff(Handoff::Malformed),
    };
    if len > max_head {
        return Step::Handoff(Handoff::HeadTooLarge);
    }
    if req.version != Some(1) {
        return Step::Handoff(Handoff::NotHttp11);
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Step::Handoff(Handoff::Malformed);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Step::Handoff(Handoff::Malformed);
    };
    let Ok(uri) = path.parse::<Uri>() else {
        return Step::Handoff(Handoff::Malformed);
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Step::Handoff(Handoff::Malformed);
        };
        match name.as_str() {
            "content-length" => {
                let Some(n) = std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                else {
                    return Step::Handoff(Handoff::Malformed);
                };
                if length.is_some_and(|l| l != n) {
                    return Step::Handoff(Handoff::Malformed);
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                if chunked || !h.value.eq_ignore_ascii_case(b"chunked") {
                    return Step::Handoff(Handoff::Framing);
                }
                chunked = true;
            }
            "expect" => return Step::Handoff(Handoff::Expect),
            "upgrade" => return Step::Handoff(Handoff::Upgrade),
            "connection" => {
                for t in h.value.split(|b| *b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        return Step::Handoff(Handoff::Upgrade);
                    }
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    let body = match (length, chunked) {
        (Some(_), true) => return Step::Handoff(Handoff::Framing),
        (Some(n), false) => BodyFraming::Length(n),
        (None, true) => BodyFraming::Chunked,
        (None, false) => BodyFraming::Length(0),
    };
    let route = if method == Method::POST && uri.path().starts_with("/v1/") {
        Route::Proxy
    } else if method == Method::GET && body == BodyFraming::Length(0) {
        Route::Routes
    } else {
        return Step::Handoff(Handoff::OtherRoute);
    };
    Step::Serve(Box::new(RequestHead {
        method,
        uri,
        headers,
        body,
        close,
        route,
        len,
    }))
}

/// How the response body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// `Content-Length` (taken from the headers, or this many bytes).
    Length(u64),
    /// `Transfer-Encoding: chunked`: a stream of unknown length.
    Chunked,
}

/// Writes the status line and headers into `out`: the response's own
/// headers minus any framing ones, then the framing the loop uses (none for
/// a [`bodiless`] status), `date` when given (the caller gives it when the
/// response has none), then `connection: close` when the connection ends
/// after this response.
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    date: Option<&str>,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "keep-alive"
        ) {
            continue;
        }
        put_header(out, name.as_str(), value.as_bytes());
    }
    match framing {
        _ if bodiless(status) => {}
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{n}");
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if let Some(date) = date {
        put_header(out, "date", date.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The size line that goes before a chunk of `len` bytes (never 0: that ends the body).
pub fn chunk_header(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(raw: &[u8]) -> Box<RequestHead> {
        match parse_request(raw, 1 << 16) {
            Step::Serve(h) => h,
            other => panic!("expected a served request, got {other:?}"),
        }
    }

    fn handoff(raw: &[u8]) -> Handoff {
        match parse_request(raw, 1 << 16) {
            Step::Handoff(h) => h,
            other => panic!("expected a hand-off, got {other:?}"),
        }
    }

    #[test]
    fn plain_proxy_and_routes_requests_are_served_with_their_framing() {
        let raw = b"POST /v1/completions HTTP/1.1\r\nhost: r\r\ncontent-length: 5\r\n\r\nhelloPOST";
        let h = serve(raw);
        assert_eq!(h.route, Route::Proxy);
        assert_eq!(h.body, BodyFraming::Length(5));
        assert_eq!(&raw[h.len..h.len + 5], b"hello");
        assert!(!h.close);
        assert_eq!(h.headers.get("host").map(|v| v.as_bytes()), Some(&b"r"[..]));

        let h = serve(b"POST /v1/x HTTP/1.1\r\ntransfer-encoding: Chunked\r\nconnection: keep-alive, close\r\n\r\n");
        assert_eq!((h.body, h.close), (BodyFraming::Chunked, true));

        let h = serve(b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!((h.route, h.body), (Route::Routes, BodyFraming::Length(0)));
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_go_to_hyper() {
        assert!(matches!(
            parse_request(b"POST /v1/completions HTTP/1.1\r\nhost:", 1 << 16),
            Step::Partial
        ));
        assert!(matches!(parse_request(b"", 1 << 16), Step::Partial));
        assert!(matches!(parse_request(b"PRI * HT", 1 << 16), Step::Partial));
        let mut big = b"POST /v1/completions HTTP/1.1\r\nx-big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 200));
        assert!(matches!(
            parse_request(&big, 100),
            Step::Handoff(Handoff::HeadTooLarge)
        ));
        let mut many = b"POST /v1/completions HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(handoff(&many), Handoff::HeadTooLarge);
    }

    #[test]
    fn a_head_filling_the_whole_header_table_is_served_with_every_header() {
        // The table is left uninitialised: every entry httparse fills must come back.
        let mut head = b"POST /v1/completions HTTP/1.1\r\ncontent-length: 0\r\n".to_vec();
        for i in 1..MAX_HEADERS {
            head.extend_from_slice(format!("x-h{i}: v{i}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let Step::Serve(req) = parse_request(&head, 1 << 16) else {
            panic!("a head of exactly {MAX_HEADERS} headers is served");
        };
        assert_eq!(req.headers.len(), MAX_HEADERS);
        assert_eq!(req.headers["x-h1"], "v1");
        assert_eq!(
            req.headers[format!("x-h{}", MAX_HEADERS - 1).as_str()],
            format!("v{}", MAX_HEADERS - 1).as_str()
        );
        assert_eq!(req.len, head.len());
    }

    #[test]
    fn anything_unusual_is_handed_to_hyper() {
        assert_eq!(
            handoff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Handoff::H2Preface
        );
        assert_eq!(handoff(b"\x00\x01\x02\r\n\r\n"), Handoff::Malformed);
        assert_eq!(
            handoff(b"GET / HTTP/1.1\r\nno-colon\r\n\r\n"),
            Handoff::Malformed
        );
        assert_eq!(
            handoff(b"POST /v1/x HTTP/1.0\r\ncontent-length: 0\r\n\r\n"),
            Handoff::NotHttp11
        );
        assert_eq!(
            handoff(b"POST /v1/x HTTP/1.1\r\ncontent-length: -5\r\n\r\n"),
            Handoff::Malformed
        );
        assert_eq!(
            handoff(b"POST /v1/x HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\n"),
            Handoff::Malformed
        );
        assert_eq!(
            handoff(
                b"POST /v1/x HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            Handoff::Framing
        );
        assert_eq!(
            handoff(b"POST /v1/x HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Handoff::Framing
        );
        assert_eq!(
            handoff(b"POST /v1/x HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"),
            Handoff::Expect
        );
        assert_eq!(
            handoff(b"GET / HTTP/1.1\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"),
            Handoff::Upgrade
        );
        for other in [
            &b"GET /v1/models HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"[..],
            b"HEAD /healthz HTTP/1.1\r\n\r\n",
            b"PUT /v1/completions HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"POST /v2/completions HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(handoff(other), Handoff::OtherRoute);
        }
    }

    #[test]
    fn response_heads_carry_our_framing_and_close_only() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        let mut out = Vec::new();
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &h,
            ResponseFraming::Chunked,
            None,
            true,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        out.clear();
        encode_response_head(
            &mut out,
            StatusCode::PAYLOAD_TOO_LARGE,
            &HeaderMap::new(),
            ResponseFraming::Length(12),
            Some("Sun, 06 Dec 2026 16:20:00 GMT"),
            false,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 12\r\ndate: Sun, 06 Dec 2026 16:20:00 GMT\r\n\r\n"
        );
        out.clear();
        encode_response_head(
            &mut out,
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            ResponseFraming::Length(0),
            None,
            false,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
        out.clear();
        chunk_header(&mut out, 300);
        assert_eq!(out, b"12c\r\n");
    }
}
