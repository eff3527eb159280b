//! `steward-stub-backend`: a fast OpenAI-compatible stub for router and
//! load-generator benchmarks (see `steward_loadgen::stub`).

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use steward_loadgen::stub::{router, StubConfig};

/// Serves instant (or delayed) fake completions on loopback.
#[derive(Debug, Parser)]
#[command(name = "steward-stub-backend", version)]
struct Args {
    /// Address to bind.
    #[arg(long, env = "STEWARD_STUB_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0 picks a free one and prints it).
    #[arg(long, env = "STEWARD_STUB_PORT", default_value_t = 8000)]
    port: u16,
    /// Delay before the first token, e.g. 0s, 20ms.
    #[arg(long, env = "STEWARD_STUB_FIRST_TOKEN_DELAY", value_parser = humantime::parse_duration, default_value = "0s")]
    first_token_delay: Duration,
    /// Delay between streamed tokens.
    #[arg(long, env = "STEWARD_STUB_TOKEN_DELAY", value_parser = humantime::parse_duration, default_value = "0s")]
    token_delay: Duration,
    /// Tokio worker threads.
    #[arg(long, env = "STEWARD_STUB_THREADS", default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr().context("local address")?;
        println!("steward-stub-backend listening on http://{addr}");
        let app = router(StubConfig {
            first_token_delay: args.first_token_delay,
            token_delay: args.token_delay,
        });
        axum::serve(listener, app).await.context("serving")
    })
}
