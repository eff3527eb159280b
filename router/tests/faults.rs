//! Regression tests for the router faults of issue 13, each over real HTTP
//! against in-process test engines (and, for shutdown, the real
//! `steward-router` binary and a real SIGTERM). Each test names the fault
//! it guards; each failed before its fix.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use steward_router::config::ProxyConfig;
use steward_router::index::SharedIndex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Fault 5: a non-streaming answer comes as one response once generation
/// ends, so the first-byte timeout (meant for stream heads) must not cut it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_request_longer_than_the_first_byte_timeout_is_not_cut_at_504() {
    let a = TestEngine::start("a", 61).await;
    a.set_mode(Mode::SlowHead(Duration::from_millis(1200)));
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    let cfg = ProxyConfig {
        first_byte_timeout: Duration::from_millis(300),
        ..proxy_config()
    };
    let router = start_router(cfg, index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let t0 = Instant::now();
    let r = client()
        .post(&url)
        .json(&completion(false))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        200,
        "non-streaming answer after {:?}: {}",
        t0.elapsed(),
        r.text().await.unwrap_or_default()
    );
    // A stream whose head does not come within the first-byte timeout still gets 504.
    let r = client()
        .post(&url)
        .json(&completion(true))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 504);
}

async fn stream_once(url: &str) -> (u16, String) {
    let r = client()
        .post(url)
        .json(&completion(true))
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// Fault 4: an engine that answers 200 and then fails in-band (or answers
/// 5xx) fast must be ejected after a short run of errors, although its
/// connections work and its `/load` answers; power-of-two-choices would
/// otherwise prefer it because it is never busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_failing_in_band_after_a_200_head_is_ejected_after_a_run_of_errors() {
    let broken = TestEngine::start_with("broken", 62, 5, Duration::from_millis(5)).await;
    let good = TestEngine::start_with("good", 63, 5, Duration::from_millis(20)).await;
    broken.set_mode(Mode::InBandError);
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pbroken", "r1", broken.addr));
    index.apply_pod(pod("pgood", "r1", good.addr));
    let router = start_router(proxy_config(), index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let results: Vec<(u16, String)> = futures::stream::iter(0..60)
        .map(|_| stream_once(&url))
        .buffer_unordered(4)
        .collect()
        .await;
    let in_band = results
        .iter()
        .filter(|(_, body)| body.contains("\"error\""))
        .count();
    // Ejection after 5 consecutive errors; up to 4 more may already be in flight.
    assert!(
        broken.requests() <= 9,
        "the broken engine got {} of 60 streams ({in_band} in-band errors reached clients)",
        broken.requests()
    );
    let m = router.state.metrics_text();
    assert_eq!(
        metric(
            &m,
            "steward_router_endpoint_ejections_total",
            &["reason=\"errors\""]
        ),
        1.0,
        "{m}"
    );

    // Non-streaming: 500 answers count too.
    let broken2 = TestEngine::start("broken2", 64).await;
    broken2.set_mode(Mode::InBandError);
    let good2 = TestEngine::start("good2", 65).await;
    let index2 = SharedIndex::new();
    index2.apply_service(service(&[("r1", 100)], None));
    index2.apply_pod(pod("pb2", "r1", broken2.addr));
    index2.apply_pod(pod("pg2", "r1", good2.addr));
    let router2 = start_router(proxy_config(), index2).await;
    let url2 = format!("http://{}/v1/completions", router2.addr);
    for _ in 0..40 {
        let _ = client().post(&url2).json(&completion(false)).send().await;
    }
    assert!(
        broken2.requests() <= 5,
        "the engine answering 500 got {} of 40 requests",
        broken2.requests()
    );
}

/// Writes the head of a POST whose body will come slowly (`content_length`
/// announced, `sent` bytes sent), and keeps the connection open.
async fn slow_upload(router: SocketAddr, content_length: usize, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(router).await.expect("connect");
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(&b"{\"model\":\"chat-small\",\"prompt\":\""[..sent.min(31)])
        .await
        .expect("write body start");
    s
}

/// Fault 3: a request whose body is still arriving holds a unit of the
/// global concurrency cap (so slow uploads cannot pile up without bound
/// behind it), and streams already open are not disturbed by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_take_the_global_cap_before_their_body_is_read() {
    let a = TestEngine::start_with("a", 66, 10, Duration::from_millis(100)).await;
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    let cfg = ProxyConfig {
        max_concurrency: 5,
        ..proxy_config()
    };
    let router = start_router(cfg, index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    // One stream is open before the uploads start.
    let open = client()
        .post(&url)
        .json(&completion(true))
        .send()
        .await
        .expect("stream starts");
    assert_eq!(open.status(), 200);
    let open = tokio::spawn(async move { open.text().await });
    let mut uploads = Vec::new();
    for _ in 0..4 {
        uploads.push(slow_upload(router.addr, 1 << 20, 20).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The cap (5) is held by the stream and the 4 uploads: a new request is refused at once.
    let t0 = Instant::now();
    let r = client()
        .post(&url)
        .json(&completion(false))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        503,
        "a request over the cap while 4 bodies are being read"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    let body = open.await.expect("join").expect("open stream completes");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    drop(uploads);
}

/// Fault 8: on SIGTERM the router keeps serving while endpoints update
/// (new requests still succeed during the shutdown delay, readiness turns
/// false), then stops taking connections and lets its open streams finish
/// within the drain window before it exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_serving_through_the_delay_then_drains_open_streams_and_exits() {
    // 30 chunks 100 ms apart: a 3 s stream, longer than the 1 s delay.
    let a = TestEngine::start_with("a", 67, 30, Duration::from_millis(100)).await;
    let mut router = RouterProcess::start(
        a.addr,
        &[
            ("STEWARD_ROUTER_SHUTDOWN_DELAY", "1s"),
            ("STEWARD_ROUTER_DRAIN_WINDOW", "20s"),
        ],
    );
    router.wait_healthy().await;
    let url = format!("http://{}/v1/completions", router.addr);
    let open = client()
        .post(&url)
        .json(&completion(true))
        .send()
        .await
        .expect("stream starts");
    assert_eq!(open.status(), 200);
    let open = tokio::spawn(async move { open.text().await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t0 = Instant::now();
    router.sigterm();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // During the delay: new connections are served (clients and load
    // balancers have not seen the endpoint go yet), and told to reconnect.
    let r = reqwest::Client::new()
        .post(&url)
        .json(&completion(false))
        .send()
        .await
        .expect("the router must still accept connections right after SIGTERM");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("connection").and_then(|v| v.to_str().ok()),
        Some("close")
    );
    let ready = client()
        .get(format!("http://{}/readyz", router.addr))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        503,
        "readiness turns false once terminating"
    );

    // After the delay: no new connections.
    let refused = eventually_async(Duration::from_secs(3), || async {
        TcpStream::connect(router.addr).await.is_err()
    })
    .await;
    assert!(refused, "still accepting after the shutdown delay");
    let body = open.await.expect("join").expect("open stream finishes");
    assert!(
        body.contains("t29") && body.trim_end().ends_with("data: [DONE]"),
        "the open stream was cut: {body}"
    );
    let st = router
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("router exits once its streams are done");
    assert!(st.success(), "exit status {st:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "exit took {:?}, the drain window is 20s",
        t0.elapsed()
    );
}

/// Fault 11 (router part): per-endpoint state was keyed by IP, so a new pod
/// that got a dead pod's IP inherited its ejection (and load). It is keyed
/// by pod UID now: the new pod takes traffic at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_pod_on_a_reused_ip_does_not_inherit_the_old_pods_ejection() {
    let old = TestEngine::start("old", 68).await;
    old.set_mode(Mode::InBandError);
    let addr = old.addr;
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("p-old", "r1", addr));
    let router = start_router(proxy_config(), index.clone()).await;
    let url = format!("http://{}/v1/completions", router.addr);
    for _ in 0..5 {
        let _ = stream_once(&url).await;
    }
    let r = client()
        .post(&url)
        .json(&completion(false))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 503, "the failing pod is ejected");
    // The pod dies; a new pod gets the same IP and port.
    old.kill();
    index.delete_pod(&steward_router::index::ObjKey::new(NS, "p-old"));
    let mut new = None;
    for _ in 0..50 {
        // The old listener closes asynchronously.
        let bound = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::spawn(TestEngine::start_at(
                "new",
                addr,
                5,
                Duration::from_millis(5),
            )),
        )
        .await;
        if let Ok(Ok(e)) = bound {
            new = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = new.expect("rebind the reused address");
    index.apply_pod(pod("p-new", "r1", addr));
    let r = client()
        .post(&url)
        .json(&completion(false))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        200,
        "the new pod on the reused IP was blackholed"
    );
    assert_eq!(new.requests(), 1);
}

/// Fault 8: the drain window bounds the shutdown; what is still open then is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_window_bounds_the_shutdown_and_cuts_what_is_still_open() {
    let a = TestEngine::start_with("a", 69, 100, Duration::from_millis(100)).await;
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    let (state, poller) = steward_router::server::RouterState::new(
        proxy_config(),
        steward_router::config::PollConfig::default(),
        index,
    );
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let router = steward_router::server::RunningRouter::start_with(
        listener,
        state,
        poller,
        steward_router::config::ServerConfig {
            shutdown_delay: Duration::from_millis(200),
            drain_window: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .expect("start");
    let url = format!("http://{}/v1/completions", router.addr);
    let open = client()
        .post(&url)
        .json(&completion(true))
        .send()
        .await
        .expect("stream starts");
    let open = tokio::spawn(async move { open.text().await });
    let t0 = Instant::now();
    let report = router.shut_down().await.expect("serve returns");
    let took = t0.elapsed();
    assert_eq!(report.cut, 1, "{report:?}");
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(3),
        "delay 200ms + window 500ms, took {took:?}"
    );
    drop(open);
}
