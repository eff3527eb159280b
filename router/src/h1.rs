//! HTTP/1.1 on the wire, for the engine client of [`crate::upstream`]:
//! request heads, response heads, body framing and chunked decoding.
//! Pure functions over buffers; no I/O.
//!
//! Framing follows RFC 9112 §6.3: no body for a `HEAD` request or a 1xx,
//! 204 or 304 answer; `Transfer-Encoding` ending in `chunked` wins over
//! `Content-Length`; any other transfer coding, or neither header, means
//! the body runs until the engine closes the connection.

use std::io::Write;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// At most this many header lines in a response head.
pub const MAX_HEADERS: usize = 100;
/// A response head larger than this is refused.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// A chunk-size line (with extensions) or trailer section larger than this is refused.
const MAX_CHUNK_LINE: usize = 4 << 10;
const MAX_TRAILERS: usize = 16 << 10;

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus
/// the ones the client writes itself (`host`, `content-length`) and
/// `expect` (the router has read the whole body already).
pub fn is_hop_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "expect"
    )
}

/// Names listed in a `Connection` header (hop-by-hop by declaration), lowercased.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
        .collect()
}

/// Writes the request head for `method path` to `host` into `out`: the
/// client's headers minus hop-by-hop ones, then `host` and `content-length`.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
    body_len: usize,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{body_len}");
    out.extend_from_slice(b"\r\n");
    let declared = if headers.contains_key(http::header::CONNECTION) {
        connection_tokens(headers)
    } else {
        Vec::new()
    };
    for (name, value) in headers {
        let n = name.as_str();
        if is_hop_header(n) || declared.iter().any(|d| d == n) {
            continue;
        }
        put_header(out, n, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one `name: value` header line into `out`.
pub fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a response with `status` never has a body (1xx, 204, 304).
pub fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// The `host` header value for an engine address.
pub fn host_header(addr: SocketAddr) -> String {
    addr.to_string()
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The engine's headers minus hop-by-hop ones (`content-length` kept
    /// when it delimits the body).
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this body.
    pub keep_alive: bool,
}

/// What [`parse_response_head`] found at the start of a buffer.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A 1xx head of this many bytes, to skip.
    Informational(usize),
    /// A final head of this many bytes.
    Complete(Head, usize),
}

/// Why a response head or body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed response head from the engine: {0}")]
    Head(String),
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed chunked body from the engine: {0}")]
    Chunk(&'static str),
}

fn head_err(what: impl Into<String>) -> WireError {
    WireError::Head(what.into())
}

/// Parses a response head at the start of `buf` (`method` is the request's: a
/// `HEAD` answer has no body).
pub fn parse_response_head(buf: &[u8], method: &Method) -> Result<Parsed, WireError> {
    // Uninitialised: see h1_server::parse_request.
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(WireError::HeadTooLarge)
            } else {
                Ok(Parsed::Partial)
            }
        }
        Err(e) => return Err(head_err(e.to_string())),
    };
    let code = resp.code.ok_or_else(|| head_err("no status"))?;
    let status = StatusCode::from_u16(code).map_err(|_| head_err(format!("status {code}")))?;
    if status.is_informational() {
        if code == 101 {
            return Err(head_err("unexpected 101 Switching Protocols"));
        }
        return Ok(Parsed::Informational(len));
    }
    let http11 = resp.version == Some(1);
    // One spare slot: the proxy adds `x-steward-revision`, and growing the
    // map then would reallocate it.
    let mut headers = HeaderMap::with_capacity(resp.headers.len() + 1);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    let mut close = !http11;
    let mut declared: Vec<String> = Vec::new();
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| head_err(format!("header name {:?}", h.name)))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| head_err(format!("value of {name}")))?;
        match name.as_str() {
            "content-length" => {
                let n = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| head_err("content-length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(head_err("conflicting content-length"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                transfer_encoded = true;
                // Only the last coding matters: chunked must be last to delimit the body.
                chunked = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            }
            "connection" => {
                for t in value.to_str().unwrap_or("").split(',') {
                    let t = t.trim().to_ascii_lowercase();
                    match t.as_str() {
                        "close" => close = true,
                        "keep-alive" => close = false,
                        "" => {}
                        _ => declared.push(t),
                    }
                }
            }
            _ => {}
        }
        if !is_hop_header(name.as_str()) {
            headers.append(name, value);
        }
    }
    for d in &declared {
        headers.remove(d.as_str());
    }
    let no_body = *method == Method::HEAD || bodiless(status);
    let framing = if no_body {
        Framing::Empty
    } else if transfer_encoded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if let (Framing::Length(_) | Framing::Empty, Some(n)) = (framing, content_length) {
        if !no_body || *method == Method::HEAD {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    Ok(Parsed::Complete(
        Head {
            status,
            headers,
            framing,
            keep_alive: !close && framing != Framing::UntilClose,
        },
        len,
    ))
}

/// What a body decoder got out of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no more of the body: read more.
    NeedMore,
    /// The body is complete.
    Done,
}

/// Decodes a `Content-Length` or chunked body out of a read buffer, data as
/// soon as it is there (a chunk is never waited for whole, so a stream's
/// tokens pass through as they arrive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    Length(u64),
    /// Chunked: the next thing is a chunk-size line.
    Size,
    /// Chunked: this much of the current chunk is still to come.
    Data(u64),
    /// Chunked: the CRLF after a chunk's data.
    DataEnd,
    /// Chunked: trailer lines (discarded), up to an empty line; bytes seen so far.
    Trailers(usize),
    Done,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Size,
            // Read until EOF by the caller; never complete by itself.
            Framing::UntilClose => Self::Length(u64::MAX),
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Self::Done
    }

    /// Bytes still expected, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Self::Length(n) if *n != u64::MAX => Some(*n),
            Self::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        self.skip_framing(buf)?;
        match self {
            Self::Done => Ok(Decoded::Done),
            Self::Length(n) | Self::Data(n) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(take).freeze();
                *n -= take as u64;
                if *n == 0 {
                    *self = match self {
                        Self::Length(_) => Self::Done,
                        _ => Self::DataEnd,
                    };
                    // The chunked terminator is often already in the buffer.
                    self.skip_framing(buf)?;
                }
                Ok(Decoded::Data(data))
            }
            _ => Ok(Decoded::NeedMore),
        }
    }

    /// Consumes chunk framing (sizes, CRLFs, trailers) from `buf` until data,
    /// the end, or a need for more bytes.
    fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<(), WireError> {
        loop {
            match *self {
                Self::Size => {
                    let Some(eol) = find_crlf(buf) else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(WireError::Chunk("chunk-size line too long"))
                        } else {
                            Ok(())
                        };
                    };
                    let size = parse_chunk_size(&buf[..eol])?;
                    buf.advance(eol + 2);
                    *self = if size == 0 {
                        Self::Trailers(0)
                    } else {
                        Self::Data(size)
                    };
                }
                Self::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(());
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunk("no CRLF after chunk data"));
                    }
                    buf.advance(2);
                    *self = Self::Size;
                }
                Self::Trailers(seen) => {
                    let Some(eol) = find_crlf(buf) else {
                        return if seen + buf.len() > MAX_TRAILERS {
                            Err(WireError::Chunk("trailers too long"))
                        } else {
                            Ok(())
                        };
                    };
                    buf.advance(eol + 2);
                    *self = if eol == 0 {
                        Self::Done
                    } else {
                        Self::Trailers(seen + eol + 2)
                    };
                }
                Self::Length(_) | Self::Data(_) | Self::Done => return Ok(()),
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line.split(|b| *b == b';').next().unwrap_or(line);
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return Err(WireError::Chunk("bad chunk size"));
    }
    let mut n: u64 = 0;
    for d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(WireError::Chunk("bad chunk size")),
        };
        n = (n << 4) | u64::from(v);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: &Method) -> (Head, usize) {
        match parse_response_head(raw.as_bytes(), method).expect("parses") {
            Parsed::Complete(h, n) => (h, n),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn request_head_drops_hop_by_hop_and_connection_declared_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("host", HeaderValue::from_static("router"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("x-tenant", HeaderValue::from_static("a"));
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            &Method::POST,
            "/v1/completions?x=1",
            "127.0.0.1:9",
            &h,
            5,
        );
        let s = String::from_utf8(out).expect("ascii");
        assert!(s.starts_with(
            "POST /v1/completions?x=1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\ncontent-length: 5\r\n"
        ));
        assert!(s.ends_with("\r\n\r\n"));
        assert!(s.contains("authorization: Bearer x\r\n"));
        assert!(s.contains("x-tenant: a\r\n"));
        for gone in ["connection", "x-hop", "router", "te:", "999"] {
            assert!(!s.contains(gone), "{gone} forwarded: {s}");
        }
    }

    #[test]
    fn response_head_framing() {
        let (h, n) = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\nx-a: b\r\n\r\nbody",
            &Method::POST,
        );
        assert_eq!(n, 47);
        assert_eq!(h.framing, Framing::Length(12));
        assert!(h.keep_alive);
        assert_eq!(
            h.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"12"[..])
        );
        assert_eq!(h.headers.get("x-a").map(|v| v.as_bytes()), Some(&b"b"[..]));

        let (h, _) = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: keep-alive, x-drop\r\nx-drop: 1\r\n\r\n",
            &Method::POST,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);
        assert!(h.headers.get("content-length").is_none());
        assert!(h.headers.get("transfer-encoding").is_none());
        assert!(h.headers.get("x-drop").is_none());

        let (h, _) = head("HTTP/1.1 200 OK\r\n\r\n", &Method::POST);
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);
        let (h, _) = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            &Method::POST,
        );
        assert_eq!(h.framing, Framing::UntilClose);
        let (h, _) = head(
            "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            &Method::POST,
        );
        assert!(!h.keep_alive);
        let (h, _) = head(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            &Method::POST,
        );
        assert!(!h.keep_alive);
        let (h, _) = head("HTTP/1.1 204 No Content\r\n\r\n", &Method::POST);
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        let (h, _) = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn response_head_fills_the_whole_header_table_and_refuses_beyond_it() {
        let mut raw = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
        for i in 1..MAX_HEADERS {
            raw.push_str(&format!("x-e{i}: v{i}\r\n"));
        }
        let (h, n) = head(&format!("{raw}\r\nok"), &Method::POST);
        assert_eq!(n, raw.len() + 2);
        assert_eq!(h.headers.len(), MAX_HEADERS);
        assert_eq!(h.headers["x-e1"], "v1");
        assert_eq!(h.framing, Framing::Length(2));
        raw.push_str("x-one-too-many: 1\r\n\r\n");
        assert!(matches!(
            parse_response_head(raw.as_bytes(), &Method::POST),
            Err(WireError::Head(_))
        ));
    }

    #[test]
    fn partial_informational_and_malformed_heads() {
        assert!(matches!(
            parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-le", &Method::POST),
            Ok(Parsed::Partial)
        ));
        assert!(matches!(
            parse_response_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", &Method::POST),
            Ok(Parsed::Informational(25))
        ));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse_response_head(bad, &Method::POST).is_err());
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            parse_response_head(huge.as_bytes(), &Method::POST).err(),
            Some(WireError::HeadTooLarge)
        );
    }

    /// Feeds `wire` one byte at a time, then all at once; both give `want`.
    fn decode_all(framing: Framing, wire: &[u8]) -> Result<(Vec<u8>, usize), WireError> {
        let mut dec = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::Done => return Ok((out, buf.len() + wire.len() - fed)),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        return Err(WireError::Chunk("eof"));
                    }
                    buf.extend_from_slice(&wire[fed..fed + 1]);
                    fed += 1;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte_and_leave_what_follows() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let (out, left) = decode_all(Framing::Chunked, wire).expect("decodes");
        assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
        assert_eq!(left, 4);
        let (out, _) = decode_all(Framing::Length(3), b"abcdef").expect("decodes");
        assert_eq!(out, b"abc");
        // A whole body in one buffer ends with the data: no extra poll needed.
        let mut dec = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"2\r\nhi\r\n0\r\n\r\n"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"hi")))
        );
        assert!(dec.is_done());
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"11111111111111111\r\n"] {
            assert!(decode_all(Framing::Chunked, bad).is_err(), "{bad:?}");
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(Framing::Chunked, &long).is_err());
    }
}
