//! `steward-up`: the local system `./dev up` starts — the control plane,
//! the local node, Prometheus, the CRDs, the operator, the router, a tiny
//! model and the sample InferenceService — and keeps it until Ctrl-C.
//!
//! Pieces whose binaries are missing are reported and skipped, so the
//! cluster itself always comes up.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use steward_e2e::proc::{spawn, Supervised};
use steward_e2e::prometheus::{install_monitoring_crds, LocalPrometheus, PrometheusOptions};
use steward_e2e::tools::{find_tool, workspace_bin};
use steward_e2e::{ClusterOptions, LocalCluster, LocalNode, NodeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "steward-up",
    about = "Brings up Steward's local system until Ctrl-C"
)]
struct Args {
    /// Folder for the cluster state, logs, kubeconfig and models (wiped at start).
    #[arg(long, env = "STEWARD_STATE", default_value = ".steward")]
    state_dir: PathBuf,
    /// Number of local nodes.
    #[arg(long, env = "STEWARD_UP_NODES", default_value_t = 1)]
    nodes: u32,
    /// GPUs per local node.
    #[arg(long, env = "STEWARD_UP_GPUS", default_value_t = 8)]
    gpus: u32,
    /// Router listen address.
    #[arg(long, env = "STEWARD_UP_ROUTER_ADDR", default_value = "127.0.0.1:8080")]
    router_addr: String,
    /// Operator metrics and health address.
    #[arg(
        long,
        env = "STEWARD_UP_OPERATOR_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    operator_addr: String,
    /// Prometheus listen address.
    #[arg(
        long,
        env = "STEWARD_UP_PROMETHEUS_ADDR",
        default_value = "127.0.0.1:9090"
    )]
    prometheus_addr: String,
    /// Start the system, check it, then exit (for smoke tests).
    #[arg(long)]
    check_and_exit: bool,
}

struct Extra {
    name: &'static str,
    proc: Supervised,
}

fn launch(
    name: &'static str,
    mut cmd: Command,
    logs: &Path,
    kubeconfig: &Path,
) -> anyhow::Result<Extra> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    cmd.env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let proc = spawn(cmd).with_context(|| format!("starting {name}"))?;
    eprintln!(
        "[up] {name} started (pid {}), log {}",
        proc.pid(),
        logs.join(format!("{name}.log")).display()
    );
    Ok(Extra { name, proc })
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(find_tool("kubectl")?)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t0 = Instant::now();
    let state = std::path::absolute(&args.state_dir)?;
    if state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("wiping the previous state in {}", state.display()))?;
    }
    std::fs::create_dir_all(&state)?;
    let cluster = LocalCluster::start(ClusterOptions {
        dir: Some(state.join("cluster")),
    })
    .await?;
    let kubeconfig = state.join("kubeconfig");
    std::fs::copy(cluster.kubeconfig_path(), &kubeconfig)?;
    let logs = cluster.dir().join("logs");

    let mut images = Vec::new();
    for (image, bin) in [
        ("steward-engine", "steward-engine"),
        ("steward-testserver", "steward-testserver"),
    ] {
        match workspace_bin(bin) {
            Ok(p) => images.push((image.to_string(), p)),
            Err(e) => eprintln!("[up] {e}"),
        }
    }
    let names: Vec<String> = (1..=args.nodes)
        .map(|i| format!("local-node-{i}"))
        .collect();
    let node = cluster.start_node(NodeOptions {
        names,
        gpus: args.gpus,
        images,
        ..NodeOptions::default()
    })?;
    let mut extras: Vec<Extra> = Vec::new();

    // Prometheus, scraping engine pods by their annotations (file_sd written
    // from the API), the operator and the router, and loading the
    // operator's PrometheusRules as rule files.
    let mut prometheus = None;
    match args.prometheus_addr.parse() {
        Ok(listen) => {
            let mut opts = PrometheusOptions::in_dir(state.join("prometheus"));
            opts.listen = Some(listen);
            opts.scrape_interval = Duration::from_secs(5);
            opts.discovery_every = Duration::from_secs(2);
            opts.static_targets = vec![
                (args.operator_addr.clone(), "steward-operator".into()),
                (args.router_addr.clone(), "steward-router".into()),
            ];
            match LocalPrometheus::start(Some(cluster.client().await?), opts).await {
                Ok(mut p) => {
                    p.sync_prometheus_rules(cluster.client().await?, Duration::from_secs(5));
                    eprintln!(
                        "[up] prometheus ready at {}, log {}",
                        p.url(),
                        p.log_path().display()
                    );
                    prometheus = Some(p);
                }
                Err(e) => eprintln!("[up] Prometheus skipped: {e:#}"),
            }
        }
        Err(e) => eprintln!(
            "[up] Prometheus skipped: bad address {}: {e}",
            args.prometheus_addr
        ),
    }

    // CRDs, operator, router, model and the sample.
    let root = std::env::current_dir()?;
    let crds = root.join("crds");
    if crds.is_dir() && std::fs::read_dir(&crds)?.next().is_some() {
        kubectl(
            &kubeconfig,
            &["apply", "--server-side", "-f", &crds.display().to_string()],
        )?;
        kubectl(
            &kubeconfig,
            &[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ],
        )?;
        eprintln!("[up] CRDs applied from {}", crds.display());
    }
    // The prometheus-operator CRDs, so the operator owns a PrometheusRule per
    // InferenceService (mirrored into the local Prometheus' rule files).
    match install_monitoring_crds(&kubeconfig) {
        Ok(()) => eprintln!(
            "[up] prometheus-operator CRDs applied (PrometheusRule, PodMonitor, ServiceMonitor)"
        ),
        Err(e) => eprintln!("[up] prometheus-operator CRDs skipped: {e:#}"),
    }
    // The Gateway API CRDs, so the operator owns an HTTPRoute per
    // InferenceService with the revisions' weights (no Gateway controller
    // runs here: the routes are written, not served).
    match steward_e2e::parts::install_gateway_crds(&kubeconfig) {
        Ok(()) => eprintln!("[up] Gateway API CRDs applied (HTTPRoute and friends)"),
        Err(e) => eprintln!("[up] Gateway API CRDs skipped: {e:#}"),
    }
    match workspace_bin("steward-operator") {
        Ok(bin) => {
            let mut c = Command::new(bin);
            c.env("STEWARD_LISTEN", &args.operator_addr);
            if let Some(p) = &prometheus {
                c.env("STEWARD_PROMETHEUS_URL", p.url());
            }
            extras.push(launch("steward-operator", c, &logs, &kubeconfig)?);
        }
        Err(e) => eprintln!("[up] operator skipped: {e}"),
    }
    match workspace_bin("steward-router") {
        Ok(bin) => {
            let mut c = Command::new(bin);
            c.env("STEWARD_ROUTER_LISTEN", &args.router_addr);
            extras.push(launch("steward-router", c, &logs, &kubeconfig)?);
        }
        Err(e) => eprintln!("[up] router skipped: {e}"),
    }
    let models = state.join("models");
    if let Ok(engine) = workspace_bin("steward-engine") {
        let out = Command::new(engine)
            .args(["make-model", "--size", "tiny"])
            .arg(models.join("tiny"))
            .output()?;
        if out.status.success() {
            eprintln!(
                "[up] tiny model written to {}",
                models.join("tiny").display()
            );
        } else {
            eprintln!(
                "[up] make-model failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let examples = root.join("examples");
    if examples.is_dir() {
        for e in std::fs::read_dir(&examples)? {
            let p = e?.path();
            if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
                continue;
            }
            // Examples name the model folder as ${STEWARD_MODELS}; fill it in.
            let text = std::fs::read_to_string(&p)?
                .replace("${STEWARD_MODELS}", &models.display().to_string());
            let rendered = state.join(p.file_name().unwrap_or_default());
            std::fs::write(&rendered, text)?;
            match kubectl(
                &kubeconfig,
                &["apply", "-f", &rendered.display().to_string()],
            ) {
                Ok(o) => eprint!("[up] {o}"),
                Err(e) => eprintln!("[up] applying {} failed: {e}", p.display()),
            }
        }
    }

    println!();
    println!(
        "Steward's local system is up in {:.1}s.",
        t0.elapsed().as_secs_f64()
    );
    println!("  export KUBECONFIG={}", kubeconfig.display());
    // The kubectl built into the cache (and the `kubectl steward` plugin)
    // first on PATH, so an older kubectl on the machine is not used silently.
    let mut path_dirs: Vec<String> = Vec::new();
    for found in [find_tool("kubectl"), workspace_bin("kubectl-steward")] {
        if let Some(dir) = found.ok().as_deref().and_then(Path::parent) {
            let dir = dir.display().to_string();
            if !path_dirs.contains(&dir) {
                path_dirs.push(dir);
            }
        }
    }
    if !path_dirs.is_empty() {
        println!("  export PATH={}:$PATH", path_dirs.join(":"));
    }
    println!("  kubectl get nodes,pods -A");
    println!("  kubectl get llmsvc -w");
    println!(
        "  curl -s http://{}/v1/completions -H 'content-type: application/json' \\",
        args.router_addr
    );
    println!("       -d '{{\"model\":\"chat-small\",\"prompt\":\"Hello\",\"max_tokens\":16}}'");
    println!("  Prometheus: http://{}", args.prometheus_addr);
    println!("  component logs: {}", logs.display());
    println!(
        "  pod logs:       {}/<namespace>_<pod>_<uid>/<container>.log",
        node.log_dir().display()
    );
    println!(
        "  (pods get loopback IPs on this local node, so Services have no Endpoints here; \
         the router finds pods itself)"
    );
    println!("Ctrl-C stops everything.");

    // Watch every component: one that dies is reported at once with its
    // exit status and the end of its log (a crash-looping operator in a
    // real cluster would be visible; here it must be too).
    let mut died = 0usize;
    let mut watch = |extras: &mut Vec<Extra>, cluster: &mut LocalCluster, node: &mut LocalNode| {
        let mut dead: Vec<(String, String)> = Vec::new();
        extras.retain_mut(|e| match e.proc.try_wait() {
            Ok(Some(st)) => {
                dead.push((e.name.to_owned(), st.to_string()));
                false
            }
            _ => true,
        });
        for (name, st) in cluster.exited() {
            dead.push((name, st.to_string()));
        }
        if let Some(st) = node.exited() {
            dead.push(("steward-node".into(), st.to_string()));
        }
        for (name, st) in &dead {
            report_death(name, st, &logs.join(format!("{name}.log")));
        }
        died += dead.len();
    };
    let mut node = node;
    let mut cluster = cluster;
    if args.check_and_exit {
        watch(&mut extras, &mut cluster, &mut node);
    } else {
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = &mut ctrl_c => { r?; break; }
                _ = tick.tick() => watch(&mut extras, &mut cluster, &mut node),
            }
        }
        eprintln!("[up] stopping");
    }
    for mut e in extras.into_iter().rev() {
        let _ = tokio::task::spawn_blocking(move || {
            let _ = e.proc.terminate(Duration::from_secs(10));
            e.name
        })
        .await;
    }
    drop(prometheus);
    drop(node);
    drop(cluster);
    if died > 0 {
        anyhow::bail!("{died} component(s) died while the system ran; see the [up] lines above");
    }
    Ok(())
}

/// Prints that a component died, how, and the last lines of its log.
fn report_death(name: &str, status: &str, log: &Path) {
    eprintln!(
        "[up] COMPONENT DIED: {name} exited ({status}); last lines of {}:",
        log.display()
    );
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(20)..] {
        eprintln!("[up]   {name}| {line}");
    }
}
