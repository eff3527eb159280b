//! The control plane starts on loopback, serves, and leaves nothing behind.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use steward_e2e::proc::pid_alive;
use steward_e2e::{ClusterOptions, LocalCluster, NodeOptions};

#[tokio::test]
async fn dropping_local_cluster_leaves_no_process_behind() {
    let cluster = LocalCluster::start(ClusterOptions::default())
        .await
        .expect("local cluster starts");
    eprintln!(
        "cluster start-up time: {:.2}s",
        cluster.startup_time().as_secs_f64()
    );
    assert!(cluster.server_url().starts_with("https://127.0.0.1:"));
    let client = cluster.client().await.expect("client");
    let ns: kube::Api<Namespace> = kube::Api::all(client);
    let list = ns.list(&Default::default()).await.expect("list namespaces");
    assert!(list
        .items
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some("kube-system")));

    let node = cluster
        .start_node(NodeOptions::default())
        .expect("node starts");
    let mut pids = cluster.pids();
    pids.extend(node.pid());
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, node"
    );
    assert!(pids.iter().all(|p| pid_alive(*p)));
    let dir = cluster.dir().to_path_buf();

    drop(node);
    drop(cluster);
    for p in &pids {
        assert!(!pid_alive(*p), "process {p} outlived LocalCluster");
    }
    // The temporary state folder goes too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
