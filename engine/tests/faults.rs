//! The fault-injection test aids (`--fault-*`) over real HTTP against real
//! engine processes: refused without `--enable-fault-injection`, and each
//! fault visible where the canary analysis will look for it (status codes,
//! latency histograms, answers) and counted in
//! `steward_engine_faults_injected_total`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{metric, tiny_model, Engine, SseReader, MODEL};
use serde_json::json;

fn greedy(prompt: &str, n: usize) -> serde_json::Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": n, "ignore_eos": true, "temperature": 0})
}

fn hist_mean(m: &str, name: &str) -> f64 {
    let sum = metric(m, &format!("{name}_sum"), &[]).unwrap_or(0.0);
    let count = metric(m, &format!("{name}_count"), &[]).unwrap_or(0.0);
    assert!(count > 0.0, "{name} has samples");
    sum / count
}

#[test]
fn fault_flags_are_refused_at_start_up_without_enable_fault_injection() {
    let out = Command::new(env!("CARGO_BIN_EXE_steward-engine"))
        .arg("serve")
        .arg("--model")
        .arg(tiny_model())
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--fault-error-rate", "0.5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run steward-engine");
    assert!(!out.status.success(), "refused: {:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--fault-error-rate") && err.contains("--enable-fault-injection"),
        "the error names the flag and the switch: {err}"
    );
    // The env form is refused the same way (extraArgs or env in a manifest).
    let out = Command::new(env!("CARGO_BIN_EXE_steward-engine"))
        .arg("serve")
        .arg("--model")
        .arg(tiny_model())
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env("STEWARD_FAULT_PREFILL_DELAY", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run steward-engine");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fault-prefill-delay"));
}

#[tokio::test]
async fn injected_server_errors_are_500s_counted_while_client_mistakes_stay_4xx() {
    let e = Engine::start(&["--enable-fault-injection", "--fault-error-rate", "1"]).await;
    let r = e.post("/v1/completions", greedy("Hello", 2)).await;
    assert_eq!(r.status(), 500);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "internal_error");
    let r = e
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "temperature": 9}),
        )
        .await;
    assert_eq!(r.status(), 400, "a client's mistake is still a 4xx");
    let r = e.post("/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": true})).await;
    assert_eq!(r.status(), 500, "streams fail before their head");
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "steward_engine_faults_injected_total",
            &["fault=\"server_error\""]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "steward_engine_responses_total", &["class=\"5xx\""]),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "steward_engine_fault_injection_enabled", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn prefill_delay_raises_time_to_first_token_but_not_inter_token_latency() {
    let e = Engine::start(&["--enable-fault-injection", "--fault-prefill-delay", "400ms"]).await;
    let mut body = greedy("Once upon a time", 8);
    body["stream"] = json!(true);
    let t0 = Instant::now();
    let r = e.post("/v1/completions", body).await;
    assert_eq!(r.status(), 200);
    let mut s = SseReader::new(r);
    assert!(s.next_data().await.is_some());
    let first = t0.elapsed();
    let (_, finish, done) = s.finish().await;
    assert!(done && finish.as_deref() == Some("length"));
    assert!(
        first >= Duration::from_millis(400),
        "first chunk after {first:?}"
    );
    let m = e.metrics().await;
    let ttft = hist_mean(&m, "steward_engine_time_to_first_token_seconds");
    let itl = hist_mean(&m, "steward_engine_inter_token_latency_seconds");
    assert!(ttft >= 0.4, "TTFT mean {ttft}");
    assert!(itl < 0.2, "ITL mean {itl} is not delayed");
    assert_eq!(
        metric(
            &m,
            "steward_engine_faults_injected_total",
            &["fault=\"prefill_delay\""]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn token_delay_with_jitter_raises_inter_token_latency() {
    let e = Engine::start(&[
        "--enable-fault-injection",
        "--fault-token-delay",
        "40ms",
        "--fault-token-jitter",
        "20ms",
    ])
    .await;
    let r = e.post("/v1/completions", greedy("Hello", 12)).await;
    assert_eq!(r.status(), 200);
    let m = e.metrics().await;
    let itl = hist_mean(&m, "steward_engine_inter_token_latency_seconds");
    assert!(itl >= 0.04, "ITL mean {itl} includes the 40 ms delay");
    let n = metric(
        &m,
        "steward_engine_faults_injected_total",
        &["fault=\"token_delay\""],
    )
    .unwrap_or(0.0);
    // One pause per step that produced a token; the last one may still be
    // running (and uncounted) when the response has arrived.
    assert!(n >= 11.0, "one pause per step that produced a token: {n}");
}

#[tokio::test]
async fn step_errors_fail_requests_as_the_replicas_fault() {
    let e = Engine::start(&["--enable-fault-injection", "--fault-step-error-rate", "1"]).await;
    let r = e.post("/v1/completions", greedy("Hello", 4)).await;
    assert_eq!(r.status(), 500);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "internal_error");
    let m = e.metrics().await;
    assert!(
        metric(
            &m,
            "steward_engine_faults_injected_total",
            &["fault=\"step_error\""]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn quality_faults_change_greedy_answers_with_200s_and_normal_lengths() {
    let clean = Engine::start(&[]).await;
    let corrupt = Engine::start(&[
        "--enable-fault-injection",
        "--fault-corrupt-token-rate",
        "1",
        "--fault-seed",
        "7",
    ])
    .await;
    let noisy = Engine::start(&[
        "--enable-fault-injection",
        "--fault-logit-noise",
        "10",
        "--fault-seed",
        "7",
    ])
    .await;
    let body = greedy("The quick brown fox", 16);
    let mut texts = Vec::new();
    for e in [&clean, &corrupt, &noisy] {
        let r = e.post("/v1/completions", body.clone()).await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 16);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        texts.push(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    assert_ne!(texts[0], texts[1], "corrupted tokens change the answer");
    assert_ne!(texts[0], texts[2], "logit noise changes the answer");
    // The clean replica is deterministic, so the difference is the fault.
    let again: serde_json::Value = clean
        .post("/v1/completions", body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["choices"][0]["text"].as_str().unwrap(), texts[0]);
    let m = corrupt.metrics().await;
    assert_eq!(
        metric(
            &m,
            "steward_engine_faults_injected_total",
            &["fault=\"corrupt_token\""]
        ),
        Some(16.0)
    );
    let m = noisy.metrics().await;
    assert!(
        metric(
            &m,
            "steward_engine_faults_injected_total",
            &["fault=\"logit_noise\""]
        )
        .unwrap_or(0.0)
            >= 16.0
    );
    let m = clean.metrics().await;
    assert_eq!(
        metric(&m, "steward_engine_fault_injection_enabled", &[]),
        Some(0.0)
    );
}

#[tokio::test]
async fn load_delay_slows_the_cold_start_and_shows_in_its_metrics() {
    let t0 = Instant::now();
    let e = Engine::start(&["--enable-fault-injection", "--fault-load-delay", "1500ms"]).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "ready after {:?}",
        t0.elapsed()
    );
    let m = e.metrics().await;
    let load = metric(&m, "steward_engine_cold_start_load_seconds", &[]).unwrap_or(0.0);
    let cold = metric(&m, "steward_engine_cold_start_seconds", &[]).unwrap_or(0.0);
    assert!(load >= 1.5, "load {load}");
    assert!(cold >= load, "cold start {cold} includes the load {load}");
    assert_eq!(
        metric(
            &m,
            "steward_engine_faults_injected_total",
            &["fault=\"load_delay\""]
        ),
        Some(1.0)
    );
}
