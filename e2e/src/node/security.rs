//! A container's `securityContext` on the local node: what it enforces,
//! what it checks, what it cannot do. docs/local-system.md lists the same.
//!
//! - **Enforced**: `allowPrivilegeEscalation: false` sets `no_new_privs`
//!   on the process (as the kubelet's runtime does); `capabilities.drop`
//!   removes those capabilities from the process's bounding set before
//!   `exec`, so a process started as root gets none of them (`ALL` drops
//!   every one).
//! - **Checked like the kubelet**: `runAsNonRoot: true` with `runAsUser: 0`
//!   (pod or container level) is refused with `CreateContainerConfigError`;
//!   `capabilities.add` and `privileged: true` are refused too (the node
//!   cannot grant more than it has, and says so instead of pretending).
//! - **Not applied**: `runAsUser`/`runAsGroup` (the process keeps the node
//!   program's user: switching would lose access to host paths such as
//!   the libtorch folder), `readOnlyRootFilesystem` (there is no
//!   container root filesystem: the process sees the host's), `seccompProfile`
//!   (no filter is installed), volumes (emptyDir, projected service-account
//!   tokens: nothing is mounted, so no token reaches a process either way).
//!
//! The API server's PodSecurity admission is real and unchanged: what a
//! namespace's level refuses never reaches the node.

use std::os::unix::process::CommandExt;
use std::process::Command;

use k8s_openapi::api::core::v1::{Container, Pod};

/// What the node will do to one container's process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Set `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// Capability numbers to drop from the bounding set.
    pub drop_caps: Vec<u32>,
}

/// Capability names in kernel order (`CAP_CHOWN` = 0 …).
const CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn cap_number(name: &str) -> Option<u32> {
    let n = name.strip_prefix("CAP_").unwrap_or(name);
    CAPS.iter()
        .position(|c| c.eq_ignore_ascii_case(n))
        .and_then(|i| u32::try_from(i).ok())
}

/// The container's confinement, or the kubelet-style reason it cannot run.
pub fn confinement(pod: &Pod, c: &Container) -> Result<Confinement, String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let uid = csc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    if non_root && uid == Some(0) {
        return Err(format!(
            "container {} has runAsNonRoot and runAsUser 0 (will not run as root)",
            c.name
        ));
    }
    if csc.and_then(|s| s.privileged) == Some(true) {
        return Err(format!(
            "container {}: privileged containers are not supported by the local node",
            c.name
        ));
    }
    let caps = csc.and_then(|s| s.capabilities.as_ref());
    if let Some(add) = caps.and_then(|c| c.add.as_ref()).filter(|a| !a.is_empty()) {
        return Err(format!(
            "container {}: capabilities.add {add:?} is not supported by the local node",
            c.name
        ));
    }
    let mut drop_caps = Vec::new();
    for name in caps.and_then(|c| c.drop.as_ref()).into_iter().flatten() {
        if name.eq_ignore_ascii_case("ALL") {
            drop_caps = (0..64).collect();
            break;
        }
        match cap_number(name) {
            Some(n) => drop_caps.push(n),
            None => return Err(format!("container {}: unknown capability {name:?}", c.name)),
        }
    }
    Ok(Confinement {
        no_new_privs: csc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        drop_caps,
    })
}

/// Applies the confinement to the process about to be started.
pub fn apply(cmd: &mut Command, conf: &Confinement) {
    if *conf == Confinement::default() {
        return;
    }
    let conf = conf.clone();
    // SAFETY: only prctl(2) runs between fork and exec; it is
    // async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for &cap in &conf.drop_caps {
                // EINVAL past the kernel's last capability is expected;
                // EPERM means the node itself lacks CAP_SETPCAP (not root),
                // in which case its children have no capabilities anyway.
                libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0);
            }
            if !conf.drop_caps.is_empty() {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
            }
            if conf.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> (Pod, Container) {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": v,
        }))
        .expect("pod");
        let c = p.spec.as_ref().expect("spec").containers[0].clone();
        (p, c)
    }

    #[test]
    fn restricted_settings_confine_the_process() {
        let (p, c) = pod(serde_json::json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
            "containers": [{"name": "c", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }));
        let conf = confinement(&p, &c).expect("runs");
        assert!(conf.no_new_privs);
        assert_eq!(conf.drop_caps.len(), 64);
    }

    #[test]
    fn what_the_node_cannot_honour_is_refused_not_ignored() {
        for spec in [
            serde_json::json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0},
                "containers": [{"name": "c"}]}),
            serde_json::json!({"containers": [{"name": "c",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 0}}]}),
            serde_json::json!({"containers": [{"name": "c",
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}),
            serde_json::json!({"containers": [{"name": "c",
                "securityContext": {"privileged": true}}]}),
        ] {
            let (p, c) = pod(spec.clone());
            assert!(confinement(&p, &c).is_err(), "{spec}");
        }
    }

    #[test]
    fn named_capabilities_map_to_kernel_numbers() {
        assert_eq!(cap_number("CAP_CHOWN"), Some(0));
        assert_eq!(cap_number("NET_RAW"), Some(13));
        assert_eq!(cap_number("SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("nope"), None);
    }

    #[test]
    fn a_confined_child_has_no_capabilities_and_no_new_privs() {
        let conf = Confinement {
            no_new_privs: true,
            drop_caps: (0..64).collect(),
        };
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status",
        ]);
        apply(&mut cmd, &conf);
        let out = cmd.output().expect("sh runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NoNewPrivs:\t1"), "{text}");
        // As root the bounding and effective sets are empty; as another
        // user they were empty already.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(text.contains("CapBnd:\t0000000000000000"), "{text}");
        }
        assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    }
}
