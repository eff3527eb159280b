//! The node program's main loop: registers Nodes with GPU capacity, keeps
//! their Leases and Ready condition fresh, watches the Pods bound to them,
//! and runs one [`worker::run_pod`] actor per pod.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

use super::worker::{self, WorkerConfig};
use tokio_util::sync::CancellationToken as CancelToken;

/// What the node program registers.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub names: Vec<String>,
    pub gpus: u32,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
}

const LEASE_SECONDS: i32 = 40;
const HEARTBEAT: Duration = Duration::from_secs(10);

fn node_object(name: &str) -> anyhow::Result<Node> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "steward.dev/local-node": "true"
            }
        },
        "spec": {}
    }))?)
}

fn node_status(spec: &NodeSpec, name: &str) -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let cap = serde_json::json!({
        "cpu": spec.cpu, "memory": spec.memory, "pods": spec.max_pods.to_string(),
        "nvidia.com/gpu": spec.gpus.to_string(), "ephemeral-storage": "100Gi"
    });
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        serde_json::json!({"type": t, "status": s, "reason": reason, "message": msg,
            "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    serde_json::json!({
        "status": {
            "capacity": cap, "allocatable": cap,
            "conditions": [
                cond("Ready", "True", "KubeletReady", "steward-node is posting ready status"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": name, "systemUUID": name, "bootID": "steward-node",
                "kernelVersion": "local", "osImage": "steward local node",
                "containerRuntimeVersion": "steward-node://0.1", "kubeletVersion": "v1.34.4",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"
            }
        }
    })
}

/// Creates (or adopts) each Node and posts its status.
pub async fn register(client: &kube::Client, spec: &NodeSpec) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for name in &spec.names {
        match nodes
            .create(&PostParams::default(), &node_object(name)?)
            .await
        {
            Ok(_) => info!(node = %name, "node registered"),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                info!(node = %name, "node exists; adopting it")
            }
            Err(e) => return Err(anyhow::anyhow!("registering node {name}: {e}")),
        }
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(node_status(spec, name)),
            )
            .await
            .map_err(|e| anyhow::anyhow!("posting status of node {name}: {e}"))?;
    }
    Ok(())
}

/// Renews each node's Lease every 10s and its Ready condition every 30s.
pub async fn heartbeat(client: kube::Client, spec: NodeSpec) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client.clone());
    let mut tick = 0u64;
    loop {
        for name in &spec.names {
            let lease = serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                         "renewTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}
            });
            if let Err(e) = leases
                .patch(
                    name,
                    &PatchParams::apply("steward-node").force(),
                    &Patch::Apply(&lease),
                )
                .await
            {
                warn!(node = %name, error = %e, "lease renewal failed");
            }
            if tick.is_multiple_of(3) {
                if let Err(e) = nodes
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(node_status(&spec, name)),
                    )
                    .await
                {
                    warn!(node = %name, error = %e, "node status update failed");
                }
            }
        }
        tick += 1;
        tokio::time::sleep(HEARTBEAT).await;
    }
}

enum Event {
    Upsert(Pod),
    Delete(Pod),
    /// A re-list finished: these uids are all that exist on this node.
    Resync(String, HashSet<String>),
}

/// Watches the pods bound to `node` and forwards them.
async fn watch_node(client: kube::Client, node: String, tx: mpsc::Sender<Event>) {
    let pods: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(pods, cfg).boxed();
    let mut relist: Option<HashSet<String>> = None;
    loop {
        let ev = match stream.next().await {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                warn!(node = %node, error = %e, "pod watch error; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            None => return,
        };
        let out = match ev {
            watcher::Event::Init => {
                relist = Some(HashSet::new());
                None
            }
            watcher::Event::InitApply(p) => {
                if let (Some(set), Some(uid)) = (relist.as_mut(), p.uid()) {
                    set.insert(uid);
                }
                Some(Event::Upsert(p))
            }
            watcher::Event::InitDone => relist.take().map(|s| Event::Resync(node.clone(), s)),
            watcher::Event::Apply(p) => Some(Event::Upsert(p)),
            watcher::Event::Delete(p) => Some(Event::Delete(p)),
        };
        if let Some(e) = out {
            if tx.send(e).await.is_err() {
                return;
            }
        }
    }
}

struct Running {
    tx: watch::Sender<Arc<Pod>>,
    gone: CancelToken,
    node: String,
}

/// Runs the node until `shutdown` fires; then stops every pod.
pub async fn run(
    client: kube::Client,
    spec: NodeSpec,
    wcfg: WorkerConfig,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    register(&client, &spec).await?;
    tokio::spawn(heartbeat(client.clone(), spec.clone()));
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    for n in &spec.names {
        tokio::spawn(watch_node(client.clone(), n.clone(), tx.clone()));
    }
    let mut pods: HashMap<String, Running> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(uid) = done { pods.remove(&uid); }
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::Upsert(p) => {
                        let Some(uid) = p.uid() else { continue };
                        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                        if let Some(r) = pods.get(&uid) {
                            let _ = r.tx.send(Arc::new(p));
                            continue;
                        }
                        let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                        let terminating = p.metadata.deletion_timestamp.is_some();
                        if (phase == "Succeeded" || phase == "Failed") && !terminating {
                            continue;
                        }
                        let (ptx, prx) = watch::channel(Arc::new(p.clone()));
                        let gone = CancelToken::default();
                        let span = tracing::info_span!("pod", namespace = %p.namespace().unwrap_or_default(), pod = %p.name_any());
                        let w = wcfg.clone();
                        let g2 = gone.clone();
                        let uid2 = uid.clone();
                        tasks.spawn(async move { worker::run_pod(w, prx, g2).await; uid2 }.instrument(span));
                        pods.insert(uid, Running { tx: ptx, gone, node });
                    }
                    Event::Delete(p) => {
                        if let Some(r) = p.uid().and_then(|u| pods.get(&u)) { r.gone.cancel(); }
                    }
                    Event::Resync(node, alive) => {
                        // A pod of this node that vanished while the watch was down is gone.
                        for (u, r) in pods.iter() {
                            if r.node == node && !alive.contains(u) { r.gone.cancel(); }
                        }
                    }
                }
            }
        }
    }
    info!(pods = pods.len(), "node shutting down; stopping its pods");
    for r in pods.values() {
        r.gone.cancel();
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
