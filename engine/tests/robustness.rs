//! The engine under hostile or careless clients, over real HTTP and raw TCP
//! against a real engine process: body and header limits with JSON errors,
//! request preparation that never stalls `/ready`, and request fuzzing
//! (random JSON, mutated requests, huge fields, bad UTF-8, truncated and
//! random bytes, slowloris headers and bodies): no panic, no 5xx for a
//! client's mistake, bounded memory.
//!
//! The fuzz test runs `STEWARD_FUZZ_ITERATIONS` requests (default 300, a
//! few seconds in CI); `engine/bench/fuzz.sh` runs a long one.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Engine, MODEL};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

/// Words from a seeded RNG, so a prompt is long and varied.
fn words(rng: &mut StdRng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        let n = rng.random_range(1..9);
        for _ in 0..n {
            s.push(rng.random_range(b'a'..=b'z') as char);
        }
        s.push(' ');
    }
    s
}

/// Regression, issue 13 fault 11: the engine's body limit was axum's
/// default 2 MiB (the router's is 4 MiB) and its 413 was plain text.
#[tokio::test]
async fn bodies_over_the_routers_limit_get_a_json_413_and_below_it_are_parsed() {
    let e = Engine::start(&[]).await;
    let mut rng = StdRng::seed_from_u64(1);
    let big = json!({"model": MODEL, "prompt": words(&mut rng, 3 * MIB)}).to_string();
    let r = e
        .client
        .post(e.url("/v1/completions"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        400,
        "a 3 MiB body is read and refused for its length, not its size"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "context_length_exceeded");
    let too_big = "x".repeat(4 * MIB + 1);
    let r = e
        .client
        .post(e.url("/v1/completions"))
        .header("content-type", "application/json")
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "request_too_large");
    assert_eq!(v["error"]["code"], 413);
}

/// Regression, issue 13 fault 11: prompts were parsed and tokenised on the
/// engine's two runtime threads, so a few huge prompts stalled `/ready`
/// past the kubelet's 2 s probe timeout.
#[tokio::test]
async fn ready_answers_within_the_probe_timeout_while_huge_prompts_are_tokenised() {
    let e = Engine::start(&[]).await;
    let mut rng = StdRng::seed_from_u64(2);
    let mut sends = Vec::new();
    let t0 = Instant::now();
    for _ in 0..3 {
        let body = json!({"model": MODEL, "prompt": words(&mut rng, MIB)}).to_string();
        let client = e.client.clone();
        let url = e.url("/v1/completions");
        sends.push(tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    let mut probes = 0;
    while sends.iter().any(|s| !s.is_finished()) {
        let t = Instant::now();
        let r = probe.get(e.url("/ready")).send().await;
        let took = t.elapsed();
        worst = worst.max(took);
        probes += 1;
        assert!(
            r.is_ok_and(|r| r.status() == 200),
            "/ready failed or took {took:?} while prompts were tokenised"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in sends {
        assert_eq!(s.await.unwrap().unwrap(), 400, "too long for the context");
    }
    println!(
        "tokenising 3 x 1 MiB took {:?}; {probes} /ready probes, worst {worst:?}",
        t0.elapsed()
    );
    assert!(probes >= 2, "the prompts took long enough to matter");
}

/// A JSON value of random shape.
fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random_range(-5i64..5000)),
        3 => match rng.random_range(0..4) {
            0 => json!(i64::MIN),
            1 => json!(u64::MAX),
            2 => json!(1e300),
            _ => json!(rng.random::<f64>() * 4.0 - 1.0),
        },
        4 => {
            let n = rng.random_range(0..12);
            Value::String((0..n).map(|_| rng.random::<char>()).collect())
        }
        5 => Value::String(
            ["", "tiny", "user", "assistant", "\u{0}", "text"][rng.random_range(0..6)].into(),
        ),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "model",
                "prompt",
                "messages",
                "role",
                "content",
                "type",
                "text",
                "max_tokens",
                "stream",
                "x",
            ];
            Value::Object(
                (0..rng.random_range(0..4))
                    .map(|_| {
                        (
                            keys[rng.random_range(0..keys.len())].to_string(),
                            random_json(rng, depth - 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "ignore_eos",
    "logprobs",
    "top_logprobs",
    "echo",
];

fn valid(rng: &mut StdRng, chat: bool) -> Value {
    let mut v = if chat {
        json!({"model": MODEL, "messages": [{"role": "user", "content": words(rng, 20)}]})
    } else {
        json!({"model": MODEL, "prompt": words(rng, 20)})
    };
    v["max_tokens"] = json!(rng.random_range(1..4));
    v["stream"] = json!(rng.random_bool(0.5));
    v
}

/// One fuzz case: (path, method, content-type, body bytes).
fn case(rng: &mut StdRng) -> (&'static str, &'static str, &'static str, Vec<u8>) {
    let chat = rng.random_bool(0.4);
    let path = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let ct = "application/json";
    match rng.random_range(0..100) {
        // A valid request: must succeed.
        0..=14 => (path, "POST", ct, valid(rng, chat).to_string().into_bytes()),
        // A valid request with one field replaced by anything.
        15..=49 => {
            let mut v = valid(rng, chat);
            let f = FIELDS[rng.random_range(0..FIELDS.len())];
            v[f] = random_json(rng, 3);
            (path, "POST", ct, v.to_string().into_bytes())
        }
        // Random JSON.
        50..=64 => (path, "POST", ct, random_json(rng, 4).to_string().into_bytes()),
        // Bad UTF-8 inside an otherwise valid body.
        65..=72 => {
            let mut b = valid(rng, chat).to_string().into_bytes();
            let bad: &[u8] = [&b"\xff"[..], b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]
                [rng.random_range(0..4)];
            let at = b.iter().position(|&c| c == b' ').unwrap_or(b.len() / 2);
            b.splice(at..at, bad.iter().copied());
            (path, "POST", ct, b)
        }
        // JSON escapes that are not text: lone surrogates, NULs.
        73..=76 => (
            path,
            "POST",
            ct,
            format!(
                r#"{{"model":"{MODEL}","prompt":"a\ud800b\u0000c","messages":[{{"role":"user","content":"\udfff"}}],"max_tokens":2}}"#
            )
            .into_bytes(),
        ),
        // Truncated JSON.
        77..=84 => {
            let b = valid(rng, chat).to_string().into_bytes();
            let cut = rng.random_range(0..b.len());
            (path, "POST", ct, b[..cut].to_vec())
        }
        // Random bytes.
        85..=89 => {
            let n = rng.random_range(0..256);
            (path, "POST", ct, (0..n).map(|_| rng.random()).collect())
        }
        // Deep nesting.
        90..=91 => (path, "POST", ct, "[".repeat(100_000).into_bytes()),
        // Huge fields (bounded count: a few MiB each).
        92..=93 => {
            let mut v = valid(rng, chat);
            match rng.random_range(0..3) {
                0 => v["stop"] = json!(["x".repeat(MIB)]),
                1 => {
                    v["messages"] = json!(vec![json!({"role": "user", "content": "hi"}); 50_000])
                }
                _ => v["prompt"] = json!(vec![1; 400_000]),
            }
            (path, "POST", ct, v.to_string().into_bytes())
        }
        // Wrong method, unknown path, wrong content type.
        94..=95 => (path, "GET", ct, Vec::new()),
        96..=97 => ("/v1/nope", "POST", ct, b"{}".to_vec()),
        _ => (path, "POST", "text/plain", valid(rng, chat).to_string().into_bytes()),
    }
}

#[tokio::test]
async fn fuzzed_requests_never_panic_never_5xx_and_memory_stays_bounded() {
    let iterations: usize = std::env::var("STEWARD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("STEWARD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(13);
    let log = tempfile::NamedTempFile::new().unwrap();
    let e = Engine::start_with_stderr(
        &[
            "--max-tokens-cap",
            "8",
            "--header-read-timeout",
            "1s",
            "--body-read-timeout",
            "1s",
        ],
        Stdio::from(log.reopen().unwrap()),
    )
    .await;
    let pid = e.child.id();
    let rss_start = common::rss_mib(pid).unwrap_or(0.0);
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let cases: Vec<_> = (0..iterations).map(|_| case(&mut rng)).collect();
    let results: Vec<(u16, String)> = futures::stream::iter(cases)
        .map(|(path, method, ct, body)| {
            let client = e.client.clone();
            let url = e.url(path);
            async move {
                let req = match method {
                    "GET" => client.get(url),
                    _ => client.post(url).header("content-type", ct).body(body),
                };
                let r = req.send().await.expect("the engine answers every request");
                let status = r.status().as_u16();
                let text = r.text().await.expect("the body arrives whole");
                (status, text)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for (status, text) in &results {
        *by_status.entry(*status).or_default() += 1;
        assert!(*status < 500, "a client's mistake got {status}: {text}");
        if *status >= 400 {
            let v: Value =
                serde_json::from_str(text).unwrap_or_else(|_| panic!("JSON error body: {text}"));
            assert!(v["error"]["type"].is_string(), "{text}");
        } else if text.starts_with("data:") {
            assert!(text.contains("data: [DONE]"), "a 200 stream ends: {text}");
        }
    }
    let ok = by_status.get(&200).copied().unwrap_or(0);
    assert!(
        ok >= iterations / 10,
        "valid requests were served: {by_status:?}"
    );

    // Raw TCP: slowloris headers and bodies, oversized headers, garbage.
    let port = common::port(&e);
    let raw = tokio::task::spawn_blocking(move || raw_abuse(port))
        .await
        .unwrap();

    let r = e.client.get(e.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200, "still ready after the fuzzing");
    let rss_end = common::rss_mib(pid).unwrap_or(0.0);
    let log_text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let panics = log_text.matches("panicked").count();
    println!(
        "fuzz: seed {seed}, {iterations} requests in {:?}: by status {by_status:?}; raw TCP: {raw:?}; panics {panics}; RSS {rss_start:.0} -> {rss_end:.0} MiB",
        t0.elapsed()
    );
    assert_eq!(panics, 0, "no panic in the engine's log:\n{log_text}");
    assert!(
        rss_end < rss_start + 512.0,
        "memory stays bounded: {rss_start:.0} -> {rss_end:.0} MiB"
    );
}

/// What the raw-TCP abuse saw.
#[derive(Debug, Default)]
struct RawCounts {
    slowloris_closed: usize,
    slow_body_408: usize,
    big_headers_4xx: usize,
    garbage_4xx_or_closed: usize,
}

fn read_all(mut s: TcpStream, within: Duration) -> (String, Duration) {
    let t = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection not closed in {within:?}: {e}"),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

fn raw_abuse(port: u16) -> RawCounts {
    let mut c = RawCounts::default();
    let connect = || TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Slowloris: header bytes trickle in; the 1 s header deadline closes
    // the connections.
    let mut slow: Vec<TcpStream> = (0..16).map(|_| connect()).collect();
    for s in &mut slow {
        let _ = s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n");
    }
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        for s in &mut slow {
            let _ = s.write_all(b"X-Slow: 1\r\n");
        }
    }
    for s in slow {
        let (_, took) = read_all(s, Duration::from_secs(10));
        assert!(took < Duration::from_secs(10));
        c.slowloris_closed += 1;
    }
    // A body that trickles: 408 with a JSON body after the 1 s deadline.
    for _ in 0..4 {
        let mut s = connect();
        s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":")
            .unwrap();
        let (text, _) = read_all(s, Duration::from_secs(10));
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("\"request_timeout\""), "{text}");
        c.slow_body_408 += 1;
    }
    // Oversized headers: a 4xx from the HTTP layer, never a 5xx.
    for _ in 0..4 {
        let mut s = connect();
        let big = format!(
            "GET /ready HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(200_000)
        );
        let _ = s.write_all(big.as_bytes());
        let (text, _) = read_all(s, Duration::from_secs(10));
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "oversized headers: {}",
            &text[..text.len().min(200)]
        );
        c.big_headers_4xx += 1;
    }
    // Garbage request lines.
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET\r\n\r\n",
        b"POST /v1/completions HTTP/9.9\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut s = connect();
        let _ = s.write_all(garbage);
        let (text, _) = read_all(s, Duration::from_secs(10));
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "garbage {garbage:?}: {text}"
        );
        c.garbage_4xx_or_closed += 1;
    }
    c
}
