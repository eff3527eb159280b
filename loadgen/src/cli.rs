//! Command-line flags, and their translation into a run's parts.
//!
//! Each flag has a `STEWARD_LOADGEN_*` environment twin. Parsing a flag into
//! its validated type (a [`LengthDist`], a [`TenantMix`]) happens here, at
//! the edge; the rest of the crate never re-checks.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use crate::dist::LengthDist;
use crate::driver::{Arrival, Bounds};
use crate::tenants::TenantMix;
use crate::workload::{Api, Workload};

/// Drives an OpenAI-compatible endpoint and reports TTFT, ITL, e2e latency
/// and throughput. Stops by itself: after --requests (default 100 when
/// neither bound is given) or --duration, plus at most --grace.
#[derive(Debug, Clone, Parser)]
#[command(name = "steward-loadgen", version)]
pub struct Args {
    /// Base URL of the target, e.g. http://127.0.0.1:8000.
    #[arg(long, env = "STEWARD_LOADGEN_URL")]
    pub url: String,
    /// Request path; defaults to /v1/completions or /v1/chat/completions by --api.
    #[arg(long, env = "STEWARD_LOADGEN_PATH")]
    pub path: Option<String>,
    /// Which OpenAI route shape to send.
    #[arg(long, env = "STEWARD_LOADGEN_API", value_enum, default_value_t = Api::Completions)]
    pub api: Api,
    /// The `model` field of each request.
    #[arg(long, env = "STEWARD_LOADGEN_MODEL", default_value = "bench")]
    pub model: String,
    /// Prompt length in words (about one token each): fixed:N, uniform:A-B,
    /// lognormal:MEDIAN,SIGMA, pareto:MIN,ALPHA, optionally @MAX.
    #[arg(long, env = "STEWARD_LOADGEN_PROMPT_LEN", default_value = "fixed:32")]
    pub prompt_len: LengthDist,
    /// Output length (`max_tokens`), same forms as --prompt-len.
    #[arg(long, env = "STEWARD_LOADGEN_OUTPUT_LEN", default_value = "fixed:64")]
    pub output_len: LengthDist,
    /// Send non-streaming requests (only e2e latency is measured; for small
    /// request/s benchmarks such as a router's added latency).
    #[arg(long, env = "STEWARD_LOADGEN_NO_STREAM")]
    pub no_stream: bool,
    /// Do not send `ignore_eos: true` (outputs may stop before max_tokens).
    #[arg(long, env = "STEWARD_LOADGEN_NO_IGNORE_EOS")]
    pub no_ignore_eos: bool,
    /// Do not ask for `stream_options.include_usage` (tokens are then counted by events).
    #[arg(long, env = "STEWARD_LOADGEN_NO_STREAM_USAGE")]
    pub no_stream_usage: bool,
    /// Sampling temperature sent with each request.
    #[arg(long, env = "STEWARD_LOADGEN_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f64,
    /// Closed loop: this many requests in flight at all times. Default 1 when --rate is absent.
    #[arg(long, env = "STEWARD_LOADGEN_CONCURRENCY", conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: requests per second (Poisson arrivals unless --constant-arrivals).
    #[arg(long, env = "STEWARD_LOADGEN_RATE")]
    pub rate: Option<f64>,
    /// With --rate: evenly spaced arrivals instead of Poisson.
    #[arg(long, env = "STEWARD_LOADGEN_CONSTANT_ARRIVALS")]
    pub constant_arrivals: bool,
    /// With --rate: most requests in flight; arrivals over it are skipped and counted.
    #[arg(long, env = "STEWARD_LOADGEN_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Stop issuing after this many requests.
    #[arg(long, env = "STEWARD_LOADGEN_REQUESTS")]
    pub requests: Option<u64>,
    /// Stop issuing after this long (e.g. 30s, 2m).
    #[arg(long, env = "STEWARD_LOADGEN_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// After issuing stops, wait at most this long for requests in flight.
    #[arg(long, env = "STEWARD_LOADGEN_GRACE", value_parser = humantime::parse_duration, default_value = "60s")]
    pub grace: Duration,
    /// Per-request limit, send to last byte.
    #[arg(long, env = "STEWARD_LOADGEN_REQUEST_TIMEOUT", value_parser = humantime::parse_duration, default_value = "300s")]
    pub request_timeout: Duration,
    /// Tenant mix, NAME[:WEIGHT],... sent in --tenant-header. Empty: no header.
    #[arg(long, env = "STEWARD_LOADGEN_TENANTS", default_value = "")]
    pub tenants: TenantMix,
    /// Header that carries the tenant.
    #[arg(
        long,
        env = "STEWARD_LOADGEN_TENANT_HEADER",
        default_value = "x-tenant"
    )]
    pub tenant_header: String,
    /// Extra header 'Name: value' (repeatable).
    #[arg(
        long = "header",
        env = "STEWARD_LOADGEN_HEADERS",
        value_delimiter = ';'
    )]
    pub headers: Vec<String>,
    /// Seed of the request mix: the same seed sends the same requests.
    #[arg(long, env = "STEWARD_LOADGEN_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Tokio worker threads for the generator itself.
    #[arg(long, env = "STEWARD_LOADGEN_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Keep-alive connections per host in the client pool.
    #[arg(long, env = "STEWARD_LOADGEN_POOL", default_value_t = 1024)]
    pub pool: usize,
    /// Write the report (with the run's settings) as JSON to this file.
    #[arg(long, env = "STEWARD_LOADGEN_JSON")]
    pub json: Option<PathBuf>,
    /// Name printed above the report and stored in the JSON.
    #[arg(long, env = "STEWARD_LOADGEN_LABEL", default_value = "run")]
    pub label: String,
    /// Exit with status 1 when any request failed.
    #[arg(long, env = "STEWARD_LOADGEN_FAIL_ON_ERROR")]
    pub fail_on_error: bool,
}

/// The settings echoed into the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub label: String,
    pub url: String,
    pub api: Api,
    pub model: String,
    pub prompt_len: String,
    pub output_len: String,
    pub stream: bool,
    pub ignore_eos: bool,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub poisson: bool,
    pub requests: Option<u64>,
    pub duration_s: Option<f64>,
    pub tenants: Vec<String>,
    pub seed: u64,
}

impl Args {
    pub fn full_url(&self) -> String {
        let path = self.path.as_deref().unwrap_or(self.api.default_path());
        format!("{}{}", self.url.trim_end_matches('/'), path)
    }

    pub fn workload(&self) -> Workload {
        Workload {
            api: self.api,
            model: self.model.clone(),
            prompt_len: self.prompt_len,
            output_len: self.output_len,
            stream: !self.no_stream,
            ignore_eos: !self.no_ignore_eos,
            stream_usage: !self.no_stream_usage,
            temperature: self.temperature,
            tenants: self.tenants.clone(),
            seed: self.seed,
        }
    }

    pub fn arrival(&self) -> Arrival {
        match self.rate {
            Some(per_s) if per_s > 0.0 => Arrival::Rate {
                per_s,
                poisson: !self.constant_arrivals,
                max_in_flight: self.max_in_flight.max(1),
            },
            _ => Arrival::Concurrency(self.concurrency.unwrap_or(1).max(1)),
        }
    }

    /// Bounds with the default of 100 requests when neither bound is set.
    pub fn bounds(&self) -> Bounds {
        let requests = match (self.requests, self.duration) {
            (None, None) => Some(100),
            (r, _) => r,
        };
        Bounds {
            requests,
            duration: self.duration,
            grace: self.grace,
        }
    }

    pub fn settings(&self) -> Settings {
        let (concurrency, rate, poisson) = match self.arrival() {
            Arrival::Concurrency(c) => (Some(c), None, false),
            Arrival::Rate { per_s, poisson, .. } => (None, Some(per_s), poisson),
        };
        Settings {
            label: self.label.clone(),
            url: self.full_url(),
            api: self.api,
            model: self.model.clone(),
            prompt_len: self.prompt_len.to_string(),
            output_len: self.output_len.to_string(),
            stream: !self.no_stream,
            ignore_eos: !self.no_ignore_eos,
            concurrency,
            rate,
            poisson,
            requests: self.bounds().requests,
            duration_s: self.duration.map(|d| d.as_secs_f64()),
            tenants: self.tenants.names().to_vec(),
            seed: self.seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let mut v = vec!["steward-loadgen", "--url", "http://127.0.0.1:1/"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("valid flags")
    }

    #[test]
    fn defaults_are_one_worker_and_a_hundred_requests() {
        let a = parse(&[]);
        assert_eq!(a.arrival(), Arrival::Concurrency(1));
        assert_eq!(a.bounds().requests, Some(100));
        assert_eq!(a.full_url(), "http://127.0.0.1:1/v1/completions");
    }

    #[test]
    fn a_duration_alone_leaves_requests_unbounded() {
        let a = parse(&["--duration", "2s", "--rate", "50"]);
        assert_eq!(a.bounds().requests, None);
        assert_eq!(a.bounds().duration, Some(Duration::from_secs(2)));
        assert!(matches!(a.arrival(), Arrival::Rate { poisson: true, .. }));
    }

    #[test]
    fn rate_and_concurrency_conflict() {
        let r = Args::try_parse_from(["x", "--url", "u", "--rate", "1", "--concurrency", "2"]);
        assert!(r.is_err());
    }

    #[test]
    fn bad_distribution_is_a_flag_error() {
        assert!(Args::try_parse_from(["x", "--url", "u", "--output-len", "gauss:3"]).is_err());
    }

    #[test]
    fn chat_api_picks_the_chat_route() {
        let a = parse(&["--api", "chat", "--no-stream"]);
        assert_eq!(a.full_url(), "http://127.0.0.1:1/v1/chat/completions");
        assert!(!a.workload().stream);
    }
}
