//! Alarms: the evaluable form of `spec.slo` + `rollout.analysis.rollbackOn`
//! and the pure judgement of one revision against it.
//!
//! Flow: `crd::AlarmExpr` (the wire shape, three levels, CEL-checked) →
//! [`compile`] → [`AlarmTree`] (recursive, thresholds resolved from
//! `spec.slo`) → [`evaluate`] over a [`crate::signals::Latest`] snapshot →
//! [`Evaluation`] (a [`Verdict`], every reported node's state for
//! `status.alarms`, and the [`Memory`] to keep for the next pass).
//! [`judge`] does that for every revision of one object; [`analyse`] (in
//! `pass`) shapes it for status, conditions, events, the rollout decision
//! and the next requeue, and [`targets`] says what the signal poller should
//! cover.
//!
//! Invariants:
//! - Unknown is never Ok and never Firing. A leaf without a conclusive
//!   reading (no data, a failed query, too few requests, a stale snapshot)
//!   is unknown, and unknown propagates: `any` fires when a child fires,
//!   else is unknown when a child is unknown, else Ok; `all` fires when
//!   every child fires, else is unknown when a child is unknown (so `all`
//!   of (Ok, unknown) is unknown), else Ok; `not` swaps Ok and Firing and
//!   keeps unknown. `Pending` (condition holds, `for:` not yet) counts as
//!   not firing.
//! - `for:` is remembered only through [`Memory`], which the caller stores
//!   in `status.alarms` (state + since per node), so a restarted operator
//!   resumes a pending timer instead of restarting it.
//! - Evaluation is pure: same tree, snapshot, time and memory → same result.

mod compile;
mod evaluate;
mod judge;
mod pass;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::signals::Signal;

pub use compile::{compile, CompileError, Objectives, Tolerances, DEFAULT_MIN_REQUESTS};
pub use evaluate::{evaluate, EvalInput};
pub use judge::{
    judge, CondValue, JudgeInput, Judgement, Transition, ALARM_INVALID, SIGNALS_UNAVAILABLE,
};
pub use pass::{analyse, targets, Analysis, AnalysisInput, Targets};

/// The evaluable alarm tree of one InferenceService.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmTree {
    /// The root (`rollbackOn`).
    pub root: Node,
}

impl AlarmTree {
    /// Every leaf, in tree order.
    pub fn leaves(&self) -> Vec<(&str, &Leaf)> {
        let mut out = Vec::new();
        self.root.walk(&mut |n| {
            if let NodeKind::Leaf(l) = &n.kind {
                out.push((n.name.as_str(), l));
            }
        });
        out
    }

    /// The custom PromQL leaves (name, query text with `$revision` etc.).
    pub fn queries(&self) -> Vec<(&str, &str)> {
        self.leaves()
            .into_iter()
            .filter_map(|(name, l)| match &l.test {
                Test::Query { promql, .. } => Some((name, promql.as_str())),
                _ => None,
            })
            .collect()
    }
}

/// One node of the tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique within the tree: the leaf's alarm name (`ttftP99`,
    /// `errorRate`, `query-1`), or `any-N` / `all-N` / `not-N`.
    pub name: String,
    /// `for:` — how long the node's condition must hold before it fires.
    pub hold: Duration,
    /// What the node is.
    pub kind: NodeKind,
}

impl Node {
    fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Node)) {
        f(self);
        match &self.kind {
            NodeKind::Leaf(_) => {}
            NodeKind::Any(c) | NodeKind::All(c) => c.iter().for_each(|n| n.walk(f)),
            NodeKind::Not(c) => c.walk(f),
        }
    }

    /// Reported in `status.alarms`: every leaf, and composite nodes that
    /// carry a `for:` (their pending timer must survive a restart).
    pub fn reported(&self) -> bool {
        matches!(self.kind, NodeKind::Leaf(_)) || !self.hold.is_zero()
    }
}

/// What a node is.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A comparison of one reading.
    Leaf(Leaf),
    /// Fires when any child fires.
    Any(Vec<Node>),
    /// Fires when every child fires.
    All(Vec<Node>),
    /// Fires when the child is Ok.
    Not(Box<Node>),
}

/// A leaf: one test, and how many requests a reading needs to count.
#[derive(Clone, Debug, PartialEq)]
pub struct Leaf {
    /// The comparison.
    pub test: Test,
    /// Fewer requests than this in the window → Inconclusive (0: no
    /// minimum, for gauges and custom queries).
    pub min_requests: u64,
}

/// Fire above or below a threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// value > threshold fires.
    Above,
    /// value < threshold fires.
    Below,
}

impl Cmp {
    /// True when `value` breaches `threshold`.
    pub fn breached(self, value: f64, threshold: f64) -> bool {
        match self {
            Cmp::Above => value > threshold,
            Cmp::Below => value < threshold,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Cmp::Above => ">",
            Cmp::Below => "<",
        }
    }
}

/// The comparison a leaf makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// The subject revision's signal against a fixed threshold (SLO leaves,
    /// `errorRate`, `kvCacheSaturation`).
    Threshold {
        /// The signal.
        signal: Signal,
        /// Above or below.
        cmp: Cmp,
        /// The objective.
        threshold: f64,
    },
    /// The subject's signal against the stable revision's over the same
    /// window: fires when `subject > ratio × stable` and `subject > floor`
    /// (so a busy hour that slows both does not read as a regression, and
    /// tiny absolute numbers never fire). On the stable revision itself it
    /// is Ok (nothing to compare with).
    RiseOverStable {
        /// The signal.
        signal: Signal,
        /// Tolerated ratio, e.g. 1.2.
        ratio: f64,
        /// Absolute floor the subject must exceed.
        floor: f64,
    },
    /// A user's PromQL (`$namespace`, `$service`, `$revision` substituted),
    /// read per revision.
    Query {
        /// The PromQL text.
        promql: String,
        /// Above or below.
        cmp: Cmp,
        /// The threshold.
        threshold: f64,
    },
    /// A reading supplied by another part of the operator (the quality gate
    /// writes `qualityRegression`'s perplexity drift into
    /// [`EvalInput::external`]).
    External {
        /// The key in `external`.
        key: String,
        /// Above or below.
        cmp: Cmp,
        /// The threshold.
        threshold: f64,
    },
}

impl Test {
    /// The threshold as people read it (`> 800ms`, `> 1.2× stable`).
    pub fn threshold_text(&self) -> String {
        match self {
            Test::Threshold {
                signal,
                cmp,
                threshold,
            } => format!("{} {}", cmp.symbol(), signal.unit().format(*threshold)),
            Test::RiseOverStable {
                signal,
                ratio,
                floor,
            } => format!("> {ratio}× stable and > {}", signal.unit().format(*floor)),
            Test::Query { cmp, threshold, .. } | Test::External { cmp, threshold, .. } => {
                format!("{} {threshold}", cmp.symbol())
            }
        }
    }

    /// The signal this test reads, if it is a standard one.
    pub fn signal(&self) -> Option<Signal> {
        match self {
            Test::Threshold { signal, .. } | Test::RiseOverStable { signal, .. } => Some(*signal),
            _ => None,
        }
    }
}

/// A node's state, as `status.alarms` shows it.
pub use crate::crd::AlarmState as State;

/// A node's remembered state: what it was and since when. `for:` timing
/// reads `since` of a `Pending` node (when its condition started holding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remembered {
    /// The state.
    pub state: State,
    /// When the node entered it.
    pub since: Timestamp,
}

/// Node name → remembered state, for one revision.
pub type Memory = BTreeMap<String, Remembered>;

/// One reported node after evaluation (a `status.alarms` entry).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeReport {
    /// The node name.
    pub name: String,
    /// Its state.
    pub state: State,
    /// Since when.
    pub since: Timestamp,
    /// The subject's value, formatted (`412ms`), when there is one.
    pub value: Option<String>,
    /// The subject's raw value.
    pub raw: Option<f64>,
    /// The stable revision's value, for relative leaves.
    pub baseline: Option<String>,
    /// The threshold, formatted.
    pub threshold: Option<String>,
    /// Why it is unknown (no data, a query error, too few requests, stale).
    pub message: Option<String>,
}

/// The judgement of one revision.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every leaf that matters is conclusive and the tree does not fire.
    Ok,
    /// The tree fires; `leaf` is the first firing leaf, with its values.
    Firing {
        /// The leaf's name (`ttftP99`, `query-1`).
        leaf: String,
        /// Its values.
        values: FiringValues,
    },
    /// The tree cannot be decided (no data, too few requests, stale or
    /// unavailable signals). Unknown holds: no step, no rollback, no
    /// scale-in.
    Unknown {
        /// Which leaves are unknown and why, for conditions.
        why: String,
    },
}

/// The values behind a firing leaf, for the RolledBack condition and events.
#[derive(Clone, Debug, PartialEq)]
pub struct FiringValues {
    /// The subject's value, formatted.
    pub value: Option<String>,
    /// The stable revision's value (relative leaves), formatted.
    pub baseline: Option<String>,
    /// The threshold, formatted.
    pub threshold: Option<String>,
}

impl Verdict {
    /// True for `Firing`.
    pub fn is_firing(&self) -> bool {
        matches!(self, Verdict::Firing { .. })
    }

    /// True for `Unknown`.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Verdict::Unknown { .. })
    }
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The verdict of the whole tree.
    pub verdict: Verdict,
    /// Every reported node (leaves, and composites with `for:`), in tree
    /// order.
    pub nodes: Vec<NodeReport>,
}

impl Evaluation {
    /// The memory to pass to the next evaluation.
    pub fn memory(&self) -> Memory {
        self.nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    Remembered {
                        state: n.state,
                        since: n.since,
                    },
                )
            })
            .collect()
    }
}
