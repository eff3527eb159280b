//! Request fuzzing of the real `steward-router` binary (issue 13, chaos
//! suite): random and mutated JSON, huge fields, bad UTF-8, deep nesting,
//! broken HTTP framing, odd methods and paths, header abuse, and slowloris
//! connections, sent over raw TCP to a router in front of an in-process
//! test engine.
//!
//! Invariants: the process never panics or dies; no client mistake gets a
//! 5xx; every well-framed request gets an answer; resident memory stays
//! bounded; a healthy client is served throughout. The counts per case kind
//! and status are printed (and written as JSON to `STEWARD_FUZZ_REPORT` if
//! set).
//!
//! CI runs a bounded number of cases (`STEWARD_FUZZ_CASES`, default 1500);
//! `router/bench/fuzz.sh` runs many more.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The kinds of abuse, each with what a correct router may answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    RandomBytes,
    RandomJson,
    MutatedValid,
    BadUtf8,
    HugeModel,
    HugePrompt,
    Oversize,
    DeepNesting,
    ManyKeys,
    WeirdHeaders,
    HugeHeaders,
    ManyHeaders,
    BadRequestLine,
    MethodsAndPaths,
    LyingLength,
    BadChunked,
    Valid,
}

const KINDS: [Kind; 17] = [
    Kind::RandomBytes,
    Kind::RandomJson,
    Kind::MutatedValid,
    Kind::BadUtf8,
    Kind::HugeModel,
    Kind::HugePrompt,
    Kind::Oversize,
    Kind::DeepNesting,
    Kind::ManyKeys,
    Kind::WeirdHeaders,
    Kind::HugeHeaders,
    Kind::ManyHeaders,
    Kind::BadRequestLine,
    Kind::MethodsAndPaths,
    Kind::LyingLength,
    Kind::BadChunked,
    Kind::Valid,
];

impl Kind {
    /// Kinds whose framing is broken, or that are refused before their
    /// body is read: the answer (if any) may be lost to the reset that
    /// closing a socket with unread input causes.
    fn may_close_silently(self) -> bool {
        matches!(
            self,
            Kind::BadRequestLine
                | Kind::LyingLength
                | Kind::BadChunked
                | Kind::HugeHeaders
                | Kind::ManyHeaders
                | Kind::Oversize
        )
    }
}

/// One case: raw bytes to write, and whether to half-close after them.
struct Case {
    kind: Kind,
    bytes: Vec<u8>,
}

fn http_request(method: &str, path: &str, headers: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nhost: router\r\nconnection: close\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

fn json_post(body: &[u8]) -> Vec<u8> {
    http_request(
        "POST",
        "/v1/completions",
        &[("content-type".into(), b"application/json".to_vec())],
        body,
    )
}

fn random_json(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    use serde_json::Value;
    let pick = if depth > 4 {
        rng.random_range(0..4)
    } else {
        rng.random_range(0..6)
    };
    match pick {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => serde_json::json!(rng.random::<i64>()),
        3 => {
            let n = rng.random_range(0..24);
            let s: String = (0..n).map(|_| rng.random::<char>()).collect();
            Value::String(s)
        }
        4 => Value::Array(
            (0..rng.random_range(0..5))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "model",
                "prompt",
                "stream",
                "messages",
                "max_tokens",
                "x",
                "",
            ];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.random_range(0..6) {
                let k = keys[rng.random_range(0..keys.len())].to_string();
                m.insert(k, random_json(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

fn valid_body(rng: &mut StdRng) -> Vec<u8> {
    serde_json::json!({
        "model": MODEL,
        "prompt": "hello world",
        "max_tokens": rng.random_range(1..8),
        "stream": false,
    })
    .to_string()
    .into_bytes()
}

fn make_case(kind: Kind, rng: &mut StdRng) -> Case {
    let bytes = match kind {
        Kind::RandomBytes => {
            let n = rng.random_range(0..4096);
            let body: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            json_post(&body)
        }
        Kind::RandomJson => json_post(random_json(rng, 0).to_string().as_bytes()),
        Kind::MutatedValid => {
            let mut b = valid_body(rng);
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                match rng.random_range(0..3) {
                    0 => b[i] = rng.random(),
                    1 => b.truncate(i),
                    _ => b.insert(i, rng.random()),
                }
                if b.is_empty() {
                    break;
                }
            }
            json_post(&b)
        }
        Kind::BadUtf8 => {
            let bad: &[&[u8]] = &[
                b"\xff",
                b"\xc3\x28",
                b"\xe2\x28\xa1",
                b"\xf0\x90\x28\xbc",
                b"\xed\xa0\x80",
            ];
            let mut b = format!("{{\"model\":\"{MODEL}\",\"prompt\":\"ab").into_bytes();
            b.extend_from_slice(bad[rng.random_range(0..bad.len())]);
            b.extend_from_slice(b"cd\"}");
            if rng.random() {
                // In the model name instead.
                b = b"{\"model\":\"m\xff\xfe\",\"prompt\":\"x\"}".to_vec();
            }
            json_post(&b)
        }
        Kind::HugeModel => {
            let n = rng.random_range(64 << 10..(1 << 20));
            json_post(format!("{{\"model\":\"{}\",\"prompt\":\"x\"}}", "m".repeat(n)).as_bytes())
        }
        Kind::HugePrompt => {
            let n = rng.random_range(1 << 20..(4 << 20) - 100);
            json_post(
                format!("{{\"model\":\"{MODEL}\",\"prompt\":\"{}\"}}", "p".repeat(n)).as_bytes(),
            )
        }
        Kind::Oversize => json_post(&vec![b' '; (4 << 20) + 1 + rng.random_range(0..1000)]),
        Kind::DeepNesting => {
            let d = rng.random_range(200..20_000);
            let mut b = format!("{{\"model\":\"{MODEL}\",\"prompt\":").into_bytes();
            b.extend(std::iter::repeat_n(b'[', d));
            b.extend(std::iter::repeat_n(b']', d));
            b.push(b'}');
            json_post(&b)
        }
        Kind::ManyKeys => {
            let n = rng.random_range(1_000..50_000);
            let mut s = String::from("{");
            for i in 0..n {
                s.push_str(&format!("\"k{i}\":{i},"));
            }
            s.push_str(&format!("\"model\":\"{MODEL}\"}}"));
            json_post(s.as_bytes())
        }
        Kind::WeirdHeaders => {
            let vals: Vec<Vec<u8>> = vec![
                b"\x80\xff\xfe".to_vec(),
                "t\u{e9}nant".as_bytes().to_vec(),
                b"".to_vec(),
                vec![b'a'; 8000],
            ];
            let v = vals[rng.random_range(0..vals.len())].clone();
            http_request(
                "POST",
                "/v1/completions",
                &[
                    ("content-type".into(), b"application/json".to_vec()),
                    ("x-tenant".into(), v.clone()),
                    ("x-session-key".into(), v),
                ],
                &valid_body(rng),
            )
        }
        Kind::HugeHeaders => {
            let n = rng.random_range(65 << 10..200 << 10);
            http_request(
                "POST",
                "/v1/completions",
                &[("x-big".into(), vec![b'h'; n])],
                &valid_body(rng),
            )
        }
        Kind::ManyHeaders => {
            let headers: Vec<(String, Vec<u8>)> = (0..rng.random_range(101..400))
                .map(|i| (format!("x-h{i}"), b"v".to_vec()))
                .collect();
            http_request("POST", "/v1/completions", &headers, &valid_body(rng))
        }
        Kind::BadRequestLine => {
            let lines: &[&[u8]] = &[
                b"\x00\x01\x02\r\n\r\n",
                b"POST\r\n\r\n",
                b"POST /v1/completions HTTP/9.9\r\n\r\n",
                b"GET / HTTP/1.1\r\nno-colon-header\r\n\r\n",
                b"POST /v1/completions HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
                b"POST /v1/completions HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello",
            ];
            let mut b = lines[rng.random_range(0..lines.len())].to_vec();
            if rng.random() {
                b.extend((0..rng.random_range(0..200)).map(|_| rng.random::<u8>()));
            }
            b
        }
        Kind::MethodsAndPaths => {
            let methods = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST"];
            let long = format!("/v1/{}", "a".repeat(rng.random_range(1000..60_000)));
            let paths = [
                "/",
                "/v1",
                "/v1/",
                "/v1/../../etc/passwd",
                "/%ff%fe",
                "/v1/completions?x=%00",
                "/metrics/x",
                "/v2/completions",
                long.as_str(),
            ];
            let m = methods[rng.random_range(0..methods.len())];
            let p = paths[rng.random_range(0..paths.len())];
            http_request(m, p, &[], &valid_body(rng))
        }
        Kind::LyingLength => {
            let body = valid_body(rng);
            let mut b = format!(
                "POST /v1/completions HTTP/1.1\r\nhost: r\r\ncontent-length: {}\r\n\r\n",
                body.len() + rng.random_range(1..1000)
            )
            .into_bytes();
            b.extend_from_slice(&body);
            b
        }
        Kind::BadChunked => {
            let chunks: &[&[u8]] = &[
                b"zz\r\nhello\r\n0\r\n\r\n",
                b"5\r\nhel",
                b"ffffffffffffffffff\r\n",
                b"3\r\n{\"m\r\n0\r\n\r\n",
            ];
            let mut b =
                b"POST /v1/completions HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec();
            b.extend_from_slice(chunks[rng.random_range(0..chunks.len())]);
            b
        }
        Kind::Valid => json_post(&valid_body(rng)),
    };
    Case { kind, bytes }
}

/// What came back: a status, or a close without one, or nothing in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    Status(u16),
    Closed,
    Hung,
}

async fn send(router: SocketAddr, case: &Case) -> Answer {
    let Ok(mut s) = TcpStream::connect(router).await else {
        return Answer::Closed;
    };
    // The router may answer (413, 431) and close before all is written: fine.
    let _ = s.write_all(&case.bytes).await;
    if case.kind.may_close_silently() {
        let _ = s.shutdown().await;
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    if read.is_err() {
        return Answer::Hung;
    }
    let head = String::from_utf8_lossy(&buf);
    match head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
    {
        Some(code) => Answer::Status(code),
        None => Answer::Closed,
    }
}

/// Connections that send a header byte at a time, slowly; returns how many
/// the router closed within `within`.
async fn slowloris(router: SocketAddr, conns: usize, within: Duration) -> usize {
    let tasks = (0..conns).map(|_| async move {
        let Ok(mut s) = TcpStream::connect(router).await else {
            return true;
        };
        let head = b"POST /v1/completions HTTP/1.1\r\nhost: r\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let end = Instant::now() + within;
        for &b in head.iter().cycle() {
            if Instant::now() > end {
                return false;
            }
            if s.write_all(&[b]).await.is_err() {
                return true;
            }
            let mut probe = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(300), s.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => return true, // answered (408) and closing
                Err(_) => {}
            }
        }
        false
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|c| *c)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_never_panic_never_5xx_and_memory_stays_bounded() {
    let cases: usize = std::env::var("STEWARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let seed: u64 = std::env::var("STEWARD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(13);
    let engine = TestEngine::start("fuzz", 70).await;
    let mut router = RouterProcess::start(
        engine.addr,
        &[
            ("STEWARD_ROUTER_HEADER_READ_TIMEOUT", "2s"),
            ("STEWARD_ROUTER_BODY_READ_TIMEOUT", "2s"),
            ("STEWARD_ROUTER_MAX_BUFFERED_BODY_BYTES", "67108864"),
            ("RUST_LOG", "warn"),
        ],
    );
    router.wait_healthy().await;
    let addr = router.addr;
    let t0 = Instant::now();
    let rss0 = router.rss_bytes().unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed);
    let generated: Vec<Case> = (0..cases)
        .map(|_| {
            let k = KINDS[rng.random_range(0..KINDS.len())];
            make_case(k, &mut rng)
        })
        .collect();

    // A healthy client keeps streaming through the whole run.
    let healthy_url = format!("http://{addr}/v1/completions");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let healthy_stop = stop.clone();
    let healthy = tokio::spawn(async move {
        let (mut ok, mut bad) = (0u32, 0u32);
        while !healthy_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let r = client()
                .post(&healthy_url)
                .json(&completion(true))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => match r.text().await {
                    Ok(t) if t.contains("[DONE]") => ok += 1,
                    _ => bad += 1,
                },
                _ => bad += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, bad)
    });

    let peak_rss = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss0));
    let pid = router.child.id();
    let sampler = {
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kb) = s
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak.fetch_max(kb * 1024, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    let answers: Vec<(Kind, Answer)> = futures::stream::iter(generated.iter())
        .map(|c| async move { (c.kind, send(addr, c).await) })
        .buffer_unordered(8)
        .collect()
        .await;
    let slow_conns = 50;
    let closed = slowloris(addr, slow_conns, Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let healthy = healthy.await.ok();
    sampler.abort();
    let peak = peak_rss.load(std::sync::atomic::Ordering::Relaxed);

    let mut table: BTreeMap<(Kind, Answer), usize> = BTreeMap::new();
    for (k, a) in &answers {
        *table.entry((*k, *a)).or_default() += 1;
    }
    let mut report = String::new();
    for ((k, a), n) in &table {
        report.push_str(&format!("{k:?}\t{a:?}\t{n}\n"));
    }
    let five_xx: Vec<_> = answers
        .iter()
        .filter(|(_, a)| matches!(a, Answer::Status(s) if *s >= 500))
        .collect();
    let hung: Vec<_> = answers.iter().filter(|(_, a)| *a == Answer::Hung).collect();
    let silent: Vec<_> = answers
        .iter()
        .filter(|(k, a)| *a == Answer::Closed && !k.may_close_silently())
        .collect();
    eprintln!(
        "fuzz: {} cases (seed {seed}) in {:?}; RSS {} MiB at start, peak {} MiB; slowloris: {closed}/{slow_conns} closed by the router; healthy client (ok, failed): {healthy:?}\n{report}",
        answers.len(),
        t0.elapsed(),
        rss0 >> 20,
        peak >> 20
    );
    if let Ok(path) = std::env::var("STEWARD_FUZZ_REPORT") {
        let json = serde_json::json!({
            "cases": answers.len(), "seed": seed, "secs": t0.elapsed().as_secs_f64(),
            "rss_start_bytes": rss0, "rss_peak_bytes": peak,
            "slowloris": {"connections": slow_conns, "closed_by_router": closed},
            "healthy_client": healthy.map(|(ok, bad)| serde_json::json!({"ok": ok, "failed": bad})),
            "five_xx": five_xx.len(), "hung": hung.len(), "closed_without_answer": silent.len(),
            "panics": router.panics().len(),
            "counts": table.iter().map(|((k, a), n)| serde_json::json!({"kind": format!("{k:?}"), "answer": format!("{a:?}"), "n": n})).collect::<Vec<_>>(),
        });
        let _ = std::fs::write(
            path,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        );
    }

    assert!(router.alive(), "the router died");
    assert!(router.panics().is_empty(), "panics: {:?}", router.panics());
    assert!(five_xx.is_empty(), "5xx for client mistakes: {five_xx:?}");
    assert!(hung.is_empty(), "no answer within 20s: {hung:?}");
    assert!(
        silent.is_empty(),
        "well-framed requests closed without an answer: {silent:?}"
    );
    assert_eq!(
        closed, slow_conns,
        "slow-header connections left open past the header timeout"
    );
    let (ok, bad) = healthy.expect("healthy client ran");
    assert!(
        ok > 0 && bad == 0,
        "the healthy client was disturbed: ok {ok}, failed {bad}"
    );
    assert!(
        peak < 400 << 20,
        "peak RSS {} MiB (bodies are bounded by a 64 MiB budget)",
        peak >> 20
    );
}
