//! Talking to engines: the pooled HTTP/1 client, building the upstream
//! request, and classifying what goes wrong before the response head.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::retry::EarlyFailure;

/// The shared, pooled client to engines.
pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the client; `connect_timeout` bounds each TCP connect.
pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1), plus
/// the ones the client recomputes.
fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Copies `from` into a fresh map without hop-by-hop headers.
pub fn forward_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if !is_hop_header(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Response headers to pass back to the client.
pub fn response_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if !is_hop_header(name) || name == header::CONTENT_LENGTH {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Sends one request and waits for the response head, at most `first_byte_timeout`.
pub async fn send(
    client: &UpstreamClient,
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
    first_byte_timeout: Duration,
) -> Result<Response<Incoming>, EarlyFailure> {
    let uri: Uri = format!("http://{addr}{path_and_query}")
        .parse()
        .map_err(|_| EarlyFailure::Connect)?;
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(h) = req.headers_mut() {
        *h = headers.clone();
    }
    let req = req
        .body(Full::new(body))
        .map_err(|_| EarlyFailure::Connect)?;
    match tokio::time::timeout(first_byte_timeout, client.request(req)).await {
        Err(_) => Err(EarlyFailure::FirstByteTimeout),
        Ok(Err(e)) if e.is_connect() => Err(EarlyFailure::Connect),
        Ok(Err(_)) => Err(EarlyFailure::ClosedBeforeResponse),
        Ok(Ok(resp)) => Ok(resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(header::HOST, HeaderValue::from_static("router"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert("x-tenant", HeaderValue::from_static("a"));
        let f = forward_headers(&h);
        assert!(f.get(header::CONNECTION).is_none());
        assert!(f.get(header::HOST).is_none());
        assert_eq!(f.get("x-tenant").and_then(|v| v.to_str().ok()), Some("a"));
        assert!(f.get(header::AUTHORIZATION).is_some());
    }
}
