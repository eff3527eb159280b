//! `steward-node`: registers local Nodes and runs their pods as processes.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use steward_e2e::node::agent::{self, NodeSpec};
use steward_e2e::node::ipam::Ipam;
use steward_e2e::node::worker::WorkerConfig;

#[derive(Parser, Debug)]
#[command(
    name = "steward-node",
    about = "Runs the pods bound to local Nodes as local processes on loopback IPs"
)]
struct Args {
    /// Kubeconfig of the cluster to join.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Comma-separated node names to register.
    #[arg(
        long,
        env = "STEWARD_NODE_NAMES",
        default_value = "local-node-1",
        value_delimiter = ','
    )]
    names: Vec<String>,
    /// nvidia.com/gpu capacity of each node.
    #[arg(long, env = "STEWARD_NODE_GPUS", default_value_t = 4)]
    gpus: u32,
    /// CPU capacity of each node.
    #[arg(long, env = "STEWARD_NODE_CPU", default_value = "64")]
    cpu: String,
    /// Memory capacity of each node.
    #[arg(long, env = "STEWARD_NODE_MEMORY", default_value = "256Gi")]
    memory: String,
    /// Pods per node.
    #[arg(long, env = "STEWARD_NODE_MAX_PODS", default_value_t = 250)]
    max_pods: u32,
    /// YAML map of container image to local executable (re-read at every container start).
    #[arg(long, env = "STEWARD_NODE_IMAGE_MAP")]
    image_map: PathBuf,
    /// Folder for container logs: <namespace>_<pod>_<uid>/<container>.log.
    #[arg(long, env = "STEWARD_NODE_LOG_DIR")]
    log_dir: PathBuf,
    /// First container restart back-off; doubles up to --restart-backoff-max.
    #[arg(long, env = "STEWARD_NODE_RESTART_BACKOFF", default_value = "10s", value_parser = humantime::parse_duration)]
    restart_backoff: Duration,
    /// Longest restart back-off.
    #[arg(long, env = "STEWARD_NODE_RESTART_BACKOFF_MAX", default_value = "300s", value_parser = humantime::parse_duration)]
    restart_backoff_max: Duration,
    /// Extra host variables passed to every container (PATH, HOME, LD_LIBRARY_PATH always are).
    #[arg(long, env = "STEWARD_NODE_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    steward_telemetry::init_logging(
        "info,kube=warn",
        steward_telemetry::LogFormat::Text,
        steward_telemetry::LogStream::Stdout,
    );
    let args = Args::parse();
    std::fs::create_dir_all(&args.log_dir)?;
    let client = steward_e2e::client_from_kubeconfig(&args.kubeconfig).await?;
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()?;
    let wcfg = WorkerConfig {
        client: client.clone(),
        image_map_path: args.image_map.clone(),
        log_dir: args.log_dir.clone(),
        ipam: Ipam::new()?,
        pass_env: args.pass_env.clone(),
        backoff_base: args.restart_backoff,
        backoff_max: args.restart_backoff_max,
        http,
    };
    tracing::info!(nodes = ?args.names, gpus = args.gpus, logs = %args.log_dir.display(), "steward-node starting");
    eprintln!("[steward-node] container logs: {}", args.log_dir.display());
    let spec = NodeSpec {
        names: args.names.clone(),
        gpus: args.gpus,
        cpu: args.cpu.clone(),
        memory: args.memory.clone(),
        max_pods: args.max_pods,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        steward_telemetry::shutdown_signal().await;
        let _ = tx.send(());
    });
    agent::run(client, spec, wcfg, rx).await
}
