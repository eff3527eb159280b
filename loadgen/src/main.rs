//! The steward-loadgen binary: parse flags, run, print, write JSON.

use anyhow::Context;
use clap::Parser;
use reqwest::header::HeaderName;
use steward_loadgen::cli::Args;
use steward_loadgen::client::{parse_headers, Target};
use steward_loadgen::driver;
use steward_loadgen::report::Report;

fn main() -> anyhow::Result<()> {
    steward_telemetry::init_logging(
        "warn",
        steward_telemetry::LogFormat::Text,
        steward_telemetry::LogStream::Stderr,
    );
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.pool)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let target = Target {
        client,
        url: args.full_url(),
        headers: parse_headers(&args.headers).map_err(anyhow::Error::msg)?,
        tenant_header: HeaderName::from_bytes(args.tenant_header.as_bytes())
            .context("--tenant-header")?,
        request_timeout: args.request_timeout,
    };
    tracing::info!(url = %target.url, "starting run");
    let result = driver::run(target, args.workload(), args.arrival(), args.bounds()).await;
    let report = Report::from_run(&result);
    print!("{}", report.render(&args.label));
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "settings": args.settings(), "report": report });
        let text = serde_json::to_string_pretty(&doc).context("serialising the report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.fail_on_error && (report.failed > 0 || report.abandoned > 0) {
        anyhow::bail!(
            "{} requests failed, {} abandoned",
            report.failed,
            report.abandoned
        );
    }
    Ok(())
}
