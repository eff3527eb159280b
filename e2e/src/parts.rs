//! The workspace's own programs as tests start them: a process guard
//! ([`Killed`]), a tiny random-weight model ([`tiny_model`]), the
//! InferenceService CRD ([`install_crd`]), the Gateway API CRDs
//! ([`install_gateway_crds`]), `steward-router` replicas
//! ([`Router`]) and `steward-operator` replicas ([`OperatorProc`]).
//! Shared by the operator's cluster tests and the e2e chaos suite; every
//! process goes through [`crate::proc::spawn`], so none outlives the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::proc::{spawn, Supervised};
use crate::testing::eventually;
use crate::tools::{free_port, workspace_bin};

/// A child process (its whole group) terminated when dropped.
pub struct Killed(pub Supervised);

impl Killed {
    /// SIGKILL to its process group, no grace: a crash.
    pub fn crash(&mut self) {
        self.0.signal_group(libc::SIGKILL);
        let _ = self.0.terminate(Duration::ZERO);
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.terminate(Duration::from_secs(2));
    }
}

/// Starts `cmd` with stdin closed and stdout and stderr appended to `log`.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> anyhow::Result<Killed> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let p =
        spawn(cmd).with_context(|| format!("starting a process logging to {}", log.display()))?;
    Ok(Killed(p))
}

/// The repository root (the workspace this crate is in).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A tiny random-weight model in `dir/tiny`, made by the engine's own tool.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let out = dir.join("tiny");
    let engine = workspace_bin("steward-engine").expect("steward-engine is built");
    let made = Command::new(engine)
        .args(["make-model", "--size", "tiny"])
        .arg(&out)
        .output()
        .expect("make-model runs");
    assert!(
        made.status.success(),
        "make-model failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    out
}

/// Applies `crds/inferenceservice.yaml` and waits until it is established.
pub async fn install_crd(client: &kube::Client) -> anyhow::Result<()> {
    let path = repo_root().join("crds/inferenceservice.yaml");
    let crd: CustomResourceDefinition = serde_yaml::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "inferenceservices.serving.steward.dev";
    crds.patch(
        name,
        &PatchParams::apply("steward-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the InferenceService CRD")?;
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(crds, name, conditions::is_crd_established()),
    )
    .await
    .context("the CRD was not established within 60s")??;
    Ok(())
}

/// The Gateway API CRDs `tools/setup.sh gatewaycrds` caches in
/// `$STEWARD_GATEWAY_CRDS`, in the order `kubectl wait` names them.
pub const GATEWAY_CRDS: [&str; 5] = [
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
    "referencegrants.gateway.networking.k8s.io",
];

/// Installs the Gateway API's standard-channel CRDs (GatewayClass, Gateway,
/// HTTPRoute, GRPCRoute, ReferenceGrant) from `$STEWARD_GATEWAY_CRDS` with
/// `kubectl apply --server-side` (their schemas are too large for the
/// client-side annotation) and waits until they are established.
pub fn install_gateway_crds(kubeconfig: &Path) -> anyhow::Result<()> {
    crate::tools::install_cached_crds(
        kubeconfig,
        &crate::tools::CachedCrds {
            env_var: "STEWARD_GATEWAY_CRDS",
            step: "gatewaycrds",
            what: "Gateway API CRDs",
            probe: "gateway.networking.k8s.io_httproutes.yaml",
            names: &GATEWAY_CRDS,
        },
    )
}

/// One `steward-router` replica on a fixed loopback port (kept across
/// restarts, as a Service would keep its pod's address).
pub struct Router {
    proc: Option<Killed>,
    port: u16,
    kubeconfig: PathBuf,
    namespace: Option<String>,
    log: PathBuf,
}

impl Router {
    /// Starts it (all namespaces when `namespace` is `None`) and waits for
    /// `/healthz`.
    pub async fn start(
        kubeconfig: &Path,
        namespace: Option<&str>,
        log: &Path,
    ) -> anyhow::Result<Router> {
        let mut r = Router {
            proc: None,
            port: free_port()?,
            kubeconfig: kubeconfig.to_path_buf(),
            namespace: namespace.map(str::to_owned),
            log: log.to_path_buf(),
        };
        r.restart().await?;
        Ok(r)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, no drain (a crashed replica).
    pub fn crash(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.crash();
        }
    }

    /// Starts it again (after a crash, or stops the running one first) on
    /// the same port and waits for `/healthz`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.crash();
        let mut cmd = Command::new(workspace_bin("steward-router")?);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("STEWARD_ROUTER_LISTEN", format!("127.0.0.1:{}", self.port));
        if let Some(ns) = &self.namespace {
            cmd.env("STEWARD_ROUTER_NAMESPACE", ns);
        }
        self.proc = Some(spawn_logged(cmd, &self.log)?);
        let http = reqwest::Client::new();
        let url = format!("{}/healthz", self.url());
        let up = eventually(Duration::from_secs(30), || {
            let req = http.get(&url);
            async move { req.send().await.ok()?.status().is_success().then_some(()) }
        })
        .await;
        if up.is_err() {
            bail!(
                "steward-router did not answer {url} within 30s (log: {})",
                self.log.display()
            );
        }
        Ok(())
    }
}

/// How to run one `steward-operator` replica.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// The cluster.
    pub kubeconfig: PathBuf,
    /// Its identity in the Lease.
    pub identity: String,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Watch only this namespace; all when `None`.
    pub namespace: Option<String>,
    /// `--lease-duration`, `--lease-renew`.
    pub lease: (Duration, Duration),
    /// `--prometheus-url`.
    pub prometheus_url: Option<String>,
    /// Log file (appended across restarts).
    pub log: PathBuf,
}

/// One `steward-operator` process with leader election.
pub struct OperatorProc {
    /// How it was started (a restart starts it the same way).
    pub opts: OperatorOptions,
    proc: Option<Killed>,
}

impl OperatorProc {
    /// Starts it.
    pub fn start(opts: OperatorOptions) -> anyhow::Result<OperatorProc> {
        let mut p = OperatorProc { opts, proc: None };
        p.restart()?;
        Ok(p)
    }

    /// Starts it again (stopping a running one first with SIGKILL).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.crash();
        let o = &self.opts;
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut cmd = Command::new(workspace_bin("steward-operator")?);
        cmd.args(["--identity", &o.identity])
            .args(["--lease-namespace", &o.lease_namespace])
            .args(["--lease-duration", &ms(o.lease.0)])
            .args(["--lease-renew", &ms(o.lease.1)])
            .args(["--listen", "127.0.0.1:0"])
            .env("KUBECONFIG", &o.kubeconfig)
            .env("RUST_LOG", "info");
        if let Some(ns) = &o.namespace {
            cmd.args(["--namespace", ns]);
        }
        if let Some(url) = &o.prometheus_url {
            cmd.args(["--prometheus-url", url]);
        }
        self.proc = Some(spawn_logged(cmd, &o.log)?);
        Ok(())
    }

    /// SIGKILL: no graceful shutdown, the Lease is not released.
    pub fn crash(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.crash();
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Killed::is_running)
    }

    /// True when it ended on its own (not by [`Self::crash`]).
    pub fn exited(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| !p.is_running())
    }
}

/// Who holds the Lease `namespace/name` now (`None`: no Lease, no holder,
/// or the API did not answer).
pub async fn lease_holder(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), namespace);
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// The pids of the processes that run `namespace/pod` on the local node
/// (found by the `POD_NAMESPACE` and `POD_NAME` the node sets).
pub fn pod_pids(namespace: &str, pod: &str) -> Vec<u32> {
    let want_ns = format!("POD_NAMESPACE={namespace}");
    let want_pod = format!("POD_NAME={pod}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
                vars.contains(&want_ns.as_bytes()) && vars.contains(&want_pod.as_bytes())
            })
        })
        .collect()
}
