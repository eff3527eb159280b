//! Sizing: how many pods of the serving revision are in rotation and how
//! many are kept warm (loaded, ready, out of rotation).
//!
//! Pure: the input is the spec's bounds (and, once autoscaling exists, the
//! signal snapshot and `status.autoscaling`); the output is a [`ScalePlan`]
//! that the rollout decision sizes revisions with and the pool assigns pods
//! by. Today the plan is the bounds themselves: `replicas.min` serving,
//! `replicas.warm` warm.

use crate::crd::ReplicasSpec;

/// What sizing needs.
#[derive(Clone, Debug)]
pub struct ScaleInput<'a> {
    /// The spec's bounds.
    pub replicas: &'a ReplicasSpec,
}

/// Pods of one revision: in rotation and warm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalePlan {
    /// Pods in rotation.
    pub serving: i32,
    /// Pods loaded and ready but out of rotation.
    pub warm: i32,
}

impl ScalePlan {
    /// No pods at all.
    pub const ZERO: ScalePlan = ScalePlan {
        serving: 0,
        warm: 0,
    };

    /// The Deployment's replica count: serving plus warm.
    pub fn total(self) -> i32 {
        self.serving.saturating_add(self.warm)
    }
}

/// Decides the serving and warm counts.
pub fn decide(input: &ScaleInput<'_>) -> ScalePlan {
    let r = input.replicas;
    // The API server keeps min <= max and both non-negative; a spec that
    // bypassed validation is still clamped, never trusted.
    let serving = r.min.clamp(0, r.effective_max().max(0));
    ScalePlan {
        serving,
        warm: r.warm.max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: Option<i32>, warm: i32) -> ReplicasSpec {
        ReplicasSpec { min, max, warm }
    }

    #[test]
    fn plan_is_min_serving_and_the_warm_pool() {
        let p = decide(&ScaleInput {
            replicas: &spec(2, Some(8), 1),
        });
        assert_eq!(
            p,
            ScalePlan {
                serving: 2,
                warm: 1
            }
        );
        assert_eq!(p.total(), 3);
    }

    #[test]
    fn out_of_range_bounds_are_clamped_not_trusted() {
        let p = decide(&ScaleInput {
            replicas: &spec(5, Some(3), -1),
        });
        assert_eq!(
            p,
            ScalePlan {
                serving: 3,
                warm: 0
            }
        );
        let p = decide(&ScaleInput {
            replicas: &spec(-2, None, 0),
        });
        assert_eq!(p, ScalePlan::ZERO);
    }

    #[test]
    fn total_saturates_instead_of_overflowing() {
        let p = ScalePlan {
            serving: i32::MAX,
            warm: 1,
        };
        assert_eq!(p.total(), i32::MAX);
    }
}
