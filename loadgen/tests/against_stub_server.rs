//! Drives the load generator against a scripted OpenAI-style server over
//! real loopback HTTP. The server is a stub on purpose: these tests pin the
//! generator's measuring and counting, which needs exactly known token
//! streams and failures; the engine has its own tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use reqwest::header::HeaderName;
use serde_json::{json, Value};
use steward_loadgen::client::Target;
use steward_loadgen::driver::{self, Arrival, Bounds};
use steward_loadgen::report::Report;
use steward_loadgen::workload::{Api, Workload};

#[derive(Default)]
struct Seen {
    requests: AtomicU64,
}

/// Streams `max_tokens` one-token chunks 2 ms apart; tenant "blocked" gets 429;
/// tenant "cut" gets a stream that ends before its last token, without [DONE].
async fn completions(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let tenant = headers
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if tenant == "blocked" {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "tenant over its cap",
        )
            .into_response();
    }
    let n = body["max_tokens"].as_u64().unwrap_or(1);
    if body["stream"] != json!(true) {
        return Json(json!({
            "choices": [{"text": "x".repeat(n as usize), "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": n}
        }))
        .into_response();
    }
    let cut = tenant == "cut";
    let stream = async_stream(n, cut);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn async_stream(n: u64, cut: bool) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(0u64, move |i| async move {
        if i > n + 1 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        if cut && i + 1 == n {
            return None;
        }
        let chunk = if i < n {
            let fin = if i + 1 == n {
                json!("length")
            } else {
                Value::Null
            };
            format!(
                "data: {}\n\n",
                json!({"choices":[{"index":0,"text":"t","finish_reason":fin}]})
            )
        } else if i == n {
            format!(
                "data: {}\n\n",
                json!({"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":n}})
            )
        } else {
            "data: [DONE]\n\n".to_string()
        };
        Some((Ok(Bytes::from(chunk)), i + 1))
    })
}

async fn start() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

fn target(addr: SocketAddr) -> Target {
    Target {
        client: reqwest::Client::new(),
        url: format!("http://{addr}/v1/completions"),
        headers: Default::default(),
        tenant_header: HeaderName::from_static("x-tenant"),
        request_timeout: Duration::from_secs(30),
    }
}

fn workload(output: &str, tenants: &str, stream: bool) -> Workload {
    Workload {
        api: Api::Completions,
        model: "stub".into(),
        prompt_len: "uniform:2-6".parse().expect("valid"),
        output_len: output.parse().expect("valid"),
        stream,
        ignore_eos: true,
        stream_usage: true,
        temperature: 0.0,
        tenants: tenants.parse().expect("valid"),
        seed: 1,
    }
}

#[tokio::test]
async fn streamed_run_counts_every_token_and_measures_ttft_and_itl() {
    let (addr, seen) = start().await;
    let bounds = Bounds {
        requests: Some(12),
        duration: None,
        grace: Duration::from_secs(30),
    };
    let run = driver::run(
        target(addr),
        workload("fixed:5", "", true),
        Arrival::Concurrency(4),
        bounds,
    )
    .await;
    let r = Report::from_run(&run);
    assert_eq!((r.sent, r.ok, r.failed), (12, 12, 0), "{}", r.render("t"));
    assert_eq!(r.output_tokens, 60);
    assert_eq!(r.mean_prompt_tokens, Some(7.0));
    assert_eq!(r.itl_ms.expect("itl").count, 12 * 4);
    assert!(r.ttft_ms.expect("ttft").min >= 1.0);
    assert!(r.output_tokens_per_s > 0.0);
    assert_eq!(seen.requests.load(Ordering::Relaxed), 12);
}

#[tokio::test]
async fn refusals_and_cut_streams_are_counted_by_reason_per_tenant() {
    let (addr, _) = start().await;
    let bounds = Bounds {
        requests: Some(30),
        duration: None,
        grace: Duration::from_secs(30),
    };
    let run = driver::run(
        target(addr),
        workload("fixed:3", "ok:1,blocked:1,cut:1", true),
        Arrival::Concurrency(3),
        bounds,
    )
    .await;
    let r = Report::from_run(&run);
    let blocked = r.tenants.get("blocked").map_or(0, |t| t.failed);
    let cut = r.tenants.get("cut").map_or(0, |t| t.failed);
    assert_eq!(r.errors.get("429").copied().unwrap_or(0), blocked);
    assert_eq!(r.errors.get("stream_truncated").copied().unwrap_or(0), cut);
    assert!(blocked > 0 && cut > 0, "{}", r.render("t"));
    assert_eq!(r.ok + blocked + cut, 30);
    assert_eq!(
        r.error_examples.get("429").map(String::as_str),
        Some("tenant over its cap")
    );
}

#[tokio::test]
async fn open_loop_duration_run_stops_by_itself_and_non_streaming_has_no_ttft() {
    let (addr, seen) = start().await;
    let bounds = Bounds {
        requests: None,
        duration: Some(Duration::from_millis(500)),
        grace: Duration::from_secs(10),
    };
    let arrival = Arrival::Rate {
        per_s: 100.0,
        poisson: true,
        max_in_flight: 64,
    };
    let run = driver::run(
        target(addr),
        workload("fixed:1", "", false),
        arrival,
        bounds,
    )
    .await;
    let r = Report::from_run(&run);
    assert!(r.ok >= 10 && r.ok <= 200, "{}", r.render("t"));
    assert_eq!(r.failed, 0);
    assert_eq!(r.ttft_ms, None);
    assert!(r.e2e_ms.is_some());
    assert_eq!(seen.requests.load(Ordering::Relaxed), r.ok);
}

#[tokio::test]
async fn a_dead_target_is_reported_as_connect_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let bounds = Bounds {
        requests: Some(3),
        duration: None,
        grace: Duration::from_secs(10),
    };
    let run = driver::run(
        target(addr),
        workload("fixed:2", "", true),
        Arrival::Concurrency(1),
        bounds,
    )
    .await;
    let r = Report::from_run(&run);
    assert_eq!(r.errors.get("connect"), Some(&3), "{}", r.render("t"));
}
