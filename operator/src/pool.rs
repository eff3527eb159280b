//! The pool: which ready pods of a revision are in rotation.
//!
//! Words: a pod's [`Rotation`] (its `serving.steward.dev/rotation` label:
//! serving, warm or draining) says whether the router may send to it; a
//! revision's role (`RevisionRole`: starting, stable, canary, retiring,
//! retired) says what the rollout does with the whole revision. The two are
//! never mixed.
//!
//! Pods start as `serving` (the template's label). Of a revision's ready
//! pods, the first `serving` of its [`ScalePlan`] stay or become serving
//! (pods already serving first, so nobody leaves rotation without need), the
//! next `warm` become warm, and any beyond that serve. A warm pod is promoted
//! when a serving pod stops being ready. Draining pods are on their way out
//! and are never put back. Only label changes are returned, so a settled
//! pool costs no writes.

use crate::autoscale::ScalePlan;
use crate::crd::labels;
use crate::observe::{Observed, PodView};

/// A pod's place in rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rotation {
    /// In rotation: the router sends to it when it is ready.
    Serving,
    /// Loaded and ready, out of rotation; promoted in seconds.
    Warm,
    /// Out of rotation on its way out: its streams finish, then it goes.
    Draining,
}

impl Rotation {
    /// The label value.
    pub const fn as_label(self) -> &'static str {
        match self {
            Rotation::Serving => labels::ROTATION_SERVING,
            Rotation::Warm => labels::ROTATION_WARM,
            Rotation::Draining => labels::ROTATION_DRAINING,
        }
    }

    /// Reads the label; `None` when it is missing or holds a value this
    /// operator does not know (the router does not route to such a pod, and
    /// the pool labels it).
    pub fn from_label(value: &str) -> Option<Self> {
        match value {
            labels::ROTATION_SERVING => Some(Rotation::Serving),
            labels::ROTATION_WARM => Some(Rotation::Warm),
            labels::ROTATION_DRAINING => Some(Rotation::Draining),
            _ => None,
        }
    }

    /// Order of preference when choosing who serves: pods already serving
    /// first, then warm ones, then unlabelled ones.
    fn keep_order(rotation: Option<Rotation>) -> u8 {
        match rotation {
            Some(Rotation::Serving) => 0,
            Some(Rotation::Warm) => 1,
            Some(Rotation::Draining) | None => 2,
        }
    }
}

/// A pod whose rotation label must change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationChange {
    /// Pod name.
    pub pod: String,
    /// The label it gets.
    pub rotation: Rotation,
}

/// The label changes that bring `revision`'s ready pods to the plan's
/// serving and warm counts.
pub fn assign(obs: &Observed, revision: &str, plan: ScalePlan) -> Vec<RotationChange> {
    assign_leaving(obs, revision, plan, None)
}

/// As [`assign`], with one pod leaving rotation this pass (the
/// autoscaler's scale-in): it is labelled draining and not counted.
pub fn assign_leaving(
    obs: &Observed,
    revision: &str,
    plan: ScalePlan,
    leaving: Option<&str>,
) -> Vec<RotationChange> {
    let leaves = |p: &PodView| leaving == Some(p.name.as_str());
    let mut ready: Vec<&PodView> = obs
        .pods_of(revision)
        .filter(|p| {
            p.ready && !p.terminating && p.rotation != Some(Rotation::Draining) && !leaves(p)
        })
        .collect();
    // Serving pods first, longest ready first, then by name: a stable order
    // that keeps pods in rotation where they are. A new pod carries the
    // template's `serving` label before it was ever in rotation; ordering
    // by readiness makes it the one that goes warm (backfill), not a pod
    // that has been serving.
    ready.sort_by_key(|p| {
        (
            Rotation::keep_order(p.rotation),
            p.ready_since.is_none(),
            p.ready_since,
            p.name.as_str(),
        )
    });
    let serving = usize::try_from(plan.serving.max(0)).unwrap_or(0);
    let warm = usize::try_from(plan.warm.max(0)).unwrap_or(0);
    ready
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let want = if i >= serving && i < serving.saturating_add(warm) {
                Rotation::Warm
            } else {
                Rotation::Serving
            };
            (p.rotation != Some(want)).then(|| RotationChange {
                pod: p.name.clone(),
                rotation: want,
            })
        })
        .chain(
            obs.pods_of(revision)
                .filter(|p| leaves(p) && !p.terminating && p.rotation != Some(Rotation::Draining))
                .map(|p| RotationChange {
                    pod: p.name.clone(),
                    rotation: Rotation::Draining,
                }),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::build::{observed, pod};

    fn warm(name: &str) -> PodView {
        PodView {
            rotation: Some(Rotation::Warm),
            ..pod(name, "r1", true)
        }
    }

    fn plan(serving: i32, warm: i32) -> ScalePlan {
        ScalePlan {
            serving,
            warm,
            draining: 0,
        }
    }

    fn change(pod: &str, rotation: Rotation) -> RotationChange {
        RotationChange {
            pod: pod.into(),
            rotation,
        }
    }

    #[test]
    fn pods_beyond_serving_become_warm() {
        let obs = observed(
            vec![],
            vec![
                pod("a", "r1", true),
                pod("b", "r1", true),
                pod("c", "r1", true),
            ],
        );
        assert_eq!(
            assign(&obs, "r1", plan(2, 1)),
            vec![change("c", Rotation::Warm)]
        );
    }

    #[test]
    fn a_new_pod_backfills_the_pool_instead_of_a_serving_one_leaving() {
        // After a scale-out 2 -> 3 (warm c promoted), the new pod "a2" comes
        // up with the template's serving label; it sorts before c by name
        // but has been ready for less time, so it is the one made warm.
        let new = PodView {
            ready_since: Some(k8s_openapi::jiff::Timestamp::from_second(100).expect("time")),
            ..pod("a2", "r1", true)
        };
        let obs = observed(
            vec![],
            vec![
                pod("a", "r1", true),
                new,
                pod("b", "r1", true),
                pod("c", "r1", true),
            ],
        );
        assert_eq!(
            assign(&obs, "r1", plan(3, 1)),
            vec![change("a2", Rotation::Warm)]
        );
    }

    #[test]
    fn settled_pool_needs_no_change() {
        let obs = observed(
            vec![],
            vec![pod("a", "r1", true), pod("b", "r1", true), warm("c")],
        );
        assert!(assign(&obs, "r1", plan(2, 1)).is_empty());
    }

    #[test]
    fn warm_pod_is_promoted_when_a_serving_pod_is_lost() {
        let obs = observed(
            vec![],
            vec![pod("a", "r1", false), pod("b", "r1", true), warm("c")],
        );
        assert_eq!(
            assign(&obs, "r1", plan(2, 1)),
            vec![change("c", Rotation::Serving)]
        );
    }

    #[test]
    fn no_warm_pool_keeps_everything_serving() {
        let obs = observed(vec![], vec![pod("a", "r1", true), warm("b")]);
        assert_eq!(
            assign(&obs, "r1", plan(1, 0)),
            vec![change("b", Rotation::Serving)]
        );
    }

    #[test]
    fn draining_pods_are_never_put_back() {
        let draining = PodView {
            rotation: Some(Rotation::Draining),
            ..pod("a", "r1", true)
        };
        let obs = observed(vec![], vec![draining, pod("b", "r1", true)]);
        assert!(assign(&obs, "r1", plan(2, 0)).is_empty());
    }

    #[test]
    fn other_revisions_are_left_alone() {
        let obs = observed(vec![], vec![pod("a", "r2", true), pod("b", "r2", true)]);
        assert!(assign(&obs, "r1", plan(1, 1)).is_empty());
    }

    #[test]
    fn unlabelled_ready_pods_are_labelled() {
        // Pods made before the rotation label existed carry none; the
        // router does not route to them until the pool labels them.
        let old = PodView {
            rotation: None,
            ..pod("a", "r1", true)
        };
        let obs = observed(vec![], vec![old, pod("b", "r1", true)]);
        assert_eq!(
            assign(&obs, "r1", plan(2, 0)),
            vec![change("a", Rotation::Serving)]
        );
    }

    #[test]
    fn a_leaving_pod_drains_and_the_rest_keep_their_places() {
        // Scale-in 3 -> 2 with a warm pod: b leaves, a and c keep serving,
        // d stays warm (not promoted into b's place).
        let obs = observed(
            vec![],
            vec![
                pod("a", "r1", true),
                pod("b", "r1", true),
                pod("c", "r1", true),
                warm("d"),
            ],
        );
        assert_eq!(
            assign_leaving(&obs, "r1", plan(2, 1), Some("b")),
            vec![change("b", Rotation::Draining)]
        );
        // Already draining: nothing more to write.
        let drained = PodView {
            rotation: Some(Rotation::Draining),
            ..pod("b", "r1", true)
        };
        let obs = observed(vec![], vec![pod("a", "r1", true), drained]);
        assert!(assign_leaving(&obs, "r1", plan(1, 0), Some("b")).is_empty());
    }

    #[test]
    fn labels_round_trip_and_unknown_values_are_none() {
        for r in [Rotation::Serving, Rotation::Warm, Rotation::Draining] {
            assert_eq!(Rotation::from_label(r.as_label()), Some(r));
        }
        assert_eq!(Rotation::from_label("bogus"), None);
    }
}
