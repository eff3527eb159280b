//! Manual rollout control: what the user asks for, read from the object.
//!
//! The contract (docs/rollouts.md, "Manual control"), shared by
//! `kubectl steward` and plain `kubectl patch` / `kubectl annotate`:
//!
//! - `spec.rollout.paused: true` holds the rollout at its step (no step
//!   forward, no promotion; analysis keeps running and can still roll
//!   back); `false` resumes. Declarative: it stays until changed.
//! - Annotation [`PROMOTE`] = a canary revision: promote that canary now,
//!   skipping its remaining steps.
//! - Annotation [`ABORT`] = a canary revision: roll that canary back now
//!   (reason `Aborted`); like an automatic rollback, it is not tried again
//!   until the spec changes or the user retries it.
//! - Annotation [`RETRY`] = a rolled-back revision: run it again from step 1.
//!
//! The annotations are requests: the operator acts on each at most once
//! and removes it in the same pass, acted on or not, with an event saying
//! which (a request naming a revision that is not in the matching state is
//! ignored, so a stale request can never touch a newer canary). Naming the
//! revision is what makes a repeat or a late request harmless: promoting a
//! revision that is already stable, or aborting one that is already rolled
//! back, does nothing.
//!
//! This module only reads: [`read`] turns annotations and the rollout's
//! state into [`ManualControl`]. The rollout applies the decisions and the
//! controller removes [`ManualControl::consumed`].

use std::collections::BTreeMap;

/// Annotation asking to promote the named canary now.
pub const PROMOTE: &str = "serving.steward.dev/promote";
/// Annotation asking to roll the named canary back now.
pub const ABORT: &str = "serving.steward.dev/abort";
/// Annotation asking to run the named rolled-back revision again.
pub const RETRY: &str = "serving.steward.dev/retry";

/// A manual action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Roll the canary back now.
    Abort,
    /// Promote the canary now.
    Promote,
    /// Re-run a rolled-back revision.
    Retry,
}

impl Action {
    /// The annotation that asks for it.
    pub fn annotation(self) -> &'static str {
        match self {
            Action::Abort => ABORT,
            Action::Promote => PROMOTE,
            Action::Retry => RETRY,
        }
    }

    /// Lower-case verb, for events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Abort => "abort",
            Action::Promote => "promote",
            Action::Retry => "retry",
        }
    }

    /// Every action, abort first (the order requests are judged in).
    pub const ALL: [Action; 3] = [Action::Abort, Action::Promote, Action::Retry];
}

/// The rollout state a request is judged against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RolloutView<'a> {
    /// `status.canaryRevision`: the revision walking the steps.
    pub canary: Option<&'a str>,
    /// The revision last rolled back (`status.rollout.rolledBackRevision`).
    pub rolled_back: Option<&'a str>,
}

/// What to do with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Carry out `action` on `revision`.
    Apply {
        /// What.
        action: Action,
        /// On which revision.
        revision: String,
    },
    /// Do nothing; tell the user why (an event).
    Ignore {
        /// What was asked.
        action: Action,
        /// The annotation's value.
        value: String,
        /// Why not, for the event.
        reason: String,
    },
}

/// Everything the user asks for in this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManualControl {
    /// `spec.rollout.paused`.
    pub paused: bool,
    /// One decision per request annotation present, abort first.
    pub decisions: Vec<Decision>,
    /// Annotation keys to remove after this pass (every request seen).
    pub consumed: Vec<&'static str>,
}

impl ManualControl {
    /// The action to carry out this pass, if any (at most one applies).
    pub fn apply(&self) -> Option<(Action, &str)> {
        self.decisions.iter().find_map(|d| match d {
            Decision::Apply { action, revision } => Some((*action, revision.as_str())),
            Decision::Ignore { .. } => None,
        })
    }
}

/// A revision hash as the operator writes them: 10 lower-case hex digits.
pub fn is_revision(v: &str) -> bool {
    v.len() == 10 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads the requests in `annotations` against the rollout's state.
///
/// At most one request applies per pass: abort before promote before
/// retry, so when a user asks for both an abort and a promotion of the
/// same canary the safe one wins; the others are ignored with that reason.
pub fn read(
    annotations: &BTreeMap<String, String>,
    paused: bool,
    view: RolloutView<'_>,
) -> ManualControl {
    let mut out = ManualControl {
        paused,
        ..ManualControl::default()
    };
    for action in Action::ALL {
        let Some(raw) = annotations.get(action.annotation()) else {
            continue;
        };
        out.consumed.push(action.annotation());
        let value = raw.trim().to_string();
        let ignore = |reason: String| Decision::Ignore {
            action,
            value: value.clone(),
            reason,
        };
        let decision = if !is_revision(&value) {
            ignore(format!(
                "`{value}` is not a revision (10 hex digits, as in status.canaryRevision)"
            ))
        } else if let Some((first, _)) = out.apply() {
            ignore(format!(
                "{} was requested in the same pass and takes precedence",
                first.as_str()
            ))
        } else {
            judge(action, &value, view).map_or_else(ignore, |()| Decision::Apply {
                action,
                revision: value.clone(),
            })
        };
        out.decisions.push(decision);
    }
    out
}

fn judge(action: Action, rev: &str, view: RolloutView<'_>) -> Result<(), String> {
    match action {
        Action::Promote | Action::Abort => match view.canary {
            Some(c) if c == rev => Ok(()),
            Some(c) => Err(format!(
                "revision {rev} is not the canary (the canary is {c})"
            )),
            None => Err(format!(
                "revision {rev} is not the canary (no rollout is under way)"
            )),
        },
        Action::Retry => match view.rolled_back {
            Some(r) if r == rev => Ok(()),
            Some(r) => Err(format!(
                "revision {rev} is not the rolled-back revision ({r} is)"
            )),
            None => Err(format!("revision {rev} is not rolled back")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "3b2d44aa01";
    const R: &str = "7c9f1a0b22";

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn view() -> RolloutView<'static> {
        RolloutView {
            canary: Some(C),
            rolled_back: Some(R),
        }
    }

    #[test]
    fn no_annotations_ask_for_nothing_but_pause_is_reported() {
        let m = read(&ann(&[("other/key", "x")]), true, view());
        assert!(m.paused);
        assert!(m.decisions.is_empty() && m.consumed.is_empty());
        assert_eq!(m.apply(), None);
    }

    #[test]
    fn promote_and_abort_apply_to_the_named_canary() {
        for action in [Action::Promote, Action::Abort] {
            let m = read(&ann(&[(action.annotation(), C)]), false, view());
            assert_eq!(m.apply(), Some((action, C)));
            assert_eq!(m.consumed, [action.annotation()]);
        }
    }

    #[test]
    fn retry_applies_to_the_rolled_back_revision() {
        let m = read(&ann(&[(RETRY, &format!(" {R}\n"))]), false, view());
        assert_eq!(m.apply(), Some((Action::Retry, R)), "value is trimmed");
    }

    /// A request left over from an earlier rollout names a revision that is
    /// no longer the canary: it must not touch the new one.
    #[test]
    fn stale_requests_are_ignored_and_still_consumed() {
        let m = read(&ann(&[(PROMOTE, R), (RETRY, C)]), false, view());
        assert_eq!(m.apply(), None);
        assert_eq!(m.consumed, [PROMOTE, RETRY]);
        let reasons: Vec<_> = m
            .decisions
            .iter()
            .map(|d| match d {
                Decision::Ignore { reason, .. } => reason.as_str(),
                Decision::Apply { .. } => "applied",
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "revision 7c9f1a0b22 is not the canary (the canary is 3b2d44aa01)",
                "revision 3b2d44aa01 is not the rolled-back revision (7c9f1a0b22 is)"
            ]
        );
        let idle = read(
            &ann(&[(ABORT, C), (RETRY, R)]),
            false,
            RolloutView::default(),
        );
        assert_eq!(idle.apply(), None);
        assert!(
            matches!(&idle.decisions[0], Decision::Ignore { reason, .. } if reason.contains("no rollout is under way"))
        );
        assert!(
            matches!(&idle.decisions[1], Decision::Ignore { reason, .. } if reason.contains("is not rolled back"))
        );
    }

    #[test]
    fn abort_wins_over_promote_of_the_same_canary() {
        let m = read(&ann(&[(PROMOTE, C), (ABORT, C)]), false, view());
        assert_eq!(m.apply(), Some((Action::Abort, C)));
        assert_eq!(m.consumed, [ABORT, PROMOTE]);
        assert!(matches!(&m.decisions[1],
            Decision::Ignore { action: Action::Promote, reason, .. } if reason.contains("abort was requested")));
    }

    #[test]
    fn values_that_are_not_revisions_are_ignored_with_a_reason() {
        for v in ["", "latest", "3B2D44AA01", "3b2d44aa0", "3b2d44aa01x"] {
            let m = read(&ann(&[(ABORT, v)]), false, view());
            assert_eq!(m.apply(), None, "{v:?}");
            assert!(
                matches!(&m.decisions[0], Decision::Ignore { reason, .. } if reason.contains("not a revision")),
                "{v:?}: {:?}",
                m.decisions
            );
            assert_eq!(m.consumed, [ABORT]);
        }
    }
}
