//! Helpers for tests that need the local system: one cluster and node per
//! test process, shared by its tests (each test uses its own namespace), and
//! small waiting helpers.
//!
//! The shared cluster lives in a static and is never dropped; its processes
//! die with the test process (see [`crate::proc`]) and an `atexit` hook
//! stops them and removes the state folder first.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::{ClusterOptions, LocalCluster, LocalNode, NodeOptions};

/// The shared cluster and its node.
pub struct Shared {
    pub cluster: LocalCluster,
    pub node: LocalNode,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();
static CLEANUP: Mutex<Vec<(Vec<u32>, PathBuf)>> = Mutex::new(Vec::new());

extern "C" fn cleanup_at_exit() {
    if let Ok(list) = CLEANUP.lock() {
        for (pids, dir) in list.iter() {
            for pid in pids {
                // SAFETY: each pid leads a process group we created.
                unsafe {
                    libc::kill(-(*pid as i32), libc::SIGKILL);
                }
            }
            if std::env::var_os("STEWARD_KEEP_TEST_CLUSTER").is_none() {
                let _ = std::fs::remove_dir_all(dir);
            } else {
                eprintln!("kept the test cluster's folder {}", dir.display());
            }
        }
    }
}

/// Adds `(pids, dir)` to what the exit hook stops and removes.
fn at_exit(pids: Vec<u32>, dir: PathBuf) {
    if let Ok(mut l) = CLEANUP.lock() {
        if l.is_empty() {
            // SAFETY: registering a plain extern "C" fn.
            unsafe {
                libc::atexit(cleanup_at_exit);
            }
        }
        l.push((pids, dir));
    }
}

/// Removes `dir` when the test process exits, with the shared cluster's
/// folder (`STEWARD_KEEP_TEST_CLUSTER` keeps both): for a folder that lives
/// as long as the process, such as a model written once for all its tests.
pub fn remove_at_exit(dir: PathBuf) {
    at_exit(Vec::new(), dir);
}

/// A test's own folder (logs, load reports, Prometheus' data): removed
/// when the guard is dropped without a panic (the test passed), kept and
/// named on stderr when it is dropped while the test fails, or when
/// `STEWARD_KEEP_TEST_CLUSTER` is set. Put it after everything that
/// writes into the folder, so it is dropped last.
pub struct TestFolder {
    path: PathBuf,
    remove_on_pass: bool,
}

impl TestFolder {
    /// A new folder under the system's temporary directory.
    pub fn new(prefix: &str) -> std::io::Result<TestFolder> {
        let path = tempfile::Builder::new().prefix(prefix).tempdir()?.keep();
        Ok(TestFolder {
            path,
            remove_on_pass: true,
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether a pass removes the folder (the default); benchmarks keep
    /// theirs, their reports are in it.
    pub fn set_remove_on_pass(&mut self, remove: bool) {
        self.remove_on_pass = remove;
    }
}

impl Drop for TestFolder {
    fn drop(&mut self) {
        if !self.remove_on_pass {
            return;
        }
        if std::thread::panicking() {
            eprintln!("kept {} for the failure", self.path.display());
        } else if std::env::var_os("STEWARD_KEEP_TEST_CLUSTER").is_some() {
            eprintln!("kept {} (STEWARD_KEEP_TEST_CLUSTER)", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// The image map every shared node gets: the workspace's own binaries.
pub fn default_images() -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    for (image, bin) in [
        ("steward-testserver", "steward-testserver"),
        ("steward-engine", "steward-engine"),
    ] {
        if let Ok(p) = crate::tools::workspace_bin(bin) {
            v.push((image.to_string(), p));
        }
    }
    v
}

/// Starts (once per process) a cluster with one node of 4 GPUs whose
/// image map holds the workspace binaries.
pub async fn shared() -> anyhow::Result<&'static Shared> {
    SHARED
        .get_or_try_init(|| async {
            let dir = tempfile::Builder::new()
                .prefix("steward-test-cluster-")
                .tempdir()?
                .keep();
            let cluster = LocalCluster::start(ClusterOptions {
                dir: Some(dir.clone()),
            })
            .await?;
            let node = cluster.start_node(NodeOptions {
                images: default_images(),
                restart_backoff: Duration::from_millis(500),
                ..NodeOptions::default()
            })?;
            let mut pids = cluster.pids();
            pids.extend(node.pid());
            at_exit(pids, dir);
            wait_for_node_ready(&cluster, "local-node-1").await?;
            Ok(Shared { cluster, node })
        })
        .await
}

/// Waits until the Node reports Ready and carries no not-ready taint.
pub async fn wait_for_node_ready(cluster: &LocalCluster, name: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    let client = cluster.client().await?;
    let nodes: kube::Api<Node> = kube::Api::all(client);
    eventually(Duration::from_secs(60), || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get_opt(name).await.ok().flatten()?;
            let ready = n
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let tainted = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
            (ready && !tainted).then_some(())
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("node {name} did not become Ready and untainted in 60s"))
}

/// Polls `f` every 100ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Result<T, Elapsed>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Elapsed(limit));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`eventually`] ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("condition not met within {0:?}")]
pub struct Elapsed(pub Duration);

/// A fresh namespace name for one test.
pub fn unique_ns(prefix: &str) -> String {
    format!("{prefix}-{:06x}", rand::random::<u32>() & 0xffffff)
}
