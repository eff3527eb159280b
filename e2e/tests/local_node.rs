//! The local node runs real pods for the real control plane: Deployments
//! become Ready processes on their own loopback IPs, probes drive readiness,
//! deletion runs preStop → SIGTERM → grace → SIGKILL, and bad pods get
//! kubelet-style reasons without disturbing the rest.
//!
//! All tests share one cluster and node (started once per test process);
//! each test works in its own namespace.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use steward_e2e::testing::{eventually, shared, unique_ns};

async fn setup(prefix: &str) -> (kube::Client, String) {
    let s = shared().await.expect("shared local cluster starts");
    let client = s.cluster.client().await.expect("client");
    let ns = unique_ns(prefix);
    steward_e2e::create_namespace(&client, &ns)
        .await
        .expect("namespace");
    (client, ns)
}

fn testserver_deployment(name: &str, replicas: i32, extra_args: &[&str], grace: i64) -> Deployment {
    let mut args = vec!["--port=8080".to_string()];
    args.extend(extra_args.iter().map(|s| s.to_string()));
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "containers": [{
                        "name": "server",
                        "image": "steward-testserver:latest",
                        "args": args,
                        "env": [{"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2, "failureThreshold": 3},
                        "lifecycle": {"preStop": {"httpGet": {"path": "/prestop", "port": "http"}}}
                    }]
                }
            }
        }
    }))
    .expect("deployment json")
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn ready_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
                .collect()
        })
        .unwrap_or_default()
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn deployment_of_three_becomes_ready_pods_with_distinct_loopback_ips_answering_http() {
    let (client, ns) = setup("three").await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deploys
        .create(
            &PostParams::default(),
            &testserver_deployment("web", 3, &[], 5),
        )
        .await
        .expect("create deployment");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ready = eventually(Duration::from_secs(90), || {
        let pods = pods.clone();
        async move {
            let r = ready_pods(&pods, "web").await;
            (r.len() == 3).then_some(r)
        }
    })
    .await
    .expect("3 ready pods");
    let ips: BTreeSet<String> = ready.iter().map(pod_ip).collect();
    assert_eq!(ips.len(), 3, "pod IPs must be distinct: {ips:?}");
    let http = reqwest::Client::new();
    for p in &ready {
        let ip = pod_ip(p);
        assert!(ip.starts_with("127."), "pod IP {ip} is not loopback");
        let body: serde_json::Value = http
            .get(format!("http://{ip}:8080/"))
            .send()
            .await
            .expect("pod answers on its IP")
            .json()
            .await
            .expect("json");
        assert_eq!(body["pod"], json!(p.name_any()));
        assert_eq!(body["ip"], json!(ip));
    }
    // The Deployment controller sees them too.
    let d = eventually(Duration::from_secs(30), || {
        let deploys = deploys.clone();
        async move {
            let d = deploys.get("web").await.ok()?;
            (d.status.as_ref()?.ready_replicas == Some(3)).then_some(d)
        }
    })
    .await;
    assert!(d.is_ok(), "deployment status never showed 3 ready replicas");
}

#[tokio::test]
async fn failing_readiness_makes_a_pod_unready_and_recovery_brings_it_back() {
    let (client, ns) = setup("ready").await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deploys
        .create(
            &PostParams::default(),
            &testserver_deployment("flip", 2, &[], 5),
        )
        .await
        .expect("create");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ready = eventually(Duration::from_secs(90), || {
        let pods = pods.clone();
        async move {
            let r = ready_pods(&pods, "flip").await;
            (r.len() == 2).then_some(r)
        }
    })
    .await
    .expect("2 ready pods");
    let victim = ready[0].name_any();
    let ip = pod_ip(&ready[0]);
    let http = reqwest::Client::new();
    http.post(format!("http://{ip}:8080/ready/fail"))
        .send()
        .await
        .expect("flip readiness");
    let only_other = eventually(Duration::from_secs(30), || {
        let pods = pods.clone();
        let victim = victim.clone();
        async move {
            let r = ready_pods(&pods, "flip").await;
            (r.len() == 1 && r[0].name_any() != victim).then_some(())
        }
    })
    .await;
    assert!(
        only_other.is_ok(),
        "the pod whose readiness fails stayed Ready"
    );
    http.post(format!("http://{ip}:8080/ready/ok"))
        .send()
        .await
        .expect("restore readiness");
    let back = eventually(Duration::from_secs(30), || {
        let pods = pods.clone();
        async move { (ready_pods(&pods, "flip").await.len() == 2).then_some(()) }
    })
    .await;
    assert!(back.is_ok(), "the pod did not come back to Ready");
}

#[tokio::test]
async fn deleting_a_pod_runs_prestop_then_sigterm_honours_grace_and_is_replaced() {
    let (client, ns) = setup("grace").await;
    let marker_dir = tempfile::tempdir().expect("tempdir");
    let marker = format!("--marker={}/$(MY_NAME).log", marker_dir.path().display());
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deploys
        .create(
            &PostParams::default(),
            &testserver_deployment("stubborn", 1, &[&marker, "--ignore-sigterm"], 3),
        )
        .await
        .expect("create");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let first = eventually(Duration::from_secs(90), || {
        let pods = pods.clone();
        async move { ready_pods(&pods, "stubborn").await.into_iter().next() }
    })
    .await
    .expect("a ready pod");
    let name = first.name_any();
    let uid = first.uid().unwrap_or_default();
    let t0 = Instant::now();
    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete pod");
    // The pod object goes away only after the node finalized it.
    eventually(Duration::from_secs(60), || {
        let pods = pods.clone();
        let name = name.clone();
        let uid = uid.clone();
        async move {
            match pods.get_opt(&name).await {
                Ok(None) => Some(()),
                Ok(Some(p)) if p.uid().as_deref() != Some(uid.as_str()) => Some(()),
                _ => None,
            }
        }
    })
    .await
    .expect("pod finalized");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "a server that ignores SIGTERM must be given its 3s grace period, took {took:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "grace period overrun: {took:?}"
    );
    let log = std::fs::read_to_string(marker_dir.path().join(format!("{name}.log")))
        .expect("marker file written by the pod");
    let events: Vec<&str> = log.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        events.first().copied(),
        Some("prestop"),
        "events: {events:?}"
    );
    assert!(events.contains(&"sigterm"), "events: {events:?}");
    // The pod's process is gone: nothing answers on its IP any more.
    let ip = pod_ip(&first);
    let gone = reqwest::Client::new()
        .get(format!("http://{ip}:8080/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(gone.is_err(), "the SIGKILLed server still answers on {ip}");
    // The ReplicaSet replaces it.
    let replacement = eventually(Duration::from_secs(90), || {
        let pods = pods.clone();
        let name = name.clone();
        async move {
            ready_pods(&pods, "stubborn")
                .await
                .into_iter()
                .find(|p| p.name_any() != name)
        }
    })
    .await;
    assert!(
        replacement.is_ok(),
        "the ReplicaSet did not replace the pod"
    );
}

fn single_pod(name: &str, image: &str, gpus: Option<u32>, args: &[&str], restart: &str) -> Pod {
    let mut c = json!({"name": "main", "image": image, "args": args});
    if let Some(g) = gpus {
        c["resources"] = json!({"limits": {"nvidia.com/gpu": g.to_string()}});
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [c], "restartPolicy": restart, "terminationGracePeriodSeconds": 1}
    }))
    .expect("pod json")
}

#[tokio::test]
async fn pod_asking_for_more_gpus_than_any_node_has_is_unschedulable() {
    let (client, ns) = setup("gpu").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &single_pod("greedy", "steward-testserver", Some(64), &[], "Always"),
    )
    .await
    .expect("create");
    let cond = eventually(Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("greedy").await.ok()?;
            let c = p
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (c.status == "False").then_some(c)
        }
    })
    .await
    .expect("PodScheduled=False");
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert!(
        cond.message.unwrap_or_default().contains("nvidia.com/gpu"),
        "the message should name the GPU resource"
    );
    let p = pods.get("greedy").await.expect("get");
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
}

#[tokio::test]
async fn unknown_image_waits_with_err_image_pull_while_other_pods_run() {
    let (client, ns) = setup("badimg").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &single_pod("bad", "no-such-image:1.0", None, &[], "Always"),
    )
    .await
    .expect("create bad");
    pods.create(
        &PostParams::default(),
        &single_pod(
            "good",
            "steward-testserver",
            Some(1),
            &["--port=8080"],
            "Always",
        ),
    )
    .await
    .expect("create good");
    let waiting = eventually(Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("bad").await.ok()?;
            let cs = p.status?.container_statuses?.into_iter().next()?;
            cs.state?.waiting
        }
    })
    .await
    .expect("bad pod waiting");
    assert_eq!(waiting.reason.as_deref(), Some("ErrImagePull"));
    assert!(waiting
        .message
        .unwrap_or_default()
        .contains("no-such-image:1.0"));
    let good_running = eventually(Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("good").await.ok()?;
            let st = p.status?;
            (st.phase.as_deref() == Some("Running")).then_some(st.pod_ip?)
        }
    })
    .await
    .expect("the good pod runs next to the bad one");
    let r = reqwest::get(format!("http://{good_running}:8080/healthz")).await;
    assert!(r.is_ok_and(|r| r.status().is_success()));
}

#[tokio::test]
async fn crashing_container_is_restarted_with_backoff_and_never_policy_is_final() {
    let (client, ns) = setup("crash").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // An unknown flag makes the test server exit with status 2.
    pods.create(
        &PostParams::default(),
        &single_pod(
            "crashy",
            "steward-testserver",
            None,
            &["--no-such-flag"],
            "Always",
        ),
    )
    .await
    .expect("create crashy");
    pods.create(
        &PostParams::default(),
        &single_pod(
            "once",
            "steward-testserver",
            None,
            &["--no-such-flag"],
            "Never",
        ),
    )
    .await
    .expect("create once");
    let restarts = eventually(Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let cs = pods.get("crashy").await.ok()?.status?.container_statuses?;
            let c = cs.into_iter().next()?;
            (c.restart_count >= 2).then_some(c)
        }
    })
    .await
    .expect("restarted at least twice");
    let last = restarts
        .last_state
        .and_then(|s| s.terminated)
        .expect("last state");
    assert_eq!(last.exit_code, 2);
    let failed = eventually(Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let st = pods.get("once").await.ok()?.status?;
            (st.phase.as_deref() == Some("Failed")).then_some(st)
        }
    })
    .await
    .expect("restartPolicy Never ends Failed");
    let c = failed
        .container_statuses
        .and_then(|c| c.into_iter().next())
        .expect("status");
    assert_eq!(c.restart_count, 0);
}

#[tokio::test]
async fn failing_liveness_restarts_the_container_and_exec_prestop_runs_on_delete() {
    let (client, ns) = setup("live").await;
    let marker_dir = tempfile::tempdir().expect("tempdir");
    let marker = marker_dir.path().join("exec-prestop");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "wedge"},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main", "image": "steward-testserver", "args": ["--port=8080"],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2},
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", format!("echo $POD_NAME > {}", marker.display())]}}}
            }]
        }
    }))
    .expect("pod json");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let ip = eventually(Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let st = pods.get("wedge").await.ok()?.status?;
            (st.phase.as_deref() == Some("Running")).then_some(st.pod_ip?)
        }
    })
    .await
    .expect("running");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), || {
        let http = http.clone();
        let ip = ip.clone();
        async move {
            http.post(format!("http://{ip}:8080/healthz/fail"))
                .send()
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await
    .expect("wedge the server");
    let restarted = eventually(Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let cs = pods.get("wedge").await.ok()?.status?.container_statuses?;
            let c = cs.into_iter().next()?;
            (c.restart_count >= 1 && c.state.as_ref()?.running.is_some()).then_some(())
        }
    })
    .await;
    assert!(
        restarted.is_ok(),
        "a failing liveness probe did not restart the container"
    );
    // The restarted server is healthy again (a fresh process).
    let healthy = eventually(Duration::from_secs(30), || {
        let http = http.clone();
        let ip = ip.clone();
        async move {
            let r = http
                .get(format!("http://{ip}:8080/healthz"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    assert!(healthy.is_ok(), "the restarted container is not healthy");
    pods.delete("wedge", &DeleteParams::default())
        .await
        .expect("delete");
    let ran = eventually(Duration::from_secs(30), || {
        let marker = marker.clone();
        async move { std::fs::read_to_string(&marker).ok() }
    })
    .await
    .expect("exec preStop wrote its marker");
    assert_eq!(ran.trim(), "wedge");
}
