//! Two operator processes with leader election over a Lease: only one
//! leads; killing it (SIGKILL) in the middle of a revision change lets the
//! other take the Lease and finish the change to the same end state, and
//! the killed one comes back as a standby.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde_json::json;
use steward_e2e::testing::eventually;
use steward_operator::crd::{labels, InferenceService};
use support::{apply, env, manifest, ready_and_current, wait_for, TestEnv};

const LIMIT: Duration = Duration::from_secs(120);

/// An operator process, killed on drop.
struct Proc {
    id: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(env: &TestEnv, id: &str, logs: &std::path::Path) -> Proc {
    let log = std::fs::File::create(logs.join(format!("{id}.log"))).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_steward-operator"))
        .args([
            "--namespace",
            &env.ns,
            "--lease-namespace",
            &env.ns,
            "--identity",
            id,
        ])
        .args([
            "--lease-duration",
            "4s",
            "--lease-renew",
            "1s",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &env.kubeconfig)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("operator starts");
    Proc {
        id: id.to_owned(),
        child,
    }
}

async fn holder(env: &TestEnv) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    leases
        .get_opt("steward-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn killed_leader_mid_rollout_is_replaced_and_the_rollout_finishes() {
    let env = env("op-restart").await;
    let logs = tempfile::tempdir().expect("log dir");
    let mut procs = vec![
        spawn(&env, "op-a", logs.path()),
        spawn(&env, "op-b", logs.path()),
    ];

    apply(&env, &manifest(&env, "chat", 2, json!({})))
        .await
        .expect("apply");
    let o = wait_for(&env, "chat", LIMIT, "Ready", ready_and_current).await;
    let rev1 = o.status.and_then(|s| s.stable_revision).expect("stable");
    let leader = holder(&env).await.expect("a leader holds the Lease");

    // Start a revision change and kill the leader while it is under way.
    apply(
        &env,
        &manifest(&env, "chat", 2, json!({"engine": {"kvCacheBlocks": 512}})),
    )
    .await
    .expect("apply change");
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let _ = eventually(Duration::from_secs(20), || async {
        let o = api.get("chat").await.ok()?;
        o.status?.canary_revision.map(|_| ())
    })
    .await;
    let idx = procs
        .iter()
        .position(|p| p.id == leader)
        .expect("leader is ours");
    let killed = procs.remove(idx);
    drop(killed); // SIGKILL: no graceful shutdown, the Lease is not released

    // The standby takes over and finishes the rollout.
    let o = wait_for(&env, "chat", LIMIT, "Ready on the new revision", |o| {
        ready_and_current(o)
            && o.status.as_ref().and_then(|s| s.stable_revision.as_deref()) != Some(rev1.as_str())
    })
    .await;
    let rev2 = o.status.and_then(|s| s.stable_revision).expect("stable");
    let new_leader = holder(&env).await.expect("a leader");
    assert_ne!(new_leader, leader);

    // The killed replica comes back as a standby; nothing changes.
    procs.push(spawn(&env, &leader, logs.path()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&env).await.as_deref(), Some(new_leader.as_str()));
    let deps: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let list = deps
        .list(&ListParams::default().labels(&format!("{}=chat", labels::SERVICE)))
        .await
        .expect("list");
    for d in &list.items {
        let want = if d.name_any() == format!("chat-{rev2}") {
            2
        } else {
            0
        };
        assert_eq!(
            d.spec.as_ref().and_then(|s| s.replicas),
            Some(want),
            "{}",
            d.name_any()
        );
    }
    let o = api.get("chat").await.expect("get");
    assert!(ready_and_current(&o));
    assert_eq!(o.status.and_then(|s| s.stable_revision), Some(rev2));
}
