//! The router's own HTTP/1.1 connection loop, over raw TCP: pipelining,
//! keep-alive across many requests, chunked request and response bodies,
//! a client closing mid-head, the header timeout, the drain of idle
//! connections, and the hand-off to hyper (h2c, `Expect`, HTTP/1.0).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use steward_router::config::ServerConfig;
use steward_router::index::SharedIndex;
use steward_router::server::{RouterState, RunningRouter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One engine ("a") behind a router served under `cfg`.
async fn router_with(cfg: ServerConfig) -> (TestEngine, RunningRouter) {
    let a = TestEngine::start_with("a", 71, 3, Duration::from_millis(5)).await;
    let router = router_over(&a, cfg).await;
    (a, router)
}

/// A router served under `cfg` in front of engine `a` alone.
async fn router_over(a: &TestEngine, cfg: ServerConfig) -> RunningRouter {
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    let (state, poller) = RouterState::new(
        proxy_config(),
        steward_router::config::PollConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(400),
        },
        index,
    );
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind router");
    RunningRouter::start_with(listener, state, poller, cfg).expect("start router")
}

fn post(stream: bool, extra: &str) -> Vec<u8> {
    let body = completion(stream).to_string();
    format!(
        "POST /v1/completions HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
    chunked: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
        .await
        .expect("router answered in time")
        .expect("read");
    assert!(n > 0, "router closed the connection mid-response: {buf:?}");
    buf.extend_from_slice(&chunk[..n]);
}

fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (Content-Length or chunked) off `s`; what follows stays in `buf`.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
    let head = read_answer_head_only(s, buf).await;
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {head}"));
    let mut a = Answer {
        status,
        head,
        body: Vec::new(),
        chunked: false,
    };
    if let Some(n) = a.header("content-length") {
        let n: usize = n.parse().expect("content-length");
        while buf.len() < n {
            fill(s, buf).await;
        }
        a.body = buf.drain(..n).collect();
        return a;
    }
    if a.header("transfer-encoding").as_deref() != Some("chunked") {
        // Neither: the body runs until the router closes.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        buf.extend(rest);
        a.body = std::mem::take(buf);
        return a;
    }
    a.chunked = true;
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            fill(s, buf).await;
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&buf[..line_end]).expect("size line"),
            16,
        )
        .expect("chunk size");
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            fill(s, buf).await;
        }
        a.body.extend(buf.drain(..size));
        assert_eq!(&buf[..2], b"\r\n", "chunk not followed by CRLF");
        buf.drain(..2);
        if size == 0 {
            return a;
        }
    }
}

/// Whether the router closes `s` within `within` (reads until EOF).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect router")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (a, router) = router_with(ServerConfig::default()).await;
    let mut s = connect(router.addr).await;
    let mut wire = post(false, "");
    wire.extend(post(true, ""));
    wire.extend_from_slice(b"GET /healthz HTTP/1.1\r\nhost: r\r\n\r\n");
    wire.extend(post(false, ""));
    // A request the loop does not serve hands the rest of the connection to hyper.
    wire.extend_from_slice(b"PUT /v1/completions HTTP/1.1\r\nhost: r\r\ncontent-length: 0\r\n\r\n");
    wire.extend(post(false, ""));
    s.write_all(&wire).await.expect("write");
    let mut buf = Vec::new();
    let first = read_answer(&mut s, &mut buf).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(String::from_utf8_lossy(&first.body).contains("\"engine\":\"a\""));
    let stream = read_answer(&mut s, &mut buf).await;
    assert_eq!(stream.status, 200);
    assert!(stream.chunked, "an SSE stream goes out chunked");
    let text = String::from_utf8_lossy(&stream.body).to_string();
    assert!(
        text.contains("t2") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    let health = read_answer(&mut s, &mut buf).await;
    assert_eq!((health.status, &health.body[..]), (200, &b"ok"[..]));
    // The router's own answers carry a Date (as hyper's server added);
    // proxied ones the engine's, once.
    assert!(
        health.header("date").is_some_and(|d| d.ends_with(" GMT")),
        "{health:?}"
    );
    assert_eq!(first.head.matches("date:").count(), 1, "{first:?}");
    let last = read_answer(&mut s, &mut buf).await;
    assert_eq!(last.status, 200);
    let put = read_answer(&mut s, &mut buf).await;
    assert_eq!(put.status, 404, "{put:?}");
    assert!(String::from_utf8_lossy(&put.body).contains("no route for PUT"));
    let by_hyper = read_answer(&mut s, &mut buf).await;
    assert_eq!(by_hyper.status, 200, "{by_hyper:?}");
    assert_eq!(a.requests(), 4);
    assert!(buf.is_empty(), "nothing beyond the six answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let (a, router) = router_with(ServerConfig::default()).await;
    let mut s = connect(router.addr).await;
    let mut buf = Vec::new();
    for i in 0..300 {
        s.write_all(&post(i % 50 == 0, "")).await.expect("write");
        let r = read_answer(&mut s, &mut buf).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.header("connection"), None, "request {i} asked to close");
        assert_eq!(r.header("x-steward-revision").as_deref(), Some("r1"));
    }
    assert_eq!(a.requests(), 300);
    let text = router.state.metrics_text();
    assert_eq!(
        metric(&text, "steward_router_connections", &[]),
        1.0,
        "{text}"
    );
    drop(s);
    assert!(
        eventually(Duration::from_secs(2), || metric(
            &router.state.metrics_text(),
            "steward_router_connections",
            &[]
        ) == 0.0)
        .await,
        "the connection gauge did not come back to 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_arriving_in_pieces_are_read_whole() {
    let (a, router) = router_with(ServerConfig::default()).await;
    let mut s = connect(router.addr).await;
    let body = completion(false).to_string();
    let (x, y) = body.split_at(body.len() / 2);
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .expect("head");
    for piece in [x, y] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let chunk = format!("{:x};ext=1\r\n{piece}\r\n", piece.len());
        for half in [&chunk.as_bytes()[..3], &chunk.as_bytes()[3..]] {
            s.write_all(half).await.expect("chunk");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    s.write_all(b"0\r\nx-trailer: 1\r\n\r\n")
        .await
        .expect("end");
    let mut buf = Vec::new();
    let r = read_answer(&mut s, &mut buf).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The connection carries on after a chunked body.
    s.write_all(&post(false, "")).await.expect("write");
    assert_eq!(read_answer(&mut s, &mut buf).await.status, 200);
    assert_eq!(a.requests(), 2);

    // A malformed chunked body is the client's mistake: 400 with a reason.
    let mut bad = connect(router.addr).await;
    bad.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let r = read_answer(&mut bad, &mut buf).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.body).contains("malformed chunked request body"),
        "{r:?}"
    );
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(closed_within(&mut bad, Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_mid_head_or_mid_body_leaves_the_router_serving() {
    let (a, router) = router_with(ServerConfig::default()).await;
    for cut in [
        &b"POST /v1/completions HTTP/1.1\r\nhost: r\r\ncontent-le"[..],
        b"POST /v1/completions HTTP/1.1\r\nhost: r\r\ncontent-length: 100\r\n\r\n{\"model\":",
        b"POST /v1/completions HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"mod",
    ] {
        let mut s = connect(router.addr).await;
        s.write_all(cut).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(s);
    }
    let r = post_completion(&client(), &format!("http://{}/v1/completions", router.addr)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(a.requests(), 1, "no cut request reached the engine");
    assert!(
        eventually(Duration::from_secs(2), || metric(
            &router.state.metrics_text(),
            "steward_router_connections",
            &[]
        ) <= 1.0)
        .await,
        "cut connections were not released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_gets_408_and_an_idle_keep_alive_connection_is_closed() {
    let cfg = ServerConfig {
        header_read_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let (_a, router) = router_with(cfg).await;
    let mut slow = connect(router.addr).await;
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: r\r\n")
        .await
        .expect("write");
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let r = read_answer(&mut slow, &mut buf).await;
    assert_eq!(r.status, 408, "{r:?}");
    assert!(String::from_utf8_lossy(&r.body).contains("did not arrive within"));
    assert!(r.header("date").is_some(), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(closed_within(&mut slow, Duration::from_secs(1)).await);

    // Idle after an answer: closed after the timeout, without a response.
    let mut idle = connect(router.addr).await;
    idle.write_all(&post(false, "")).await.expect("write");
    let mut buf = Vec::new();
    assert_eq!(read_answer(&mut idle, &mut buf).await.status, 200);
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection left open");
    assert!(rest.is_empty(), "an idle close sends nothing: {rest:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );

    // A connection that keeps sending requests is not cut by the timer.
    let mut busy = connect(router.addr).await;
    let mut buf = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(900) {
        busy.write_all(&post(false, "")).await.expect("write");
        assert_eq!(read_answer(&mut busy, &mut buf).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_the_client_is_honoured() {
    let (_a, router) = router_with(ServerConfig::default()).await;
    let mut s = connect(router.addr).await;
    s.write_all(&post(false, "connection: close\r\n"))
        .await
        .expect("write");
    let mut buf = Vec::new();
    let r = read_answer(&mut s, &mut buf).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_keep_alive_connections_and_lets_streams_finish() {
    let cfg = ServerConfig {
        shutdown_delay: Duration::from_millis(200),
        drain_window: Duration::from_secs(10),
        ..ServerConfig::default()
    };
    let a = TestEngine::start_with("a", 72, 10, Duration::from_millis(100)).await;
    let router = router_over(&a, cfg).await;
    let addr = router.addr;

    let mut idle = connect(addr).await;
    idle.write_all(&post(false, "")).await.expect("write");
    let mut idle_buf = Vec::new();
    assert_eq!(read_answer(&mut idle, &mut idle_buf).await.status, 200);
    let mut quiet = connect(addr).await;
    let mut streaming = connect(addr).await;
    streaming.write_all(&post(true, "")).await.expect("write");
    let stream = tokio::spawn(async move {
        let mut buf = Vec::new();
        read_answer(&mut streaming, &mut buf).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;

    let shut = tokio::spawn(router.shut_down());
    // Closing phase: a request on the idle connection is served with `Connection: close`.
    tokio::time::sleep(Duration::from_millis(50)).await;
    idle.write_all(&post(false, "")).await.expect("write");
    let r = read_answer(&mut idle, &mut idle_buf).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
    // A connection with no request yet is closed when draining starts, not before.
    let t0 = Instant::now();
    assert!(
        closed_within(&mut quiet, Duration::from_secs(2)).await,
        "an idle connection outlived the start of the drain"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(50),
        "{:?}",
        t0.elapsed()
    );

    let s = stream.await.expect("join");
    let text = String::from_utf8_lossy(&s.body).to_string();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the open stream was cut: {text}"
    );
    let report = shut.await.expect("join").expect("drain report");
    assert_eq!(report.cut, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_expect_continue_and_http10_are_handed_to_hyper_and_served() {
    let (a, router) = router_with(ServerConfig::default()).await;

    // h2c with prior knowledge.
    let tcp = connect(router.addr).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let body = completion(false).to_string();
    let req = http::Request::post(format!("http://{}/v1/completions", router.addr))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
        .expect("request");
    let resp = send.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);

    // Expect: 100-continue.
    let mut s = connect(router.addr).await;
    s.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nhost: r\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("head");
    let mut buf = Vec::new();
    let cont = read_answer_head_only(&mut s, &mut buf).await;
    assert!(cont.starts_with("HTTP/1.1 100"), "{cont}");
    s.write_all(body.as_bytes()).await.expect("body");
    assert_eq!(read_answer(&mut s, &mut buf).await.status, 200);

    // HTTP/1.0.
    let mut s = connect(router.addr).await;
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.0 200") && text.ends_with("ok"),
        "{text}"
    );

    // A malformed head gets hyper's 400, as before the own loop.
    let mut s = connect(router.addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nno-colon-header\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    assert_eq!(read_answer(&mut s, &mut buf).await.status, 400);
    assert_eq!(a.requests(), 2);
}

/// Reads a response head off `s` (all of a 1xx answer); what follows stays in `buf`.
async fn read_answer_head_only(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    head
}

/// A raw engine that answers `GET /load`, and for a completion either says
/// nothing (`stall_before_head`) or sends a stream head and one event, then
/// stalls; either way it counts the router closing the connection.
async fn stalling_engine(stall_before_head: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let closed = Arc::new(AtomicUsize::new(0));
    let count = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut tmp = [0u8; 8192];
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.clear();
                    if head.starts_with("GET /load") {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if !stall_before_head {
                        let event = "data: {\"choices\":[{\"index\":0,\"text\":\"t0\"}]}\n\n";
                        let wire = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                            event.len()
                        );
                        if s.write_all(wire.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    // Stall; the router closing the connection is the cancel.
                    let mut tmp = [0u8; 1024];
                    loop {
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => {
                                count.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(_) => {}
                        }
                    }
                }
            });
        }
    });
    (addr, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_going_away_while_the_engine_is_silent_cancels_the_engine_request() {
    for stall_before_head in [true, false] {
        let (engine, closed) = stalling_engine(stall_before_head).await;
        let index = SharedIndex::new();
        index.apply_service(service(&[("r1", 100)], None));
        index.apply_pod(pod("pa", "r1", engine));
        let router = start_router(proxy_config(), index).await;
        let mut s = connect(router.addr).await;
        s.write_all(&post(true, "")).await.expect("write");
        if !stall_before_head {
            let mut buf = Vec::new();
            let head = read_answer_head_only(&mut s, &mut buf).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(closed.load(Ordering::SeqCst), 0);
        drop(s);
        assert!(
            eventually(Duration::from_secs(2), || closed.load(Ordering::SeqCst) == 1).await,
            "the engine connection stayed open after the client left (stall before head: {stall_before_head})"
        );
    }
}
