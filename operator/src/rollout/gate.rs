//! Gate: what stands between a ready target and the traffic — the user's
//! manual control (`rollout::manual`) and the quality gate's verdict — and
//! the rollback that follows a failed gate or an abort.
//!
//! Decided before the promotion in `steps`, in this order (the first that
//! applies wins):
//!
//! 1. the target was rolled back (`status.rollout.rolledBackRevision`; a
//!    retry clears that before the gate): it stays out of traffic and at
//!    zero;
//! 2. an abort names the target: roll back now, ready or not;
//! 3. a promote names the target: it takes the traffic once its pods are
//!    ready, skipping the quality gate and a pause;
//! 4. a failed quality gate rolls back (a pause does not stop analysis);
//! 5. `rollbackOn` firing for a canary that carries traffic (a step)
//!    rolls back, naming the leaf, the canary's and the stable's values;
//! 6. `spec.rollout.paused`: hold;
//! 7. the rest of the quality gate: anything undecided holds (never
//!    promote blind), Pass (or no gate configured) lets the target go on
//!    (`steps` then walks the canary steps; an unknown alarm verdict holds
//!    there).
//!
//! Only a revision that would replace a stable one is gated: the first
//! revision of a service has nothing to roll back to.

use crate::alarm::Verdict as AlarmVerdict;
use crate::quality::{Gate, UnknownReason};
use crate::reason::Reason;

use super::manual::{Action, ManualControl};

/// The quality gate's answer for the target, as the controller got it from
/// the runner.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum QualityVerdict {
    /// `analysis.quality` is not set: nothing to wait for.
    #[default]
    NotConfigured,
    /// The golden set has not been run against the target (its pods are
    /// not ready yet).
    NotStarted,
    /// The golden set is running against the target.
    Running,
    /// The runner's decision.
    Decided(Gate),
}

/// Why a canary was rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollbackCause {
    /// The quality gate failed.
    QualityGate,
    /// The user aborted it.
    Aborted,
    /// `rollbackOn` fired for the canary during a step.
    Alarm,
    /// Analysis stayed unknown at a step for longer than
    /// `analysis.unknownTimeout`.
    AnalysisUnavailable,
}

impl RollbackCause {
    /// The reason stored in `status.rollout.rollbackReason`, on the
    /// RolledBack condition, the event and the metric.
    pub const fn reason(self) -> Reason {
        match self {
            RollbackCause::QualityGate => Reason::QualityGateFailed,
            RollbackCause::Aborted => Reason::Aborted,
            RollbackCause::Alarm => Reason::AlarmFiring,
            RollbackCause::AnalysisUnavailable => Reason::AnalysisUnavailable,
        }
    }

    /// [`Self::reason`] as a string.
    pub const fn as_str(self) -> &'static str {
        self.reason().as_str()
    }
}

impl HoldCause {
    /// The Progressing condition's reason while held.
    pub fn reason(&self) -> Reason {
        match self {
            HoldCause::Paused => Reason::RolloutPaused,
            HoldCause::QualityRunning => Reason::QualityGateRunning,
            HoldCause::QualityUnknown { reason, .. } => match reason {
                UnknownReason::GoldenSetInvalid => Reason::GoldenSetInvalid,
                UnknownReason::GoldenSetNotFound => Reason::GoldenSetNotFound,
                UnknownReason::QualityUnavailable => Reason::QualityUnavailable,
            },
            HoldCause::AnalysisUnknown { .. } => Reason::AnalysisUnknown,
            HoldCause::CanaryScaling { .. } => Reason::CanaryScaling,
        }
    }
}

/// Why the target holds without taking the traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldCause {
    /// `spec.rollout.paused`.
    Paused,
    /// The golden set is running (or waits for the target's pods).
    QualityRunning,
    /// The quality gate could not decide.
    QualityUnknown {
        /// `GoldenSetInvalid`, `GoldenSetNotFound` or `QualityUnavailable`.
        reason: UnknownReason,
        /// What happened, naming the entry, revision or object.
        message: String,
    },
    /// The canary's step is over but its alarm verdict is unknown (no
    /// data, too few requests, stale or unavailable signals): the step
    /// holds, never promoting blind.
    AnalysisUnknown {
        /// Which leaves are unknown and why.
        why: String,
    },
    /// The canary's step is over and its verdict Ok, but the pods the
    /// next step's weight needs (all of them before the promotion) are
    /// not ready and handed off yet.
    CanaryScaling {
        /// Ready pods of the canary.
        ready: i32,
        /// Pods the next step needs.
        desired: i32,
    },
}

/// The gate's decision for a target beside a stable revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Take the traffic (once ready and handed off).
    Go {
        /// A promote request named the target (skips gate and pause).
        forced: bool,
    },
    /// Do not take the traffic yet.
    Hold(HoldCause),
    /// Roll back: the target loses any weight and scales to zero.
    RollBack {
        /// Why.
        cause: RollbackCause,
        /// For the condition and the event: names the category and both
        /// scores, or who aborted.
        message: String,
    },
    /// Rolled back earlier and not retried: stays out.
    RolledBack,
}

/// What the gate decides from.
#[derive(Clone, Copy, Debug)]
pub struct GateInput<'a> {
    /// The target revision.
    pub target: &'a str,
    /// The stable revision it would replace.
    pub stable: &'a str,
    /// The rolled-back revision remembered for this target (after a retry
    /// or a spec change, none).
    pub rolled_back: Option<&'a str>,
    /// The user's requests of this pass.
    pub manual: &'a ManualControl,
    /// The quality gate's answer.
    pub quality: &'a QualityVerdict,
    /// The target's alarm verdict, only while it carries canary traffic
    /// (before its first step its signals say nothing about real load).
    pub alarm: Option<&'a AlarmVerdict>,
}

/// Decides the gate for a target that would replace a stable revision.
pub fn decide(input: &GateInput<'_>) -> Verdict {
    let asked = input
        .manual
        .apply()
        .filter(|(_, rev)| *rev == input.target)
        .map(|(a, _)| a);
    if input.rolled_back == Some(input.target) {
        return Verdict::RolledBack;
    }
    match asked {
        Some(Action::Abort) => {
            return Verdict::RollBack {
                cause: RollbackCause::Aborted,
                message: format!("revision {} was aborted by the user", input.target),
            }
        }
        Some(Action::Promote) => return Verdict::Go { forced: true },
        Some(Action::Retry) | None => {}
    }
    // Analysis keeps running while paused and can still roll back.
    if let QualityVerdict::Decided(Gate::Fail(msg)) = input.quality {
        return Verdict::RollBack {
            cause: RollbackCause::QualityGate,
            message: msg.clone(),
        };
    }
    if let Some(AlarmVerdict::Firing { leaf, values }) = input.alarm {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        return Verdict::RollBack {
            cause: RollbackCause::Alarm,
            message: format!(
                "alarm {leaf} fired on canary {}: {} against stable {}: {} (threshold {})",
                input.target,
                or_unknown(&values.value),
                input.stable,
                or_unknown(&values.baseline),
                or_unknown(&values.threshold),
            ),
        };
    }
    if input.manual.paused {
        return Verdict::Hold(HoldCause::Paused);
    }
    match input.quality {
        QualityVerdict::NotConfigured | QualityVerdict::Decided(Gate::Pass) => {
            Verdict::Go { forced: false }
        }
        QualityVerdict::NotStarted | QualityVerdict::Running => {
            Verdict::Hold(HoldCause::QualityRunning)
        }
        QualityVerdict::Decided(Gate::Unknown(u)) => Verdict::Hold(HoldCause::QualityUnknown {
            reason: u.reason,
            message: u.message.clone(),
        }),
        QualityVerdict::Decided(Gate::Fail(msg)) => Verdict::RollBack {
            cause: RollbackCause::QualityGate,
            message: msg.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::manual::Decision;

    fn manual(paused: bool, apply: Option<(Action, &str)>) -> ManualControl {
        ManualControl {
            paused,
            decisions: apply
                .map(|(action, rev)| Decision::Apply {
                    action,
                    revision: rev.into(),
                })
                .into_iter()
                .collect(),
            consumed: apply.map(|(a, _)| a.annotation()).into_iter().collect(),
        }
    }

    fn gate(m: &ManualControl, q: &QualityVerdict, rolled_back: Option<&str>) -> Verdict {
        gate_with(m, q, rolled_back, None)
    }

    fn gate_with(
        m: &ManualControl,
        q: &QualityVerdict,
        rolled_back: Option<&str>,
        alarm: Option<&AlarmVerdict>,
    ) -> Verdict {
        decide(&GateInput {
            target: "r2",
            stable: "r1",
            rolled_back,
            manual: m,
            quality: q,
            alarm,
        })
    }

    fn firing() -> AlarmVerdict {
        AlarmVerdict::Firing {
            leaf: "ttftP99".into(),
            values: crate::alarm::FiringValues {
                value: Some("1.02s".into()),
                baseline: Some("41ms".into()),
                threshold: Some("600ms".into()),
            },
        }
    }

    #[test]
    fn a_firing_alarm_rolls_back_naming_the_leaf_and_both_values_even_when_paused() {
        for m in [ManualControl::default(), manual(true, None)] {
            for q in [
                QualityVerdict::NotConfigured,
                QualityVerdict::Running,
                QualityVerdict::Decided(Gate::Pass),
            ] {
                let v = gate_with(&m, &q, None, Some(&firing()));
                let Verdict::RollBack { cause, message } = &v else {
                    panic!("{v:?}")
                };
                assert_eq!(*cause, RollbackCause::Alarm);
                assert_eq!(cause.as_str(), "AlarmFiring");
                assert_eq!(
                    message,
                    "alarm ttftP99 fired on canary r2: 1.02s against stable r1: 41ms (threshold 600ms)"
                );
            }
        }
    }

    /// An unknown or OK alarm verdict is not the gate's business: the
    /// steps hold on unknown. Abort, promote and a failed quality gate
    /// still come first.
    #[test]
    fn only_a_firing_alarm_changes_the_gate_and_manual_requests_come_first() {
        let unknown = AlarmVerdict::Unknown {
            why: "ttftP99: too few requests".into(),
        };
        for a in [None, Some(&AlarmVerdict::Ok), Some(&unknown)] {
            assert_eq!(
                gate_with(
                    &ManualControl::default(),
                    &QualityVerdict::NotConfigured,
                    None,
                    a
                ),
                Verdict::Go { forced: false }
            );
        }
        let promote = manual(false, Some((Action::Promote, "r2")));
        assert_eq!(
            gate_with(
                &promote,
                &QualityVerdict::NotConfigured,
                None,
                Some(&firing())
            ),
            Verdict::Go { forced: true }
        );
        let abort = manual(false, Some((Action::Abort, "r2")));
        assert!(matches!(
            gate_with(
                &abort,
                &QualityVerdict::NotConfigured,
                None,
                Some(&firing())
            ),
            Verdict::RollBack {
                cause: RollbackCause::Aborted,
                ..
            }
        ));
        assert!(matches!(
            gate_with(&ManualControl::default(), &fail(), None, Some(&firing())),
            Verdict::RollBack {
                cause: RollbackCause::QualityGate,
                ..
            }
        ));
        assert_eq!(
            gate_with(
                &ManualControl::default(),
                &QualityVerdict::NotConfigured,
                Some("r2"),
                Some(&firing())
            ),
            Verdict::RolledBack
        );
    }

    fn fail() -> QualityVerdict {
        QualityVerdict::Decided(Gate::Fail(
            "category `facts` scored 0.40 on canary r2 and 1.00 on stable r1".into(),
        ))
    }

    #[test]
    fn without_a_quality_gate_or_with_a_pass_the_target_goes() {
        let m = ManualControl::default();
        for q in [
            QualityVerdict::NotConfigured,
            QualityVerdict::Decided(Gate::Pass),
        ] {
            assert_eq!(gate(&m, &q, None), Verdict::Go { forced: false });
        }
    }

    #[test]
    fn a_failed_gate_rolls_back_with_the_gates_words() {
        let v = gate(&ManualControl::default(), &fail(), None);
        let Verdict::RollBack { cause, message } = v else {
            panic!("{v:?}")
        };
        assert_eq!(cause, RollbackCause::QualityGate);
        assert_eq!(cause.as_str(), "QualityGateFailed");
        assert!(message.contains("category `facts`"), "{message}");
    }

    /// Unknown is never OK: a running, not-started or undecided gate holds.
    #[test]
    fn an_undecided_gate_holds_and_never_promotes() {
        let m = ManualControl::default();
        assert_eq!(
            gate(&m, &QualityVerdict::Running, None),
            Verdict::Hold(HoldCause::QualityRunning)
        );
        assert_eq!(
            gate(&m, &QualityVerdict::NotStarted, None),
            Verdict::Hold(HoldCause::QualityRunning)
        );
        let unknown = QualityVerdict::Decided(Gate::unknown(
            UnknownReason::GoldenSetInvalid,
            "entry `year`: regex does not compile",
        ));
        let v = gate(&m, &unknown, None);
        let Verdict::Hold(cause) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(cause.reason(), Reason::GoldenSetInvalid);
    }

    #[test]
    fn pause_holds_but_a_failed_gate_still_rolls_back() {
        let paused = manual(true, None);
        assert_eq!(
            gate(&paused, &QualityVerdict::Decided(Gate::Pass), None),
            Verdict::Hold(HoldCause::Paused)
        );
        assert_eq!(
            gate(&paused, &QualityVerdict::NotConfigured, None),
            Verdict::Hold(HoldCause::Paused)
        );
        // Analysis keeps running while paused and can still roll back.
        assert!(matches!(
            gate(&paused, &fail(), None),
            Verdict::RollBack {
                cause: RollbackCause::QualityGate,
                ..
            }
        ));
    }

    #[test]
    fn promote_skips_gate_and_pause_abort_wins_over_everything() {
        let promote = manual(true, Some((Action::Promote, "r2")));
        assert_eq!(
            gate(&promote, &QualityVerdict::Running, None),
            Verdict::Go { forced: true }
        );
        let abort = manual(false, Some((Action::Abort, "r2")));
        let v = gate(&abort, &QualityVerdict::Decided(Gate::Pass), None);
        assert!(
            matches!(&v, Verdict::RollBack { cause: RollbackCause::Aborted, message } if message.contains("aborted")),
            "{v:?}"
        );
        // A request for another revision does not apply here.
        let other = manual(false, Some((Action::Abort, "r9")));
        assert_eq!(
            gate(&other, &QualityVerdict::NotConfigured, None),
            Verdict::Go { forced: false }
        );
    }

    #[test]
    fn a_rolled_back_target_stays_out_even_if_the_gate_would_pass() {
        let promote = manual(false, Some((Action::Promote, "r2")));
        for m in [ManualControl::default(), promote] {
            assert_eq!(
                gate(&m, &QualityVerdict::Decided(Gate::Pass), Some("r2")),
                Verdict::RolledBack
            );
        }
    }
}
