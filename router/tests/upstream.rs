//! The engine client ([`steward_router::upstream::EnginePool`]) against
//! raw TCP servers on 127.0.0.1 that misbehave on cue: engines that close
//! idle keep-alive connections, close right after reading a request, die
//! before answering, answer slowly, answer in odd chunked pieces, or delimit
//! the body by closing. Each test asserts what the proxy relies on: the
//! answer, the failure's classification, and whether the connection was
//! reused or closed. The last test runs the whole router in front of an
//! engine with a short keep-alive timeout.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use steward_router::retry::EarlyFailure;
use steward_router::upstream::{send, EnginePool, PoolConfig, UpstreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn pool() -> EnginePool {
    EnginePool::new(PoolConfig::new(Duration::from_secs(1)))
}

/// One request as the engine read it.
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// Reads one request (head, then a content-length body) from `s`; `None` on EOF.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut tmp = [0u8; 65536];
                let n = s.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some(Seen { head, body });
        }
        let mut tmp = [0u8; 65536];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// A raw engine: accepts connections and hands each to `serve` with its index.
async fn engine<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let i = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(i, s));
        }
    });
    (addr, accepted)
}

fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn post(
    pool: &EnginePool,
    addr: SocketAddr,
    body: &'static str,
) -> Result<(u16, HeaderMap, Bytes), EarlyFailure> {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    let resp = send(
        pool,
        addr,
        &Method::POST,
        "/v1/completions",
        &h,
        &Bytes::from_static(body.as_bytes()),
        Duration::from_secs(2),
    )
    .await?;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Ok((status, parts.headers, bytes))
}

/// `POST /` with no headers and no body.
async fn post_empty(
    pool: &EnginePool,
    addr: SocketAddr,
    first_byte_timeout: Duration,
) -> Result<http::Response<UpstreamBody>, EarlyFailure> {
    send(
        pool,
        addr,
        &Method::POST,
        "/",
        &HeaderMap::new(),
        &Bytes::new(),
        first_byte_timeout,
    )
    .await
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (addr, accepted) = engine(|_, mut s| async move {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf).await {
            let answer = format!("{{\"echo\":{}}}", req.body.len());
            if s.write_all(&ok_response(&answer)).await.is_err() {
                return;
            }
        }
    })
    .await;
    let pool = pool();
    for _ in 0..5 {
        let (status, headers, body) = post(&pool, addr, "{\"a\":1}").await.expect("answer");
        assert_eq!(status, 200);
        assert_eq!(body, "{\"echo\":7}");
        assert_eq!(
            headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"10"[..])
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for five requests"
    );
    assert_eq!(pool.idle_count(), 1);
}

/// The engine closes a connection 50 ms after each answer (a short keep-alive
/// timeout). The next request, 300 ms later, must not fail: the pool sees
/// the close and connects anew.
#[tokio::test]
async fn a_connection_the_engine_closed_while_idle_is_not_used() {
    let (addr, accepted) = engine(|_, mut s| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let _ = s.write_all(&ok_response("{}")).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let pool = pool();
    for i in 0..3 {
        let (status, _, _) = post(&pool, addr, "{}").await.expect("answer");
        assert_eq!(status, 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// The race the readiness check cannot see: the engine closes the pooled
/// connection as the next request arrives on it (reads it, answers nothing).
/// The request is sent again on a fresh connection, transparently.
#[tokio::test]
async fn a_pooled_connection_closed_under_a_request_is_retried_on_a_fresh_one() {
    let (addr, accepted) = engine(|i, mut s| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_none() {
            return;
        }
        let _ = s.write_all(&ok_response("{\"n\":1}")).await;
        if i == 0 {
            // The second request on the first connection: read, then close.
            let _ = read_request(&mut s, &mut buf).await;
            return;
        }
        while read_request(&mut s, &mut buf).await.is_some() {
            let _ = s.write_all(&ok_response("{\"n\":1}")).await;
        }
    })
    .await;
    let pool = pool();
    post(&pool, addr, "{}").await.expect("first answer");
    let (status, _, body) = post(&pool, addr, "{}")
        .await
        .expect("second answer, retried");
    assert_eq!(status, 200);
    assert_eq!(body, "{\"n\":1}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_refused_and_closed_before_the_head_are_classified() {
    // A port nobody listens on.
    let free = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead = free.local_addr().expect("addr");
    drop(free);
    let pool = pool();
    assert_eq!(
        post(&pool, dead, "{}").await.err(),
        Some(EarlyFailure::Connect)
    );

    // A fresh connection that reads the request and closes: not retried here.
    let (addr, accepted) = engine(|_, mut s| async move {
        let mut buf = Vec::new();
        let _ = read_request(&mut s, &mut buf).await;
    })
    .await;
    assert_eq!(
        post(&pool, addr, "{}").await.err(),
        Some(EarlyFailure::ClosedBeforeResponse)
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // Half a head, then close; and garbage.
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-le"[..],
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ] {
        let (addr, _) = engine(move |_, mut s| async move {
            let mut buf = Vec::new();
            let _ = read_request(&mut s, &mut buf).await;
            let _ = s.write_all(answer).await;
        })
        .await;
        assert_eq!(
            post(&pool, addr, "{}").await.err(),
            Some(EarlyFailure::ClosedBeforeResponse)
        );
    }
}

#[tokio::test]
async fn no_head_within_the_first_byte_timeout_is_a_timeout() {
    let (addr, _) = engine(|_, mut s| async move {
        let mut buf = Vec::new();
        let _ = read_request(&mut s, &mut buf).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let r = post_empty(&pool(), addr, Duration::from_millis(200)).await;
    assert_eq!(r.err(), Some(EarlyFailure::FirstByteTimeout));
}

/// A 1 MiB request body goes out whole; a 1 MiB answer comes back chunked
/// in odd pieces with an interim 100 Continue and trailers; then another
/// request reuses the connection.
#[tokio::test]
async fn large_bodies_chunked_answers_and_interim_heads() {
    let (addr, accepted) = engine(|_, mut s| async move {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf).await {
            let n = req.body.len();
            assert!(req.head.contains(&format!("content-length: {n}")));
            let payload: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let mut wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for piece in payload.chunks(70_001) {
                wire.extend_from_slice(format!("{:x};x=y\r\n", piece.len()).as_bytes());
                wire.extend_from_slice(piece);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
            // Odd write sizes, so pieces split chunk lines and CRLFs.
            for part in wire.chunks(9_973) {
                if s.write_all(part).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let pool = pool();
    for n in [1 << 20, 3] {
        let body = Bytes::from(vec![b'x'; n]);
        let resp = send(
            &pool,
            addr,
            &Method::POST,
            "/v1/completions",
            &HeaderMap::new(),
            &body,
            Duration::from_secs(5),
        )
        .await
        .expect("answer");
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("transfer-encoding").is_none());
        let got = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(got.len(), n);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, b)| *b == b'a' + (i % 26) as u8));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A body with neither length nor chunking ends when the engine closes;
/// that connection is not pooled.
#[tokio::test]
async fn a_close_delimited_body_ends_at_eof_and_is_not_pooled() {
    let (addr, _) = engine(|_, mut s| async move {
        let mut buf = Vec::new();
        let _ = read_request(&mut s, &mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\npart one, ").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.write_all(b"part two").await;
    })
    .await;
    let pool = pool();
    let (status, _, body) = post(&pool, addr, "{}").await.expect("answer");
    assert_eq!(status, 200);
    assert_eq!(body, "part one, part two");
    assert_eq!(pool.idle_count(), 0);
}

/// Dropping a body before its end closes the connection (the engine sees
/// the cancel) instead of pooling it; a body cut by the engine is an error.
#[tokio::test]
async fn a_dropped_body_closes_the_connection_and_a_cut_body_is_an_error() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (addr, _) = engine(move |i, mut s| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let _ = read_request(&mut s, &mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst")
                .await;
            if i == 1 {
                return; // cut short
            }
            let mut tmp = [0u8; 16];
            let _ = tx.send(match s.read(&mut tmp).await {
                Ok(0) | Err(_) => "closed",
                Ok(_) => "data",
            });
        }
    })
    .await;
    let pool = pool();
    let resp = post_empty(&pool, addr, Duration::from_secs(2))
        .await
        .expect("head");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"first"[..]));
    drop(body);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .ok()
            .flatten(),
        Some("closed")
    );
    assert_eq!(pool.idle_count(), 0);

    let resp = post_empty(&pool, addr, Duration::from_secs(2))
        .await
        .expect("head");
    assert!(
        resp.into_body().collect().await.is_err(),
        "a cut body must end in an error"
    );
}

/// End to end: the router in front of an engine that closes every
/// connection idle for 50 ms (a short keep-alive timeout, as uvicorn's 5 s
/// default but faster). Requests spaced past that timeout, and bursts in
/// between, all succeed, with no upstream failure or retry counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_recovers_from_an_engine_closing_idle_connections() {
    use common::*;
    let (addr, accepted) = engine(|_, mut s| async move {
        let mut buf = Vec::new();
        // The first request may take its time; later ones must come within 50 ms.
        let mut wait = Duration::from_secs(5);
        while let Ok(Some(req)) = tokio::time::timeout(wait, read_request(&mut s, &mut buf)).await {
            let answer = if req.head.starts_with("GET /load") {
                ok_response("{}")
            } else {
                ok_response(r#"{"choices":[{"index":0,"text":"ok","finish_reason":"length"}]}"#)
            };
            if s.write_all(&answer).await.is_err() {
                return;
            }
            wait = Duration::from_millis(50);
        }
    })
    .await;
    let index = steward_router::index::SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", addr));
    let router = start_router(proxy_config(), index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let http = client();
    for round in 0..4 {
        for i in 0..3 {
            let r = post_completion(&http, &url).await;
            assert_eq!(r.status(), 200, "round {round}, request {i}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let text = router.state.metrics_text();
    assert_eq!(
        metric(&text, "steward_router_upstream_failures_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(metric(&text, "steward_router_retries_total", &[]), 0.0);
    // The engine really closed idle connections: the router had to reconnect.
    assert!(
        accepted.load(Ordering::SeqCst) >= 4,
        "only {} connections",
        accepted.load(Ordering::SeqCst)
    );
}
