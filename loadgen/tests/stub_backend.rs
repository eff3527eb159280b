//! The stub backend answers what the load generator and the router
//! benchmark expect: exact token counts on both routes, and faults on request.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use steward_loadgen::client::Target;
use steward_loadgen::driver::{self, Arrival, Bounds};
use steward_loadgen::report::Report;
use steward_loadgen::stub::{router, StubConfig};
use steward_loadgen::workload::{Api, Workload};

async fn start(cfg: StubConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(cfg)).await;
    });
    addr
}

async fn run(
    addr: SocketAddr,
    api: Api,
    stream: bool,
    headers: &[(&'static str, &'static str)],
) -> Report {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let target = Target {
        client: reqwest::Client::new(),
        url: format!("http://{addr}{}", api.default_path()),
        headers: map,
        tenant_header: HeaderName::from_static("x-tenant"),
        request_timeout: Duration::from_secs(30),
    };
    let workload = Workload {
        api,
        model: "stub".into(),
        prompt_len: "fixed:4".parse().expect("valid"),
        output_len: "fixed:6".parse().expect("valid"),
        stream,
        ignore_eos: true,
        stream_usage: false,
        temperature: 0.0,
        tenants: "".parse().expect("valid"),
        seed: 0,
    };
    let bounds = Bounds {
        requests: Some(8),
        duration: None,
        grace: Duration::from_secs(30),
    };
    Report::from_run(&driver::run(target, workload, Arrival::Concurrency(4), bounds).await)
}

#[tokio::test]
async fn chat_stream_and_non_streamed_completions_carry_max_tokens() {
    let addr = start(StubConfig {
        token_delay: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let chat = run(addr, Api::Chat, true, &[]).await;
    assert_eq!(
        (chat.ok, chat.output_tokens),
        (8, 48),
        "{}",
        chat.render("chat")
    );
    assert_eq!(chat.itl_ms.expect("itl").count, 8 * 5);
    let whole = run(addr, Api::Completions, false, &[]).await;
    assert_eq!(
        (whole.ok, whole.output_tokens),
        (8, 48),
        "{}",
        whole.render("whole")
    );
}

#[tokio::test]
async fn injected_status_and_cut_streams_are_seen_as_such() {
    let addr = start(StubConfig::default()).await;
    let refused = run(addr, Api::Completions, true, &[("x-stub-status", "503")]).await;
    assert_eq!(
        refused.errors.get("503"),
        Some(&8),
        "{}",
        refused.render("503")
    );
    let cut = run(addr, Api::Completions, true, &[("x-stub-cut-after", "2")]).await;
    assert_eq!(
        cut.errors.get("stream_truncated"),
        Some(&8),
        "{}",
        cut.render("cut")
    );
}
