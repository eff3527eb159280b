//! The local node: a stand-in for the kubelet that runs pods as local
//! processes on loopback addresses. [`agent`] is the program's loop,
//! [`worker`] one pod's life; [`LocalNode`] starts the `steward-node`
//! program from tests and from `steward-up`.

pub mod agent;
pub mod env;
pub mod expand;
pub mod imagemap;
pub mod ipam;
pub mod probe;
pub mod security;
pub mod status;
pub mod worker;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::proc::{spawn, Supervised};
use crate::tools::workspace_bin;

/// How to start the node program.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Node names; one Node object each.
    pub names: Vec<String>,
    /// `nvidia.com/gpu` capacity of each node.
    pub gpus: u32,
    /// image → executable.
    pub images: Vec<(String, PathBuf)>,
    /// First restart back-off (the kubelet's is 10s).
    pub restart_backoff: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            names: vec!["local-node-1".into()],
            gpus: 4,
            images: Vec::new(),
            restart_backoff: Duration::from_secs(10),
        }
    }
}

/// A running `steward-node` program; stopped on drop.
#[derive(Debug)]
pub struct LocalNode {
    proc: Option<Supervised>,
    log_dir: PathBuf,
    image_map: PathBuf,
}

impl LocalNode {
    /// Writes the image map and starts `steward-node` against `kubeconfig`.
    pub fn start(
        kubeconfig: &Path,
        state_dir: &Path,
        opts: NodeOptions,
    ) -> anyhow::Result<LocalNode> {
        let bin = workspace_bin("steward-node")?;
        let dir = state_dir.join("node");
        let log_dir = dir.join("pods");
        std::fs::create_dir_all(&log_dir)?;
        let image_map = dir.join("images.yaml");
        let map: std::collections::BTreeMap<String, PathBuf> =
            opts.images.iter().cloned().collect();
        std::fs::write(&image_map, serde_yaml::to_string(&map)?)?;
        // Appended: a node program started again keeps the earlier log.
        let append = |p: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        };
        let log = append(state_dir.join("logs").join("steward-node.log"))
            .or_else(|_| append(dir.join("steward-node.log")))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--image-map")
            .arg(&image_map)
            .arg("--log-dir")
            .arg(&log_dir)
            .arg("--gpus")
            .arg(opts.gpus.to_string())
            .arg("--restart-backoff")
            .arg(format!("{}ms", opts.restart_backoff.as_millis()))
            .arg("--names")
            .arg(opts.names.join(","))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = spawn(cmd).context("starting steward-node")?;
        Ok(LocalNode {
            proc: Some(proc),
            log_dir,
            image_map,
        })
    }

    /// Where each pod's container logs are written
    /// (`<namespace>_<pod>_<uid>/<container>.log`).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The image map file the node reads at every container start.
    pub fn image_map(&self) -> &Path {
        &self.image_map
    }

    /// The node program's pid.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// The node program's exit status once it has ended (reported once).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.proc.as_mut()?.try_wait().ok()??;
        self.proc = None;
        Some(st)
    }

    /// Stops the node program and every pod process it runs.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.terminate(Duration::from_secs(20));
        }
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.stop();
    }
}
