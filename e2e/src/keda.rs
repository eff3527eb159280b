//! `LocalKeda`: KEDA's operator and metrics API server as local processes
//! against a [`crate::LocalCluster`], the way a user runs KEDA in front of
//! the cluster's own HorizontalPodAutoscaler controller.
//!
//! What runs, all upstream (`tools/setup.sh keda` builds both binaries from
//! the `github.com/kedacore/keda/v2` module pinned in `tools/versions.env`):
//! - `keda-operator` (`cmd/operator`): watches ScaledObjects, creates the
//!   HPA `keda-hpa-<name>` on the object's scale target, evaluates triggers
//!   (here: Prometheus queries on 127.0.0.1) and serves them over gRPC
//!   (mutual TLS) to the metrics server;
//! - `keda-adapter` (`cmd/adapter`): the extension API server for
//!   `external.metrics.k8s.io/v1beta1`, registered as an APIService; the
//!   controller-manager's HPA controller reads it through kube-apiserver's
//!   aggregation layer.
//!
//! The admission webhooks (`cmd/webhooks`) are optional in KEDA and not run.
//!
//! Loopback only. The aggregator finds an APIService's server through its
//! Service: for a ClusterIP Service it dials the ClusterIP (never allowed
//! here), with `--enable-aggregator-routing` an Endpoints address (the API
//! server refuses loopback ones). For an ExternalName Service it dials
//! `https://<externalName>:<APIService spec.service.port>`
//! (`k8s.io/apiserver/pkg/util/proxy.ResolveCluster`), so the Service is
//! `ExternalName: 127.0.0.1` and the APIService names the metrics server's
//! own free port: nothing binds 443, and clusters running side by side
//! each have their own port. The aggregator checks the serving certificate
//! against the APIService's `caBundle` for the name
//! `keda-metrics-apiserver.keda.svc`; the metrics server authenticates the
//! aggregator's front-proxy client certificate through the cluster's
//! `extension-apiserver-authentication` ConfigMap and authorises the user it
//! names with SubjectAccessReviews, as in any cluster.
//!
//! One KEDA per cluster (the APIService is cluster-wide). [`LocalKeda::stop`]
//! removes the APIService before it stops the processes, so discovery in the
//! rest of the cluster's life does not report an unavailable group.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::runtime::wait::{await_condition, conditions};
use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose, SanType};
use serde_json::json;

use crate::parts::{spawn_logged, Killed};
use crate::tools::{find_tool, free_port};

/// KEDA's namespace (its cluster objects and the metrics server's Service).
pub const NAMESPACE: &str = "keda";
/// The APIService KEDA's metrics server backs.
pub const API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";
/// The Service the APIService points at.
pub const METRICS_SERVICE: &str = "keda-metrics-apiserver";
/// Field manager of what this module applies.
const MANAGER: &str = "steward-e2e-keda";
/// Where the CRDs are; every one must be established before the operator
/// starts its controllers.
const CRDS: [&str; 6] = [
    "scaledobjects.keda.sh",
    "scaledjobs.keda.sh",
    "triggerauthentications.keda.sh",
    "clustertriggerauthentications.keda.sh",
    "cloudeventsources.eventing.keda.sh",
    "clustercloudeventsources.eventing.keda.sh",
];

/// Where KEDA runs against which cluster.
#[derive(Debug, Clone)]
pub struct KedaOptions {
    /// The cluster's admin kubeconfig (KEDA and kubectl use it).
    pub kubeconfig: PathBuf,
    /// State folder: `certs/` and `logs/`.
    pub dir: PathBuf,
}

/// KEDA's build: the folder `tools/setup.sh keda` fills
/// (`$STEWARD_KEDA`: `bin/keda-operator`, `bin/keda-adapter`, `crds/`).
#[derive(Debug, Clone)]
pub struct KedaBuild {
    pub operator: PathBuf,
    pub adapter: PathBuf,
    pub crds: PathBuf,
}

impl KedaBuild {
    /// Finds the build through `$STEWARD_KEDA`, with a message that says
    /// how to make it when it is missing.
    pub fn find() -> anyhow::Result<KedaBuild> {
        let dir = std::env::var_os("STEWARD_KEDA")
            .map(PathBuf::from)
            .context(
                "STEWARD_KEDA is not set; run `source <(tools/setup.sh --print-env)` in this shell",
            )?;
        Self::in_dir(&dir)
    }

    /// The build in `dir`, checked.
    pub fn in_dir(dir: &Path) -> anyhow::Result<KedaBuild> {
        let b = KedaBuild {
            operator: dir.join("bin/keda-operator"),
            adapter: dir.join("bin/keda-adapter"),
            crds: dir.join("crds"),
        };
        if !b.operator.is_file() || !b.adapter.is_file() || !b.crds.is_dir() {
            bail!(
                "KEDA is not built in {}; run `tools/setup.sh keda` (`./dev test` does; about 5 min \
                 of Go build on 2 cores, once per KEDA version)",
                dir.display()
            );
        }
        Ok(b)
    }
}

/// A running KEDA. Dropping it stops both processes; [`LocalKeda::stop`]
/// also removes the APIService.
pub struct LocalKeda {
    client: kube::Client,
    dir: PathBuf,
    operator: Option<Killed>,
    adapter: Option<Killed>,
    adapter_port: u16,
    startup: Duration,
}

impl std::fmt::Debug for LocalKeda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeda")
            .field("dir", &self.dir)
            .field("adapter_port", &self.adapter_port)
            .finish()
    }
}

fn api_service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService"),
        "apiservices",
    )
}

impl LocalKeda {
    /// Installs KEDA's CRDs, its namespace, the metrics server's Service
    /// and APIService, starts the operator and the metrics server, and
    /// waits until the APIService is Available (the aggregator reached the
    /// metrics server and it answered discovery).
    pub async fn start(client: kube::Client, opts: KedaOptions) -> anyhow::Result<LocalKeda> {
        let t0 = Instant::now();
        let build = KedaBuild::find()?;
        let certs = opts.dir.join("certs");
        let logs = opts.dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let ca_pem = write_certs(&certs)?;
        // Extra CAs for the scalers' own TLS (`--ca-dir`, /custom/ca in
        // KEDA's image): none here, Prometheus is plain HTTP on loopback.
        let custom_ca = opts.dir.join("custom-ca");
        std::fs::create_dir_all(&custom_ca)
            .with_context(|| format!("creating {}", custom_ca.display()))?;

        install_crds(&client, &opts.kubeconfig, &build.crds).await?;
        crate::create_namespace(&client, NAMESPACE).await?;

        let grpc_port = free_port()?;
        let adapter_port = free_port()?;
        let pp = PatchParams::apply(MANAGER).force();
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": METRICS_SERVICE, "namespace": NAMESPACE },
            "spec": { "type": "ExternalName", "externalName": "127.0.0.1" },
        }))?;
        Api::<Service>::namespaced(client.clone(), NAMESPACE)
            .patch(METRICS_SERVICE, &pp, &Patch::Apply(&svc))
            .await
            .context("applying the metrics server's ExternalName Service")?;
        let apis: Api<DynamicObject> = Api::all_with(client.clone(), &api_service_resource());
        let api_service = json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": { "name": API_SERVICE },
            "spec": {
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "service": { "namespace": NAMESPACE, "name": METRICS_SERVICE, "port": adapter_port },
                "caBundle": base64_encode(ca_pem.as_bytes()),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        });
        apis.patch(API_SERVICE, &pp, &Patch::Apply(&api_service))
            .await
            .context("applying the external.metrics.k8s.io APIService")?;

        let mut keda = LocalKeda {
            client: client.clone(),
            dir: opts.dir.clone(),
            operator: None,
            adapter: None,
            adapter_port,
            startup: Duration::ZERO,
        };
        let health_port = free_port()?;
        let mut op = Command::new(&build.operator);
        keda_env(&mut op, &opts.kubeconfig);
        op.args([
            "--leader-elect=false".to_string(),
            format!("--metrics-bind-address=127.0.0.1:{}", free_port()?),
            format!("--health-probe-bind-address=127.0.0.1:{health_port}"),
            format!("--metrics-service-bind-address=127.0.0.1:{grpc_port}"),
            format!("--cert-dir={}", certs.display()),
            format!("--ca-dir={}", custom_ca.display()),
            "--enable-cert-rotation=false".into(),
            "--zap-log-level=info".into(),
            "--zap-encoder=console".into(),
        ]);
        keda.operator = Some(spawn_logged(op, &logs.join("keda-operator.log"))?);

        let kc = opts.kubeconfig.display().to_string();
        let mut ad = Command::new(&build.adapter);
        keda_env(&mut ad, &opts.kubeconfig);
        ad.args([
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={adapter_port}"),
            format!("--cert-dir={}", certs.display()),
            format!("--tls-cert-file={}", certs.join("tls.crt").display()),
            format!("--tls-private-key-file={}", certs.join("tls.key").display()),
            format!("--lister-kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            format!("--metrics-service-address=127.0.0.1:{grpc_port}"),
            // Its own /metrics listener takes only a port (it binds every
            // address); nothing here dials it.
            format!("--port={}", free_port()?),
            "--zap-log-level=info".into(),
        ]);
        keda.adapter = Some(spawn_logged(ad, &logs.join("keda-adapter.log"))?);

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        keda.wait_until(
            "the KEDA operator's /readyz",
            Duration::from_secs(90),
            || {
                let req = http.get(format!("http://127.0.0.1:{health_port}/readyz"));
                async move { req.send().await.ok()?.status().is_success().then_some(()) }
            },
        )
        .await?;
        keda.wait_until(
            "the APIService v1beta1.external.metrics.k8s.io to be Available",
            Duration::from_secs(120),
            || {
                let apis = apis.clone();
                async move {
                    let o = apis.get_opt(API_SERVICE).await.ok().flatten()?;
                    (api_service_available(&o) == Some(true)).then_some(())
                }
            },
        )
        .await
        .map_err(|e| {
            e.context(format!(
                "the aggregator did not reach KEDA's metrics server on 127.0.0.1:{adapter_port}"
            ))
        })?;
        keda.startup = t0.elapsed();
        tracing::info!(
            startup_ms = keda.startup.as_millis() as u64,
            adapter_port,
            logs = %logs.display(),
            "KEDA is up"
        );
        eprintln!(
            "[keda] operator and metrics server up, APIService Available in {:.1}s; logs {}",
            keda.startup.as_secs_f64(),
            logs.display()
        );
        Ok(keda)
    }

    /// Polls `f` every 500 ms until it answers; fails early, with the log
    /// to read, when a KEDA process exits.
    async fn wait_until<T, F, Fut>(
        &mut self,
        what: &str,
        limit: Duration,
        mut f: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            for (name, p) in [
                ("keda-operator", &mut self.operator),
                ("keda-adapter", &mut self.adapter),
            ] {
                if let Some(p) = p {
                    if !p.is_running() {
                        bail!(
                            "{name} exited while waiting for {what}; see {}",
                            self.dir.join("logs").join(format!("{name}.log")).display()
                        );
                    }
                }
            }
            if let Some(v) = f().await {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                let status = self.api_service_message().await;
                bail!(
                    "no {what} within {limit:?} (APIService: {status}); logs in {}",
                    self.dir.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The APIService's Available condition as `status reason: message`.
    pub async fn api_service_message(&self) -> String {
        let apis: Api<DynamicObject> = Api::all_with(self.client.clone(), &api_service_resource());
        match apis.get_opt(API_SERVICE).await {
            Ok(Some(o)) => o.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Available")
                .map(|c| format!("{} {}: {}", c["status"], c["reason"], c["message"]))
                .unwrap_or_else(|| "no Available condition yet".into()),
            Ok(None) => "absent".into(),
            Err(e) => format!("unreadable: {e}"),
        }
    }

    /// The folder with `keda-operator.log` and `keda-adapter.log`.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// How long [`LocalKeda::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// True while both processes run.
    pub fn is_running(&mut self) -> bool {
        [&mut self.operator, &mut self.adapter]
            .into_iter()
            .all(|p| p.as_mut().is_some_and(Killed::is_running))
    }

    /// Removes the APIService (so the cluster's discovery stays whole),
    /// then stops the metrics server and the operator.
    pub async fn stop(mut self) {
        let apis: Api<DynamicObject> = Api::all_with(self.client.clone(), &api_service_resource());
        if let Err(e) = apis.delete(API_SERVICE, &DeleteParams::default()).await {
            tracing::warn!(error = %e, "removing the KEDA APIService failed");
        }
        let (adapter, operator) = (self.adapter.take(), self.operator.take());
        let _ = tokio::task::spawn_blocking(move || {
            drop(adapter);
            drop(operator);
        })
        .await;
    }
}

/// The `Available` condition of an APIService object.
fn api_service_available(o: &DynamicObject) -> Option<bool> {
    o.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Available")
        .map(|c| c["status"] == "True")
}

/// What both KEDA processes need in their environment: the kubeconfig
/// (controller-runtime reads `KUBECONFIG`), their namespace, and an empty
/// watch namespace (all namespaces), as KEDA's own manifests set them.
fn keda_env(cmd: &mut Command, kubeconfig: &Path) {
    cmd.env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("KEDA_CLUSTER_OBJECT_NAMESPACE", NAMESPACE)
        .env("WATCH_NAMESPACE", "");
}

/// Applies every CRD in `dir` (kubectl: the files hold several documents)
/// and waits until each one the operator watches is established.
async fn install_crds(client: &kube::Client, kubeconfig: &Path, dir: &Path) -> anyhow::Result<()> {
    let kubectl = find_tool("kubectl")?;
    let out = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts"])
        .arg(format!("--field-manager={MANAGER}"))
        .arg("-f")
        .arg(dir)
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl apply -f {} failed for KEDA's CRDs: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(crds.clone(), name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| {
            format!(
                "the CRD {name} (from {}) was not established within 60s",
                dir.display()
            )
        })??;
    }
    Ok(())
}

/// The names KEDA's certificate answers to: the operator's gRPC server and
/// the metrics server, by Service name (what the aggregator checks) and by
/// the loopback address the processes dial.
const CERT_NAMES: [&str; 7] = [
    "localhost",
    "keda-operator",
    "keda-operator.keda.svc",
    "keda-operator.keda.svc.cluster.local",
    "keda-metrics-apiserver",
    "keda-metrics-apiserver.keda.svc",
    "keda-metrics-apiserver.keda.svc.cluster.local",
];

/// Writes what KEDA's cert-dir holds in a real install (`ca.crt`,
/// `tls.crt`, `tls.key`: one certificate for server and client, used for
/// the operator↔metrics-server mutual TLS and the metrics server's HTTPS)
/// from a fresh CA of its own; returns the CA as PEM for the APIService's
/// `caBundle`.
fn write_certs(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = crate::certs::new_ca("steward-local-keda-ca")?;
    let mut leaf =
        CertificateParams::new(CERT_NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    leaf.distinguished_name
        .push(DnType::CommonName, "keda-operator");
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(ca.pem())
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keda_certificate_answers_to_the_names_the_aggregator_and_grpc_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = write_certs(dir.path()).expect("certs");
        assert!(ca.starts_with("-----BEGIN CERTIFICATE"));
        for f in ["ca.crt", "tls.crt", "tls.key"] {
            let text = std::fs::read_to_string(dir.path().join(f)).expect("read");
            assert!(text.starts_with("-----BEGIN"), "{f} is not PEM");
        }
        // The aggregator verifies `<service>.<namespace>.svc`.
        assert!(CERT_NAMES.contains(&format!("{METRICS_SERVICE}.{NAMESPACE}.svc").as_str()));
    }

    #[test]
    fn a_missing_build_says_how_to_make_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = KedaBuild::in_dir(dir.path()).expect_err("nothing is built there");
        assert!(format!("{e:#}").contains("tools/setup.sh keda"), "{e:#}");
    }
}
