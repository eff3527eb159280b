//! The Helm chart lints, renders, passes the real API server's validation
//! (`kubectl apply --dry-run=server`), and grants no wildcard permissions.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use support::{env, run_cmd, tool};

fn chart_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/steward")
        .display()
        .to_string()
}

fn render(ns: &str, extra: &[&str]) -> String {
    let (ok, out) = run_cmd(
        Command::new(tool("helm"))
            .args([
                "template",
                "steward",
                &chart_dir(),
                "--namespace",
                ns,
                "--include-crds",
            ])
            .args(extra),
    );
    assert!(ok, "helm template failed: {out}");
    out
}

#[test]
fn chart_lints_cleanly() {
    let (ok, out) = run_cmd(Command::new(tool("helm")).args(["lint", "--strict", &chart_dir()]));
    assert!(ok, "helm lint: {out}");
}

#[test]
fn rendered_rbac_has_no_wildcards() {
    for extra in [&[][..], &["--set", "operator.watchNamespace=team-a"][..]] {
        let text = render("steward-system", extra);
        for doc in text.split("\n---") {
            if doc.contains("kind: ClusterRole\n") || doc.contains("kind: Role\n") {
                assert!(!doc.contains("\"*\""), "wildcard in {doc}");
                assert!(
                    !doc.contains("- '*'") && !doc.contains("- \"*\""),
                    "wildcard in {doc}"
                );
            }
        }
    }
}

/// The operator writes an HTTPRoute per InferenceService where the Gateway
/// API is served and deletes the Services of revisions without pods or
/// traffic: the RBAC must allow exactly that, and nothing about routes
/// when `operator.gateway.routes` is off.
#[test]
fn rendered_rbac_grants_httproutes_and_service_deletes() {
    let rbac = |extra: &[&str]| {
        render("steward-system", extra)
            .split("\n---")
            .filter(|d| d.contains("kind: ClusterRole\n"))
            .collect::<Vec<_>>()
            .join("\n---")
    };
    let on = rbac(&[]);
    let routes = on
        .split("- apiGroups:")
        .find(|r| r.contains("gateway.networking.k8s.io"))
        .unwrap_or_else(|| panic!("no Gateway API rule in {on}"));
    assert!(routes.contains("httproutes"), "{routes}");
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        assert!(
            routes.contains(&format!("\"{verb}\"")),
            "{verb} missing: {routes}"
        );
    }
    let services = on
        .split("- apiGroups:")
        .find(|r| r.contains("[\"services\"]"))
        .unwrap_or_else(|| panic!("no Service rule in {on}"));
    assert!(services.contains("\"delete\""), "{services}");
    let off = rbac(&["--set", "operator.gateway.routes=false"]);
    assert!(!off.contains("httproutes"), "{off}");
    let deployment = render(
        "steward-system",
        &["--set", "operator.gateway.routes=false"],
    );
    assert!(
        deployment.contains("STEWARD_GATEWAY_ROUTES"),
        "the flag reaches the operator"
    );
}

#[tokio::test]
async fn rendered_chart_passes_server_side_dry_run() {
    let env = env("chart").await;
    for extra in [
        &[][..],
        &["--set", &format!("operator.watchNamespace={}", env.ns)][..],
    ] {
        let manifests = render(&env.ns, extra);
        let mut child = Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&env.kubeconfig)
            .args(["apply", "--dry-run=server", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifests.as_bytes())
            .expect("write manifests");
        let out = child.wait_with_output().expect("kubectl finishes");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "dry run refused: {text}");
        for kind in [
            "serviceaccount/",
            "deployment.apps/",
            "rolebinding.rbac.authorization.k8s.io/",
            "customresourcedefinition.apiextensions.k8s.io/",
        ] {
            assert!(text.contains(kind), "{kind} missing from: {text}");
        }
        // With a watched namespace, its engine pods get the ingress policy
        // (issue 13, fault 2); without one there is no namespace to put it.
        let policy = "networkpolicy.networking.k8s.io/";
        assert_eq!(
            text.contains(policy),
            !extra.is_empty(),
            "engine NetworkPolicy in: {text}"
        );
    }
}

const MONITORING_APIS: [&str; 4] = [
    "--api-versions",
    "monitoring.coreos.com/v1/PodMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
];

#[test]
fn monitors_render_only_where_the_prometheus_operator_api_exists() {
    let plain = render("steward-system", &[]);
    assert!(!plain.contains("kind: PodMonitor"), "{plain}");
    assert!(!plain.contains("kind: ServiceMonitor"));
    assert!(
        plain.contains("steward-inferenceservice.json: |-"),
        "the dashboard ConfigMap is always there"
    );
    let with = render("steward-system", &MONITORING_APIS);
    assert_eq!(with.matches("kind: PodMonitor").count(), 1, "{with}");
    assert_eq!(with.matches("kind: ServiceMonitor").count(), 2);
    // The engine monitor relabels to the labels the operator's PromQL uses.
    for label in ["namespace", "pod", "service", "revision", "rotation"] {
        assert!(
            with.contains(&format!("targetLabel: {label}\n")),
            "{label} missing"
        );
    }
    let off = render(
        "steward-system",
        &[
            &MONITORING_APIS[..],
            &["--set", "monitoring.podMonitor.enabled=false"],
        ]
        .concat(),
    );
    assert!(!off.contains("kind: PodMonitor"));
}

#[tokio::test]
async fn monitors_pass_the_real_prometheus_operator_schemas() {
    let env = env("chartmon").await;
    steward_e2e::prometheus::install_monitoring_crds(&env.kubeconfig)
        .expect("prometheus-operator CRDs install (tools/setup.sh promcrds)");
    let manifests = render(&env.ns, &MONITORING_APIS);
    let mut child = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["apply", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifests.as_bytes())
        .expect("write manifests");
    let out = child.wait_with_output().expect("kubectl finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dry run refused: {text}");
    assert!(text.contains("podmonitor.monitoring.coreos.com/"), "{text}");
    assert!(
        text.contains("servicemonitor.monitoring.coreos.com/"),
        "{text}"
    );
    assert!(text.contains("configmap/"), "{text}");
}

/// Issue 13, fault 2: engine pods accept connections only from the router,
/// the operator and Prometheus, on the engine's named port.
#[test]
fn engine_network_policy_admits_only_router_operator_and_prometheus() {
    let text = render(
        "steward-system",
        &[
            "--set",
            "operator.watchNamespace=team-a",
            "--set",
            "networkPolicy.engineNamespaces={team-b}",
        ],
    );
    let policies: Vec<serde_yaml::Value> = text
        .split("\n---")
        .filter(|d| d.contains("kind: NetworkPolicy"))
        .map(|d| serde_yaml::from_str(d).expect("policy parses"))
        .collect();
    let mut namespaces: Vec<&str> = policies
        .iter()
        .filter_map(|p| p["metadata"]["namespace"].as_str())
        .collect();
    namespaces.sort_unstable();
    assert_eq!(namespaces, ["team-a", "team-b"]);
    for p in &policies {
        let spec = &p["spec"];
        assert_eq!(
            spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
            Some("steward-engine")
        );
        assert_eq!(spec["policyTypes"][0].as_str(), Some("Ingress"));
        let rules = spec["ingress"].as_sequence().expect("ingress rules");
        assert_eq!(rules.len(), 1, "one rule: {p:?}");
        let from = rules[0]["from"].as_sequence().expect("from");
        let names: Vec<&str> = from
            .iter()
            .filter_map(|f| f["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["steward-router", "steward-operator", "prometheus"],
            "{p:?}"
        );
        // Router and operator only from the release namespace.
        for f in &from[..2] {
            assert_eq!(
                f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
                Some("steward-system")
            );
        }
        assert_eq!(rules[0]["ports"][0]["port"].as_str(), Some("http"));
    }
    let off = render(
        "steward-system",
        &[
            "--set",
            "operator.watchNamespace=team-a",
            "--set",
            "networkPolicy.enabled=false",
        ],
    );
    assert!(!off.contains("kind: NetworkPolicy"));
}
