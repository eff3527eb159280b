//! Per-revision sizing: the serving revision runs at the scale plan, a
//! canary at its share of it (decided with the steps, see
//! [`steps::share`](super::steps::share)); every other revision goes to
//! zero, except that one which
//! still has pods keeps them until the hand-off time has passed since the
//! traffic split last changed (falling side of the hand-off: its weight
//! fell before its pods leave, and the router has had time to see it).

use std::collections::BTreeMap;
use std::time::Duration;

use super::steps::Steps;
use super::{remaining, RevisionPlan, RolloutInput};
use crate::autoscale::ScalePlan;
use crate::crd::RevisionRole;

/// The sizes of one pass.
pub(super) struct Sized {
    /// Every revision that keeps a Deployment (pruning comes later).
    pub revisions: BTreeMap<String, RevisionPlan>,
    /// How long until a held revision may go to zero.
    pub wait: Option<Duration>,
}

pub(super) fn size(input: &RolloutInput<'_>, steps: &Steps) -> Sized {
    let obs = input.observed;
    let active = |role| {
        // Draining pods are the scaled revision's (the stable one, or the
        // first while it starts); a canary keeps none.
        let scale = if role == RevisionRole::Canary {
            ScalePlan {
                draining: 0,
                ..steps.target_size
            }
        } else {
            input.scale
        };
        RevisionPlan {
            role,
            replicas: scale.total(),
            pool: Some(scale),
        }
    };
    let mut revisions = BTreeMap::new();
    match (&steps.stable, &steps.canary) {
        (Some(stable), canary) => {
            revisions.insert(stable.clone(), active(RevisionRole::Stable));
            if let Some(c) = canary {
                revisions.insert(c.clone(), active(RevisionRole::Canary));
            }
        }
        (None, _) => {
            revisions.insert(input.target.to_owned(), active(RevisionRole::Starting));
        }
    }
    // The hand-off runs from the last traffic change.
    let handoff_left = steps
        .memory
        .step_started_at
        .as_ref()
        .and_then(|t| remaining(t.0, input.now, input.handoff));
    let mut wait = None;
    for (rev, d) in &obs.deployments {
        if revisions.contains_key(rev) {
            continue;
        }
        let held = handoff_left.filter(|_| d.replicas > 0);
        if held.is_some() {
            wait = held;
        }
        let replicas = if held.is_some() { d.replicas } else { 0 };
        let role = if replicas > 0 || obs.existing_of(rev) > 0 {
            RevisionRole::Retiring
        } else {
            RevisionRole::Retired
        };
        revisions.insert(
            rev.clone(),
            RevisionPlan {
                role,
                replicas,
                pool: None,
            },
        );
    }
    Sized { revisions, wait }
}
