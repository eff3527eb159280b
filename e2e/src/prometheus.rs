//! `LocalPrometheus`: Debian's Prometheus (installed by `tools/setup.sh`)
//! on a free loopback port, scraping the cluster's pods, evaluating rule
//! files, and stoppable on purpose (tests stop it to prove the operator
//! treats missing signals as unknown).
//!
//! Debian's build has no Kubernetes service discovery, so a task here lists
//! pods annotated `prometheus.io/scrape: "true"` every `discovery_every` and
//! writes them as file_sd targets labelled `namespace`, `pod`, `service`,
//! `revision` and `rotation` (from the `serving.steward.dev/*` pod labels) —
//! the labels the operator's PromQL selects on. On a real cluster the
//! chart's PodMonitor does the same relabelling.
//!
//! Rule files: [`LocalPrometheus::write_rules`] writes a file and reloads;
//! [`LocalPrometheus::sync_prometheus_rules`] mirrors every
//! `monitoring.coreos.com/v1` PrometheusRule in the cluster into rule files
//! (what prometheus-operator does), so the operator's generated rules really
//! evaluate locally.
//!
//! Network rule: it listens on 127.0.0.1 and scrapes pod IPs, which the
//! local node hands out from 127.16.0.0/12.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::proc::{spawn, Supervised};
use crate::tools::{find_tool, free_port};

/// Scrape annotation, as on engine pods.
pub const SCRAPE_ANNOTATION: &str = "prometheus.io/scrape";

/// How to run Prometheus.
#[derive(Clone, Debug)]
pub struct PrometheusOptions {
    /// State folder (config, targets, rules, TSDB, log).
    pub dir: PathBuf,
    /// `host:port`; a free loopback port when `None`.
    pub listen: Option<SocketAddr>,
    /// Scrape interval (also the rule evaluation interval).
    pub scrape_interval: Duration,
    /// How often pods are listed into file_sd targets.
    pub discovery_every: Duration,
    /// Extra static targets (`host:port`, job name), e.g. the operator.
    pub static_targets: Vec<(String, String)>,
}

impl PrometheusOptions {
    /// Defaults for tests: 1 s scrapes, 1 s discovery, in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            listen: None,
            scrape_interval: Duration::from_secs(1),
            discovery_every: Duration::from_secs(1),
            static_targets: Vec::new(),
        }
    }
}

/// A running (or stopped) Prometheus and its discovery tasks.
pub struct LocalPrometheus {
    opts: PrometheusOptions,
    addr: SocketAddr,
    proc: Option<Supervised>,
    tasks: Vec<JoinHandle<()>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for LocalPrometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPrometheus")
            .field("addr", &self.addr)
            .field("running", &self.proc.is_some())
            .finish()
    }
}

impl LocalPrometheus {
    /// Writes the config, starts pod discovery with `client` (none: no pod
    /// targets, e.g. for query checks), starts Prometheus and waits until
    /// it is ready.
    pub async fn start(
        client: Option<kube::Client>,
        opts: PrometheusOptions,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(opts.dir.join("rules"))
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let addr = match opts.listen {
            Some(a) => a,
            None => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        std::fs::write(targets_path(&opts.dir), "[]")?;
        std::fs::write(opts.dir.join("prometheus.yml"), config(&opts))?;
        let tasks = client
            .map(|c| tokio::spawn(discover(c, targets_path(&opts.dir), opts.discovery_every)))
            .into_iter()
            .collect();
        let mut p = Self {
            opts,
            addr,
            proc: None,
            tasks,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        p.start_process().await?;
        Ok(p)
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.opts.dir.join("prometheus.log")
    }

    /// The folder rule files are loaded from (`*.yaml`).
    pub fn rules_dir(&self) -> PathBuf {
        self.opts.dir.join("rules")
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.proc {
            Some(p) => matches!(p.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops Prometheus (SIGTERM, then SIGKILL after 10 s). Its data and
    /// address are kept for [`Self::restart`]. Blocks up to the grace time.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.terminate(Duration::from_secs(10));
            info!(addr = %self.addr, "prometheus stopped");
        }
    }

    /// Starts Prometheus again on the same address and data folder.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.start_process().await
    }

    async fn start_process(&mut self) -> anyhow::Result<()> {
        let bin = find_tool("prometheus")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!(
            "--config.file={}",
            self.opts.dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            self.opts.dir.join("tsdb").display()
        ))
        .arg("--storage.tsdb.retention.time=1d")
        .arg(format!("--web.listen-address={}", self.addr))
        .arg("--web.enable-lifecycle")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let t0 = Instant::now();
        self.proc = Some(spawn(cmd).context("starting prometheus")?);
        let ready = format!("{}/-/ready", self.url());
        while t0.elapsed() < Duration::from_secs(60) {
            if !self.is_running() {
                bail!(
                    "prometheus exited during start-up; see {}",
                    self.log_path().display()
                );
            }
            if let Ok(r) = self.http.get(&ready).send().await {
                if r.status().is_success() {
                    info!(addr = %self.addr, took = ?t0.elapsed(), "prometheus ready");
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "prometheus was not ready within 60s; see {}",
            self.log_path().display()
        )
    }

    /// Asks Prometheus to re-read its config and rule files.
    pub async fn reload(&self) -> anyhow::Result<()> {
        reload(&self.http, &self.url()).await
    }

    /// Writes `rules/<name>.yaml` and reloads.
    pub async fn write_rules(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        write_if_changed(&self.rules_dir().join(format!("{name}.yaml")), yaml)?;
        self.reload().await
    }

    /// Mirrors every PrometheusRule object into `rules/` every `every` and
    /// reloads on change, until `self` is dropped. Without the CRD it
    /// retries quietly.
    pub fn sync_prometheus_rules(&mut self, client: kube::Client, every: Duration) {
        let task = tokio::spawn(sync_rules(
            client,
            self.rules_dir(),
            self.http.clone(),
            self.url(),
            every,
        ));
        self.tasks.push(task);
    }

    /// An instant query; the `data` object of the answer.
    pub async fn query(&self, promql: &str) -> anyhow::Result<serde_json::Value> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await?
            .json()
            .await?;
        if body["status"] != "success" {
            bail!("query {promql:?} failed: {body}");
        }
        Ok(body["data"].clone())
    }

    /// The active scrape targets whose health is `up`, as `(pod, labels)`.
    pub async fn up_targets(&self) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/targets?state=active", self.url()))
            .send()
            .await?
            .json()
            .await?;
        let targets = body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(targets
            .into_iter()
            .filter(|t| t["health"] == "up")
            .filter_map(|t| serde_json::from_value(t["labels"].clone()).ok())
            .collect())
    }

    /// Loaded alerting rules by name, with their state (`inactive`,
    /// `pending`, `firing`).
    pub async fn alerts(&self) -> anyhow::Result<Vec<(String, String)>> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/rules?type=alert", self.url()))
            .send()
            .await?
            .json()
            .await?;
        let mut out = Vec::new();
        for g in body["data"]["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                out.push((
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["state"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        Ok(out)
    }
}

impl Drop for LocalPrometheus {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(p) = &self.proc {
            p.signal_group(libc::SIGKILL);
        }
    }
}

fn targets_path(dir: &Path) -> PathBuf {
    dir.join("scrape-targets.json")
}

/// The Prometheus config: file_sd pods, static extras, rule files.
fn config(opts: &PrometheusOptions) -> String {
    let every = humantime::format_duration(opts.scrape_interval);
    let mut s = format!(
        r#"# Generated by steward-e2e: pods annotated prometheus.io/scrape=true via file_sd.
global:
  scrape_interval: {every}
  scrape_timeout: {every}
  evaluation_interval: {every}
rule_files:
  - {rules}/*.yaml
scrape_configs:
  - job_name: steward-pods
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: {refresh}
"#,
        rules = opts.dir.join("rules").display(),
        targets = targets_path(&opts.dir).display(),
        refresh = humantime::format_duration(opts.discovery_every),
    );
    for (target, job) in &opts.static_targets {
        s.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ));
    }
    s
}

/// The file_sd target groups of the scrape-annotated pods that have an IP.
pub fn scrape_targets(pods: &[Pod]) -> serde_json::Value {
    let mut groups = Vec::new();
    for p in pods {
        let ann = p.metadata.annotations.clone().unwrap_or_default();
        if ann.get(SCRAPE_ANNOTATION).map(String::as_str) != Some("true") {
            continue;
        }
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if p.metadata.deletion_timestamp.is_some()
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running")
        {
            continue;
        }
        let port = ann
            .get("prometheus.io/port")
            .cloned()
            .unwrap_or_else(|| "8000".into());
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let l = |k: &str| labels.get(k).cloned().unwrap_or_default();
        // `rotation` (serving / warm / draining); older operators wrote the
        // same values under `role`.
        let rotation = labels
            .get("serving.steward.dev/rotation")
            .or_else(|| labels.get("serving.steward.dev/role"))
            .cloned()
            .unwrap_or_default();
        groups.push(serde_json::json!({
            "targets": [format!("{ip}:{port}")],
            "labels": {
                "__metrics_path__": ann.get("prometheus.io/path").cloned().unwrap_or_else(|| "/metrics".into()),
                "namespace": p.metadata.namespace.clone().unwrap_or_default(),
                "pod": p.metadata.name.clone().unwrap_or_default(),
                "service": l("serving.steward.dev/service"),
                "revision": l("serving.steward.dev/revision"),
                "rotation": rotation,
            }
        }));
    }
    serde_json::Value::Array(groups)
}

/// Lists pods every `every` and writes their file_sd targets to `out`
/// (atomically, only when they change). Runs until aborted.
pub async fn discover(client: kube::Client, out: PathBuf, every: Duration) {
    let pods: Api<Pod> = Api::all(client);
    loop {
        match pods.list(&ListParams::default()).await {
            Ok(list) => {
                let text = scrape_targets(&list.items).to_string();
                if let Err(e) = write_if_changed(&out, &text) {
                    warn!(error = %e, "writing scrape targets");
                }
            }
            Err(e) => debug!(error = %e, "listing pods for scrape targets"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Writes `text` to `path` through a temporary file, unless it already
/// holds exactly that. Returns whether it wrote.
fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<bool> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

async fn reload(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let r = http.post(format!("{url}/-/reload")).send().await?;
    if !r.status().is_success() {
        bail!(
            "prometheus refused the reload ({}): {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Installs the prometheus-operator CRDs (PrometheusRule, PodMonitor,
/// ServiceMonitor) that `tools/setup.sh promcrds` caches in
/// `$STEWARD_PROMETHEUS_CRDS`, and waits until they are established.
pub fn install_monitoring_crds(kubeconfig: &Path) -> anyhow::Result<()> {
    crate::tools::install_cached_crds(
        kubeconfig,
        &crate::tools::CachedCrds {
            env_var: "STEWARD_PROMETHEUS_CRDS",
            step: "promcrds",
            what: "prometheus-operator CRDs",
            probe: "monitoring.coreos.com_prometheusrules.yaml",
            names: &[
                "prometheusrules.monitoring.coreos.com",
                "podmonitors.monitoring.coreos.com",
                "servicemonitors.monitoring.coreos.com",
            ],
        },
    )
}

/// The PrometheusRule kind of prometheus-operator.
pub fn prometheus_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule"),
        "prometheusrules",
    )
}

async fn sync_rules(
    client: kube::Client,
    dir: PathBuf,
    http: reqwest::Client,
    url: String,
    every: Duration,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &prometheus_rule_resource());
    let http = Arc::new(http);
    loop {
        if let Ok(list) = api.list(&ListParams::default()).await {
            let mut changed = false;
            let mut keep = Vec::new();
            for o in list.items {
                let ns = o.metadata.namespace.clone().unwrap_or_default();
                let name = o.metadata.name.clone().unwrap_or_default();
                let file = format!("prometheusrule_{ns}_{name}.yaml");
                let Some(spec) = o.data.get("spec") else {
                    continue;
                };
                let Ok(yaml) = serde_yaml::to_string(spec) else {
                    continue;
                };
                changed |= write_if_changed(&dir.join(&file), &yaml).unwrap_or(false);
                keep.push(file);
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with("prometheusrule_") && !keep.contains(&n) {
                    changed |= std::fs::remove_file(e.path()).is_ok();
                }
            }
            if changed {
                match reload(&http, &url).await {
                    Ok(()) => info!(rules = keep.len(), "prometheus rules reloaded"),
                    Err(e) => warn!(error = %e, "reloading prometheus rules"),
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, scrape: bool, ip: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "team-a",
                "labels": {"serving.steward.dev/service": "chat", "serving.steward.dev/revision": "r1", "serving.steward.dev/rotation": "serving"},
                "annotations": if scrape { serde_json::json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9000"}) } else { serde_json::json!({}) },
            },
            "status": ip.map(|ip| serde_json::json!({"podIP": ip, "phase": "Running"})),
        }))
        .unwrap()
    }

    #[test]
    fn annotated_pods_with_an_ip_become_labelled_targets() {
        let pods = [
            pod("a", true, Some("127.16.0.2")),
            pod("b", false, Some("127.16.0.3")),
            pod("c", true, None),
        ];
        let v = scrape_targets(&pods);
        let groups = v.as_array().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0]["targets"][0], "127.16.0.2:9000");
        let l = &groups[0]["labels"];
        assert_eq!(
            (
                &l["namespace"],
                &l["service"],
                &l["revision"],
                &l["rotation"]
            ),
            (
                &serde_json::json!("team-a"),
                &serde_json::json!("chat"),
                &serde_json::json!("r1"),
                &serde_json::json!("serving")
            )
        );
    }

    #[test]
    fn config_loads_rule_files_and_static_targets() {
        let mut o = PrometheusOptions::in_dir("/tmp/p");
        o.static_targets
            .push(("127.0.0.1:8081".into(), "steward-operator".into()));
        let c = config(&o);
        assert!(c.contains("rule_files:\n  - /tmp/p/rules/*.yaml"), "{c}");
        assert!(c.contains("scrape_interval: 1s"), "{c}");
        assert!(c.contains("job_name: steward-operator"), "{c}");
    }
}
