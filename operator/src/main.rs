//! steward-operator: parses flags, sets up logging and the client, runs.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use steward_operator::config::Cli;
use steward_operator::leader::LeaseConfig;
use steward_operator::metrics::Metrics;
use steward_operator::run::{run, RunConfig};
use steward_telemetry::{init_logging, shutdown_signal, LogFormat, LogStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let format = if cli.log_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    init_logging("info", format, LogStream::Stdout);
    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client (KUBECONFIG or in-cluster)")?;
    let lease = cli.leader.leader_elect.then(|| {
        (
            cli.leader.lease_namespace.clone(),
            LeaseConfig {
                name: cli.leader.lease_name.clone(),
                identity: cli.identity(),
                lease_duration: cli.leader.lease_duration,
                renew_every: cli.leader.lease_renew,
            },
        )
    });
    let cfg = RunConfig {
        operator: cli.operator_config(),
        listen: cli.listen,
        lease,
    };
    let shutdown = async {
        shutdown_signal().await;
    };
    run(client, cfg, Arc::new(Metrics::new()), shutdown)
        .await
        .context("steward-operator stopped")
}
