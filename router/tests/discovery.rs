//! Discovery against the real API server (steward-e2e's LocalCluster:
//! etcd, kube-apiserver, controller-manager, scheduler on loopback) with
//! the committed CRD: the index follows InferenceServices and pods, and a
//! weight change in status reaches the routing table within a second.
//!
//! Pods are created with a scheduler name nobody serves, so no node runs
//! them; the test writes their status (IP, Ready) itself, as a kubelet
//! would, and points them at in-process test engines.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use steward_e2e::create_namespace;
use steward_e2e::testing::shared;
use steward_router::discovery::{self, watch::inference_service_resource, DiscoveryConfig};
use steward_router::index::SharedIndex;

const HOLD: &str = "steward.dev/test-hold";

async fn install_crd(client: &kube::Client) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/inferenceservice.yaml");
    let text = std::fs::read_to_string(path).expect("read CRD yaml");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parse CRD yaml");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        // Another test of this binary installed it on the shared cluster.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create CRD: {e}"),
    }
    let name = crd.metadata.name.clone().expect("CRD name");
    let established = eventually_async(Duration::from_secs(20), || async {
        api.get(&name)
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
    assert!(established, "CRD not established");
}

async fn eventually_async<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_pod(pods: &Api<Pod>, name: &str, revision: &str, addr: SocketAddr, hold: bool) {
    let mut labels = json!({
        "serving.steward.dev/service": SVC,
        "serving.steward.dev/revision": revision,
        "serving.steward.dev/rotation": "serving",
    });
    if revision.is_empty() {
        // Malformed: the revision label is missing.
        labels = json!({"serving.steward.dev/service": SVC});
    }
    let finalizers: Vec<&str> = if hold { vec![HOLD] } else { vec![] };
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "finalizers": finalizers},
        "spec": {
            "schedulerName": "steward-nobody",
            "containers": [{"name": "engine", "image": "steward-engine",
                            "ports": [{"name": "http", "containerPort": addr.port()}]}]
        }
    }))
    .expect("pod manifest");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let ip = addr.ip().to_string();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }})),
    )
    .await
    .expect("patch pod status");
}

async fn set_traffic(api: &Api<DynamicObject>, traffic: serde_json::Value) {
    api.patch_status(
        SVC,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"traffic": traffic}})),
    )
    .await
    .expect("patch traffic");
}

fn endpoints_of(index: &SharedIndex, revision: &str) -> Vec<SocketAddr> {
    index
        .table()
        .lookup(MODEL)
        .and_then(|s| {
            s.revisions
                .iter()
                .find(|r| r.name == revision)
                .map(|r| r.endpoints.iter().map(|e| e.addr).collect())
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_follows_the_api_server_and_weight_changes_apply_within_a_second() {
    let cluster = &shared().await.expect("shared local cluster").cluster;
    let client = cluster.client().await.expect("client");
    install_crd(&client).await;
    let ns = format!("router-disc-{:06x}", rand::random::<u32>() & 0xff_ffff);
    create_namespace(&client, &ns).await.expect("namespace");

    let a = TestEngine::start("a", 41).await;
    let b = TestEngine::start("b", 42).await;
    let index = SharedIndex::new();
    let router = start_router(proxy_config(), index.clone()).await;
    let ready = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn(discovery::run(
        client.clone(),
        DiscoveryConfig {
            namespace: Some(ns.clone()),
            resync_interval: Duration::from_secs(2),
        },
        index.clone(),
        router.state.proxy.metrics.clone(),
        ready.clone(),
    ));

    let isvcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &inference_service_resource());
    let obj = DynamicObject::new(SVC, &inference_service_resource()).data(json!({
        "spec": {"model": {"name": MODEL, "uri": "pvc://models/chat-small"}}
    }));
    isvcs
        .create(&PostParams::default(), &obj)
        .await
        .expect("create InferenceService");
    set_traffic(&isvcs, json!([{"revision": "r1", "weight": 100}])).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create_pod(&pods, "chat-r1-a", "r1", a.addr, false).await;
    create_pod(&pods, "chat-r2-b", "r2", b.addr, true).await;
    create_pod(&pods, "chat-bad", "", b.addr, false).await;

    assert!(
        eventually(Duration::from_secs(15), || endpoints_of(&index, "r1")
            == vec![a.addr])
        .await,
        "index did not pick up the service and its pod: {:?}",
        index.table().lookup(MODEL)
    );
    assert!(
        ready.load(std::sync::atomic::Ordering::SeqCst),
        "discovery reports synced"
    );
    let url = format!("http://{}/v1/completions", router.addr);
    let http = client_http();
    let r = post_completion(&http, &url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(a.requests(), 1);

    // Shift all traffic to r2: it must reach the table within 1s of the status write.
    let t0 = Instant::now();
    set_traffic(
        &isvcs,
        json!([{"revision": "r1", "weight": 0}, {"revision": "r2", "weight": 100}]),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(1), || endpoints_of(&index, "r2")
            == vec![b.addr]
            && endpoints_of(&index, "r1").is_empty())
        .await,
        "weight change not applied within 1s: {:?}",
        index.table().lookup(MODEL)
    );
    eprintln!(
        "weight change reached the routing table in {:?}",
        t0.elapsed()
    );
    for _ in 0..5 {
        let r = post_completion(&http, &url).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!((a.requests(), b.requests()), (1, 5));

    // Deleting b's pod (held by a finalizer, so it stays terminating) takes it out at once.
    pods.delete("chat-r2-b", &DeleteParams::default())
        .await
        .expect("delete pod");
    assert!(
        eventually(Duration::from_secs(5), || endpoints_of(&index, "r2")
            .is_empty())
        .await,
        "terminating pod still routed"
    );
    let r = post_completion(&http, &url).await;
    assert_eq!(r.status(), 503, "known model without endpoints");
    assert!(r.headers().get("retry-after").is_some());

    let m = router.state.metrics_text();
    assert!(
        metric(
            &m,
            "steward_router_discovery_malformed_total",
            &["kind=\"pod\""]
        ) >= 1.0,
        "{m}"
    );

    // A periodic resync re-lists without disturbing the index.
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(
                &router.state.metrics_text(),
                "steward_router_discovery_events_total",
                &["event=\"resync\""],
            ) >= 2.0
        })
        .await
    );
    assert!(endpoints_of(&index, "r2").is_empty());
    assert!(index.table().lookup(MODEL).is_some());

    // Deleting the InferenceService makes the model unknown.
    isvcs
        .delete(SVC, &DeleteParams::default())
        .await
        .expect("delete isvc");
    assert!(
        eventually(Duration::from_secs(5), || index
            .table()
            .lookup(MODEL)
            .is_none())
        .await
    );
    let r = post_completion(&http, &url).await;
    assert_eq!(r.status(), 404);

    pods.patch(
        "chat-r2-b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release finalizer");
    watch.abort();
}

fn client_http() -> reqwest::Client {
    common::client()
}

async fn create_isvc(client: &kube::Client, ns: &str, name: &str, model: &str) {
    let isvcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &inference_service_resource());
    let obj = DynamicObject::new(name, &inference_service_resource()).data(json!({
        "spec": {"model": {"name": model, "uri": "pvc://models/x"}}
    }));
    isvcs
        .create(&PostParams::default(), &obj)
        .await
        .expect("create InferenceService");
    isvcs
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"traffic": [{"revision": "r1", "weight": 100}]}})),
        )
        .await
        .expect("patch traffic");
}

async fn create_pod_in(client: &kube::Client, ns: &str, name: &str, addr: SocketAddr) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    create_pod(&pods, name, "r1", addr, false).await;
}

/// Fault 1 (issue 13): a newer InferenceService in another namespace that
/// claims a model name already taken must not capture its traffic, even
/// when its namespace sorts first; the conflict is counted, a qualified
/// `namespace/model` name reaches only its own namespace, and the name
/// passes to the next claim when the owner goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_claim_in_another_namespace_cannot_take_a_model_name() {
    let cluster = &shared().await.expect("shared local cluster").cluster;
    let client = cluster.client().await.expect("client");
    install_crd(&client).await;
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    // The victim's namespace sorts after the newcomer's.
    let (old_ns, new_ns) = (format!("router-zz-{tag}"), format!("router-aa-{tag}"));
    for ns in [&old_ns, &new_ns] {
        create_namespace(&client, ns).await.expect("namespace");
    }
    let model = format!("shared-model-{tag}");
    let victim = TestEngine::start("victim", 43).await;
    let thief = TestEngine::start("thief", 44).await;
    let index = SharedIndex::new();
    let router = start_router(proxy_config(), index.clone()).await;
    let watch = tokio::spawn(discovery::run(
        client.clone(),
        DiscoveryConfig {
            namespace: None,
            resync_interval: Duration::from_secs(30),
        },
        index.clone(),
        router.state.proxy.metrics.clone(),
        Arc::new(AtomicBool::new(false)),
    ));
    create_isvc(&client, &old_ns, "chat", &model).await;
    create_pod_in(&client, &old_ns, "chat-r1-v", victim.addr).await;
    // creationTimestamp has one-second resolution: make the newcomer strictly newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_isvc(&client, &new_ns, "chat", &model).await;
    create_pod_in(&client, &new_ns, "chat-r1-t", thief.addr).await;
    let both_seen = eventually(Duration::from_secs(15), || {
        index.update(|i| {
            i.services().filter(|s| s.model == model).count() == 2
                && i.pods()
                    .filter(|p| p.key.namespace == old_ns || p.key.namespace == new_ns)
                    .count()
                    == 2
        })
    })
    .await;
    assert!(both_seen, "the index never saw both claims and their pods");

    let url = format!("http://{}/v1/completions", router.addr);
    let http = client_http();
    for _ in 0..10 {
        let r = http
            .post(&url)
            .json(&json!({"model": model, "prompt": "hi", "max_tokens": 1}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        (victim.requests(), thief.requests()),
        (10, 0),
        "the newer claim in {new_ns} captured traffic of {old_ns}"
    );
    // Qualified names reach only their own namespace's claim.
    let r = http
        .post(&url)
        .json(&json!({"model": format!("{old_ns}/{model}"), "prompt": "hi", "max_tokens": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = http
        .post(&url)
        .json(&json!({"model": format!("{new_ns}/{model}"), "prompt": "hi", "max_tokens": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 409);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("model_name_conflict"), "{body}");
    assert_eq!(thief.requests(), 0);
    let conflicts = eventually(Duration::from_secs(3), || {
        metric(
            &router.state.metrics_text(),
            "steward_router_model_name_conflicts",
            &[&format!("namespace=\"{new_ns}\"")],
        ) == 1.0
    })
    .await;
    assert!(conflicts, "{}", router.state.metrics_text());

    // The owner goes: the next claim takes the name.
    let old_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &old_ns, &inference_service_resource());
    old_api
        .delete("chat", &DeleteParams::default())
        .await
        .expect("delete owner");
    let moved = eventually(Duration::from_secs(5), || {
        index
            .table()
            .lookup(&model)
            .is_some_and(|s| s.key.namespace == new_ns)
    })
    .await;
    assert!(moved, "the name did not pass to the remaining claim");
    watch.abort();
}
