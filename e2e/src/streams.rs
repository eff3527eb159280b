//! Closed-loop streaming load through several router replicas, as a client
//! behind a load balancer sees it, with a record of every attempt.
//!
//! Each worker sends OpenAI streaming completions one after another to its
//! replica (worker `i` prefers replica `i % n`). A replica that refused a
//! connection is skipped by every worker for [`DOWN_FOR`] (what a load
//! balancer's health check does). A request whose attempt failed or was cut
//! is tried once more, at once, on another replica; it is lost only when
//! that fails too. An attempt is:
//! - `Ok`: a 200 head and a stream that ended with `data: [DONE]` and no
//!   in-band `{"error"` event;
//! - `Cut`: a 200 head, then the stream broke or ended without `[DONE]`, or
//!   carried an error event (a stream cut short);
//! - `Failed`: no 200 head (connection refused, a non-200 status, a
//!   timeout before the head).
//!
//! [`StreamLoad::since`] tallies the attempts that ended after a mark, so a
//! test can attribute failures to the fault it injected.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a replica that refused a connection is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(1);

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Router base URLs (`http://127.0.0.1:port`).
    pub urls: Vec<String>,
    /// The `model` of each request.
    pub model: String,
    /// Concurrent streams.
    pub workers: usize,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// Limit of one attempt, head to `[DONE]`.
    pub timeout: Duration,
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Streamed to `[DONE]`.
    Ok,
    /// 200 head, then cut short; why.
    Cut(String),
    /// No 200 head; the status if one came, and why.
    Failed(Option<u16>, String),
}

/// One attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Which replica (index into `urls`).
    pub replica: usize,
    /// When it was sent and when it ended.
    pub started: Instant,
    /// When it ended.
    pub ended: Instant,
    /// How.
    pub outcome: Outcome,
    /// True for the second attempt of a request.
    pub retry: bool,
    /// True when this attempt ended the request without success (a retry
    /// that failed too).
    pub lost: bool,
}

/// Counts over a window of attempts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Attempts that ended in the window.
    pub attempts: usize,
    /// Requests (first attempts) that ended in the window.
    pub requests: usize,
    /// Attempts with no 200 head.
    pub failed: usize,
    /// Of those, with a 5xx status.
    pub failed_5xx: usize,
    /// Attempts cut after their 200 head.
    pub cut: usize,
    /// Requests that failed on both replicas.
    pub lost: usize,
    /// Cut attempts by replica index.
    pub cut_on: BTreeMap<usize, usize>,
    /// Failed attempts by replica index.
    pub failed_on: BTreeMap<usize, usize>,
    /// The last attempt in the window that did not succeed, as seconds
    /// after the mark (`None`: every attempt succeeded).
    pub last_bad_s: Option<f64>,
    /// Up to five examples of what went wrong.
    pub examples: Vec<String>,
}

/// A running load; stops when dropped.
pub struct StreamLoad {
    log: Arc<Mutex<Vec<Attempt>>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    opts: LoadOptions,
    http: reqwest::Client,
    down_until: Mutex<Vec<Instant>>,
    log: Arc<Mutex<Vec<Attempt>>>,
}

impl StreamLoad {
    /// Starts the workers.
    pub fn start(opts: LoadOptions) -> anyhow::Result<StreamLoad> {
        anyhow::ensure!(!opts.urls.is_empty(), "streaming load needs a router URL");
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(0)
            .build()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let now = Instant::now();
        let shared = Arc::new(Shared {
            down_until: Mutex::new(vec![now; opts.urls.len()]),
            opts,
            http,
            log: log.clone(),
        });
        let stop = CancellationToken::new();
        let tasks = (0..shared.opts.workers)
            .map(|w| {
                let s = shared.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = worker(s, w) => {}
                        () = stop.cancelled() => {}
                    }
                })
            })
            .collect();
        Ok(StreamLoad { log, stop, tasks })
    }

    /// A mark for [`Self::since`].
    pub fn mark(&self) -> Instant {
        Instant::now()
    }

    /// The attempts that ended after `mark`, tallied.
    pub fn since(&self, mark: Instant) -> Tally {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        tally(log.iter().filter(|a| a.ended >= mark), mark)
    }

    /// Streams in flight are left to end (up to `grace`), then the
    /// workers stop.
    pub async fn stop(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        // Let each worker finish its current request, then cancel.
        let count = |log: &Arc<Mutex<Vec<Attempt>>>| log.lock().map(|l| l.len()).unwrap_or(0);
        let before = count(&self.log);
        while Instant::now() < deadline && count(&self.log) < before + self.tasks.len() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for StreamLoad {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Tallies `attempts` relative to `mark`.
pub fn tally<'a>(attempts: impl Iterator<Item = &'a Attempt>, mark: Instant) -> Tally {
    let mut t = Tally::default();
    for a in attempts {
        t.attempts += 1;
        if !a.retry {
            t.requests += 1;
        }
        if a.lost {
            t.lost += 1;
        }
        let bad = match &a.outcome {
            Outcome::Ok => None,
            Outcome::Cut(why) => {
                t.cut += 1;
                *t.cut_on.entry(a.replica).or_default() += 1;
                Some(format!("replica {} cut: {why}", a.replica))
            }
            Outcome::Failed(status, why) => {
                t.failed += 1;
                *t.failed_on.entry(a.replica).or_default() += 1;
                if status.is_some_and(|s| s >= 500) {
                    t.failed_5xx += 1;
                }
                Some(format!("replica {} failed ({status:?}): {why}", a.replica))
            }
        };
        if let Some(why) = bad {
            let at = a.ended.saturating_duration_since(mark).as_secs_f64();
            t.last_bad_s = Some(t.last_bad_s.map_or(at, |b: f64| b.max(at)));
            if t.examples.len() < 5 {
                t.examples.push(why);
            }
        }
    }
    t
}

fn pick(s: &Shared, preferred: usize, not: Option<usize>) -> usize {
    let n = s.opts.urls.len();
    let now = Instant::now();
    let down = s.down_until.lock().map(|d| d.clone()).unwrap_or_default();
    (0..n)
        .map(|k| (preferred + k) % n)
        .find(|&r| Some(r) != not && down.get(r).is_none_or(|u| *u <= now))
        .unwrap_or_else(|| (preferred + usize::from(not == Some(preferred))) % n)
}

async fn worker(s: Arc<Shared>, w: usize) {
    let body = serde_json::json!({
        "model": s.opts.model,
        "prompt": format!("worker {w} says hello to the chaos suite"),
        "max_tokens": s.opts.max_tokens,
        "stream": true,
    });
    loop {
        let first = pick(&s, w, None);
        let (started, outcome) = attempt(&s, first, &body).await;
        let ok = outcome == Outcome::Ok;
        record(&s, first, started, outcome, false, false);
        if ok {
            continue;
        }
        let second = pick(&s, w + 1, Some(first));
        let (started, outcome) = attempt(&s, second, &body).await;
        let lost = outcome != Outcome::Ok;
        record(&s, second, started, outcome, true, lost);
        if lost {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn record(s: &Shared, replica: usize, started: Instant, outcome: Outcome, retry: bool, lost: bool) {
    if let Ok(mut log) = s.log.lock() {
        log.push(Attempt {
            replica,
            started,
            ended: Instant::now(),
            outcome,
            retry,
            lost,
        });
    }
}

async fn attempt(s: &Shared, r: usize, body: &serde_json::Value) -> (Instant, Outcome) {
    let started = Instant::now();
    let url = format!("{}/v1/completions", s.opts.urls[r]);
    let out = tokio::time::timeout(s.opts.timeout, one(s, r, &url, body)).await;
    let outcome = out.unwrap_or_else(|_| {
        Outcome::Failed(None, format!("no [DONE] within {:?}", s.opts.timeout))
    });
    (started, outcome)
}

async fn one(s: &Shared, r: usize, url: &str, body: &serde_json::Value) -> Outcome {
    let resp = match s.http.post(url).json(body).send().await {
        Ok(resp) => resp,
        Err(e) => {
            if e.is_connect() {
                if let Ok(mut d) = s.down_until.lock() {
                    if let Some(u) = d.get_mut(r) {
                        *u = Instant::now() + DOWN_FOR;
                    }
                }
            }
            return Outcome::Failed(None, format!("{e:#}"));
        }
    };
    let status = resp.status().as_u16();
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        return Outcome::Failed(Some(status), text.chars().take(200).collect());
    }
    let mut stream = resp.bytes_stream();
    let mut tail: Vec<u8> = Vec::new();
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Outcome::Cut(format!("{e:#}")),
        };
        tail.extend_from_slice(&chunk);
        // Whole lines only; keep the unfinished one.
        while let Some(nl) = tail.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = tail.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                done = true;
            } else if data.starts_with("{\"error\"") {
                return Outcome::Cut(format!(
                    "in-band error: {}",
                    data.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    if done {
        Outcome::Ok
    } else {
        Outcome::Cut("the stream ended without [DONE]".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(mark: Instant, ms: u64, outcome: Outcome, retry: bool, lost: bool) -> Attempt {
        Attempt {
            replica: 0,
            started: mark,
            ended: mark + Duration::from_millis(ms),
            outcome,
            retry,
            lost,
        }
    }

    #[test]
    fn tally_counts_cuts_failures_losses_and_the_last_bad_attempt() {
        let m = Instant::now();
        let log = [
            at(m, 100, Outcome::Ok, false, false),
            at(m, 200, Outcome::Cut("reset".into()), false, false),
            at(m, 300, Outcome::Ok, true, false),
            at(
                m,
                400,
                Outcome::Failed(Some(503), "no endpoint".into()),
                false,
                false,
            ),
            at(m, 1500, Outcome::Failed(None, "refused".into()), true, true),
        ];
        let t = tally(log.iter(), m);
        assert_eq!(
            (
                t.attempts,
                t.requests,
                t.failed,
                t.failed_5xx,
                t.cut,
                t.lost
            ),
            (5, 3, 2, 1, 1, 1)
        );
        assert_eq!(t.last_bad_s, Some(1.5));
        assert_eq!(t.cut_on, BTreeMap::from([(0, 1)]));
        assert_eq!(t.failed_on, BTreeMap::from([(0, 2)]));
        assert_eq!(t.examples.len(), 3);
        let clean = tally(log[..1].iter(), m);
        assert_eq!(clean.last_bad_s, None);
    }
}
