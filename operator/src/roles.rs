//! Serving vs warm: which ready pods of the serving revision are in
//! rotation (`role=serving`) and which are kept loaded but out of rotation
//! (`role=warm`).
//!
//! Pods start as `serving` (the template's label). Of the serving
//! revision's ready pods, the first `min` stay or become serving
//! (pods already serving first, so nobody is taken out of rotation without
//! need), the next `warm` become warm, and any beyond that serve. A warm pod
//! is promoted when a serving pod stops being ready. Only label changes are
//! returned, so a settled pool costs no writes.

use crate::observe::{Observed, PodView};

/// A pod whose role label must change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleChange {
    /// Pod name.
    pub pod: String,
    /// `true` to label it warm, `false` to label it serving.
    pub warm: bool,
}

/// The label changes that bring `revision`'s ready pods to `min` serving
/// and `warm` warm.
pub fn assign(obs: &Observed, revision: &str, min: i32, warm: i32) -> Vec<RoleChange> {
    let mut ready: Vec<&PodView> = obs
        .pods_of(revision)
        .filter(|p| p.ready && !p.terminating)
        .collect();
    // Serving pods first, then by name: a stable order that keeps pods in
    // rotation where they are.
    ready.sort_by(|a, b| a.warm.cmp(&b.warm).then_with(|| a.name.cmp(&b.name)));
    let min = usize::try_from(min.max(0)).unwrap_or(0);
    let warm = usize::try_from(warm.max(0)).unwrap_or(0);
    ready
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let want_warm = i >= min && i < min + warm;
            (p.warm != want_warm).then(|| RoleChange {
                pod: p.name.clone(),
                warm: want_warm,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::build::{observed, pod};

    fn warm(name: &str) -> PodView {
        PodView {
            warm: true,
            ..pod(name, "r1", true)
        }
    }

    #[test]
    fn pods_beyond_min_become_warm() {
        let obs = observed(
            vec![],
            vec![
                pod("a", "r1", true),
                pod("b", "r1", true),
                pod("c", "r1", true),
            ],
        );
        assert_eq!(
            assign(&obs, "r1", 2, 1),
            vec![RoleChange {
                pod: "c".into(),
                warm: true
            }]
        );
    }

    #[test]
    fn settled_pool_needs_no_change() {
        let obs = observed(
            vec![],
            vec![pod("a", "r1", true), pod("b", "r1", true), warm("c")],
        );
        assert!(assign(&obs, "r1", 2, 1).is_empty());
    }

    #[test]
    fn warm_pod_is_promoted_when_a_serving_pod_is_lost() {
        let obs = observed(
            vec![],
            vec![pod("a", "r1", false), pod("b", "r1", true), warm("c")],
        );
        assert_eq!(
            assign(&obs, "r1", 2, 1),
            vec![RoleChange {
                pod: "c".into(),
                warm: false
            }]
        );
    }

    #[test]
    fn no_warm_pool_keeps_everything_serving() {
        let obs = observed(vec![], vec![pod("a", "r1", true), warm("b")]);
        assert_eq!(
            assign(&obs, "r1", 1, 0),
            vec![RoleChange {
                pod: "b".into(),
                warm: false
            }]
        );
    }

    #[test]
    fn other_revisions_are_left_alone() {
        let obs = observed(vec![], vec![pod("a", "r2", true), pod("b", "r2", true)]);
        assert!(assign(&obs, "r1", 1, 1).is_empty());
    }
}
