//! `evaluate(tree, input, now, memory) -> Evaluation`: pure judgement of
//! one revision against its alarm tree over the latest signal snapshot.
//!
//! Each leaf first gets a raw state from its reading (Ok / Firing, or
//! unknown: NoData, Inconclusive), then `for:` turns a raw Firing into
//! Pending until it has held for the node's hold time (remembered in
//! [`Memory`]). Composite nodes combine their children's settled states
//! (rules in the module header of `alarm`) and settle their own `for:` the
//! same way.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::{
    AlarmTree, Evaluation, FiringValues, Leaf, Memory, Node, NodeKind, NodeReport, Remembered,
    State, Test, Verdict,
};
use crate::signals::{Latest, Reading, Signal, Snapshot, Unit};

/// What one evaluation reads besides the tree.
#[derive(Clone, Copy, Debug)]
pub struct EvalInput<'a> {
    /// The latest signals of the InferenceService.
    pub signals: &'a Latest,
    /// `analysis.interval` (a snapshot older than two is stale).
    pub interval: Duration,
    /// The revision judged.
    pub revision: &'a str,
    /// The stable revision, for relative leaves; `None` or equal to
    /// `revision` when the subject is the stable revision itself.
    pub stable: Option<&'a str>,
    /// Readings other parts of the operator supply (`qualityRegression`).
    pub external: &'a BTreeMap<String, Reading>,
}

/// Three-valued result of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    Ok,
    Firing,
    Unknown(State),
}

/// A node's outcome: its value, the leaf to blame when it fires.
struct Outcome {
    tri: Tri,
    firing: Option<(String, FiringValues)>,
}

struct Ctx<'a> {
    input: &'a EvalInput<'a>,
    snapshot: Option<&'a Snapshot>,
    /// Why no fresh snapshot exists, when none does.
    unavailable: Option<String>,
    now: Timestamp,
    memory: &'a Memory,
    reports: Vec<NodeReport>,
    unknown: Vec<String>,
}

/// Judges `input.revision` against `tree` at `now`, continuing `memory`.
pub fn evaluate(
    tree: &AlarmTree,
    input: &EvalInput<'_>,
    now: Timestamp,
    memory: &Memory,
) -> Evaluation {
    let snapshot = input.signals.fresh(now, input.interval);
    let unavailable = if snapshot.is_none() {
        input.signals.unavailable_reason(now, input.interval)
    } else {
        None
    };
    let mut cx = Ctx {
        input,
        snapshot,
        unavailable,
        now,
        memory,
        reports: Vec::new(),
        unknown: Vec::new(),
    };
    let out = cx.node(&tree.root);
    let verdict = match out.tri {
        Tri::Ok => Verdict::Ok,
        Tri::Firing => {
            let (leaf, values) = out.firing.unwrap_or_else(|| {
                (
                    tree.root.name.clone(),
                    FiringValues {
                        value: None,
                        baseline: None,
                        threshold: None,
                    },
                )
            });
            Verdict::Firing { leaf, values }
        }
        Tri::Unknown(_) => Verdict::Unknown {
            why: cx
                .unavailable
                .clone()
                .unwrap_or_else(|| cx.unknown.join("; ")),
        },
    };
    Evaluation {
        verdict,
        nodes: cx.reports,
    }
}

/// A leaf's raw reading.
struct Raw {
    tri: Tri,
    value: Option<f64>,
    baseline: Option<f64>,
    message: Option<String>,
}

impl Raw {
    fn unknown(state: State, message: String, value: Option<f64>) -> Self {
        Raw {
            tri: Tri::Unknown(state),
            value,
            baseline: None,
            message: Some(message),
        }
    }
}

impl Ctx<'_> {
    fn node(&mut self, node: &Node) -> Outcome {
        let report_at = self.reports.len();
        match &node.kind {
            NodeKind::Leaf(leaf) => self.leaf(node, leaf),
            NodeKind::Any(children) => {
                let outs: Vec<Outcome> = children.iter().map(|c| self.node(c)).collect();
                let raw = if outs.iter().any(|o| o.tri == Tri::Firing) {
                    Tri::Firing
                } else {
                    first_unknown(&outs).unwrap_or(Tri::Ok)
                };
                self.composite(node, raw, outs, report_at)
            }
            NodeKind::All(children) => {
                let outs: Vec<Outcome> = children.iter().map(|c| self.node(c)).collect();
                let raw = if !outs.is_empty() && outs.iter().all(|o| o.tri == Tri::Firing) {
                    Tri::Firing
                } else {
                    first_unknown(&outs).unwrap_or(Tri::Ok)
                };
                self.composite(node, raw, outs, report_at)
            }
            NodeKind::Not(child) => {
                let out = self.node(child);
                let raw = match out.tri {
                    Tri::Ok => Tri::Firing,
                    Tri::Firing => Tri::Ok,
                    u => u,
                };
                self.composite(node, raw, Vec::new(), report_at)
            }
        }
    }

    fn composite(&mut self, node: &Node, raw: Tri, outs: Vec<Outcome>, at: usize) -> Outcome {
        let (state, since) = settle(raw, node.hold, self.memory.get(&node.name), self.now);
        let tri = tri_of(state);
        let firing = (tri == Tri::Firing).then(|| {
            outs.into_iter()
                .find(|o| o.tri == Tri::Firing)
                .and_then(|o| o.firing)
                .unwrap_or_else(|| {
                    (
                        node.name.clone(),
                        FiringValues {
                            value: None,
                            baseline: None,
                            threshold: None,
                        },
                    )
                })
        });
        if node.reported() {
            // Composites are reported before their children, like the tree
            // reads.
            self.reports.insert(
                at,
                NodeReport {
                    name: node.name.clone(),
                    state,
                    since,
                    value: None,
                    raw: None,
                    baseline: None,
                    threshold: Some(format!(
                        "holds for {}",
                        humantime::format_duration(node.hold)
                    )),
                    message: None,
                },
            );
        }
        Outcome { tri, firing }
    }

    fn leaf(&mut self, node: &Node, leaf: &Leaf) -> Outcome {
        let raw = self.raw(node, leaf);
        let (state, since) = settle(raw.tri, node.hold, self.memory.get(&node.name), self.now);
        let unit = leaf.test.signal().map_or(Unit::Plain, Signal::unit);
        let value = raw.value.map(|v| unit.format(v));
        let baseline = raw.baseline.map(|v| unit.format(v));
        let threshold = Some(leaf.test.threshold_text());
        if let (Tri::Unknown(_), Some(m)) = (tri_of(state), &raw.message) {
            self.unknown.push(format!("{}: {m}", node.name));
        }
        self.reports.push(NodeReport {
            name: node.name.clone(),
            state,
            since,
            value: value.clone(),
            raw: raw.value,
            baseline: baseline.clone(),
            threshold: threshold.clone(),
            message: raw.message,
        });
        let tri = tri_of(state);
        Outcome {
            tri,
            firing: (tri == Tri::Firing).then(|| {
                (
                    node.name.clone(),
                    FiringValues {
                        value,
                        baseline,
                        threshold,
                    },
                )
            }),
        }
    }

    /// The leaf's state from the snapshot, before `for:`.
    fn raw(&self, node: &Node, leaf: &Leaf) -> Raw {
        let Some(snap) = self.snapshot else {
            let why = self
                .unavailable
                .clone()
                .unwrap_or_else(|| "no signals".into());
            return Raw::unknown(State::NoData, why, None);
        };
        let rev = self.input.revision;
        let reading = match &leaf.test {
            Test::Threshold { signal, .. } | Test::RiseOverStable { signal, .. } => {
                snap.reading(*signal, rev)
            }
            Test::Query { .. } => snap.query(&node.name, rev),
            Test::External { key, .. } => self
                .input
                .external
                .get(key)
                .cloned()
                .unwrap_or(Reading::NoData),
        };
        let value = match reading {
            Reading::Error(e) => {
                return Raw::unknown(State::NoData, format!("query failed: {e}"), None)
            }
            Reading::NoData => None,
            Reading::Value(v) => Some(v),
        };
        if let Some(short) = self.too_few_requests(snap, rev, leaf.min_requests) {
            return Raw::unknown(State::Inconclusive, short, value);
        }
        let Some(v) = value else {
            return Raw::unknown(State::NoData, "no data in the window".into(), None);
        };
        let breached = |fires: bool, baseline| Raw {
            tri: if fires { Tri::Firing } else { Tri::Ok },
            value: Some(v),
            baseline,
            message: None,
        };
        match &leaf.test {
            Test::Threshold { cmp, threshold, .. }
            | Test::Query { cmp, threshold, .. }
            | Test::External { cmp, threshold, .. } => breached(cmp.breached(v, *threshold), None),
            Test::RiseOverStable {
                signal,
                ratio,
                floor,
            } => {
                let stable = match self.input.stable {
                    Some(s) if s != rev => s,
                    // The stable revision compared with itself never rises.
                    _ => return breached(false, None),
                };
                let base = match snap.reading(*signal, stable) {
                    Reading::Value(b) => b,
                    Reading::NoData => {
                        return Raw::unknown(
                            State::NoData,
                            format!("the stable revision {stable} has no data"),
                            Some(v),
                        )
                    }
                    Reading::Error(e) => {
                        return Raw::unknown(State::NoData, format!("query failed: {e}"), Some(v))
                    }
                };
                if let Some(short) = self.too_few_requests(snap, stable, leaf.min_requests) {
                    return Raw::unknown(
                        State::Inconclusive,
                        format!("stable revision {stable}: {short}"),
                        Some(v),
                    );
                }
                breached(v > ratio * base && v > *floor, Some(base))
            }
        }
    }

    /// `Some(why)` when `revision` served fewer than `min` requests in the
    /// window.
    fn too_few_requests(&self, snap: &Snapshot, revision: &str, min: u64) -> Option<String> {
        if min == 0 {
            return None;
        }
        match snap.reading(Signal::Requests, revision) {
            Reading::Value(n) if n >= min as f64 => None,
            Reading::Value(n) => Some(format!(
                "{} requests in the window, fewer than the {min} needed",
                n.round()
            )),
            _ => Some(format!("no requests in the window (need {min})")),
        }
    }
}

fn first_unknown(outs: &[Outcome]) -> Option<Tri> {
    // NoData says more than Inconclusive; prefer it when both are present.
    let unknowns = outs.iter().filter_map(|o| match o.tri {
        Tri::Unknown(s) => Some(s),
        _ => None,
    });
    let mut found = None;
    for s in unknowns {
        if s == State::NoData {
            return Some(Tri::Unknown(State::NoData));
        }
        found = Some(Tri::Unknown(s));
    }
    found
}

fn tri_of(state: State) -> Tri {
    match state {
        State::Firing => Tri::Firing,
        State::Ok | State::Pending => Tri::Ok,
        s => Tri::Unknown(s),
    }
}

/// Applies `for:` and memory to a raw state: returns the state and since
/// when.
fn settle(
    raw: Tri,
    hold: Duration,
    prev: Option<&Remembered>,
    now: Timestamp,
) -> (State, Timestamp) {
    let keep = |state: State| match prev {
        Some(p) if p.state == state => (state, p.since),
        _ => (state, now),
    };
    match raw {
        Tri::Ok => keep(State::Ok),
        Tri::Unknown(s) => keep(s),
        Tri::Firing => match prev {
            Some(p) if p.state == State::Firing => (State::Firing, p.since),
            Some(p) if p.state == State::Pending => {
                let held = now.duration_since(p.since);
                if held.as_secs_f64() >= hold.as_secs_f64() {
                    (State::Firing, now)
                } else {
                    (State::Pending, p.since)
                }
            }
            _ if hold.is_zero() => (State::Firing, now),
            _ => (State::Pending, now),
        },
    }
}

#[cfg(test)]
mod tests;
