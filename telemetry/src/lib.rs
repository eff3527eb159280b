//! What every Steward binary does the same way at start and stop: one
//! tracing set-up ([`init_logging`]) and one shutdown signal
//! ([`shutdown_signal`]).
//!
//! Logs are coloured only when they go to a terminal (and `NO_COLOR` is
//! unset), so log files written by `./dev up`, the kubelet or a test harness
//! hold plain text. The filter comes from `RUST_LOG`, else the binary's
//! default level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log pipelines).
    Json,
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output (servers whose stdout is only logs).
    Stdout,
    /// Standard error (tools whose stdout carries results).
    Stderr,
}

impl LogStream {
    fn is_terminal(self) -> bool {
        match self {
            LogStream::Stdout => std::io::stdout().is_terminal(),
            LogStream::Stderr => std::io::stderr().is_terminal(),
        }
    }
}

/// Whether text logs carry ANSI colour: only on a terminal, never when
/// `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
pub fn use_colour(on_terminal: bool, no_color: Option<&str>) -> bool {
    on_terminal && no_color.is_none_or(str::is_empty)
}

/// Sets up the global tracing subscriber. `default_level` applies when
/// `RUST_LOG` is unset or unparsable (an unparsable `RUST_LOG` is reported
/// once, after set-up, instead of being dropped silently).
pub fn init_logging(default_level: &str, format: LogFormat, stream: LogStream) {
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(default_level), Some((v, e.to_string()))),
        },
        _ => (EnvFilter::new(default_level), None),
    };
    let colour = use_colour(
        stream.is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    );
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // Each arm builds a differently typed subscriber, hence the repetition.
    match (format, stream) {
        (LogFormat::Json, LogStream::Stdout) => builder.json().init(),
        (LogFormat::Json, LogStream::Stderr) => builder.json().with_writer(std::io::stderr).init(),
        (LogFormat::Text, LogStream::Stdout) => builder.with_ansi(colour).init(),
        (LogFormat::Text, LogStream::Stderr) => builder
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .init(),
    }
    if let Some((value, error)) = bad_filter {
        tracing::warn!(
            rust_log = %value,
            %error,
            default = default_level,
            "RUST_LOG could not be parsed; logging at the default level instead"
        );
    }
}

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM (the kubelet, a supervisor, `kill`).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

impl Shutdown {
    /// The signal's name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Shutdown::Terminate => "SIGTERM",
            Shutdown::Interrupt => "SIGINT",
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT and says which. If a handler
/// cannot be installed, that signal is waited for no longer (the other still
/// works) and a warning says so. Logs the signal at info.
pub async fn shutdown_signal() -> Shutdown {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process gracefully");
                std::future::pending::<()>().await
            }
        }
    };
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT; only SIGTERM stops this process gracefully");
            std::future::pending::<()>().await
        }
    };
    let which = tokio::select! {
        _ = term => Shutdown::Terminate,
        _ = int => Shutdown::Interrupt,
    };
    tracing::info!(signal = which.as_str(), "shutdown signal received");
    which
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("")));
        assert!(!use_colour(true, Some("1")));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some("")));
    }

    #[test]
    fn signal_names_are_the_usual_ones() {
        assert_eq!(Shutdown::Terminate.as_str(), "SIGTERM");
        assert_eq!(Shutdown::Interrupt.as_str(), "SIGINT");
    }
}
