//! Two operator processes with leader election over a Lease: only one
//! leads; killing it (SIGKILL) in the middle of a revision change lets the
//! other take the Lease and finish the change to the same end state, and
//! the killed one comes back as a standby. Leader election's own faults
//! (issue 13, fault 7): a hung leader stops before its successor starts,
//! and clock skew cannot hand a live lease to a standby.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde_json::json;
use steward_e2e::faults::FaultProxy;
use steward_e2e::testing::eventually;
use steward_operator::crd::{labels, InferenceService};
use steward_operator::leader::{Elector, LeaseConfig};
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
    steward_e2e::parts::lease_holder(&env.client, &env.ns, "steward-operator").await
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

/// A client whose every request goes through `proxy`.
async fn client_via(env: &TestEnv, proxy: &FaultProxy) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("kubeconfig");
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    cfg.cluster_url = format!("https://{}", proxy.addr()).parse().expect("url");
    cfg.read_timeout = None;
    kube::Client::try_from(cfg).expect("client")
}

fn lease_cfg(id: &str) -> LeaseConfig {
    LeaseConfig {
        name: "leader-test".into(),
        identity: id.into(),
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_secs(1),
    }
}

fn api_server(env: &TestEnv) -> std::net::SocketAddr {
    let kc = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("kubeconfig");
    let server = kc.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .expect("server");
    server
        .trim_start_matches("https://")
        .parse()
        .expect("loopback address")
}

/// Fault 7 of issue 13: a leader whose renewal call hangs kept acting
/// (the call had no timeout, and its tenure was counted from when calls
/// returned). It must stop before the standby can take over, on its own.
#[tokio::test]
async fn a_leader_whose_calls_hang_stops_before_the_standby_takes_over() {
    let env = env("leader-hang").await;
    let proxy = FaultProxy::start(api_server(&env)).await.expect("proxy");
    let a_client = client_via(&env, &proxy).await;
    let a = Elector::new(Api::<Lease>::namespaced(a_client, &env.ns), lease_cfg("a")).expect("a");
    let b = Elector::new(
        Api::<Lease>::namespaced(env.client.clone(), &env.ns),
        lease_cfg("b"),
    )
    .expect("b");
    let t0 = Instant::now();
    let tenure = a.acquire().await;
    let a_task = tokio::spawn(async move {
        let why = a.hold(tenure).await;
        (Instant::now(), why.to_string())
    });
    let b_task = tokio::spawn(async move {
        b.acquire().await;
        Instant::now()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!b_task.is_finished(), "b took a live lease");
    let frozen_at = Instant::now();
    proxy.freeze();
    let (a_stopped, why) = tokio::time::timeout(Duration::from_secs(10), a_task)
        .await
        .expect("the leader stops on its own, not only when its call returns")
        .expect("join");
    let b_leads = tokio::time::timeout(Duration::from_secs(15), b_task)
        .await
        .expect("the standby takes over")
        .expect("join");
    eprintln!(
        "froze at {:?}; a stopped {:?} later ({why}); b leads {:?} after a stopped",
        frozen_at - t0,
        a_stopped - frozen_at,
        b_leads - a_stopped
    );
    assert!(a_stopped < b_leads, "two leaders at once");
    assert!(
        a_stopped - frozen_at <= Duration::from_secs(3),
        "a acted past its lease"
    );
}

/// Fault 7: a candidate compared the holder's renewTime with its own wall
/// clock, so skew above the margin let it take a live lease. Here the
/// leader's clock is an hour behind: its renewTime always looks expired.
#[tokio::test]
async fn clock_skew_does_not_let_a_standby_take_a_live_lease() {
    let env = env("leader-skew").await;
    fn an_hour_ago() -> Timestamp {
        Timestamp::now() - SignedDuration::from_hours(1)
    }
    let a = Elector::with_wall_clock(
        Api::<Lease>::namespaced(env.client.clone(), &env.ns),
        lease_cfg("a"),
        an_hour_ago,
    )
    .expect("a");
    let b = Elector::new(
        Api::<Lease>::namespaced(env.client.clone(), &env.ns),
        lease_cfg("b"),
    )
    .expect("b");
    let tenure = a.acquire().await;
    let a_task = tokio::spawn(async move { a.hold(tenure).await.to_string() });
    let b_won = tokio::time::timeout(Duration::from_secs(10), b.acquire()).await;
    assert!(
        b_won.is_err(),
        "b took the lease of a live, renewing leader"
    );
    assert!(
        !a_task.is_finished(),
        "a lost its lease: {:?}",
        a_task.await
    );
    a_task.abort();
}

/// Fault 7: nothing checked that renewal fits inside the lease.
#[test]
fn renewal_not_well_inside_the_lease_is_refused_at_start() {
    let mut cfg = lease_cfg("a");
    cfg.renew_every = Duration::from_secs(3);
    assert!(cfg.validate().is_err());
}
