//! Container probes as the kubelet runs them: httpGet (2xx/3xx succeeds),
//! tcpSocket (connect succeeds) and exec (exit 0 succeeds), each bounded by
//! the probe's timeout. Targets default to the pod IP.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The outcome of one probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Failure(String),
}

/// Resolves a probe port (number or a container port's name).
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("container has no port named {name:?}"))
        }
    }
}

/// Runs `probe` once against a container at `pod_ip`.
pub async fn run_probe(
    probe: &Probe,
    container: &Container,
    pod_ip: Ipv4Addr,
    env: &HashMap<String, String>,
    http: &reqwest::Client,
) -> ProbeResult {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(h) = &probe.http_get {
        let port = match resolve_port(&h.port, container) {
            Ok(p) => p,
            Err(e) => return ProbeResult::Failure(e),
        };
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let url = format!("{scheme}://{host}:{port}{path}");
        let mut req = http.get(&url).timeout(timeout);
        for hdr in h.http_headers.iter().flatten() {
            req = req.header(hdr.name.as_str(), hdr.value.as_str());
        }
        return match req.send().await {
            Ok(r) if r.status().is_success() || r.status().is_redirection() => ProbeResult::Success,
            Ok(r) => ProbeResult::Failure(format!(
                "HTTP probe failed with statuscode: {}",
                r.status().as_u16()
            )),
            Err(e) => ProbeResult::Failure(format!("Get {url:?}: {e}")),
        };
    }
    if let Some(t) = &probe.tcp_socket {
        let port = match resolve_port(&t.port, container) {
            Ok(p) => p,
            Err(e) => return ProbeResult::Failure(e),
        };
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => ProbeResult::Success,
            Ok(Err(e)) => ProbeResult::Failure(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => ProbeResult::Failure(format!("dial tcp {host}:{port}: timeout")),
        };
    }
    if let Some(e) = &probe.exec {
        return run_exec(e.command.as_deref().unwrap_or(&[]), env, timeout).await;
    }
    ProbeResult::Failure("probe has no handler (httpGet, tcpSocket or exec)".into())
}

/// Runs an exec handler (probe or preStop) with the container's env.
pub async fn run_exec(
    command: &[String],
    env: &HashMap<String, String>,
    timeout: Duration,
) -> ProbeResult {
    let Some((prog, args)) = command.split_first() else {
        return ProbeResult::Failure("exec has an empty command".into());
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    match cmd.spawn() {
        Err(e) => ProbeResult::Failure(format!("exec {prog:?}: {e}")),
        Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(st)) if st.success() => ProbeResult::Success,
            Ok(Ok(st)) => ProbeResult::Failure(format!("command {prog:?} exited with {st}")),
            Ok(Err(e)) => ProbeResult::Failure(format!("waiting for {prog:?}: {e}")),
            Err(_) => ProbeResult::Failure(format!("command {prog:?} timed out after {timeout:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c = Container {
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8000,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8000)
        );
        assert_eq!(resolve_port(&IntOrString::Int(81), &c), Ok(81));
        assert!(resolve_port(&IntOrString::String("grpc".into()), &c).is_err());
    }

    #[tokio::test]
    async fn exec_probe_reports_exit_status() {
        let env = HashMap::from([(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_default(),
        )]);
        let ok = run_exec(&["true".into()], &env, Duration::from_secs(5)).await;
        assert_eq!(ok, ProbeResult::Success);
        let bad = run_exec(&["false".into()], &env, Duration::from_secs(5)).await;
        assert!(matches!(bad, ProbeResult::Failure(_)));
    }
}
