//! The router's data plane over real HTTP: test engines on 127.0.0.x, a
//! real router, a directly fed index (the watch layer is tested in
//! `discovery.rs`).

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use steward_router::index::{SharedIndex, TenantLimits};

/// Waits until the router's poller has seen `engine`'s reported load.
async fn wait_for_load(router: &steward_router::server::RunningRouter, engine: &TestEngine) {
    assert!(
        eventually(Duration::from_secs(10), || router
            .state
            .proxy
            .endpoints
            .find_addr(engine.addr)
            .is_some_and(|s| s.load().running > 0))
        .await,
        "the load poller never saw {}'s load",
        engine.state.name
    );
}

async fn metrics(router: &steward_router::server::RunningRouter) -> String {
    router.state.metrics_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_matches_weights_and_a_weight_change_applies_at_once() {
    let a = TestEngine::start("a", 11).await;
    let b = TestEngine::start("b", 12).await;
    let index = SharedIndex::new();
    index.apply_service(service(&[("rev-a", 80), ("rev-b", 20)], None));
    index.apply_pod(pod("pa", "rev-a", a.addr));
    index.apply_pod(pod("pb", "rev-b", b.addr));
    let router = start_router(proxy_config(), index.clone()).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let http = client();
    let n = 400usize;
    let send_n = |n: usize| {
        let http = http.clone();
        let url = url.clone();
        async move {
            futures::stream::iter(0..n)
                .map(|_| {
                    let http = http.clone();
                    let url = url.clone();
                    async move {
                        let r = post_completion(&http, &url).await;
                        assert_eq!(r.status(), 200);
                        r.headers()
                            .get("x-steward-revision")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        }
    };
    let revs = send_n(n).await;
    let to_b = revs
        .iter()
        .filter(|r| r.as_deref() == Some("rev-b"))
        .count();
    // Binomial(400, 0.2): mean 80, sd 8; allow 4 sd.
    assert!((48..=112).contains(&to_b), "rev-b got {to_b} of {n}");
    assert_eq!(a.requests() + b.requests(), n);

    // Roll back: all weight to rev-a. The next request already follows it.
    index.apply_service(service(&[("rev-a", 100), ("rev-b", 0)], None));
    let before_b = b.requests();
    let revs = send_n(100).await;
    assert!(
        revs.iter().all(|r| r.as_deref() == Some("rev-a")),
        "{revs:?}"
    );
    assert_eq!(
        b.requests(),
        before_b,
        "rev-b got traffic after its weight went to 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_and_not_serving_pods_get_no_new_requests_while_open_streams_finish() {
    let a = TestEngine::start_with("a", 13, 20, Duration::from_millis(50)).await;
    let b = TestEngine::start("b", 14).await;
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    let router = start_router(proxy_config(), index.clone()).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let http = client();
    let resp = http
        .post(&url)
        .json(&completion(true))
        .send()
        .await
        .expect("stream starts");
    assert_eq!(resp.status(), 200);
    let open = tokio::spawn(async move { resp.text().await });

    // a is being deleted; b joins.
    let mut dying = pod("pa", "r1", a.addr);
    dying.terminating = true;
    index.apply_pod(dying);
    index.apply_pod(pod("pb", "r1", b.addr));
    for _ in 0..20 {
        let r = post_completion(&http, &url).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(a.requests(), 1, "the terminating pod got a new request");
    assert_eq!(b.requests(), 20);

    // b goes warm (not serving): no endpoint is left for new requests.
    let mut warm = pod("pb", "r1", b.addr);
    warm.serving = false;
    index.apply_pod(warm);
    let r = post_completion(&http, &url).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());

    let body = open
        .await
        .expect("join")
        .expect("open stream completes untouched");
    assert!(
        body.contains("t19") && body.trim_end().ends_with("data: [DONE]"),
        "{body}"
    );
    assert!(!body.contains("error"));
    assert_eq!(a.completed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_killed_before_first_byte_is_retried_once_on_another_and_counted() {
    let a = TestEngine::start("a", 15).await;
    let b = TestEngine::start("b", 16).await;
    a.set_mode(Mode::DieBeforeFirstByte);
    b.set_load(50); // power-of-two-choices prefers a until a fails
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    index.apply_pod(pod("pb", "r1", b.addr));
    let router = start_router(proxy_config(), index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    wait_for_load(&router, &b).await;
    let r = client()
        .post(&url)
        .json(&completion(true))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    assert!(body.contains("\"engine\":\"b\""), "{body}");
    assert_eq!(a.requests(), 1);
    assert_eq!(b.requests(), 1);
    let m = metrics(&router).await;
    assert_eq!(
        metric(
            &m,
            "steward_router_retries_total",
            &["reason=\"closed_before_response\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "steward_router_requests_total", &["class=\"2xx\""]),
        1.0
    );

    // a is dead now: later requests never reach it (ejected), and succeed.
    for _ in 0..10 {
        let r = client()
            .post(&url)
            .json(&completion(false))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }
    let m = metrics(&router).await;
    assert!(
        metric(&m, "steward_router_retries_total", &[]) <= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_killed_mid_stream_ends_the_client_stream_with_an_error_and_no_retry() {
    let a = TestEngine::start_with("a", 17, 10, Duration::from_millis(20)).await;
    let b = TestEngine::start("b", 18).await;
    a.set_mode(Mode::DieAfterChunks(3));
    b.set_load(50);
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    index.apply_pod(pod("pb", "r1", b.addr));
    let router = start_router(proxy_config(), index).await;
    wait_for_load(&router, &b).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let r = client()
        .post(&url)
        .json(&completion(true))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut seen = String::new();
    let mut errored = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => {
                errored = true;
                break;
            }
        }
    }
    assert!(seen.contains("t2"), "chunks before the kill arrive: {seen}");
    assert!(!seen.contains("[DONE]"), "{seen}");
    assert!(
        seen.contains("upstream_stream_error"),
        "in-band error event: {seen}"
    );
    assert!(errored, "the response is aborted, not ended cleanly");
    assert_eq!(b.requests(), 0, "no retry after the first byte");
    let m = metrics(&router).await;
    assert_eq!(metric(&m, "steward_router_retries_total", &[]), 0.0);
    assert_eq!(
        metric(
            &m,
            "steward_router_stream_errors_total",
            &["reason=\"upstream\""]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_from_the_engine_is_never_retried() {
    let a = TestEngine::start("a", 19).await;
    let b = TestEngine::start("b", 20).await;
    a.set_mode(Mode::Status(400));
    b.set_load(50);
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    index.apply_pod(pod("pb", "r1", b.addr));
    let router = start_router(proxy_config(), index).await;
    wait_for_load(&router, &b).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let r = client()
        .post(&url)
        .json(&completion(false))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("engine's error body passes through");
    assert_eq!(v["error"]["type"], "test");
    assert_eq!((a.requests(), b.requests()), (1, 0));
    assert_eq!(
        metric(&metrics(&router).await, "steward_router_retries_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries_under_a_total_outage() {
    let a = TestEngine::start("a", 21).await;
    let b = TestEngine::start("b", 22).await;
    a.set_mode(Mode::Status(503));
    b.set_mode(Mode::Status(503));
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    index.apply_pod(pod("pb", "r1", b.addr));
    let mut cfg = proxy_config();
    cfg.retry_budget.ratio = 0.1;
    cfg.retry_budget.min_per_second = 0.0;
    let router = start_router(cfg, index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let http = client();
    let n = 100;
    for _ in 0..n {
        let r = post_completion(&http, &url).await;
        assert_eq!(r.status(), 503, "the engine's 503 reaches the client");
        assert!(r.headers().get("retry-after").is_some());
    }
    let m = metrics(&router).await;
    let retries = metric(&m, "steward_router_retries_total", &[]);
    assert!(
        (5.0..=10.0).contains(&retries),
        "retries {retries} outside 10% budget: {m}"
    );
    assert_eq!(a.requests() + b.requests(), n + retries as usize);
    assert!(metric(&m, "steward_router_retry_budget_exhausted_total", &[]) >= 80.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_over_its_limit_gets_429_with_retry_after_and_other_tenants_are_unaffected() {
    let a = TestEngine::start("a", 23).await;
    let index = SharedIndex::new();
    let limits = TenantLimits {
        requests_per_second: Some(0.5),
        burst: Some(2),
        max_concurrent: None,
    };
    index.apply_service(service(&[("r1", 100)], Some(limits)));
    index.apply_pod(pod("pa", "r1", a.addr));
    let router = start_router(proxy_config(), index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let http = client();
    let send = |tenant: &'static str| {
        http.post(&url)
            .header("x-tenant", tenant)
            .json(&completion(false))
            .send()
    };
    assert_eq!(send("noisy").await.expect("1").status(), 200);
    assert_eq!(send("noisy").await.expect("2").status(), 200);
    let r = send("noisy").await.expect("3");
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("numeric Retry-After");
    assert!(
        (1..=2).contains(&retry_after),
        "one token per 2s: {retry_after}"
    );
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "rate_limit_exceeded");
    for _ in 0..2 {
        assert_eq!(send("quiet").await.expect("other tenant").status(), 200);
    }
    assert_eq!(a.requests(), 4, "throttled requests never reach the engine");
    let m = metrics(&router).await;
    assert_eq!(
        metric(
            &m,
            "steward_router_throttled_total",
            &["reason=\"tenant_rate\""]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_concurrency_cap_and_global_cap_refuse_with_retry_after() {
    let a = TestEngine::start_with("a", 24, 40, Duration::from_millis(25)).await;
    let index = SharedIndex::new();
    let limits = TenantLimits {
        requests_per_second: None,
        burst: None,
        max_concurrent: Some(1),
    };
    index.apply_service(service(&[("r1", 100)], Some(limits)));
    index.apply_pod(pod("pa", "r1", a.addr));
    let mut cfg = proxy_config();
    cfg.max_concurrency = 2;
    let router = start_router(cfg, index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let http = client();
    let t1 = http
        .post(&url)
        .header("x-tenant", "t1")
        .json(&completion(true))
        .send()
        .await
        .expect("t1");
    assert_eq!(t1.status(), 200);
    let again = http
        .post(&url)
        .header("x-tenant", "t1")
        .json(&completion(true))
        .send()
        .await
        .expect("t1 again");
    assert_eq!(again.status(), 429);
    assert!(again.headers().get("retry-after").is_some());
    let t2 = http
        .post(&url)
        .header("x-tenant", "t2")
        .json(&completion(true))
        .send()
        .await
        .expect("t2");
    assert_eq!(t2.status(), 200);
    let t3 = http
        .post(&url)
        .header("x-tenant", "t3")
        .json(&completion(true))
        .send()
        .await
        .expect("t3");
    assert_eq!(t3.status(), 503, "global cap of 2 reached");
    assert!(t3.headers().get("retry-after").is_some());
    drop((t1, t2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_request_on_the_engine() {
    let a = TestEngine::start_with("a", 25, 400, Duration::from_millis(20)).await;
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    let router = start_router(proxy_config(), index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let r = client()
        .post(&url)
        .json(&completion(true))
        .send()
        .await
        .expect("send");
    let mut stream = r.bytes_stream();
    let first = stream.next().await.expect("a chunk").expect("ok chunk");
    assert!(!first.is_empty());
    drop(stream);
    assert!(
        eventually(Duration::from_secs(5), || a.cancelled() == 1).await,
        "engine did not see the cancellation"
    );
    assert_eq!(a.completed(), 0);
    let m = metrics(&router).await;
    assert!(
        eventually(Duration::from_secs(2), || {
            metric(
                &router.state.metrics_text(),
                "steward_router_client_disconnects_total",
                &[],
            ) == 1.0
        })
        .await,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_model_and_no_endpoint_get_openai_errors() {
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    let router = start_router(proxy_config(), index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let http = client();

    let r = http
        .post(&url)
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let r = http
        .post(&url)
        .json(&serde_json::json!({"prompt": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);

    let r = http
        .post(&url)
        .json(&serde_json::json!({"model": "nope", "prompt": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("retry-after").is_none());
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "model_not_found");

    let r = post_completion(&http, &url).await;
    assert_eq!(
        r.status(),
        503,
        "known model with no endpoint is retryable, not 404"
    );
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "no_endpoint");

    let big = "x".repeat(5 << 20);
    let r = http
        .post(&url)
        .json(&serde_json::json!({"model": MODEL, "prompt": big}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);

    let r = client()
        .post(&url)
        .header("x-big", "y".repeat(70 << 10))
        .json(&completion(false))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 431);

    let r = http
        .get(format!("http://{}/v1/models", router.addr))
        .send()
        .await
        .expect("models");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["data"][0]["id"], MODEL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_key_keeps_a_conversation_on_one_endpoint() {
    let engines = [
        TestEngine::start("a", 26).await,
        TestEngine::start("b", 27).await,
        TestEngine::start("c", 28).await,
    ];
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 50), ("r2", 50)], None));
    index.apply_pod(pod("pa", "r1", engines[0].addr));
    index.apply_pod(pod("pb", "r1", engines[1].addr));
    index.apply_pod(pod("pc", "r2", engines[2].addr));
    let router = start_router(proxy_config(), index).await;
    let url = format!("http://{}/v1/completions", router.addr);
    let http = client();
    for key in ["conv-1", "conv-2", "conv-3"] {
        let before: Vec<usize> = engines.iter().map(TestEngine::requests).collect();
        for _ in 0..10 {
            let r = http
                .post(&url)
                .header("x-session-key", key)
                .json(&completion(false))
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
        }
        let grew: Vec<usize> = engines
            .iter()
            .zip(&before)
            .map(|(e, b)| e.requests() - b)
            .collect();
        assert_eq!(
            grew.iter().filter(|&&g| g == 10).count(),
            1,
            "{key}: {grew:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_endpoints_answer() {
    let a = TestEngine::start("a", 29).await;
    let index = SharedIndex::new();
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    let router = start_router(proxy_config(), index).await;
    let http = client();
    let r = http
        .post(format!("http://{}/v1/completions", router.addr))
        .json(&completion(true))
        .send()
        .await
        .expect("send");
    let _ = r.text().await.expect("body");
    let base = format!("http://{}", router.addr);
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    let m = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let labels = "namespace=\"team-a\",service=\"chat\",revision=\"r1\"";
    assert_eq!(
        metric(&m, "steward_router_streamed_tokens_total", &[labels]),
        5.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "steward_router_ttft_seconds_count", &[labels]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "steward_router_request_duration_seconds_count",
            &[labels]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "steward_router_in_flight", &[labels]),
        0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_router_replicas_make_the_same_sticky_choices() {
    let engines = [
        TestEngine::start("a", 30).await,
        TestEngine::start("b", 31).await,
        TestEngine::start("c", 32).await,
    ];
    // Each replica has its own index fed with the same objects, as two
    // replicas watching one API server would.
    let mut routers = Vec::new();
    for _ in 0..2 {
        let index = SharedIndex::new();
        index.apply_service(service(&[("r1", 60), ("r2", 40)], None));
        index.apply_pod(pod("pa", "r1", engines[0].addr));
        index.apply_pod(pod("pb", "r1", engines[1].addr));
        index.apply_pod(pod("pc", "r2", engines[2].addr));
        routers.push(start_router(proxy_config(), index).await);
    }
    let http = client();
    for key in ["s-1", "s-2", "s-3", "s-4", "s-5", "s-6"] {
        let mut served = Vec::new();
        for r in &routers {
            let resp = http
                .post(format!("http://{}/v1/completions", r.addr))
                .header("x-session-key", key)
                .json(&completion(false))
                .send()
                .await
                .expect("send");
            let v: serde_json::Value = resp.json().await.expect("json");
            served.push(v["engine"].as_str().unwrap_or_default().to_string());
        }
        assert_eq!(served[0], served[1], "replicas disagree for session {key}");
    }
}

/// A router that has just started and not yet listed services and pods
/// holds a request until the first list instead of answering 404/503 from
/// an empty table (the chaos suite's router restart got a 503 18 ms after
/// "serving").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_before_the_first_discovery_list_waits_for_it() {
    let a = TestEngine::start("a", 15).await;
    let index = SharedIndex::new();
    let router = start_router(proxy_config(), index.clone()).await;
    router
        .state
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let http = client();
    let readyz = format!("http://{}/readyz", router.addr);
    let before = http.get(&readyz).send().await.expect("readyz");
    assert_eq!(before.status(), 503, "not ready before the first list");
    let url = format!("http://{}/v1/completions", router.addr);
    let sent = std::time::Instant::now();
    let pending = tokio::spawn({
        let http = http.clone();
        async move { post_completion(&http, &url).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "answered from the empty table");
    index.apply_service(service(&[("r1", 100)], None));
    index.apply_pod(pod("pa", "r1", a.addr));
    router
        .state
        .ready
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let status = pending.await.expect("join");
    assert_eq!(status, 200);
    assert!(sent.elapsed() >= Duration::from_millis(300));
    assert_eq!(a.requests(), 1);
    let after = http.get(&readyz).send().await.expect("readyz");
    assert_eq!(after.status(), 200);
}
