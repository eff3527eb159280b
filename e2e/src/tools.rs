//! Finding the programs the local system runs: the control-plane binaries
//! that `tools/setup.sh` builds (on `PATH`), and the workspace's own binaries
//! (next to the running executable, or in `$STEWARD_BIN_DIR`).

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{bail, Context};

/// Looks `name` up on `PATH`, with a message that says how to get it.
pub fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    bail!(
        "'{name}' is not on PATH; run `./dev up` once (it builds the control plane into the cache) \
         or `source <(tools/setup.sh --print-env)` in this shell"
    )
}

/// A binary of this workspace (`steward-node`, `steward-engine`, ...).
/// Looks in `$STEWARD_BIN_DIR`, then beside the current executable and its
/// parent (test binaries live in `target/<profile>/deps`).
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("STEWARD_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("finding the current executable")?;
    if let Some(d) = exe.parent() {
        dirs.push(d.to_path_buf());
        if let Some(p) = d.parent() {
            dirs.push(p.to_path_buf());
        }
    }
    for d in &dirs {
        let p = d.join(name);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    bail!(
        "the workspace binary '{name}' was not found in {dirs:?}; build it with \
         `cargo build --release --workspace --bins`"
    )
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 for a free port")?;
    Ok(l.local_addr()?.port())
}

/// CRD YAML that `tools/setup.sh <step>` caches in the folder named by
/// `$<env_var>`: `probe` (a file the folder must hold) and the CRD names
/// `kubectl wait` checks.
pub struct CachedCrds<'a> {
    pub env_var: &'a str,
    pub step: &'a str,
    pub what: &'a str,
    pub probe: &'a str,
    pub names: &'a [&'a str],
}

/// Applies cached CRDs with `kubectl apply --server-side` (large schemas
/// exceed the client-side annotation) and waits until they are established.
pub fn install_cached_crds(
    kubeconfig: &std::path::Path,
    crds: &CachedCrds<'_>,
) -> anyhow::Result<()> {
    let dir = std::env::var_os(crds.env_var)
        .map(PathBuf::from)
        .with_context(|| {
            format!(
                "{} is not set; `source <(tools/setup.sh --print-env)`",
                crds.env_var
            )
        })?;
    if !dir.join(crds.probe).is_file() {
        bail!(
            "no {} in {}; run `tools/setup.sh {}`",
            crds.what,
            dir.display(),
            crds.step
        );
    }
    let kubectl = find_tool("kubectl")?;
    let apply = vec![
        "apply".to_owned(),
        "--server-side".into(),
        "--force-conflicts".into(),
        "-f".into(),
        dir.display().to_string(),
    ];
    let mut wait = vec!["wait".to_owned(), "--for=condition=Established".into()];
    wait.extend(crds.names.iter().map(|c| format!("crd/{c}")));
    wait.push("--timeout=60s".into());
    for args in [apply, wait] {
        let out = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(&args)
            .output()
            .with_context(|| format!("running {}", kubectl.display()))?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}
