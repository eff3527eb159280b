//! The OpenAI-compatible API over real HTTP against a real engine process
//! with the tiny model: shapes, streaming, batching, cancellation, bad input
//! and metrics.

mod common;

use std::time::Duration;

use common::{eventually, metric, Engine, SseReader, MODEL};
use serde_json::json;

#[tokio::test]
async fn completion_and_chat_return_openai_shapes_with_usage() {
    let e = Engine::start(&[]).await;
    let r = e
        .post("/v1/completions", json!({"model": MODEL, "prompt": "Hello there", "max_tokens": 5, "ignore_eos": true, "temperature": 0}))
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let r = e
        .post("/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "ignore_eos": true}))
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    let v: serde_json::Value = e
        .client
        .get(e.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["id"], MODEL);
}

#[tokio::test]
async fn streaming_sends_chunks_then_done_and_matches_non_streaming_greedy_text() {
    let e = Engine::start(&[]).await;
    let body = json!({"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 12, "ignore_eos": true, "temperature": 0});
    let full: serde_json::Value = e
        .post("/v1/completions", body.clone())
        .await
        .json()
        .await
        .unwrap();
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let r = e.post("/v1/completions", sbody).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut s = SseReader::new(r);
    let (text, finish, done) = s.finish().await;
    assert!(done, "stream ends with data: [DONE]");
    assert_eq!(finish.as_deref(), Some("length"));
    assert_eq!(text, full["choices"][0]["text"].as_str().unwrap());
    assert!(s.events.len() >= 3);
}

#[tokio::test]
async fn same_seed_gives_same_sampled_output() {
    let e = Engine::start(&[]).await;
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 16, "ignore_eos": true, "temperature": 1.0, "seed": 7});
    let a: serde_json::Value = e
        .post("/v1/completions", body.clone())
        .await
        .json()
        .await
        .unwrap();
    let b: serde_json::Value = e.post("/v1/completions", body).await.json().await.unwrap();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
}

#[tokio::test]
async fn concurrent_streams_are_batched_into_shared_steps() {
    let e = Engine::start(&[]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = e.client.clone();
        let url = e.url("/v1/completions");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"model": MODEL, "prompt": format!("stream number {i}"), "max_tokens": 40, "ignore_eos": true, "stream": true}))
                .send()
                .await
                .unwrap();
            SseReader::new(r).finish().await
        }));
    }
    for t in tasks {
        let (_, finish, done) = t.await.unwrap();
        assert!(done);
        assert_eq!(finish.as_deref(), Some("length"));
    }
    let m = e.metrics().await;
    let steps = metric(&m, "steward_engine_batch_size_count", &[]).unwrap();
    let single = metric(&m, "steward_engine_batch_size_bucket", &["le=\"1.0\""]).unwrap();
    // 8 x 40 tokens one at a time would take >= 320 steps; batched, far fewer
    // steps carry more than one sequence.
    assert!(
        single < steps,
        "some steps ran more than one sequence: {single} of {steps}"
    );
    assert!(steps < 320.0, "steps {steps} show the streams shared steps");
}

#[tokio::test]
async fn client_disconnect_cancels_generation_and_frees_kv_blocks() {
    let e = Engine::start(&[]).await;
    let r = e
        .post("/v1/completions", json!({"model": MODEL, "prompt": "a long story", "max_tokens": 1000, "ignore_eos": true, "stream": true}))
        .await;
    let mut s = SseReader::new(r);
    assert!(s.next_data().await.is_some());
    let during = e.load().await;
    assert_eq!(during["running"], 1);
    assert!(during["kv_cache_usage"].as_f64().unwrap() > 0.0);
    drop(s);
    eventually(
        "blocks freed after disconnect",
        Duration::from_secs(20),
        || async {
            let l = e.load().await;
            l["running"] == 0 && l["kv_cache_usage"].as_f64() == Some(0.0)
        },
    )
    .await;
    let m = e.metrics().await;
    assert_eq!(
        metric(&m, "steward_engine_requests_cancelled_total", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn every_bad_input_gets_a_4xx_with_an_openai_error_body() {
    let e = Engine::start(&["--max-context-tokens", "64"]).await;
    let long_prompt = "word ".repeat(200);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/completions",
            "{not json".into(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": 5}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": "ten"}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x"}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": "nope", "prompt": "x"}).to_string(),
            404,
            "model_not_found",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": ""}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": []}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 0}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": -3}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "temperature": 2.5}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "temperature": -1}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "top_p": 1.5}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": long_prompt}).to_string(),
            400,
            "context_length_exceeded",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": [99999]}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": []}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": "hi"}).to_string(),
            400,
            "invalid_request_error",
        ),
    ];
    for (path, body, status, kind) in cases {
        let r = e
            .client
            .post(e.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], kind, "{path} {body}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Still healthy after all of that.
    let r = e
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let m = e.metrics().await;
    assert!(metric(&m, "steward_engine_responses_total", &["class=\"4xx\""]).unwrap() >= 18.0);
    assert!(metric(&m, "steward_engine_responses_total", &["class=\"5xx\""]).is_none());
}

#[tokio::test]
async fn max_tokens_above_the_window_is_clamped_and_reported() {
    let e = Engine::start(&["--max-context-tokens", "64", "--max-tokens-cap", "20"]).await;
    let r = e
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "hello", "max_tokens": 500, "ignore_eos": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 20);
    assert_eq!(v["usage"]["max_tokens_requested"], 500);
    assert_eq!(v["usage"]["max_tokens_clamped_to"], 20);
}

#[tokio::test]
async fn metrics_move_with_traffic_and_vllm_names_are_exposed() {
    let e = Engine::start(&["--vllm-metrics"]).await;
    let before = e.metrics().await;
    assert_eq!(
        metric(&before, "steward_engine_generation_tokens_total", &[]),
        Some(0.0)
    );
    for _ in 0..2 {
        let r = e
            .post(
                "/v1/completions",
                json!({"model": MODEL, "prompt": "count me", "max_tokens": 6, "ignore_eos": true}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let m = e.metrics().await;
    assert_eq!(
        metric(&m, "steward_engine_generation_tokens_total", &[]),
        Some(12.0)
    );
    assert!(metric(&m, "steward_engine_prompt_tokens_total", &[]).unwrap() > 0.0);
    assert_eq!(
        metric(&m, "steward_engine_time_to_first_token_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "steward_engine_inter_token_latency_seconds_count", &[]),
        Some(10.0)
    );
    assert_eq!(
        metric(
            &m,
            "steward_engine_requests_finished_total",
            &["reason=\"length\""]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "steward_engine_responses_total", &["class=\"2xx\""]),
        Some(2.0)
    );
    assert!(metric(&m, "steward_engine_cold_start_seconds", &[]).unwrap() > 0.0);
    assert!(m.contains("model=\"tiny\""));
    for name in [
        "steward_engine_requests_running",
        "steward_engine_requests_waiting",
        "steward_engine_kv_cache_usage_ratio",
        "steward_engine_executor_utilization_ratio",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:generation_tokens_total",
    ] {
        assert!(m.lines().any(|l| l.starts_with(name)), "{name} exported");
    }
    assert!(metric(&m, "steward_engine_executor_utilization_ratio", &[]).unwrap() > 0.0);
}

#[tokio::test]
async fn repeated_prompt_hits_the_prefix_cache() {
    let e = Engine::start(&[]).await;
    let prompt = "The river flowed slowly past the mill, turning the great wooden wheel, which in turn drove the stones";
    for _ in 0..2 {
        let r = e
            .post(
                "/v1/completions",
                json!({"model": MODEL, "prompt": prompt, "max_tokens": 2, "ignore_eos": true}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let m = e.metrics().await;
    assert!(metric(&m, "steward_engine_prefix_cache_hits_total", &[]).unwrap() >= 1.0);
}

/// A queued stream gets its 200 head only when it enters the running
/// batch (so a drain can still refuse it with a retryable 503; issue 13
/// fault 6), then streams normally.
#[tokio::test]
async fn a_queued_stream_gets_its_head_only_when_it_starts() {
    let e = Engine::start(&[
        "--max-num-seqs",
        "1",
        "--enable-fault-injection",
        "--fault-token-delay",
        "5ms",
    ])
    .await;
    let r = e
        .post("/v1/completions", json!({"model": MODEL, "prompt": "first", "max_tokens": 1000, "ignore_eos": true, "stream": true}))
        .await;
    let mut first = SseReader::new(r);
    assert!(first.next_data().await.is_some());
    // The second stream waits behind the first (one running sequence).
    let client = e.client.clone();
    let url = e.url("/v1/completions");
    let mut second = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"model": MODEL, "prompt": "second", "max_tokens": 4, "ignore_eos": true, "stream": true}))
            .send()
            .await
    });
    let early = tokio::time::timeout(Duration::from_millis(800), &mut second).await;
    assert!(early.is_err(), "no head while the stream waits");
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the head arrives once the first stream is gone")
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, finish, done) = SseReader::new(r).finish().await;
    assert!(done);
    assert_eq!(finish.as_deref(), Some("length"));
}

#[tokio::test]
async fn streams_preempted_for_kv_blocks_are_recomputed_and_complete() {
    // 8 blocks of 16 tokens: four 60-token streams cannot all fit at once.
    let e = Engine::start(&["--kv-cache-blocks", "8", "--no-prefix-caching"]).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let client = e.client.clone();
        let url = e.url("/v1/completions");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"model": MODEL, "prompt": format!("preempt me {i}"), "max_tokens": 60, "ignore_eos": true, "temperature": 0}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }));
    }
    let mut texts = Vec::new();
    for t in tasks {
        let v = t.await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 60);
        texts.push(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let m = e.metrics().await;
    assert!(metric(&m, "steward_engine_preemptions_total", &[]).unwrap() >= 1.0);
    // Recomputation after preemption gives the same greedy text as a run alone.
    for (i, text) in texts.iter().enumerate() {
        let v: serde_json::Value = e
            .post("/v1/completions", json!({"model": MODEL, "prompt": format!("preempt me {i}"), "max_tokens": 60, "ignore_eos": true, "temperature": 0}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            v["choices"][0]["text"].as_str().unwrap(),
            text,
            "stream {i}"
        );
    }
    eventually("all blocks free", Duration::from_secs(10), || async {
        e.load().await["kv_cache_usage"].as_f64() == Some(0.0)
    })
    .await;
}
