//! steward-operator: parses flags, sets up logging and the client, runs.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use steward_operator::config::Cli;
use steward_operator::leader::LeaseConfig;
use steward_operator::metrics::Metrics;
use steward_operator::run::{run, RunConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
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
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    run(client, cfg, Arc::new(Metrics::new()), shutdown)
        .await
        .context("steward-operator stopped")
}
