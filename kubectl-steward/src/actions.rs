//! The steering commands as merge patches: what `pause`, `resume`,
//! `promote`, `abort` and `retry` write, decided from the object as read.
//! Pure, so each command's patch is unit-tested; [`crate::client`] sends it.
//!
//! The contract is the operator's (`steward_operator::rollout::manual`,
//! docs/rollouts.md): `spec.rollout.paused`, and one-shot annotations that
//! name the revision they are about, which the operator removes once it has
//! read them.

use serde_json::{json, Value};
use steward_operator::crd::InferenceService;
use steward_operator::rollout::manual::{is_revision, ABORT, PROMOTE, RETRY};

use crate::render::RolloutMemory;

/// A steering command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `spec.rollout.paused: true`.
    Pause,
    /// `spec.rollout.paused: false`.
    Resume,
    /// Promote the canary now.
    Promote,
    /// Roll the canary back now.
    Abort,
    /// Run a rolled-back revision again; the one in status when `None`.
    Retry(Option<String>),
}

/// A command that does not apply to the object as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotApplicable {
    /// No canary to promote or abort.
    #[error("{name} has no canary to {verb} (no rollout is under way)")]
    NoCanary {
        /// The object's name.
        name: String,
        /// `promote` or `abort`.
        verb: &'static str,
    },
    /// Retry without a revision while none is rolled back.
    #[error("{name} has no rolled-back revision to retry; name one: kubectl steward retry {name} REVISION")]
    NothingRolledBack {
        /// The object's name.
        name: String,
    },
    /// A revision argument that is not a revision hash.
    #[error("`{0}` is not a revision (10 lower-case hex digits, as in status.canaryRevision)")]
    BadRevision(String),
}

/// The patch and a line saying what it asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// JSON merge patch (RFC 7386) for the InferenceService.
    pub patch: Value,
    /// What was asked, for the user.
    pub summary: String,
}

fn annotate(key: &str, value: &str) -> Value {
    json!({ "metadata": { "annotations": { key: value } } })
}

/// The patch for `cmd` on `svc` (whose raw status gave `memory`).
pub fn plan(
    cmd: &Command,
    svc: &InferenceService,
    memory: &RolloutMemory,
) -> Result<Plan, NotApplicable> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let canary = svc
        .status
        .as_ref()
        .and_then(|s| s.canary_revision.clone())
        .filter(|c| !c.is_empty());
    let need_canary = |verb: &'static str| {
        canary.clone().ok_or(NotApplicable::NoCanary {
            name: name.clone(),
            verb,
        })
    };
    Ok(match cmd {
        Command::Pause => Plan {
            patch: json!({ "spec": { "rollout": { "paused": true } } }),
            summary: format!("{name} paused: the rollout holds its step until resumed"),
        },
        Command::Resume => Plan {
            patch: json!({ "spec": { "rollout": { "paused": false } } }),
            summary: format!("{name} resumed"),
        },
        Command::Promote => {
            let c = need_canary("promote")?;
            Plan {
                patch: annotate(PROMOTE, &c),
                summary: format!(
                    "{name}: asked to promote canary {c} (skipping its remaining steps)"
                ),
            }
        }
        Command::Abort => {
            let c = need_canary("abort")?;
            Plan {
                patch: annotate(ABORT, &c),
                summary: format!("{name}: asked to roll back canary {c}"),
            }
        }
        Command::Retry(rev) => {
            let r = match rev {
                Some(r) if is_revision(r) => r.clone(),
                Some(r) => return Err(NotApplicable::BadRevision(r.clone())),
                None => memory
                    .rolled_back_revision
                    .clone()
                    .ok_or(NotApplicable::NothingRolledBack { name: name.clone() })?,
            };
            Plan {
                patch: annotate(RETRY, &r),
                summary: format!("{name}: asked to retry revision {r} from step 1"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(canary: Option<&str>) -> InferenceService {
        let mut v = json!({
            "apiVersion": "serving.steward.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "chat", "namespace": "team-a"},
            "spec": {"model": {"name": "chat", "uri": "file:///m"}},
            "status": {"phase": "Progressing", "stableRevision": "7c9f1a0b22"}
        });
        if let Some(c) = canary {
            v["status"]["canaryRevision"] = json!(c);
        }
        serde_json::from_value(v).unwrap()
    }

    const C: &str = "3b2d44aa01";

    #[test]
    fn pause_and_resume_set_the_spec_field() {
        let p = plan(&Command::Pause, &svc(None), &RolloutMemory::default()).unwrap();
        assert_eq!(p.patch, json!({"spec": {"rollout": {"paused": true}}}));
        let p = plan(&Command::Resume, &svc(Some(C)), &RolloutMemory::default()).unwrap();
        assert_eq!(p.patch, json!({"spec": {"rollout": {"paused": false}}}));
    }

    #[test]
    fn promote_and_abort_name_the_current_canary() {
        let p = plan(&Command::Promote, &svc(Some(C)), &RolloutMemory::default()).unwrap();
        assert_eq!(
            p.patch,
            json!({"metadata": {"annotations": {"serving.steward.dev/promote": C}}})
        );
        let p = plan(&Command::Abort, &svc(Some(C)), &RolloutMemory::default()).unwrap();
        assert_eq!(
            p.patch,
            json!({"metadata": {"annotations": {"serving.steward.dev/abort": C}}})
        );
        assert!(p.summary.contains(C));
    }

    #[test]
    fn promote_without_a_canary_is_refused_with_the_reason() {
        let e = plan(&Command::Promote, &svc(None), &RolloutMemory::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "chat has no canary to promote (no rollout is under way)"
        );
    }

    #[test]
    fn retry_takes_the_rolled_back_revision_from_status_or_the_argument() {
        let mem = RolloutMemory {
            rolled_back_revision: Some("aaaaaaaaaa".into()),
            ..RolloutMemory::default()
        };
        let p = plan(&Command::Retry(None), &svc(None), &mem).unwrap();
        assert_eq!(
            p.patch,
            json!({"metadata": {"annotations": {"serving.steward.dev/retry": "aaaaaaaaaa"}}})
        );
        let p = plan(&Command::Retry(Some(C.into())), &svc(None), &mem).unwrap();
        assert_eq!(p.patch["metadata"]["annotations"][RETRY], C);
        assert!(matches!(
            plan(&Command::Retry(None), &svc(None), &RolloutMemory::default()),
            Err(NotApplicable::NothingRolledBack { .. })
        ));
        assert!(matches!(
            plan(&Command::Retry(Some("HEAD".into())), &svc(None), &mem),
            Err(NotApplicable::BadRevision(_))
        ));
    }
}
