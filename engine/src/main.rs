//! The `steward-engine` binary: `serve` runs the inference server,
//! `make-model` writes a random-weight test/benchmark model.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use steward_engine::make_model::{make_model, ModelSize};
use steward_engine::server::{run, ServeArgs};

#[derive(Parser)]
#[command(
    name = "steward-engine",
    version,
    about = "Steward's LLM inference engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a model over the OpenAI-compatible HTTP API.
    Serve(Box<ServeArgs>),
    /// Write a random-weight Llama model directory.
    MakeModel {
        /// Model size.
        #[arg(long, env = "STEWARD_MAKE_MODEL_SIZE", value_enum)]
        size: ModelSize,
        /// Directory to write.
        out_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let start = steward_engine::threads::process_start(Instant::now());
    let cli = Cli::parse();
    // libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT when it is loaded,
    // i.e. before main:
    // re-execute with it set (returns only when not needed or on failure).
    // The thread plan (from the CPU allotment) decides the default wait
    // policy here and sizes libtorch's pools in the server.
    let (threads, reexec_error) = match &cli.cmd {
        Cmd::Serve(args) => {
            use steward_engine::threads;
            let plan = threads::plan(&threads::facts(
                args.threads.torch_threads,
                args.threads.cpu_limit.as_deref(),
            ));
            let err = threads::reexec_for_wait_policy(
                args.threads.omp_wait_policy,
                threads::default_wait_policy(&plan),
            );
            (Some(plan), err)
        }
        Cmd::MakeModel { .. } => (None, None),
    };
    steward_telemetry::init_logging(
        "info",
        steward_telemetry::LogFormat::Text,
        steward_telemetry::LogStream::Stderr,
    );
    if let Some(e) = reexec_error {
        tracing::warn!(error = %e, "could not re-execute to set the OpenMP wait policy (OMP_WAIT_POLICY, GOMP_SPINCOUNT); keeping the inherited one");
    }
    match cli.cmd {
        Cmd::MakeModel { size, out_dir } => {
            let cfg = make_model(size, &out_dir)?;
            tracing::info!(dir = %out_dir.display(), ?size, vocab = cfg.vocab_size, layers = cfg.num_hidden_layers, "model written");
        }
        Cmd::Serve(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let threads =
                threads.ok_or_else(|| anyhow::anyhow!("internal: no thread plan for serve"))?;
            rt.block_on(run(*args, threads, start))?;
        }
    }
    Ok(())
}
