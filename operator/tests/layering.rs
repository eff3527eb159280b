//! The layering rule (docs/operator.md, "Layout"): decisions are pure, so
//! only the I/O files may name a Kubernetes client, an HTTP client or a
//! Prometheus client. A decision module that grows a client fails here,
//! naming the file and line.

use std::path::{Path, PathBuf};

/// Files and folders (relative to `operator/src`) that do I/O.
const IO: &[&str] = &["controller/", "run.rs", "leader.rs", "http.rs", "main.rs"];

/// What only the I/O files may name.
const FORBIDDEN: &[&str] = &[
    "kube::Client",
    "kube::client",
    "Api<",
    "reqwest",
    "prometheus_http_query",
    "hyper::client",
    "hyper_util::client",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Offending `(file, line number, line)` of the pure files under `src`.
fn violations(src: &Path) -> Vec<(String, usize, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        if IO.iter().any(|io| rel == *io || rel.starts_with(io)) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{rel}: {e}"));
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            // A bare `Client` imported from kube (`use kube::{Api, Client}`)
            // is caught by the `Api<`/`kube::` patterns or by this one.
            let kube_import = code.starts_with("use kube") && code.contains("Client");
            if kube_import || FORBIDDEN.iter().any(|f| code.contains(f)) {
                found.push((rel.clone(), i + 1, line.trim().to_owned()));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn only_io_files_name_a_kubernetes_http_or_prometheus_client() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "clients outside controller/, run.rs, leader.rs, http.rs, main.rs:\n{}",
        found
            .iter()
            .map(|(f, n, l)| format!("  src/{f}:{n}: {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_rule_catches_a_client_in_a_decision_module() {
    // The check itself must be able to fail: a scratch tree with one pure
    // file that imports a client and one I/O file that may.
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("rollout")).expect("mkdir");
    std::fs::create_dir_all(src.join("controller")).expect("mkdir");
    std::fs::write(
        src.join("rollout/steps.rs"),
        "// kube::Client in a comment is fine\nuse kube::{Api, Client};\nfn f(c: reqwest::Client) {}\n",
    )
    .expect("write");
    std::fs::write(
        src.join("controller/mod.rs"),
        "use kube::Client;\nfn g(a: Api<Pod>) {}\n",
    )
    .expect("write");
    std::fs::write(
        src.join("autoscale.rs"),
        "fn h() { prometheus_http_query::Client::default(); }\n",
    )
    .expect("write");
    let found: Vec<(String, usize)> = violations(src)
        .into_iter()
        .map(|(f, n, _)| (f, n))
        .collect();
    assert_eq!(
        found,
        [
            ("autoscale.rs".to_owned(), 1),
            ("rollout/steps.rs".to_owned(), 2),
            ("rollout/steps.rs".to_owned(), 3),
        ]
    );
}
