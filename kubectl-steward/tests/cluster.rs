//! `kubectl-steward` against the shared local cluster (real
//! kube-apiserver, RBAC, CRD from crds/): each command writes the field
//! or annotation of the manual-control contract, `status` draws the live
//! object and `-w` redraws on a change, and the errors a user meets (not
//! found, no permission, no cluster, nothing to promote) are worded for
//! them and exit non-zero. No operator runs here: the plugin's side of the
//! contract is what is tested (the operator's side is the rollout's).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{json, Value};
use steward_e2e::testing::{shared, unique_ns};
use steward_operator::crd::InferenceService;
use tokio::io::AsyncBufReadExt;
use tokio::sync::OnceCell;

const CANARY: &str = "3b2d44aa01";
const STABLE: &str = "7c9f1a0b22";

struct Env {
    client: kube::Client,
    ns: String,
    kubeconfig: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

async fn install_crd(client: &kube::Client) -> anyhow::Result<()> {
    let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("crds/inferenceservice.yaml"),
    )?)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "inferenceservices.serving.steward.dev",
        &PatchParams::apply("steward-tests").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(
            crds,
            "inferenceservices.serving.steward.dev",
            conditions::is_crd_established(),
        ),
    )
    .await??;
    Ok(())
}

async fn env(prefix: &str) -> Env {
    static CRD: OnceCell<()> = OnceCell::const_new();
    let s = shared().await.expect("shared local cluster starts");
    let client = s.cluster.client().await.expect("client");
    CRD.get_or_try_init(|| install_crd(&client))
        .await
        .expect("CRD installs");
    let ns = unique_ns(prefix);
    steward_e2e::create_namespace(&client, &ns)
        .await
        .expect("namespace");
    Env {
        client,
        ns,
        kubeconfig: s.cluster.kubeconfig_path().to_path_buf(),
    }
}

/// Creates `chat` with a canary at step 2 (status written as the operator
/// would).
async fn create_chat(env: &Env) -> Api<InferenceService> {
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let obj: InferenceService = serde_json::from_value(json!({
        "apiVersion": "serving.steward.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": env.ns},
        "spec": {"model": {"name": "chat", "uri": "file:///models/chat"}, "engine": {"gpus": 0}}
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create chat");
    set_status(
        &api,
        json!({
            "phase": "Progressing", "stableRevision": STABLE, "canaryRevision": CANARY,
            "canaryWeight": 25, "rollout": {"step": 2},
            "traffic": [{"revision": STABLE, "weight": 75}, {"revision": CANARY, "weight": 25}],
            "replicas": {"serving": 2, "warm": 0, "ready": 2, "desired": 2},
            "revisions": [
                {"name": STABLE, "role": "Stable", "desired": 1, "ready": 1, "pods": 1},
                {"name": CANARY, "role": "Canary", "desired": 1, "ready": 1, "pods": 1}
            ],
            "alarms": [{"name": "ttftP99", "revision": CANARY, "state": "Ok", "value": "412ms", "threshold": "> 800ms"}],
            "quality": {
                "canaryRevision": CANARY, "stableRevision": STABLE, "step": 2, "state": "Pass",
                "categories": [{"name": "facts", "entries": 4, "canary": 1.0, "stable": 1.0, "state": "Pass"}]
            },
        }),
    )
    .await;
    api
}

async fn set_status(api: &Api<InferenceService>, status: Value) {
    api.patch_status(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .expect("status patch");
}

fn plugin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubectl-steward"))
}

/// Runs the plugin with this env's kubeconfig and namespace.
fn steward(env: &Env, args: &[&str]) -> Output {
    steward_with(&env.kubeconfig, &env.ns, args)
}

fn steward_with(kubeconfig: &Path, ns: &str, args: &[&str]) -> Output {
    let out = plugin()
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl-steward");
    eprintln!(
        "kubectl-steward {args:?} -> {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn get(api: &Api<InferenceService>) -> InferenceService {
    api.get("chat").await.expect("get chat")
}

fn annotation(svc: &InferenceService, key: &str) -> Option<String> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_sets_its_field_or_annotation() {
    let t0 = Instant::now();
    let env = env("plugin-cmds").await;
    let api = create_chat(&env).await;

    assert!(steward(&env, &["pause", "chat"]).status.success());
    assert!(get(&api).await.spec.rollout.paused);
    assert!(steward(&env, &["resume", "chat"]).status.success());
    assert!(!get(&api).await.spec.rollout.paused);

    let o = steward(&env, &["promote", "chat"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains(CANARY));
    assert_eq!(
        annotation(&get(&api).await, "serving.steward.dev/promote").as_deref(),
        Some(CANARY)
    );
    assert!(steward(&env, &["abort", "chat"]).status.success());
    assert_eq!(
        annotation(&get(&api).await, "serving.steward.dev/abort").as_deref(),
        Some(CANARY)
    );

    // Retry needs a rolled-back revision: none in status yet.
    let o = steward(&env, &["retry", "chat"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no rolled-back revision to retry"),
        "{}",
        stderr(&o)
    );
    // Named on the command line, or taken from status.rollout.
    assert!(steward(&env, &["retry", "chat", STABLE]).status.success());
    assert_eq!(
        annotation(&get(&api).await, "serving.steward.dev/retry").as_deref(),
        Some(STABLE)
    );
    // status.rollout may not be in this operator's schema yet; the
    // plugin reads it leniently, so write it only where the schema has it.
    let has_rollout_memory =
        std::fs::read_to_string(repo_root().join("crds/inferenceservice.yaml"))
            .map(|t| t.contains("rolledBackRevision"))
            .unwrap_or(false);
    if has_rollout_memory {
        set_status(&api, json!({"canaryRevision": null, "rollout": {"step": null, "rolledBackRevision": CANARY}})).await;
        assert!(steward(&env, &["retry", "chat"]).status.success());
        assert_eq!(
            annotation(&get(&api).await, "serving.steward.dev/retry").as_deref(),
            Some(CANARY)
        );
    } else {
        set_status(
            &api,
            json!({"canaryRevision": null, "rollout": {"step": null}}),
        )
        .await;
    }

    // No canary any more: promote and abort say so and write nothing.
    let before = get(&api).await.metadata.resource_version;
    for verb in ["promote", "abort"] {
        let o = steward(&env, &[verb, "chat"]);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains(&format!("chat has no canary to {verb}")),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(get(&api).await.metadata.resource_version, before);

    // Plain kubectl-style merge patches reach the same fields.
    api.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"rollout": {"paused": true}}})),
    )
    .await
    .expect("plain patch");
    let o = steward(&env, &["status", "chat"]);
    assert!(stdout(&o).contains("PAUSED"), "{}", stdout(&o));
    eprintln!("commands scenario took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_draws_the_live_object_and_watch_redraws_on_change() {
    let env = env("plugin-status").await;
    let api = create_chat(&env).await;
    let o = steward(&env, &["status", "chat"]);
    assert!(o.status.success());
    let text = stdout(&o);
    for want in [
        "Name:         chat",
        &format!("Namespace:    {}", env.ns),
        "Phase:        Progressing",
        "Step:         2/3  weight 25%",
        &format!("Canary:       {CANARY}"),
        &format!("Traffic:      {STABLE} 75%, {CANARY} 25%"),
        "chat (InferenceService)",
        &format!("revision {CANARY}  canary  25%"),
        &format!("ttftP99  {CANARY}  Ok  412ms"),
        "fires > 800ms",
        &format!("quality  ✔ Pass  step 2  canary {CANARY} vs stable {STABLE}"),
        "facts  canary 1.00  stable 1.00  4 entries",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    // -w: the first frame, then a new one when the weight changes.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-steward"))
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["-n", &env.ns, "status", "chat", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn -w");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = String::new();
    let wait_for = |needle: String| {
        let deadline = Instant::now() + Duration::from_secs(30);
        (needle, deadline)
    };
    let (needle, deadline) = wait_for("Step:         2/3  weight 25%".into());
    while !seen.contains(&needle) {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("first frame within 30s")
            .expect("read")
            .expect("line");
        seen.push_str(&line);
        seen.push('\n');
    }
    set_status(
        &api,
        json!({"canaryWeight": 50, "rollout": {"step": 3},
               "traffic": [{"revision": STABLE, "weight": 50}, {"revision": CANARY, "weight": 50}]}),
    )
    .await;
    let (needle, deadline) = wait_for("Step:         3/3  weight 50%".into());
    seen.clear();
    while !seen.contains(&needle) {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("redraw within 30s of the change")
            .expect("read")
            .expect("line");
        seen.push_str(&line);
        seen.push('\n');
    }
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_problem_and_exit_non_zero() {
    let env = env("plugin-errors").await;
    create_chat(&env).await;

    // Not found.
    let o = steward(&env, &["status", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("inferenceservice {}/nope not found", env.ns)),
        "{}",
        stderr(&o)
    );

    // No permission: a user who may read InferenceServices but not patch
    // them or list pods (impersonated by the admin kubeconfig).
    let rbac = json!([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "llmsvc-viewer", "namespace": env.ns},
         "rules": [{"apiGroups": ["serving.steward.dev"], "resources": ["inferenceservices"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "llmsvc-viewer", "namespace": env.ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "llmsvc-viewer"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "viewer"}]}
    ]);
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(env.client.clone(), &env.ns);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(rbac[0].clone()).expect("role"),
        )
        .await
        .expect("role");
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(env.client.clone(), &env.ns);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(rbac[1].clone()).expect("binding"),
        )
        .await
        .expect("binding");
    let mut kc: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&env.kubeconfig).expect("read kubeconfig"))
            .expect("kubeconfig yaml");
    kc["users"][0]["user"]["as"] = json!("viewer");
    let dir = tempfile::tempdir().expect("tempdir");
    let viewer = dir.path().join("viewer.kubeconfig");
    std::fs::write(&viewer, serde_yaml::to_string(&kc).expect("yaml")).expect("write");
    // RBAC caches may take a moment to see the new binding.
    let deadline = Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o = steward_with(&viewer, &env.ns, &["status", "chat"]);
        if o.status.success() || Instant::now() > deadline {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(o.status.success(), "viewer may read: {}", stderr(&o));
    assert!(
        stdout(&o).contains("(pods not shown: no permission to list pods)"),
        "{}",
        stdout(&o)
    );
    let o = steward_with(&viewer, &env.ns, &["pause", "chat"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "no permission to patch inferenceservices in namespace {}",
            env.ns
        )),
        "{}",
        stderr(&o)
    );

    // No cluster: a kubeconfig whose server nobody listens on.
    let port = steward_e2e::tools::free_port().expect("port");
    kc["users"][0]["user"]
        .as_object_mut()
        .map(|u| u.remove("as"));
    kc["clusters"][0]["cluster"]["server"] = json!(format!("https://127.0.0.1:{port}"));
    let dead = dir.path().join("dead.kubeconfig");
    std::fs::write(&dead, serde_yaml::to_string(&kc).expect("yaml")).expect("write");
    let o = steward_with(&dead, &env.ns, &["status", "chat"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "cannot reach the cluster at https://127.0.0.1:{port}"
        )),
        "{}",
        stderr(&o)
    );

    // No kubeconfig at all.
    let o = steward_with(&dir.path().join("missing"), &env.ns, &["status", "chat"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no usable kubeconfig"),
        "{}",
        stderr(&o)
    );
}
