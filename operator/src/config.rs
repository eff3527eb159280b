//! Command-line flags of `steward-operator` (each also an environment
//! variable), grouped by concern.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser};

use crate::children::TemplateConfig;
use crate::controller::quality::{QualityArgs, QualityRunnerConfig};
use crate::controller::OperatorConfig;

/// Reconciles InferenceService objects into revisions of steward-engine pods.
#[derive(Parser, Debug, Clone)]
#[command(name = "steward-operator", version)]
pub struct Cli {
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "STEWARD_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "STEWARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Own an HTTPRoute per InferenceService (backendRef weights from
    /// status.traffic) where the cluster serves the Gateway API.
    #[arg(long, env = "STEWARD_GATEWAY_ROUTES", default_value_t = true, action = clap::ArgAction::Set)]
    pub gateway_routes: bool,
    /// How often discovery is asked whether the Gateway API is served (it
    /// may be installed or removed while the operator runs).
    #[arg(long, env = "STEWARD_GATEWAY_RECHECK", default_value = "60s", value_parser = humantime::parse_duration)]
    pub gateway_recheck: Duration,
    /// Reconciles running at once.
    #[arg(long, env = "STEWARD_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "STEWARD_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub pods: PodArgs,
    #[command(flatten)]
    pub prometheus: PrometheusArgs,
    #[command(flatten)]
    pub writes: WriteArgs,
    #[command(flatten)]
    pub quality: QualityArgs,
}

/// How the operator writes.
#[derive(Args, Debug, Clone)]
pub struct WriteArgs {
    /// How long one API write may take before the pass gives up on it (and
    /// retries the object with back-off).
    #[arg(long, env = "STEWARD_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// Time the router gets to see a traffic change: weight rises only onto
    /// pods in rotation this long, and a revision keeps its pods this long
    /// after its weight fell.
    #[arg(long, env = "STEWARD_TRAFFIC_HANDOFF", default_value = "2s", value_parser = humantime::parse_duration)]
    pub traffic_handoff: Duration,
}

/// Where signals come from.
#[derive(Args, Debug, Clone)]
pub struct PrometheusArgs {
    /// Prometheus base URL (e.g. http://prometheus.monitoring:9090). Unset:
    /// signals are unavailable (alarms read NoData, never zero).
    #[arg(long, env = "STEWARD_PROMETHEUS_URL", value_parser = http_url)]
    pub prometheus_url: Option<String>,
    /// Limit of one Prometheus query (also capped at the analysis interval).
    #[arg(long, env = "STEWARD_PROMETHEUS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub prometheus_timeout: Duration,
    /// Prometheus queries in flight at once, over all InferenceServices.
    #[arg(long, env = "STEWARD_PROMETHEUS_MAX_IN_FLIGHT", default_value_t = 32)]
    pub prometheus_max_in_flight: usize,
    /// Prefix of the runbook_url of generated alerts (the alert name and
    /// `.md` are appended).
    #[arg(
        long,
        env = "STEWARD_RUNBOOK_BASE_URL",
        default_value = "docs/runbooks/"
    )]
    pub runbook_base_url: String,
    /// Own a PrometheusRule (SLO alerts) per InferenceService where the
    /// prometheus-operator API exists.
    #[arg(long, env = "STEWARD_PROMETHEUS_RULES", default_value_t = true, action = clap::ArgAction::Set)]
    pub prometheus_rules: bool,
}

/// An `http://` or `https://` address with a host.
fn http_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("{s:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{s:?} has no host"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

impl PrometheusArgs {
    /// The signal settings of the controller.
    pub fn signals(&self) -> crate::controller::SignalsConfig {
        crate::controller::SignalsConfig {
            prometheus: self.config(),
            prometheus_rules: self.prometheus_rules,
            rules: crate::rules::RuleOptions {
                runbook_base: self.runbook_base_url.clone(),
            },
        }
    }

    /// The client settings, when an address is configured.
    pub fn config(&self) -> Option<crate::controller::prometheus::PrometheusConfig> {
        self.prometheus_url
            .as_ref()
            .map(|url| crate::controller::prometheus::PrometheusConfig {
                url: url.clone(),
                timeout: self.prometheus_timeout,
                max_in_flight: self.prometheus_max_in_flight,
            })
    }
}

/// Leader election.
#[derive(Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Take part in leader election (turn off only with one replica).
    #[arg(long, env = "STEWARD_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, env = "STEWARD_LEASE_NAME", default_value = "steward-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity (the pod name); host name and pid when unset.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a lease stays valid without renewal.
    #[arg(long, env = "STEWARD_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews and standbys retry.
    #[arg(long, env = "STEWARD_LEASE_RENEW", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_renew: Duration,
}

/// Pod template settings that are not spec fields.
#[derive(Args, Debug, Clone)]
pub struct PodArgs {
    /// Added to spec.draining.window for terminationGracePeriodSeconds.
    #[arg(long, env = "STEWARD_DRAIN_MARGIN", default_value = "15s", value_parser = humantime::parse_duration)]
    pub drain_margin: Duration,
    /// The engine executable in the engine image.
    #[arg(long, env = "STEWARD_ENGINE_COMMAND", default_value = "steward-engine")]
    pub engine_command: String,
    /// The non-root user and group engine containers run as (the engine
    /// image's user; distroless `nonroot` by default).
    #[arg(long, env = "STEWARD_ENGINE_RUN_AS_USER", default_value_t = crate::security::DEFAULT_ENGINE_UID, value_parser = clap::value_parser!(i64).range(1..))]
    pub engine_run_as_user: i64,
}

impl Cli {
    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.leader.identity.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "steward-operator".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The controller settings.
    pub fn operator_config(&self) -> OperatorConfig {
        OperatorConfig {
            namespace: self.namespace.clone(),
            template: TemplateConfig {
                drain_margin: self.pods.drain_margin,
                engine_command: self.pods.engine_command.clone(),
                run_as_user: self.pods.engine_run_as_user,
            },
            concurrency: self.concurrency,
            identity: self.identity(),
            write_timeout: self.writes.write_timeout,
            handoff: self.writes.traffic_handoff,
            quality: QualityRunnerConfig::from(&self.quality),
            signals: self.prometheus.signals(),
            gateway: crate::controller::gateway::GatewayConfig {
                enabled: self.gateway_routes,
                recheck: self.gateway_recheck,
            },
            ..OperatorConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_leader_election_is_on() {
        let cli = Cli::try_parse_from(["steward-operator"]).unwrap();
        assert!(cli.leader.leader_elect);
        assert_eq!(cli.leader.lease_duration, Duration::from_secs(15));
        assert_eq!(cli.operator_config().write_timeout, Duration::from_secs(10));
        assert_eq!(cli.operator_config().handoff, Duration::from_secs(2));
        assert!(cli.operator_config().gateway.enabled);
        assert_eq!(
            cli.operator_config().gateway.recheck,
            Duration::from_secs(60)
        );
        let cli = Cli::try_parse_from([
            "steward-operator",
            "--leader-elect",
            "false",
            "--namespace",
            "x",
        ])
        .unwrap();
        assert!(!cli.leader.leader_elect);
        assert_eq!(cli.operator_config().namespace.as_deref(), Some("x"));
    }

    #[test]
    fn prometheus_address_is_checked_and_unset_means_no_signals() {
        let cli = Cli::try_parse_from(["steward-operator"]).unwrap();
        assert!(cli.operator_config().signals.prometheus.is_none());
        assert!(cli.operator_config().signals.prometheus_rules);
        let cli = Cli::try_parse_from([
            "steward-operator",
            "--prometheus-url",
            "http://prometheus.monitoring:9090/",
            "--prometheus-timeout",
            "3s",
        ])
        .unwrap();
        let p = cli.operator_config().signals.prometheus.unwrap();
        assert_eq!(p.url, "http://prometheus.monitoring:9090");
        assert_eq!(p.timeout, Duration::from_secs(3));
        for bad in ["prometheus:9090", "http://", "ftp://x"] {
            let err = Cli::try_parse_from(["steward-operator", "--prometheus-url", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("prometheus-url"), "{bad}: {err}");
        }
    }
}
