//! `kubectl-steward`: see the library's documentation and docs/rollouts.md.

use clap::Parser;
use kubectl_steward::cli::{run, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout();
    match run(cli, &mut out).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
