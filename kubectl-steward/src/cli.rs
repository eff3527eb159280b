//! The command line, and running one command.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::actions::{plan, Command};
use crate::client::{CliError, Session, Target};
use crate::render::render;

/// Watch and steer steward rollouts.
#[derive(Parser, Debug)]
#[command(name = "kubectl steward", version, about)]
pub struct Cli {
    /// Namespace of the InferenceService; the context's namespace when unset.
    #[arg(short = 'n', long, global = true, env = "STEWARD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig context to use; the current context when unset.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Kubeconfig file; `$KUBECONFIG`, else `~/.kube/config`, when unset.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Draw the rollout: revisions, weights, step, alarms, quality.
    Status {
        /// The InferenceService.
        name: String,
        /// Keep watching and redraw on every change (Ctrl-C to stop).
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Hold the rollout at its step (spec.rollout.paused: true).
    Pause {
        /// The InferenceService.
        name: String,
    },
    /// Continue a paused rollout (spec.rollout.paused: false).
    Resume {
        /// The InferenceService.
        name: String,
    },
    /// Promote the canary now, skipping its remaining steps.
    Promote {
        /// The InferenceService.
        name: String,
    },
    /// Roll the canary back now.
    Abort {
        /// The InferenceService.
        name: String,
    },
    /// Run a rolled-back revision again from step 1.
    Retry {
        /// The InferenceService.
        name: String,
        /// The revision; the one in status.rollout.rolledBackRevision when unset.
        revision: Option<String>,
    },
}

/// Runs the parsed command, writing to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let target = Target {
        kubeconfig: cli.kubeconfig,
        context: cli.context,
        namespace: cli.namespace,
    };
    let session = Session::connect(&target).await?;
    let (name, cmd) = match cli.command {
        Cmd::Status { name, watch } => return status(&session, &name, watch, out).await,
        Cmd::Pause { name } => (name, Command::Pause),
        Cmd::Resume { name } => (name, Command::Resume),
        Cmd::Promote { name } => (name, Command::Promote),
        Cmd::Abort { name } => (name, Command::Abort),
        Cmd::Retry { name, revision } => (name, Command::Retry(revision)),
    };
    let (svc, memory) = session.get(&name).await?;
    let p = plan(&cmd, &svc, &memory)?;
    session.patch(&name, &p.patch).await?;
    let _ = writeln!(out, "{}", p.summary);
    Ok(())
}

async fn status(
    session: &Session,
    name: &str,
    watch: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    if !watch {
        let (svc, memory) = session.get(name).await?;
        let pods = session.pods(name).await;
        let _ = write!(out, "{}", render(&svc, &memory, &pods, chrono::Utc::now()));
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    let watching = session.watch(name, |svc, memory, pods| {
        let text = render(&svc, &memory, &pods, chrono::Utc::now());
        if text != last {
            let frame = if tty {
                // Clear the screen and draw from the top.
                format!("\x1b[2J\x1b[H{text}")
            } else {
                format!("--- {}\n{text}", chrono::Utc::now().format("%H:%M:%S"))
            };
            if write!(out, "{frame}").and_then(|()| out.flush()).is_err() {
                return false;
            }
            last = text;
        }
        true
    });
    tokio::select! {
        r = watching => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
