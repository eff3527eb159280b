//! Secure defaults (issue 13): engine pods made by the operator and the
//! chart's operator and router pods are admitted in a namespace that
//! enforces Pod Security Admission `restricted`, by the real
//! kube-apiserver's PodSecurity admission plugin. A bare pod is refused in
//! the same namespace, so the enforcement is known to be on.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use steward_e2e::testing::eventually;
use support::{
    apply, env, manifest, ready_and_current, run_cmd, tool, wait_for, Operator, TestEnv,
};

async fn enforce_restricted(env: &TestEnv) {
    let ns: Api<Namespace> = Api::all(env.client.clone());
    ns.patch(
        &env.ns,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }}})),
    )
    .await
    .expect("namespace labelled");
}

async fn bare_pod_is_refused(env: &TestEnv) {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let bare: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "steward-testserver"}]},
    }))
    .expect("pod");
    match pods.create(&PostParams::default(), &bare).await {
        Err(kube::Error::Api(s)) if s.code == 403 => assert!(
            s.message
                .contains("violates PodSecurity \"restricted:latest\""),
            "{}",
            s.message
        ),
        other => panic!("a bare pod was not refused by PodSecurity: {other:?}"),
    }
}

#[tokio::test]
async fn engine_pods_are_admitted_under_restricted_pod_security() {
    let env = env("psa-engine").await;
    enforce_restricted(&env).await;
    bare_pod_is_refused(&env).await;

    let op = Operator::start(&env);
    apply(&env, &manifest(&env, "chat", 2, json!({})))
        .await
        .expect("applies");
    wait_for(
        &env,
        "chat",
        Duration::from_secs(120),
        "Ready in a restricted namespace",
        ready_and_current,
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let list = pods
        .list(&ListParams::default().labels("serving.steward.dev/service=chat"))
        .await
        .expect("pods");
    assert_eq!(list.items.len(), 2);
    for p in &list.items {
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        let volumes = spec.volumes.clone().unwrap_or_default();
        assert!(
            volumes.iter().all(|v| v.projected.is_none()),
            "a service-account token volume was mounted: {volumes:?}"
        );
        let sc = spec.containers[0]
            .security_context
            .as_ref()
            .expect("securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
    }
    op.stop().await;
}

fn chart_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/steward")
        .display()
        .to_string()
}

fn kubectl_stdin(env: &TestEnv, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write manifests");
    let out = child.wait_with_output().expect("kubectl finishes");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn chart_pods_are_admitted_under_restricted_pod_security() {
    let env = env("psa-chart").await;
    enforce_restricted(&env).await;
    let release = env.ns.clone();
    let (ok, manifests) = run_cmd(Command::new(tool("helm")).args([
        "template",
        &release,
        &chart_dir(),
        "--namespace",
        &env.ns,
        "--set",
        &format!("operator.watchNamespace={}", env.ns),
        "--set",
        &format!("router.watchNamespace={}", env.ns),
    ]));
    assert!(ok, "helm template: {manifests}");
    let (ok, out) = kubectl_stdin(&env, &["apply", "-n", &env.ns, "-f", "-"], &manifests);
    assert!(ok, "chart applies: {out}");

    // The ReplicaSets create the pods only if admission lets them; a
    // refusal leaves the Deployment without pods (FailedCreate).
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let created = eventually(Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let names: Vec<String> = list
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            let operator = names.iter().filter(|n| !n.contains("router")).count();
            let router = names.iter().filter(|n| n.contains("router")).count();
            (operator >= 2 && router >= 2).then_some(names)
        }
    })
    .await;
    let events = run_cmd(
        Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&env.kubeconfig)
            .args(["get", "events", "-n", &env.ns]),
    )
    .1;
    assert!(
        created.is_ok(),
        "chart pods were not admitted under restricted; events:\n{events}"
    );
    let (ok, out) = kubectl_stdin(
        &env,
        &["delete", "-n", &env.ns, "--wait=false", "-f", "-"],
        &manifests,
    );
    assert!(ok, "chart deletes: {out}");
}
