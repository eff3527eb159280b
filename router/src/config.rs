//! Command-line flags (clap derive, each with `long` and `env`) and the
//! plain config structs the library takes, so tests build configs without
//! parsing flags.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::retry::BudgetConfig;

/// Proxy behaviour.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub connect_timeout: Duration,
    /// Until a streaming request's response head.
    pub first_byte_timeout: Duration,
    /// Until a non-streaming request's response head (the whole generation).
    pub response_timeout: Duration,
    /// Until the whole request body has arrived.
    pub body_read_timeout: Duration,
    /// Bytes all request bodies being buffered may hold together.
    pub max_buffered_body_bytes: usize,
    /// Consecutive engine errors that eject an endpoint (0: never).
    pub eject_after_errors: u32,
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_concurrency: usize,
    pub tenant_header: String,
    pub session_header: String,
    pub max_tenants: usize,
    pub default_tenant_rps: Option<f64>,
    pub default_tenant_burst: Option<u32>,
    pub default_tenant_max_concurrent: Option<u32>,
    pub retry_budget: BudgetConfig,
    pub retry_backoff: Duration,
    pub eject_duration: Duration,
    pub prefix_affinity: bool,
    pub prefix_tolerance: f64,
    pub prefix_block_bytes: usize,
    /// `Retry-After` seconds when a known model has no endpoint.
    pub no_endpoint_retry_after: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(600),
            body_read_timeout: Duration::from_secs(30),
            max_buffered_body_bytes: 128 << 20,
            eject_after_errors: 5,
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 4 << 20,
            max_header_bytes: 64 << 10,
            max_concurrency: 10_000,
            tenant_header: "x-tenant".into(),
            session_header: "x-session-key".into(),
            max_tenants: 10_000,
            default_tenant_rps: None,
            default_tenant_burst: None,
            default_tenant_max_concurrent: None,
            retry_budget: BudgetConfig::default(),
            retry_backoff: Duration::from_millis(25),
            eject_duration: Duration::from_secs(10),
            prefix_affinity: false,
            prefix_tolerance: 1.0,
            prefix_block_bytes: 256,
            no_endpoint_retry_after: 1,
        }
    }
}

/// The HTTP server in front of the proxy: connections and shutdown.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most client connections open at once; beyond it, accepting pauses.
    pub max_connections: usize,
    /// Until a request's headers have arrived (slow-header clients are cut).
    pub header_read_timeout: Duration,
    /// Largest request head (hyper's read buffer is sized from it).
    pub max_header_bytes: usize,
    /// After SIGTERM: keep serving (readiness false, `Connection: close`)
    /// while load balancers and clients stop sending here.
    pub shutdown_delay: Duration,
    /// Then: stop accepting and let open requests and streams finish, at most this long.
    pub drain_window: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            shutdown_delay: Duration::from_secs(5),
            drain_window: Duration::from_secs(60),
        }
    }
}

/// Load polling.
#[derive(Clone, Debug)]
pub struct PollConfig {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(400),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// steward-router: OpenAI-compatible router in front of steward-engine pods.
#[derive(Debug, Parser)]
#[command(name = "steward-router", version)]
pub struct Cli {
    /// Address to serve the OpenAI API, /metrics, /healthz and /readyz on.
    #[arg(long, env = "STEWARD_ROUTER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Log format.
    #[arg(
        long,
        env = "STEWARD_ROUTER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Client connections and shutdown.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Server threads, each with its own event loop, listener (SO_REUSEPORT)
    /// and connection pool to the engines, so a request is handled on one
    /// thread from accept to response; default: the CPUs this process may use.
    #[arg(long, env = "STEWARD_ROUTER_WORKERS")]
    pub workers: Option<usize>,
    /// Most client connections open at once; beyond it the router stops accepting until one closes.
    #[arg(long, env = "STEWARD_ROUTER_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive; slower connections are closed.
    #[arg(long, env = "STEWARD_ROUTER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// After SIGTERM, keep serving this long (readiness false, responses carry `Connection: close`) while endpoints update.
    #[arg(long, env = "STEWARD_ROUTER_SHUTDOWN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
    /// Then stop accepting and let open requests and streams finish, at most this long.
    #[arg(long, env = "STEWARD_ROUTER_DRAIN_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,
}

/// Where to find InferenceServices and pods.
#[derive(Debug, Args)]
pub struct DiscoveryArgs {
    /// Route from this JSON file instead of watching the API server (benchmarks, demos).
    #[arg(long, env = "STEWARD_ROUTER_STATIC_ROUTES")]
    pub static_routes: Option<std::path::PathBuf>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "STEWARD_ROUTER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Full re-list of every watch at this interval, bounding staleness.
    #[arg(long, env = "STEWARD_ROUTER_RESYNC_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// How often each endpoint's GET /load is polled.
    #[arg(long, env = "STEWARD_ROUTER_LOAD_POLL_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub load_poll_interval: Duration,
    /// Timeout of one GET /load.
    #[arg(long, env = "STEWARD_ROUTER_LOAD_POLL_TIMEOUT", default_value = "400ms", value_parser = humantime::parse_duration)]
    pub load_poll_timeout: Duration,
}

/// Proxy timeouts and size limits.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// TCP connect timeout to an engine.
    #[arg(long, env = "STEWARD_ROUTER_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Time allowed until the engine's response head of a streaming request.
    #[arg(long, env = "STEWARD_ROUTER_FIRST_BYTE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub first_byte_timeout: Duration,
    /// Time allowed until the response of a non-streaming request (it comes when generation ends).
    #[arg(long, env = "STEWARD_ROUTER_RESPONSE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub response_timeout: Duration,
    /// Time allowed for the whole request body to arrive (408 after).
    #[arg(long, env = "STEWARD_ROUTER_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// Bytes all request bodies being read may hold together (503 + Retry-After beyond).
    #[arg(long, env = "STEWARD_ROUTER_MAX_BUFFERED_BODY_BYTES", default_value_t = 128 << 20)]
    pub max_buffered_body_bytes: usize,
    /// Consecutive engine errors (5xx but 503, in-band error events, cut or stalled streams) that eject an endpoint; 0 never ejects on errors.
    #[arg(long, env = "STEWARD_ROUTER_EJECT_AFTER_ERRORS", default_value_t = 5)]
    pub eject_after_errors: u32,
    /// Longest gap between two body chunks of a response.
    #[arg(long, env = "STEWARD_ROUTER_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Largest request body accepted (bytes).
    #[arg(long, env = "STEWARD_ROUTER_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Largest total size of request headers accepted (bytes).
    #[arg(long, env = "STEWARD_ROUTER_MAX_HEADER_BYTES", default_value_t = 64 << 10)]
    pub max_header_bytes: usize,
    /// Header naming the session for revision and endpoint stickiness.
    #[arg(
        long,
        env = "STEWARD_ROUTER_SESSION_HEADER",
        default_value = "x-session-key"
    )]
    pub session_header: String,
    /// Endpoint ejection time after a connect failure or a run of errors (doubles on repeats, up to 8x).
    #[arg(long, env = "STEWARD_ROUTER_EJECT_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub eject_duration: Duration,
    /// Prefer the endpoint owning the prompt's first block when loads are close.
    #[arg(long, env = "STEWARD_ROUTER_PREFIX_AFFINITY", default_value_t = false)]
    pub prefix_affinity: bool,
    /// How much higher a load score the prefix owner may have than the best choice.
    #[arg(long, env = "STEWARD_ROUTER_PREFIX_TOLERANCE", default_value_t = 1.0)]
    pub prefix_tolerance: f64,
    /// Bytes of the prompt hashed for prefix affinity.
    #[arg(long, env = "STEWARD_ROUTER_PREFIX_BLOCK_BYTES", default_value_t = 256)]
    pub prefix_block_bytes: usize,
}

/// Edge throttling.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Router-wide cap on concurrent requests (503 + Retry-After beyond it).
    #[arg(long, env = "STEWARD_ROUTER_MAX_CONCURRENCY", default_value_t = 10_000)]
    pub max_concurrency: usize,
    /// Header naming the tenant (missing: tenant `anonymous`).
    #[arg(long, env = "STEWARD_ROUTER_TENANT_HEADER", default_value = "x-tenant")]
    pub tenant_header: String,
    /// Most tenants tracked at once.
    #[arg(long, env = "STEWARD_ROUTER_MAX_TENANTS", default_value_t = 10_000)]
    pub max_tenants: usize,
    /// Per-tenant requests/s when the InferenceService sets none (unset: unlimited).
    #[arg(long, env = "STEWARD_ROUTER_DEFAULT_TENANT_RPS")]
    pub default_tenant_rps: Option<f64>,
    /// Per-tenant burst when the InferenceService sets none (unset: the rate).
    #[arg(long, env = "STEWARD_ROUTER_DEFAULT_TENANT_BURST")]
    pub default_tenant_burst: Option<u32>,
    /// Per-tenant concurrency when the InferenceService sets none (unset: unlimited).
    #[arg(long, env = "STEWARD_ROUTER_DEFAULT_TENANT_MAX_CONCURRENT")]
    pub default_tenant_max_concurrent: Option<u32>,
}

/// Retry policy.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Retries allowed as a fraction of recent requests.
    #[arg(long, env = "STEWARD_ROUTER_RETRY_BUDGET_RATIO", default_value_t = 0.1)]
    pub retry_budget_ratio: f64,
    /// Retries per second always allowed, whatever the traffic.
    #[arg(
        long,
        env = "STEWARD_ROUTER_RETRY_BUDGET_MIN_PER_SECOND",
        default_value_t = 1.0
    )]
    pub retry_budget_min_per_second: f64,
    /// Window over which the retry budget counts requests.
    #[arg(long, env = "STEWARD_ROUTER_RETRY_BUDGET_WINDOW", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_budget_window: Duration,
    /// Base of the jittered back-off before a retry (uniform in [base/2, 3·base/2]).
    #[arg(long, env = "STEWARD_ROUTER_RETRY_BACKOFF", default_value = "25ms", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,
}

impl Cli {
    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig {
            connect_timeout: self.proxy.connect_timeout,
            first_byte_timeout: self.proxy.first_byte_timeout,
            response_timeout: self.proxy.response_timeout,
            body_read_timeout: self.proxy.body_read_timeout,
            max_buffered_body_bytes: self.proxy.max_buffered_body_bytes,
            eject_after_errors: self.proxy.eject_after_errors,
            idle_timeout: self.proxy.idle_timeout,
            max_body_bytes: self.proxy.max_body_bytes,
            max_header_bytes: self.proxy.max_header_bytes,
            max_concurrency: self.limits.max_concurrency,
            tenant_header: self.limits.tenant_header.to_ascii_lowercase(),
            session_header: self.proxy.session_header.to_ascii_lowercase(),
            max_tenants: self.limits.max_tenants,
            default_tenant_rps: self.limits.default_tenant_rps,
            default_tenant_burst: self.limits.default_tenant_burst,
            default_tenant_max_concurrent: self.limits.default_tenant_max_concurrent,
            retry_budget: BudgetConfig {
                ratio: self.retry.retry_budget_ratio,
                min_per_second: self.retry.retry_budget_min_per_second,
                window: self.retry.retry_budget_window,
            },
            retry_backoff: self.retry.retry_backoff,
            eject_duration: self.proxy.eject_duration,
            prefix_affinity: self.proxy.prefix_affinity,
            prefix_tolerance: self.proxy.prefix_tolerance,
            prefix_block_bytes: self.proxy.prefix_block_bytes,
            no_endpoint_retry_after: 1,
        }
    }

    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            max_connections: self.server.max_connections,
            header_read_timeout: self.server.header_read_timeout,
            max_header_bytes: self.proxy.max_header_bytes,
            shutdown_delay: self.server.shutdown_delay,
            drain_window: self.server.drain_window,
        }
    }

    pub fn poll_config(&self) -> PollConfig {
        PollConfig {
            interval: self.discovery.load_poll_interval,
            timeout: self.discovery.load_poll_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_flags_match_the_library_defaults() {
        let cli = Cli::parse_from(["steward-router"]);
        let p = cli.proxy_config();
        let d = ProxyConfig::default();
        assert_eq!(p.connect_timeout, d.connect_timeout);
        assert_eq!(p.retry_budget, d.retry_budget);
        assert_eq!(p.max_body_bytes, d.max_body_bytes);
        assert_eq!(p.response_timeout, d.response_timeout);
        assert_eq!(p.body_read_timeout, d.body_read_timeout);
        assert_eq!(p.max_buffered_body_bytes, d.max_buffered_body_bytes);
        assert_eq!(p.eject_after_errors, d.eject_after_errors);
        let s = cli.server_config();
        let ds = ServerConfig::default();
        assert_eq!(
            (
                s.max_connections,
                s.header_read_timeout,
                s.shutdown_delay,
                s.drain_window
            ),
            (
                ds.max_connections,
                ds.header_read_timeout,
                ds.shutdown_delay,
                ds.drain_window
            )
        );
        assert_eq!(cli.discovery.resync_interval, Duration::from_secs(30));
        assert_eq!(cli.poll_config().interval, Duration::from_millis(500));
    }
}
