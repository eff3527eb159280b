//! Operational behaviour over real HTTP against real engine processes:
//! drain (POST /drain and SIGTERM), admission refusals (tenant cap, full
//! queue, KV pressure) and cold-start readiness.

mod common;

use std::time::Duration;

use common::{eventually, metric, Engine, SseReader, MODEL};
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
    let r = e.client.post(e.url("/drain")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let ready = e.client.get(e.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "/ready fails at once");
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
async fn sigterm_drains_like_post_drain_and_window_cuts_what_is_left() {
    let mut e = Engine::start(&["--drain-window", "100ms"]).await;
    let mut s = open_stream(&e, None, 900).await;
    let pid = e.child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    eventually(
        "ready fails after SIGTERM",
        Duration::from_secs(10),
        || async {
            match e.client.get(e.url("/ready")).send().await {
                Ok(r) => r.status() == 503,
                Err(_) => true,
            }
        },
    )
    .await;
    let status = e.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exits when the window ends: {status:?}"
    );
    let (_, _, done) = s.finish().await;
    assert!(!done, "a cut stream does not end with [DONE]");
}

#[tokio::test]
async fn get_drain_from_a_prestop_http_hook_drains_and_an_idle_engine_exits() {
    let mut e = Engine::start(&["--drain-window", "60s"]).await;
    let r = e.client.get(e.url("/drain")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let status = e.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "an idle engine exits as soon as it drains: {status:?}"
    );
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
    let e = Engine::start(&["--max-num-seqs", "1", "--max-waiting", "1"]).await;
    let _running = open_stream(&e, Some("a"), 1000).await;
    // The second request is counted as waiting from the moment its handler
    // submitted it (before its response headers come back) until the first
    // stream ends, so the third one, sent right away, finds the queue full.
    let queued = e
        .client
        .post(e.url("/v1/completions"))
        .header("x-tenant", "b")
        .json(&long_stream(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 200);
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
    drop(queued);
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
