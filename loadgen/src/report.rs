//! Turns a run's outcomes into the figures people compare.
//!
//! Latencies are in milliseconds. TTFT, ITL and TPOT come from successful
//! streamed requests only; e2e from every successful request. ITL pools the
//! gaps of all requests (so long outputs weigh more, as users feel them);
//! TPOT is per request, `(e2e - ttft) / (tokens - 1)`. Throughput divides by
//! the run's wall time, first send to last completion.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::driver::RunResult;
use crate::stats::Summary;

/// Counts for one tenant.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TenantCounts {
    pub ok: u64,
    pub failed: u64,
    pub output_tokens: u64,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub wall_s: f64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    pub abandoned: u64,
    /// Failures by label: the HTTP status ("503") or a client-side reason.
    pub errors: BTreeMap<String, u64>,
    /// One example message per error label.
    pub error_examples: BTreeMap<String, String>,
    pub output_tokens: u64,
    pub requested_tokens: u64,
    pub output_tokens_per_s: f64,
    pub requests_per_s: f64,
    pub mean_prompt_tokens: Option<f64>,
    pub ttft_ms: Option<Summary>,
    pub itl_ms: Option<Summary>,
    pub tpot_ms: Option<Summary>,
    pub e2e_ms: Option<Summary>,
    pub tenants: BTreeMap<String, TenantCounts>,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Report {
    pub fn from_run(run: &RunResult) -> Self {
        let mut errors = BTreeMap::new();
        let mut examples = BTreeMap::new();
        let mut tenants: BTreeMap<String, TenantCounts> = BTreeMap::new();
        let (mut ttft, mut itl, mut tpot, mut e2e) = (vec![], vec![], vec![], vec![]);
        let (mut ok, mut out_tokens, mut req_tokens) = (0u64, 0u64, 0u64);
        let (mut prompt_sum, mut prompt_n) = (0u64, 0u64);
        for o in &run.outcomes {
            let t = tenants
                .entry(o.tenant.clone().unwrap_or_else(|| "-".into()))
                .or_default();
            match &o.result {
                Ok(()) => {
                    ok += 1;
                    t.ok += 1;
                    t.output_tokens += o.output_tokens;
                    out_tokens += o.output_tokens;
                    req_tokens += u64::from(o.requested_tokens);
                    e2e.push(ms(o.e2e()));
                    if let Some(f) = o.ttft {
                        ttft.push(ms(f));
                        if o.output_tokens > 1 {
                            tpot.push(ms(o.e2e().saturating_sub(f)) / (o.output_tokens - 1) as f64);
                        }
                    }
                    itl.extend(o.itl.iter().copied().map(ms));
                    if let Some(p) = o.prompt_tokens {
                        prompt_sum += p;
                        prompt_n += 1;
                    }
                }
                Err(f) => {
                    t.failed += 1;
                    let label = f.label();
                    *errors.entry(label.clone()).or_insert(0) += 1;
                    examples
                        .entry(label)
                        .or_insert_with(|| o.detail.clone().unwrap_or_else(|| f.to_string()));
                }
            }
        }
        let wall_s = run.wall.as_secs_f64();
        let per_s = |x: u64| if wall_s > 0.0 { x as f64 / wall_s } else { 0.0 };
        let sent = run.outcomes.len() as u64 + run.abandoned;
        Report {
            wall_s,
            sent,
            ok,
            failed: sent - ok - run.abandoned,
            skipped: run.skipped,
            abandoned: run.abandoned,
            errors,
            error_examples: examples,
            output_tokens: out_tokens,
            requested_tokens: req_tokens,
            output_tokens_per_s: per_s(out_tokens),
            requests_per_s: per_s(ok),
            mean_prompt_tokens: (prompt_n > 0).then(|| prompt_sum as f64 / prompt_n as f64),
            ttft_ms: Summary::of(&ttft),
            itl_ms: Summary::of(&itl),
            tpot_ms: Summary::of(&tpot),
            e2e_ms: Summary::of(&e2e),
            tenants,
        }
    }

    /// A compact human-readable table.
    pub fn render(&self, label: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== {label}");
        let _ = writeln!(
            s,
            "requests: sent {} ok {} failed {} skipped {} abandoned {} in {:.2}s",
            self.sent, self.ok, self.failed, self.skipped, self.abandoned, self.wall_s
        );
        let _ = writeln!(
            s,
            "throughput: {:.1} output tok/s, {:.2} req/s, {} output tokens ({} requested){}",
            self.output_tokens_per_s,
            self.requests_per_s,
            self.output_tokens,
            self.requested_tokens,
            self.mean_prompt_tokens
                .map(|p| format!(", mean prompt {p:.1} tokens"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "{:<6} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "ms", "mean", "p50", "p90", "p99", "max"
        );
        for (name, sum) in [
            ("ttft", &self.ttft_ms),
            ("itl", &self.itl_ms),
            ("tpot", &self.tpot_ms),
            ("e2e", &self.e2e_ms),
        ] {
            if let Some(x) = sum {
                let _ = writeln!(
                    s,
                    "{:<6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    name, x.mean, x.p50, x.p90, x.p99, x.max
                );
            }
        }
        for (label, n) in &self.errors {
            let ex = self
                .error_examples
                .get(label)
                .map(String::as_str)
                .unwrap_or("");
            let _ = writeln!(s, "error {label}: {n} (e.g. {ex})");
        }
        if self.tenants.len() > 1 {
            for (t, c) in &self.tenants {
                let _ = writeln!(
                    s,
                    "tenant {t}: ok {} failed {} tokens {}",
                    c.ok, c.failed, c.output_tokens
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Failure, Outcome};
    use std::time::Duration;

    fn ok(index: u64, start_ms: u64, ttft_ms: u64, gaps_ms: &[u64], tenant: &str) -> Outcome {
        let itl: Vec<Duration> = gaps_ms.iter().map(|&g| Duration::from_millis(g)).collect();
        let total = ttft_ms + gaps_ms.iter().sum::<u64>();
        Outcome {
            index,
            tenant: Some(tenant.into()),
            requested_tokens: gaps_ms.len() as u32 + 1,
            started: Duration::from_millis(start_ms),
            ended: Duration::from_millis(start_ms + total),
            result: Ok(()),
            ttft: Some(Duration::from_millis(ttft_ms)),
            itl,
            output_tokens: gaps_ms.len() as u64 + 1,
            prompt_tokens: Some(10),
            detail: None,
        }
    }

    fn failed(index: u64, f: Failure) -> Outcome {
        Outcome {
            index,
            tenant: Some("b".into()),
            requested_tokens: 5,
            started: Duration::ZERO,
            ended: Duration::from_millis(1),
            result: Err(f),
            ttft: None,
            itl: vec![],
            output_tokens: 0,
            prompt_tokens: None,
            detail: Some("queue full".into()),
        }
    }

    #[test]
    fn throughput_counts_only_successful_tokens_over_wall_time() {
        let run = RunResult {
            outcomes: vec![
                ok(0, 0, 100, &[10, 10, 10], "a"),
                ok(1, 0, 200, &[20], "a"),
                failed(2, Failure::Status(503)),
                failed(3, Failure::Status(503)),
                failed(4, Failure::Connect),
            ],
            wall: Duration::from_secs(2),
            skipped: 1,
            abandoned: 1,
        };
        let r = Report::from_run(&run);
        assert_eq!((r.sent, r.ok, r.failed, r.abandoned), (6, 2, 3, 1));
        assert_eq!(r.output_tokens, 6);
        assert_eq!(r.output_tokens_per_s, 3.0);
        assert_eq!(r.requests_per_s, 1.0);
        assert_eq!(r.errors.get("503"), Some(&2));
        assert_eq!(r.errors.get("connect"), Some(&1));
        assert_eq!(
            r.error_examples.get("503").map(String::as_str),
            Some("queue full")
        );
        assert_eq!(r.tenants.get("a").map(|t| t.ok), Some(2));
        assert_eq!(r.tenants.get("b").map(|t| t.failed), Some(3));
    }

    #[test]
    fn latency_summaries_pool_itl_and_compute_tpot_per_request() {
        let run = RunResult {
            outcomes: vec![ok(0, 0, 100, &[10, 10, 10], "a"), ok(1, 5, 200, &[20], "a")],
            wall: Duration::from_secs(1),
            ..Default::default()
        };
        let r = Report::from_run(&run);
        let itl = r.itl_ms.expect("itl");
        assert_eq!(itl.count, 4);
        assert!((itl.p50 - 10.0).abs() < 1e-9);
        let ttft = r.ttft_ms.expect("ttft");
        assert!((ttft.p50 - 150.0).abs() < 1e-9);
        let tpot = r.tpot_ms.expect("tpot");
        assert!((tpot.min - 10.0).abs() < 1e-9 && (tpot.max - 20.0).abs() < 1e-9);
        assert_eq!(r.mean_prompt_tokens, Some(10.0));
        assert!(r.render("x").contains("ttft"));
    }

    #[test]
    fn a_run_with_only_failures_has_no_latency_figures() {
        let run = RunResult {
            outcomes: vec![failed(0, Failure::Timeout)],
            wall: Duration::from_secs(1),
            ..Default::default()
        };
        let r = Report::from_run(&run);
        assert_eq!((r.ttft_ms, r.e2e_ms), (None, None));
        assert_eq!(r.output_tokens_per_s, 0.0);
    }
}
