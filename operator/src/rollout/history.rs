//! History: retired revisions (at zero, no pods left) are kept for a quick
//! rollback, the newest [`RETIRED_KEPT`] of them; older ones are pruned.

use std::collections::BTreeMap;

use super::RevisionPlan;
use crate::crd::RevisionRole;
use crate::observe::Observed;

/// How many revisions at zero are kept for a quick rollback.
pub const RETIRED_KEPT: usize = 2;

/// Removes the retired revisions beyond the kept history from `revisions`
/// and returns them, oldest first.
pub(super) fn prune(obs: &Observed, revisions: &mut BTreeMap<String, RevisionPlan>) -> Vec<String> {
    // Only revisions already at zero with no pods left: one on its way down
    // is not history yet.
    let mut retired: Vec<_> = revisions
        .iter()
        .filter(|(_, plan)| plan.role == RevisionRole::Retired)
        .filter_map(|(rev, _)| obs.deployments.get(rev))
        .filter(|d| d.replicas == 0)
        .map(|d| (d.created, d.revision.clone()))
        .collect();
    retired.sort();
    let excess = retired.len().saturating_sub(RETIRED_KEPT);
    let pruned: Vec<String> = retired.into_iter().take(excess).map(|(_, r)| r).collect();
    for r in &pruned {
        revisions.remove(r);
    }
    pruned
}
