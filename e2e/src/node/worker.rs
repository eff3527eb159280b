//! One pod's life on the local node: an actor task per pod.
//!
//! The agent hands the worker every new version of its Pod through a watch
//! channel and a token that fires when the Pod is gone from the API. The
//! worker starts each container as a local process (image → executable via
//! the image map), gives the pod a loopback IP, runs readiness and liveness
//! probes, restarts containers per `restartPolicy` with doubling back-off,
//! posts the pod status when it changes, and on deletion runs preStop,
//! SIGTERM, waits out the grace period, SIGKILLs and finalizes the Pod.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::ResourceExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken as CancelToken;
use tracing::{info, warn};

use super::env::container_env;
use super::expand::expand;
use super::imagemap::ImageMap;
use super::ipam::{Ipam, Lease};
use super::probe::{run_exec, run_probe, ProbeResult};
use super::status::{pod_status, ContainerView, Exit, RunState};
use crate::proc::{spawn, Supervised};

/// Shared settings of every pod worker on a node program.
#[derive(Clone)]
pub struct WorkerConfig {
    pub client: kube::Client,
    pub image_map_path: PathBuf,
    pub log_dir: PathBuf,
    pub ipam: Ipam,
    pub pass_env: Vec<String>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub http: reqwest::Client,
}

struct ProbeTracker {
    successes: i32,
    failures: i32,
    next: Instant,
}

impl ProbeTracker {
    fn new(probe: Option<&Probe>, now: Instant) -> Self {
        let delay = probe
            .and_then(|p| p.initial_delay_seconds)
            .unwrap_or(0)
            .max(0) as u64;
        ProbeTracker {
            successes: 0,
            failures: 0,
            next: now + Duration::from_secs(delay),
        }
    }
}

struct Ctr {
    spec: Container,
    proc: Option<Supervised>,
    state: RunState,
    last: Option<Exit>,
    restart_count: i32,
    ever_started: bool,
    ready: bool,
    backoff: Duration,
    next_start: Instant,
    will_restart: bool,
    readiness: ProbeTracker,
    liveness: ProbeTracker,
    env: HashMap<String, String>,
}

/// Runs until the pod is finalized or gone.
pub async fn run_pod(cfg: WorkerConfig, mut pod_rx: watch::Receiver<Arc<Pod>>, gone: CancelToken) {
    let pod = pod_rx.borrow().clone();
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(cfg.client.clone(), &ns);

    // A pod that already has an IP (this node program was restarted)
    // keeps it, as a pod does for its whole life.
    let known = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok());
    let lease: Option<Lease> = match known
        .and_then(|ip| cfg.ipam.take(ip).ok())
        .map_or_else(|| cfg.ipam.allocate(), Ok)
    {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %e, "no pod IP");
            None
        }
    };
    let ip = lease.as_ref().map(|l| l.ip);
    let pod_dir = cfg.log_dir.join(format!("{ns}_{name}_{uid}"));
    if let Err(e) = std::fs::create_dir_all(&pod_dir) {
        warn!(error = %e, dir = %pod_dir.display(), "cannot create the pod's log folder");
    }
    info!(pod_ip = ?ip, logs = %pod_dir.display(), "pod assigned");
    let start_time = Timestamp::now();
    let now = Instant::now();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut ctrs: Vec<Ctr> = spec
        .containers
        .iter()
        .map(|c| Ctr {
            spec: c.clone(),
            proc: None,
            state: RunState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            restart_count: 0,
            ever_started: false,
            ready: false,
            backoff: cfg.backoff_base,
            next_start: now,
            will_restart: true,
            readiness: ProbeTracker::new(c.readiness_probe.as_ref(), now),
            liveness: ProbeTracker::new(c.liveness_probe.as_ref(), now),
            env: HashMap::new(),
        })
        .collect();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let mut posted: Option<serde_json::Value> = None;
    let mut current = pod.clone();

    loop {
        if gone.is_cancelled() {
            info!("pod removed from the API; killing its processes");
            kill_all(&mut ctrs, Duration::ZERO).await;
            return;
        }
        if current.metadata.deletion_timestamp.is_some() {
            terminate_pod(&cfg, &current, &mut ctrs, ip).await;
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => info!("pod finalized"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => warn!(error = %e, "finalizing the pod failed"),
            }
            return;
        }

        let now = Instant::now();
        for c in ctrs.iter_mut() {
            reap(c, &policy, &cfg);
            if c.proc.is_none() && c.will_restart && now >= c.next_start {
                if let Some(ip) = ip {
                    start_container(&cfg, &current, c, ip, &pod_dir);
                }
            }
        }
        if let Some(ip) = ip {
            probe_all(&cfg, &mut ctrs, ip).await;
        }

        let views: Vec<ContainerView> = ctrs.iter().map(view).collect();
        let ip_s = ip.map(|i| i.to_string());
        let status = pod_status(
            &current,
            &views,
            ip_s.as_deref(),
            start_time,
            Timestamp::now(),
        );
        let value = serde_json::to_value(&status).unwrap_or_default();
        if posted.as_ref() != Some(&strip_times(&value)) {
            let patch = serde_json::json!({ "status": value });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(p) => {
                    posted = Some(strip_times(&value));
                    current = Arc::new(p);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    kill_all(&mut ctrs, Duration::ZERO).await;
                    return;
                }
                Err(e) => warn!(error = %e, "posting pod status failed; will retry"),
            }
        }

        tokio::select! {
            r = pod_rx.changed() => {
                if r.is_ok() {
                    current = pod_rx.borrow_and_update().clone();
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Status equality ignores transition times that only moved because `now` did.
fn strip_times(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(conds) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    v
}

fn view(c: &Ctr) -> ContainerView {
    ContainerView {
        name: c.spec.name.clone(),
        image: c.spec.image.clone().unwrap_or_default(),
        state: c.state.clone(),
        last: c.last.clone(),
        ready: c.ready,
        restart_count: c.restart_count,
        ever_started: c.ever_started,
        will_restart: c.will_restart,
        pid: c.proc.as_ref().map(|p| p.pid()),
    }
}

/// Notices an exited process and decides whether it restarts.
fn reap(c: &mut Ctr, policy: &str, cfg: &WorkerConfig) {
    let Some(p) = c.proc.as_mut() else { return };
    let st = match p.try_wait() {
        Ok(Some(st)) => st,
        Ok(None) => return,
        Err(e) => {
            warn!(container = %c.spec.name, error = %e, "waiting on the container failed");
            return;
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let code = st.code().unwrap_or(128 + st.signal().unwrap_or(0));
    let started_at = match &c.state {
        RunState::Running { started_at } => Some(*started_at),
        _ => None,
    };
    let exit = Exit {
        exit_code: code,
        signal: st.signal(),
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        started_at,
        finished_at: Timestamp::now(),
    };
    info!(container = %c.spec.name, exit_code = code, "container exited");
    p.signal_group(libc::SIGKILL);
    c.proc = None;
    c.ready = false;
    c.will_restart = match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    };
    if c.will_restart {
        let ran = started_at
            .map(|s| Timestamp::now().duration_since(s).as_secs_f64())
            .unwrap_or(0.0);
        if ran > 600.0 {
            c.backoff = cfg.backoff_base;
        }
        c.next_start = Instant::now() + c.backoff;
        c.backoff = (c.backoff * 2).min(cfg.backoff_max);
        c.last = Some(exit.clone());
        c.state = RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: format!(
                "back-off restarting failed container {} (exit code {code})",
                c.spec.name
            ),
        };
    } else {
        c.state = RunState::Terminated(exit);
    }
}

fn start_container(
    cfg: &WorkerConfig,
    pod: &Pod,
    c: &mut Ctr,
    ip: std::net::Ipv4Addr,
    pod_dir: &std::path::Path,
) {
    let image = c.spec.image.clone().unwrap_or_default();
    let map = match ImageMap::load(&cfg.image_map_path) {
        Ok(m) => m,
        Err(e) => {
            set_waiting(c, cfg, "ErrImagePull", &e.to_string());
            return;
        }
    };
    let exe = match map.resolve(&image) {
        Ok(p) => p,
        Err(e) => {
            set_waiting(c, cfg, e.reason(), &e.to_string());
            return;
        }
    };
    // Say so rather than run the main containers without their init steps.
    let has_init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|v| !v.is_empty());
    if has_init {
        set_waiting(
            c,
            cfg,
            "CreateContainerConfigError",
            "init containers are not supported by the local node (steward-node)",
        );
        return;
    }
    let confinement = match super::security::confinement(pod, &c.spec) {
        Ok(conf) => conf,
        Err(msg) => {
            set_waiting(c, cfg, "CreateContainerConfigError", &msg);
            return;
        }
    };
    let env = match container_env(pod, &c.spec, ip, &cfg.pass_env) {
        Ok(e) => e,
        Err(msg) => {
            set_waiting(c, cfg, "CreateContainerConfigError", &msg);
            return;
        }
    };
    let mut argv: Vec<String> = Vec::new();
    let cmd = c.spec.command.clone().unwrap_or_default();
    let program = match cmd.split_first() {
        None => exe.clone(),
        Some((first, rest)) => {
            argv.extend(rest.iter().map(|a| expand(a, &env)));
            let base = exe.file_name().map(|f| f.to_string_lossy().to_string());
            if Some(first.as_str()) == base.as_deref()
                || first.starts_with('/') && !PathBuf::from(first).exists()
            {
                exe.clone()
            } else {
                PathBuf::from(expand(first, &env))
            }
        }
    };
    argv.extend(c.spec.args.iter().flatten().map(|a| expand(a, &env)));
    let log_path = pod_dir.join(format!("{}.log", c.spec.name));
    let log = match OpenOptions::new().create(true).append(true).open(&log_path) {
        Ok(mut f) => {
            let _ = writeln!(
                f,
                "---- steward-node: starting {} (restart {}) at {} ----",
                program.display(),
                c.restart_count,
                Timestamp::now()
            );
            f
        }
        Err(e) => {
            set_waiting(
                c,
                cfg,
                "CreateContainerError",
                &format!("cannot open log file {}: {e}", log_path.display()),
            );
            return;
        }
    };
    let workdir = c
        .spec
        .working_dir
        .clone()
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| pod_dir.to_path_buf());
    let mut command = Command::new(&program);
    command
        .args(&argv)
        .env_clear()
        .envs(&env)
        .current_dir(&workdir)
        .stdin(Stdio::null());
    match log.try_clone() {
        Ok(l2) => {
            command.stdout(log).stderr(l2);
        }
        Err(_) => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    super::security::apply(&mut command, &confinement);
    match spawn(command) {
        Ok(p) => {
            info!(container = %c.spec.name, pid = p.pid(), program = %program.display(), log = %log_path.display(), "container started");
            if c.ever_started {
                c.restart_count += 1;
            }
            c.ever_started = true;
            c.proc = Some(p);
            c.state = RunState::Running {
                started_at: Timestamp::now(),
            };
            let now = Instant::now();
            c.readiness = ProbeTracker::new(c.spec.readiness_probe.as_ref(), now);
            c.liveness = ProbeTracker::new(c.spec.liveness_probe.as_ref(), now);
            c.ready = c.spec.readiness_probe.is_none();
            c.env = env;
        }
        Err(e) => set_waiting(
            c,
            cfg,
            "CreateContainerError",
            &format!("starting {}: {e}", program.display()),
        ),
    }
}

fn set_waiting(c: &mut Ctr, cfg: &WorkerConfig, reason: &str, message: &str) {
    warn!(container = %c.spec.name, reason, message, "container cannot start");
    c.state = RunState::Waiting {
        reason: reason.to_string(),
        message: message.to_string(),
    };
    c.next_start = Instant::now() + c.backoff;
    c.backoff = (c.backoff * 2).min(cfg.backoff_max);
}

async fn probe_all(cfg: &WorkerConfig, ctrs: &mut [Ctr], ip: std::net::Ipv4Addr) {
    let now = Instant::now();
    for c in ctrs.iter_mut() {
        if c.proc.is_none() {
            continue;
        }
        if let Some(p) = c.spec.readiness_probe.clone() {
            if now >= c.readiness.next {
                let r = run_probe(&p, &c.spec, ip, &c.env, &cfg.http).await;
                let (ok_th, fail_th) = thresholds(&p);
                c.readiness.next = now + period(&p);
                match r {
                    ProbeResult::Success => {
                        c.readiness.failures = 0;
                        c.readiness.successes += 1;
                        if c.readiness.successes >= ok_th {
                            c.ready = true;
                        }
                    }
                    ProbeResult::Failure(msg) => {
                        c.readiness.successes = 0;
                        c.readiness.failures += 1;
                        if c.readiness.failures >= fail_th && c.ready {
                            info!(container = %c.spec.name, message = %msg, "readiness probe failed");
                            c.ready = false;
                        }
                    }
                }
            }
        }
        if let Some(p) = c.spec.liveness_probe.clone() {
            if now >= c.liveness.next {
                let r = run_probe(&p, &c.spec, ip, &c.env, &cfg.http).await;
                let (_, fail_th) = thresholds(&p);
                c.liveness.next = now + period(&p);
                match r {
                    ProbeResult::Success => c.liveness.failures = 0,
                    ProbeResult::Failure(msg) => {
                        c.liveness.failures += 1;
                        if c.liveness.failures >= fail_th {
                            warn!(container = %c.spec.name, message = %msg, "liveness probe failed; restarting the container");
                            c.liveness.failures = 0;
                            if let Some(mut p) = c.proc.take() {
                                let grace = Duration::from_secs(2);
                                let _ =
                                    tokio::task::spawn_blocking(move || p.terminate(grace)).await;
                            }
                            c.ready = false;
                            c.last = Some(Exit {
                                exit_code: 137,
                                signal: Some(libc::SIGKILL),
                                reason: "Error".into(),
                                started_at: None,
                                finished_at: Timestamp::now(),
                            });
                            c.next_start = Instant::now() + c.backoff;
                            c.backoff = (c.backoff * 2).min(cfg.backoff_max);
                            c.will_restart = true;
                            c.state = RunState::Waiting {
                                reason: "CrashLoopBackOff".into(),
                                message: format!("liveness probe failed: {msg}"),
                            };
                        }
                    }
                }
            }
        }
    }
}

fn thresholds(p: &Probe) -> (i32, i32) {
    (
        p.success_threshold.unwrap_or(1).max(1),
        p.failure_threshold.unwrap_or(3).max(1),
    )
}

fn period(p: &Probe) -> Duration {
    Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64)
}

/// preStop, SIGTERM, grace period, SIGKILL — for every running container.
async fn terminate_pod(
    cfg: &WorkerConfig,
    pod: &Pod,
    ctrs: &mut [Ctr],
    ip: Option<std::net::Ipv4Addr>,
) {
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0) as u64;
    let grace = Duration::from_secs(grace);
    let deadline = Instant::now() + grace;
    info!(grace_s = grace.as_secs(), "pod is terminating");
    // preStop hooks run concurrently, bounded by the grace period.
    let mut hooks = Vec::new();
    for c in ctrs.iter() {
        if c.proc.is_none() {
            continue;
        }
        let Some(h) = c.spec.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) else {
            continue;
        };
        let container = c.spec.clone();
        let env = c.env.clone();
        let http = cfg.http.clone();
        let name = c.spec.name.clone();
        hooks.push(async move {
            let r = if let Some(g) = &h.http_get {
                let probe = Probe {
                    http_get: Some(g.clone()),
                    timeout_seconds: Some(grace.as_secs().max(1) as i32),
                    ..Default::default()
                };
                match ip {
                    Some(ip) => run_probe(&probe, &container, ip, &env, &http).await,
                    None => ProbeResult::Failure("no pod IP".into()),
                }
            } else if let Some(e) = &h.exec {
                run_exec(
                    e.command.as_deref().unwrap_or(&[]),
                    &env,
                    grace.max(Duration::from_secs(1)),
                )
                .await
            } else if let Some(s) = &h.sleep {
                tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
                ProbeResult::Success
            } else {
                ProbeResult::Failure("preStop has no handler".into())
            };
            info!(container = %name, result = ?r, "preStop hook ran");
        });
    }
    let _ = tokio::time::timeout(grace, futures::future::join_all(hooks)).await;
    // Kubelet gives at least 2 more seconds after a preStop that used the whole grace.
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(2).min(grace.max(Duration::from_millis(1))));
    kill_all(ctrs, remaining).await;
}

async fn kill_all(ctrs: &mut [Ctr], grace: Duration) {
    let mut waits = Vec::new();
    for c in ctrs.iter_mut() {
        c.ready = false;
        c.will_restart = false;
        if let Some(mut p) = c.proc.take() {
            let name = c.spec.name.clone();
            waits.push(tokio::task::spawn_blocking(move || {
                let t0 = Instant::now();
                let r = p.terminate(grace);
                info!(container = %name, waited_ms = t0.elapsed().as_millis() as u64, result = ?r, "container stopped");
            }));
        }
    }
    futures::future::join_all(waits).await;
}
