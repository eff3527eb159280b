//! `LocalCluster`: the upstream Kubernetes control plane on loopback.
//!
//! Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
//! as child processes on free loopback ports with a temporary state folder,
//! writes an admin kubeconfig, and waits until each one is healthy. Dropping
//! the value (or the test process dying) stops every process it started:
//! see [`crate::proc`].
//!
//! Network rule: every address here is in 127.0.0.0/8. The API server does
//! not publish endpoints for the `kubernetes` Service
//! (`--endpoint-reconciler-type=none`) and no component is configured to dial
//! a ClusterIP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use tracing::info;

use crate::certs::{write_pki, Pki};
use crate::node::{LocalNode, NodeOptions};
use crate::proc::{spawn, Supervised};
use crate::tools::{find_tool, free_port};

/// What to start and where.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// State folder; a fresh temporary folder when `None`. Kept after stop
    /// when given, removed when temporary.
    pub dir: Option<PathBuf>,
}

/// A running control plane. Stops everything on drop.
pub struct LocalCluster {
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    procs: Vec<(String, Supervised)>,
    api_port: u16,
    kubeconfig: PathBuf,
    startup: Duration,
    pki: Pki,
    /// How each component was started (program, arguments), for
    /// [`LocalCluster::start_component`].
    commands: Vec<(String, PathBuf, Vec<std::ffi::OsString>)>,
    token: String,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.dir)
            .field("api_port", &self.api_port)
            .finish()
    }
}

const ADMIN_TOKEN_LEN: usize = 32;

/// How many times [`LocalCluster::start`] tries when a port was taken.
pub const START_ATTEMPTS: u32 = 3;

/// A component could not bind the port picked for it.
#[derive(Debug)]
struct PortTaken {
    component: String,
}

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} found its port taken (address already in use)",
            self.component
        )
    }
}

impl std::error::Error for PortTaken {}

fn port_taken(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<PortTaken>())
}

impl LocalCluster {
    /// Starts the control plane and waits until it serves, its controllers
    /// and scheduler are healthy, and the `default` service account exists.
    ///
    /// Ports are picked free just before each component starts, so another
    /// process (often an outgoing loopback connection's ephemeral port) can
    /// take one in between; a component that exits with "address already in
    /// use" makes the whole start be tried again with new ports, up to
    /// [`START_ATTEMPTS`] times. Any other failure is returned at once.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<LocalCluster> {
        let mut attempt = 1;
        loop {
            match Self::start_once(opts.clone()).await {
                Ok(c) => return Ok(c),
                Err(e) if attempt < START_ATTEMPTS && port_taken(&e) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "a control-plane port was taken; starting again on new ports");
                    eprintln!(
                        "[local-cluster] attempt {attempt}: {e:#}; starting again on new ports"
                    );
                    if let Some(d) = &opts.dir {
                        std::fs::remove_dir_all(d).with_context(|| {
                            format!("clearing {} before the next start", d.display())
                        })?;
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(opts: ClusterOptions) -> anyhow::Result<LocalCluster> {
        let t0 = Instant::now();
        let etcd = find_tool("etcd")?;
        let apiserver = find_tool("kube-apiserver")?;
        let cm = find_tool("kube-controller-manager")?;
        let sched = find_tool("kube-scheduler")?;

        let (dir, temp) = match opts.dir {
            Some(d) => {
                std::fs::create_dir_all(&d)
                    .with_context(|| format!("creating cluster folder {}", d.display()))?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("steward-cluster-")
                    .tempdir()
                    .context("creating a temporary cluster folder")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let pki = write_pki(&dir.join("pki"))?;
        let token: String = {
            use rand::distr::{Alphanumeric, SampleString};
            Alphanumeric.sample_string(&mut rand::rng(), ADMIN_TOKEN_LEN)
        };
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{token},steward-admin,steward-admin,\"system:masters\"\n"),
        )?;

        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        let cm_port = free_port()?;
        let sched_port = free_port()?;

        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(api_port, &pki.ca_pem, &token))?;

        let mut cluster = LocalCluster {
            dir: dir.clone(),
            temp,
            procs: Vec::new(),
            api_port,
            kubeconfig: kubeconfig.clone(),
            startup: Duration::ZERO,
            pki: pki.clone(),
            commands: Vec::new(),
            token: token.clone(),
        };

        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()?;

        // etcd
        let mut c = Command::new(&etcd);
        c.args([
            "--name=steward",
            &format!("--data-dir={}", dir.join("etcd").display()),
            &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-cluster=steward=http://127.0.0.1:{etcd_peer}"),
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ]);
        cluster.launch("etcd", c, &logs)?;
        cluster
            .wait_http(
                &http,
                "etcd",
                &format!("http://127.0.0.1:{etcd_port}/health"),
                None,
            )
            .await?;

        // kube-apiserver
        let mut c = Command::new(&apiserver);
        c.args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", pki.server_cert.display()),
            format!("--tls-private-key-file={}", pki.server_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=Node,RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--endpoint-reconciler-type=none".into(),
            // The aggregation layer (APIService): the API server proxies
            // e.g. external.metrics.k8s.io to KEDA's metrics server with
            // this client certificate and the user in X-Remote-* headers,
            // which the extension server trusts through the front-proxy CA
            // (published in kube-system/extension-apiserver-authentication).
            // The aggregator resolves an APIService's Service itself; an
            // ExternalName Service on 127.0.0.1 keeps it on loopback (see
            // crate::keda).
            format!(
                "--requestheader-client-ca-file={}",
                pki.front_proxy_ca.display()
            ),
            format!(
                "--requestheader-allowed-names={}",
                crate::certs::FRONT_PROXY_CLIENT
            ),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!(
                "--proxy-client-cert-file={}",
                pki.proxy_client_cert.display()
            ),
            format!("--proxy-client-key-file={}", pki.proxy_client_key.display()),
            "--allow-privileged=true".into(),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            "--profiling=false".into(),
            "--v=1".into(),
        ]);
        cluster.launch("kube-apiserver", c, &logs)?;
        let api_http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes())?)
            .timeout(Duration::from_secs(5))
            .build()?;
        cluster
            .wait_http(
                &api_http,
                "kube-apiserver",
                &format!("https://127.0.0.1:{api_port}/readyz"),
                Some(&token),
            )
            .await?;

        let kc = kubeconfig.display().to_string();
        // kube-controller-manager
        let mut c = Command::new(&cm);
        c.args([
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={cm_port}"),
            format!("--cert-dir={}", dir.join("cm-certs").display()),
            "--leader-elect=false".into(),
            format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ),
            format!("--root-ca-file={}", pki.ca_cert.display()),
            // The local node gives pods loopback IPs (127.0.0.0/8), which the
            // API server refuses in Endpoints and EndpointSlices by design; the
            // three endpoint controllers would retry forever and fill
            // `kubectl get events` with FailedToUpdateEndpoint warnings.
            // Nothing in Steward reads them (the router watches pods), so they
            // are off here and only here; real clusters keep them.
            "--controllers=*,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller".into(),
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
            "--concurrent-deployment-syncs=10".into(),
            "--concurrent-replicaset-syncs=10".into(),
            "--v=1".into(),
        ]);
        cluster.launch("kube-controller-manager", c, &logs)?;

        // kube-scheduler
        let mut c = Command::new(&sched);
        c.args([
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={sched_port}"),
            format!("--cert-dir={}", dir.join("sched-certs").display()),
            "--leader-elect=false".into(),
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
            "--v=1".into(),
        ]);
        cluster.launch("kube-scheduler", c, &logs)?;

        cluster
            .wait_http(
                &http,
                "kube-controller-manager",
                &format!("https://127.0.0.1:{cm_port}/healthz"),
                None,
            )
            .await?;
        cluster
            .wait_http(
                &http,
                "kube-scheduler",
                &format!("https://127.0.0.1:{sched_port}/healthz"),
                None,
            )
            .await?;

        let client = cluster.client().await?;
        wait_for_default_service_account(&client, "default").await?;
        cluster.startup = t0.elapsed();
        info!(
            startup_ms = cluster.startup.as_millis() as u64,
            kubeconfig = %cluster.kubeconfig.display(),
            logs = %logs.display(),
            "local cluster is up"
        );
        eprintln!(
            "[local-cluster] up in {:.1}s; kubeconfig {}; logs {}",
            cluster.startup.as_secs_f64(),
            cluster.kubeconfig.display(),
            logs.display()
        );
        Ok(cluster)
    }

    fn launch(&mut self, name: &str, mut cmd: Command, logs: &Path) -> anyhow::Result<()> {
        let program = PathBuf::from(cmd.get_program());
        let args = cmd.get_args().map(ToOwned::to_owned).collect();
        self.commands.retain(|(n, _, _)| n != name);
        self.commands.push((name.to_string(), program, args));
        // Appended: a component started again keeps its earlier log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn(cmd).with_context(|| format!("starting {name}"))?;
        self.procs.push((name.to_string(), child));
        Ok(())
    }

    async fn wait_http(
        &mut self,
        http: &reqwest::Client,
        name: &str,
        url: &str,
        token: Option<&str>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            for (n, p) in self.procs.iter_mut() {
                if let Some(st) = p.try_wait()? {
                    let log = self.dir.join("logs").join(format!("{n}.log"));
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("address already in use") {
                        return Err(anyhow::Error::new(PortTaken {
                            component: n.clone(),
                        })
                        .context(format!(
                            "{n} exited ({st}) while waiting for {name}; see {}",
                            log.display()
                        )));
                    }
                    bail!(
                        "{n} exited ({st}) while waiting for {name}; see {}",
                        self.dir.join("logs").join(format!("{n}.log")).display()
                    );
                }
            }
            let mut req = http.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "{name} did not become healthy at {url} within 120s (last: {last}); see {}",
            self.dir.join("logs").join(format!("{name}.log")).display()
        )
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The state folder (logs are in `logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The CA that signed the API server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// How long [`LocalCluster::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Control-plane processes that have exited since the last call, with
    /// how they ended (each reported once; the process is then forgotten).
    pub fn exited(&mut self) -> Vec<(String, std::process::ExitStatus)> {
        let mut out = Vec::new();
        self.procs.retain_mut(|(name, p)| match p.try_wait() {
            Ok(Some(st)) => {
                out.push((name.clone(), st));
                false
            }
            _ => true,
        });
        out
    }

    /// Stops one component (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`, `kube-scheduler`): SIGTERM, SIGKILL after
    /// 5 s. The others keep running; [`Self::start_component`] starts it
    /// again with the same flags and port.
    pub fn stop_component(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(i) = self.procs.iter().position(|(n, _)| n == name) else {
            bail!("no running control-plane component named {name}");
        };
        let (_, mut p) = self.procs.remove(i);
        p.terminate(Duration::from_secs(5))
            .with_context(|| format!("stopping {name}"))?;
        Ok(())
    }

    /// Starts a component stopped by [`Self::stop_component`] the way it
    /// was first started; for `kube-apiserver`, waits until it is ready.
    pub async fn start_component(&mut self, name: &str) -> anyhow::Result<()> {
        if self.procs.iter().any(|(n, _)| n == name) {
            bail!("{name} is already running");
        }
        let Some((_, program, args)) = self.commands.iter().find(|(n, _, _)| n == name).cloned()
        else {
            bail!("{name} was never started by this cluster");
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        let logs = self.dir.join("logs");
        self.launch(name, cmd, &logs)?;
        if name == "kube-apiserver" {
            let http = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(self.pki.ca_pem.as_bytes())?)
                .timeout(Duration::from_secs(5))
                .build()?;
            let url = format!("https://127.0.0.1:{}/readyz", self.api_port);
            let token = self.token.clone();
            self.wait_http(&http, name, &url, Some(&token)).await?;
        }
        Ok(())
    }

    /// Pids of the control-plane processes.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(_, p)| p.pid()).collect()
    }

    /// A client with admin rights, made from the kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Starts the local node program against this cluster.
    pub fn start_node(&self, opts: NodeOptions) -> anyhow::Result<LocalNode> {
        LocalNode::start(&self.kubeconfig, &self.dir, opts)
    }

    /// Stops every process (SIGTERM, then SIGKILL after 5s). Idempotent.
    pub fn stop(&mut self) {
        // Reverse order: scheduler and controllers first, etcd last.
        while let Some((name, mut p)) = self.procs.pop() {
            if let Err(e) = p.terminate(Duration::from_secs(5)) {
                tracing::warn!(component = %name, error = %e, "stopping failed");
            }
        }
        if let Some(t) = self.temp.take() {
            let _ = t.close();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A kube client for a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(kube::Client::try_from(cfg)?)
}

fn kubeconfig_yaml(port: u16, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: steward-local\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: steward-admin\n  user:\n    token: {token}\ncontexts:\n- name: steward-local\n  context:\n    cluster: steward-local\n    user: steward-admin\n    namespace: default\ncurrent-context: steward-local\n",
        ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes())
    )
}

/// Creates a namespace (if missing) and waits until its `default` service
/// account exists, since pods cannot be created before it does.
pub async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))?;
    match ns.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).with_context(|| format!("creating namespace {name}")),
    }
    wait_for_default_service_account(client, name).await
}

async fn wait_for_default_service_account(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if sa.get_opt("default").await?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("namespace {ns} has no 'default' service account after 60s; is kube-controller-manager running?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_taken_port_makes_the_start_try_again() {
        let taken = anyhow::Error::new(PortTaken {
            component: "kube-apiserver".into(),
        })
        .context("kube-apiserver exited (exit status: 1) while waiting for kube-apiserver");
        assert!(port_taken(&taken));
        assert!(format!("{taken:#}").contains("address already in use"));
        let other = anyhow::anyhow!("etcd exited (exit status: 1) while waiting for etcd")
            .context("starting the cluster");
        assert!(!port_taken(&other));
    }
}
