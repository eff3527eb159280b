//! Operational behaviour over real HTTP against real engine processes:
//! drain (SIGTERM, and POST /drain for a holder of the drain token),
//! admission refusals (tenant cap, full queue, KV pressure), cold-start
//! readiness, and the engine-thread health behind /ready.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{eventually, metric, sigterm, Engine, SseReader, MODEL};
use rand::{Rng, SeedableRng};
use serde_json::json;

fn long_stream(tokens: usize) -> serde_json::Value {
    json!({"model": MODEL, "prompt": "tell me a story", "max_tokens": tokens, "ignore_eos": true, "stream": true})
}

async fn open_stream(e: &Engine, tenant: Option<&str>, tokens: usize) -> SseReader {
    let mut req = e
        .client
        .post(e.url("/v1/completions"))
        .json(&long_stream(tokens));
    if let Some(t) = tenant {
        req = req.header("x-tenant", t);
    }
    let r = req.send().await.expect("stream request");
    assert_eq!(r.status(), 200);
    let mut s = SseReader::new(r);
    assert!(s.next_data().await.is_some(), "first chunk");
    s
}

async fn assert_refused(r: reqwest::Response, status: u16, kind: &str) {
    assert_eq!(r.status().as_u16(), status);
    assert!(
        r.headers().contains_key("retry-after"),
        "{kind} carries Retry-After"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], kind);
}

#[tokio::test]
async fn drain_finishes_open_streams_and_refuses_new() {
    let mut e = Engine::start(&["--drain-window", "120s"]).await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(open_stream(&e, None, 600).await);
    }
    sigterm(&e);
    eventually("/ready fails at once", Duration::from_secs(5), || async {
        e.client
            .get(e.url("/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    let load = e.load().await;
    assert_eq!(load["draining"], true);
    assert!(
        load["running"].as_u64().unwrap() > 0,
        "streams were still live when the drain began"
    );
    let r = e
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "late", "max_tokens": 2}),
        )
        .await;
    assert_refused(r, 503, "draining").await;
    let mut tasks = Vec::new();
    for mut s in streams {
        tasks.push(tokio::spawn(async move { s.finish().await }));
    }
    for t in tasks {
        let (_, finish, done) = t.await.unwrap();
        assert!(done, "every stream completes");
        assert_eq!(finish.as_deref(), Some("length"));
    }
    let status = e.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the engine exits by itself: {status:?}"
    );
}

#[tokio::test]
async fn drain_window_end_cuts_what_is_left_and_exits() {
    let mut e = Engine::start(&["--drain-window", "100ms"]).await;
    let mut s = open_stream(&e, None, 900).await;
    sigterm(&e);
    let status = e.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exits when the window ends: {status:?}"
    );
    let (_, _, done) = s.finish().await;
    assert!(!done, "a cut stream does not end with [DONE]");
}

/// Regression, issue 13 fault 2: anyone who reached the pod IP could drain
/// it with GET or POST /drain, and an idle engine then exited.
#[tokio::test]
async fn drain_over_http_without_the_pods_token_is_refused_and_changes_nothing() {
    let mut e = Engine::start(&[]).await;
    let r = e.client.get(e.url("/drain")).send().await.unwrap();
    assert_eq!(r.status(), 405, "no GET /drain for hooks or scanners");
    let r = e.client.post(e.url("/drain")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "forbidden");
    let r = e
        .client
        .post(e.url("/drain"))
        .bearer_auth("guessed-token-guessed-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(e.child.try_wait().unwrap().is_none(), "still running");
    let ready = e.client.get(e.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "still ready");
    let r = e
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 2}),
        )
        .await;
    assert_eq!(r.status(), 200, "still serving");
    assert_eq!(e.load().await["draining"], false);
}

#[tokio::test]
async fn drain_over_http_with_the_pods_token_drains_and_an_idle_engine_exits() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("drain-token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let mut e = Engine::start(&["--drain-token-file", token_file.to_str().unwrap()]).await;
    let r = e
        .client
        .post(e.url("/drain"))
        .bearer_auth("0123456789abcdef0123456789abcdeX")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a wrong token is refused");
    let r = e
        .client
        .post(e.url("/drain"))
        .bearer_auth("0123456789abcdef0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status = e.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "an idle engine exits as soon as it drains: {status:?}"
    );
}

/// Regression, issue 13 fault 6: the SSE 200 head was sent at admission, so
/// a request still queued when the drain began was cut at the end of the
/// window and could not be retried. Now it is refused with a retryable 503.
#[tokio::test]
async fn drain_refuses_queued_requests_with_503_instead_of_cutting_their_streams() {
    let mut e = Engine::start(&[
        "--max-num-seqs",
        "1",
        "--drain-window",
        "1s",
        "--enable-fault-injection",
        "--fault-token-delay",
        "10ms",
    ])
    .await;
    let _running = open_stream(&e, Some("a"), 1000).await;
    let client = e.client.clone();
    let url = e.url("/v1/completions");
    let queued = tokio::spawn(async move {
        client
            .post(url)
            .header("x-tenant", "b")
            .json(&long_stream(50))
            .send()
            .await
    });
    eventually(
        "the second request waits",
        Duration::from_secs(10),
        || async { e.load().await["waiting"].as_u64().unwrap_or(0) >= 1 },
    )
    .await;
    sigterm(&e);
    let r = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("the queued request is answered promptly")
        .unwrap()
        .unwrap();
    assert_refused(r, 503, "draining").await;
    let status = e.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Issue 13 fault 11: the engine exited a fixed 200 ms after its last
/// stream released its guard, and the guard went with the final events as
/// they were handed to the connection, so bytes still queued for a slow
/// reader (the final chunk and `[DONE]`) could be lost. Now the drain waits
/// for every connection to finish writing. (On loopback the kernel's send
/// buffer grows to 4 MiB and usually hides the old loss; across a network
/// it does not.)
#[tokio::test]
async fn a_slow_reader_still_gets_the_final_chunk_and_done_after_the_drain() {
    let mut e = Engine::start(&["--drain-window", "60s"]).await;
    // A big first chunk (the echoed prompt with 20 alternatives per token,
    // about half a megabyte) that a client with a tiny receive buffer has
    // not read when the stream ends.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let prompt: Vec<u32> = (0..900).map(|_| rng.random_range(3..500)).collect();
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 4, "ignore_eos": true,
                      "echo": true, "logprobs": 20, "stream": true})
    .to_string();
    let port = common::port(&e);
    let mut conn = common::connect_with_rcvbuf(port, 2048);
    conn.write_all(&common::raw_post("/v1/completions", &body))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&e);
    // Not reading while the stream ends and the engine drains.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rest = tokio::task::spawn_blocking(move || {
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        rest
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200"), "the stream started");
    assert!(
        text.contains("\"finish_reason\":\"length\""),
        "the final chunk arrived ({} bytes read)",
        rest.len()
    );
    assert!(text.contains("data: [DONE]"), "[DONE] arrived");
    let status = e.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Regression, issue 13 fault 4: /ready only checked "loaded and not
/// draining", so an engine whose every step failed stayed Ready.
#[tokio::test]
async fn failing_steps_make_ready_and_load_fail_but_not_liveness() {
    let e = Engine::start(&[
        "--enable-fault-injection",
        "--fault-step-error-rate",
        "1",
        "--unready-after-step-failures",
        "2",
    ])
    .await;
    for _ in 0..2 {
        let r = e
            .post(
                "/v1/completions",
                json!({"model": MODEL, "prompt": "x", "max_tokens": 2}),
            )
            .await;
        assert_eq!(r.status(), 500);
    }
    let r = e.client.get(e.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "engine_failing");
    let r = e.client.get(e.url("/load")).send().await.unwrap();
    assert_eq!(r.status(), 503, "the router's load poll sees it too");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["health"], "engine_failing");
    assert_eq!(v["ready"], false);
    let r = e.client.get(e.url("/health")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "failing steps alone do not restart the pod"
    );
    // Idle and failing, it keeps probing; the probes fail too (rate 1).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = e.client.get(e.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
}

/// Regression, issue 13 fault 4: a hung engine loop (a step that does not
/// return) left /ready and /health at 200.
#[tokio::test]
async fn a_hung_engine_loop_fails_ready_and_health_then_recovers() {
    let e = Engine::start(&[
        "--enable-fault-injection",
        "--fault-token-delay",
        "4s",
        "--step-timeout",
        "1s",
    ])
    .await;
    let client = e.client.clone();
    let url = e.url("/v1/completions");
    let slow = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 1}))
            .send()
            .await
    });
    eventually("/ready says hung", Duration::from_secs(4), || async {
        match e.client.get(e.url("/ready")).send().await {
            Ok(r) => r.status() == 503 && r.text().await.unwrap_or_default() == "engine_hung",
            Err(_) => false,
        }
    })
    .await;
    let r = e.client.get(e.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503, "liveness fails for a hung loop");
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    eventually("ready again", Duration::from_secs(5), || async {
        e.client
            .get(e.url("/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// Regression, issue 13 fault 11: /load answered 200 with zeros while the
/// model was loading, so a restarting pod looked idle and attractive.
#[tokio::test]
async fn load_is_503_while_loading_never_an_idle_200() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_steward-engine"))
            .arg("serve")
            .arg("--model")
            .arg(common::tiny_model())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--torch-threads", "1"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut loading_seen = 0;
    loop {
        assert!(Instant::now() < deadline, "engine never became ready");
        let ready = client.get(format!("{base}/ready")).send().await;
        if ready.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        if let Ok(r) = client.get(format!("{base}/load")).send().await {
            let status = r.status();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            if v["loading"] == true {
                loading_seen += 1;
                assert_eq!(status, 503, "a loading engine's /load is 503: {v}");
            } else {
                assert_eq!(v["ready"], true, "{status} {v}");
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(loading_seen > 0, "the test saw the engine loading");
}

#[tokio::test]
async fn tenant_over_its_concurrency_cap_gets_429_while_others_are_served() {
    let e = Engine::start(&["--tenant-max-concurrent", "1"]).await;
    let _a = open_stream(&e, Some("team-a"), 900).await;
    let r = e
        .client
        .post(e.url("/v1/completions"))
        .header("x-tenant", "team-a")
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_refused(r, 429, "tenant_concurrency_limit").await;
    let r = e
        .client
        .post(e.url("/v1/completions"))
        .header("x-tenant", "team-b")
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "steward_engine_requests_refused_total",
            &["reason=\"tenant_concurrency_limit\""]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn full_waiting_queue_gets_503_with_retry_after() {
    // The token delay (a test aid) keeps the first stream running for
    // seconds, however fast the machine.
    let e = Engine::start(&[
        "--max-num-seqs",
        "1",
        "--max-waiting",
        "1",
        "--enable-fault-injection",
        "--fault-token-delay",
        "10ms",
    ])
    .await;
    let _running = open_stream(&e, Some("a"), 1000).await;
    // The second request waits (its head comes only when it starts); it is
    // counted as waiting from the moment its handler submitted it.
    let client = e.client.clone();
    let url = e.url("/v1/completions");
    let queued = tokio::spawn(async move {
        client
            .post(url)
            .header("x-tenant", "b")
            .json(&long_stream(1000))
            .send()
            .await
    });
    eventually(
        "the second request waits",
        Duration::from_secs(10),
        || async { e.load().await["waiting"].as_u64().unwrap_or(0) >= 1 },
    )
    .await;
    let r = e
        .client
        .post(e.url("/v1/completions"))
        .header("x-tenant", "c")
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_refused(r, 503, "queue_full").await;
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "steward_engine_requests_refused_total",
            &["reason=\"queue_full\""]
        ),
        Some(1.0)
    );
    queued.abort();
}

#[tokio::test]
async fn sustained_kv_pressure_sheds_new_requests_with_503() {
    let e = Engine::start(&["--shed-kv-usage", "0.0", "--shed-after", "0s"]).await;
    let _s = open_stream(&e, None, 900).await;
    eventually(
        "kv usage above the level",
        Duration::from_secs(10),
        || async { e.load().await["kv_cache_usage"].as_f64().unwrap_or(0.0) > 0.0 },
    )
    .await;
    let r = e
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 2}),
        )
        .await;
    assert_refused(r, 503, "kv_cache_pressure").await;
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "steward_engine_requests_refused_total",
            &["reason=\"kv_cache_pressure\""]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn cold_start_times_are_exported_once_ready() {
    let e = Engine::start(&[]).await;
    let m = e.metrics().await;
    let load = metric(&m, "steward_engine_cold_start_load_seconds", &[]).unwrap();
    let warm = metric(&m, "steward_engine_cold_start_warmup_seconds", &[]).unwrap();
    let total = metric(&m, "steward_engine_cold_start_seconds", &[]).unwrap();
    assert!(load > 0.0 && warm > 0.0);
    assert!(total >= load + warm);
}
