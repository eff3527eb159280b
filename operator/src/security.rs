//! Security settings of engine pods: what Pod Security Admission's
//! `restricted` level requires, and no more privilege than the engine
//! needs. The engine serves HTTP on an unprivileged port, reads its model
//! read-only and writes only to `/tmp` (an emptyDir), so it runs as a fixed
//! non-root user with every capability dropped, no privilege escalation,
//! the runtime's default seccomp profile, a read-only root filesystem and
//! no service-account token (it never calls the API server).
//!
//! Pure; `children` puts these into the pod template. Tested against the
//! real API server's PodSecurity admission in `tests/pod_security.rs`.

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, PodSecurityContext, SeccompProfile, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The default user (and group) engine containers run as: distroless's
/// `nonroot`.
pub const DEFAULT_ENGINE_UID: i64 = 65532;

/// Name of the writable scratch volume mounted at `/tmp`.
pub const TMP_VOLUME: &str = "tmp";

/// Pod-level settings.
pub fn pod(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// Container-level settings.
pub fn container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// The scratch volume behind `/tmp` (the root filesystem is read-only).
pub fn tmp_volume() -> (Volume, VolumeMount) {
    (
        Volume {
            name: TMP_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("1Gi".to_owned())),
                medium: None,
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: TMP_VOLUME.to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_level_fields_are_set() {
        let p = pod(DEFAULT_ENGINE_UID);
        assert_eq!(p.run_as_non_root, Some(true));
        assert_ne!(p.run_as_user, Some(0));
        let c = container();
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(c.read_only_root_filesystem, Some(true));
        assert_eq!(
            c.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(
            c.seccomp_profile.map(|s| s.type_),
            Some("RuntimeDefault".to_owned())
        );
    }
}
