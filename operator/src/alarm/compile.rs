//! `compile`: `spec.slo` + `rollout.analysis.rollbackOn` (wire shape) →
//! [`AlarmTree`] with every threshold resolved.
//!
//! What each leaf means (docs/alarms.md has the same table):
//!
//! | leaf | test |
//! |---|---|
//! | `slo: ttftP99` | TTFT p99 > `slo.ttftP99` |
//! | `slo: itlP99` | ITL p99 > `slo.itlP99` |
//! | `slo: availability`, `alarm: errorRate` | 5xx ratio > 1 − availability |
//! | `alarm: kvCacheSaturation` | KV-cache usage > 90% |
//! | `alarm: latencySpike` | TTFT p99 > 1.2 × stable and > ½ `slo.ttftP99` |
//! | `alarm: errorRise` | 5xx ratio > 2 × stable and > ½ (1 − availability) |
//! | `alarm: qualityRegression` | perplexity drift on the golden references > `quality.perplexityMargin` |
//! | `query` | the PromQL value above / below its threshold |

use std::time::Duration;

use super::{AlarmTree, Cmp, Leaf, Node, NodeKind, Test};
use crate::crd::{
    AlarmExpr, AlarmKind, AlarmLeaf, AlarmTerm, GoDuration, InferenceServiceSpec, QueryAlarm,
    SloSignal,
};
use crate::signals::Signal;

/// Requests a window must hold for a latency or error reading to count.
pub const DEFAULT_MIN_REQUESTS: u64 = 10;

/// The objectives of `spec.slo`, as numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Objectives {
    /// TTFT p99 objective, seconds.
    pub ttft_p99: f64,
    /// ITL p99 objective, seconds.
    pub itl_p99: f64,
    /// Allowed 5xx ratio: 1 − availability / 100.
    pub error_budget: f64,
}

impl Objectives {
    /// Reads `spec.slo`.
    pub fn from_spec(spec: &InferenceServiceSpec) -> Result<Self, CompileError> {
        let availability: f64 = spec
            .slo
            .availability
            .parse()
            .ok()
            .filter(|a: &f64| *a > 0.0 && *a <= 100.0)
            .ok_or_else(|| CompileError::Availability(spec.slo.availability.clone()))?;
        Ok(Self {
            ttft_p99: spec.slo.ttft_p99.get().as_secs_f64(),
            itl_p99: spec.slo.itl_p99.get().as_secs_f64(),
            error_budget: 1.0 - availability / 100.0,
        })
    }
}

/// The fixed tolerances of the built-in alarms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    /// `latencySpike`: canary TTFT p99 over stable's.
    pub latency_ratio: f64,
    /// `latencySpike`: the floor as a share of the TTFT objective.
    pub latency_floor_of_objective: f64,
    /// `errorRise`: canary 5xx ratio over stable's.
    pub error_ratio: f64,
    /// `errorRise`: the floor as a share of the error budget.
    pub error_floor_of_budget: f64,
    /// `kvCacheSaturation`: KV usage threshold.
    pub kv_saturation: f64,
    /// Minimum requests in the window for latency and error leaves.
    pub min_requests: u64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            latency_ratio: 1.2,
            latency_floor_of_objective: 0.5,
            error_ratio: 2.0,
            error_floor_of_budget: 0.5,
            kv_saturation: 0.9,
            min_requests: DEFAULT_MIN_REQUESTS,
        }
    }
}

/// A spec that cannot be compiled (only possible for objects that bypassed
/// the API server's validation).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompileError {
    /// A node sets zero or several keys.
    #[error("rollbackOn node {path} must set exactly one of slo, alarm, query, any, all, not (found {found})")]
    Shape {
        /// Where in the tree (`rollbackOn.any[2]`).
        path: String,
        /// How many keys it set.
        found: usize,
    },
    /// `slo.availability` is not a percentage.
    #[error("slo.availability {0:?} is not a percentage in (0, 100]")]
    Availability(String),
}

/// Compiles the alarm tree of `spec` with the default tolerances.
pub fn compile(spec: &InferenceServiceSpec) -> Result<AlarmTree, CompileError> {
    compile_with(spec, &Tolerances::default())
}

/// Compiles with explicit tolerances.
pub fn compile_with(
    spec: &InferenceServiceSpec,
    tol: &Tolerances,
) -> Result<AlarmTree, CompileError> {
    let mut c = Compiler {
        obj: Objectives::from_spec(spec)?,
        tol: *tol,
        perplexity_margin: spec
            .rollout
            .analysis
            .quality
            .as_ref()
            .map_or(0.1, |q| q.perplexity_margin),
        names: Vec::new(),
        queries: 0,
        groups: 0,
    };
    let root = c.expr(&spec.rollout.analysis.rollback_on, "rollbackOn")?;
    Ok(AlarmTree { root })
}

struct Compiler {
    obj: Objectives,
    tol: Tolerances,
    /// `quality.perplexityMargin` (the `qualityRegression` threshold).
    perplexity_margin: f64,
    names: Vec<String>,
    queries: usize,
    groups: usize,
}

/// The keys one wire node sets, whatever its level.
struct Parts<'a, T> {
    slo: Option<SloSignal>,
    alarm: Option<AlarmKind>,
    query: Option<&'a QueryAlarm>,
    any: Option<&'a [T]>,
    all: Option<&'a [T]>,
    not: Option<&'a T>,
    for_: Option<GoDuration>,
}

impl Compiler {
    fn expr(&mut self, e: &AlarmExpr, path: &str) -> Result<Node, CompileError> {
        let parts = Parts {
            slo: e.slo,
            alarm: e.alarm,
            query: e.query.as_ref(),
            any: e.any.as_deref(),
            all: e.all.as_deref(),
            not: e.not.as_deref(),
            for_: e.for_,
        };
        self.node(parts, path, |c, t, p| c.term(t, p))
    }

    fn term(&mut self, t: &AlarmTerm, path: &str) -> Result<Node, CompileError> {
        let parts = Parts {
            slo: t.slo,
            alarm: t.alarm,
            query: t.query.as_ref(),
            any: t.any.as_deref(),
            all: t.all.as_deref(),
            not: t.not.as_ref(),
            for_: t.for_,
        };
        self.node(parts, path, |c, l, p| c.leaf_node(l, p))
    }

    fn leaf_node(&mut self, l: &AlarmLeaf, path: &str) -> Result<Node, CompileError> {
        let parts: Parts<'_, AlarmLeaf> = Parts {
            slo: l.slo,
            alarm: l.alarm,
            query: l.query.as_ref(),
            any: None,
            all: None,
            not: None,
            for_: l.for_,
        };
        self.node(parts, path, |_, _, _| unreachable_child())
    }

    fn node<T>(
        &mut self,
        p: Parts<'_, T>,
        path: &str,
        mut child: impl FnMut(&mut Self, &T, &str) -> Result<Node, CompileError>,
    ) -> Result<Node, CompileError> {
        let found = [
            p.slo.is_some(),
            p.alarm.is_some(),
            p.query.is_some(),
            p.any.is_some(),
            p.all.is_some(),
            p.not.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if found != 1 {
            return Err(CompileError::Shape {
                path: path.into(),
                found,
            });
        }
        let hold = p.for_.map(GoDuration::get);
        if let Some(s) = p.slo {
            let (name, leaf) = self.slo(s);
            return Ok(self.named(name, hold.unwrap_or_default(), NodeKind::Leaf(leaf)));
        }
        if let Some(a) = p.alarm {
            let (name, leaf) = self.builtin(a);
            return Ok(self.named(name, hold.unwrap_or_default(), NodeKind::Leaf(leaf)));
        }
        if let Some(q) = p.query {
            self.queries += 1;
            let name = format!("query-{}", self.queries);
            let (cmp, threshold) = match (q.above, q.below) {
                (Some(a), _) => (Cmp::Above, a),
                (None, Some(b)) => (Cmp::Below, b),
                // CEL refuses neither; treat a bare query as "above 0".
                (None, None) => (Cmp::Above, 0.0),
            };
            let leaf = Leaf {
                test: Test::Query {
                    promql: q.promql.clone(),
                    cmp,
                    threshold,
                },
                min_requests: 0,
            };
            let hold = hold.unwrap_or(q.for_.get());
            return Ok(self.named(&name, hold, NodeKind::Leaf(leaf)));
        }
        let mut group = |kind: &str, items: &[T]| -> Result<Vec<Node>, CompileError> {
            items
                .iter()
                .enumerate()
                .map(|(i, t)| child(self, t, &format!("{path}.{kind}[{i}]")))
                .collect()
        };
        let (kind, label) = if let Some(items) = p.any {
            (NodeKind::Any(group("any", items)?), "any")
        } else if let Some(items) = p.all {
            (NodeKind::All(group("all", items)?), "all")
        } else if let Some(n) = p.not {
            let inner = child(self, n, &format!("{path}.not"))?;
            (NodeKind::Not(Box::new(inner)), "not")
        } else {
            return Err(CompileError::Shape {
                path: path.into(),
                found: 0,
            });
        };
        self.groups += 1;
        let name = format!("{label}-{}", self.groups);
        Ok(self.named(&name, hold.unwrap_or_default(), kind))
    }

    /// A node with a name unique in the tree (`errorRate`, `errorRate-2`).
    fn named(&mut self, name: &str, hold: Duration, kind: NodeKind) -> Node {
        let mut unique = name.to_string();
        let mut n = 1;
        while self.names.contains(&unique) {
            n += 1;
            unique = format!("{name}-{n}");
        }
        self.names.push(unique.clone());
        Node {
            name: unique,
            hold,
            kind,
        }
    }

    fn slo(&self, s: SloSignal) -> (&'static str, Leaf) {
        let min = self.tol.min_requests;
        let above = |signal, threshold| Leaf {
            test: Test::Threshold {
                signal,
                cmp: Cmp::Above,
                threshold,
            },
            min_requests: min,
        };
        match s {
            SloSignal::TtftP99 => ("ttftP99", above(Signal::TtftP99, self.obj.ttft_p99)),
            SloSignal::ItlP99 => ("itlP99", above(Signal::ItlP99, self.obj.itl_p99)),
            SloSignal::Availability => (
                "availability",
                above(Signal::ServerErrorRatio, self.obj.error_budget),
            ),
        }
    }

    fn builtin(&self, a: AlarmKind) -> (&'static str, Leaf) {
        let min = self.tol.min_requests;
        let t = &self.tol;
        let leaf = |test, min_requests| Leaf { test, min_requests };
        match a {
            AlarmKind::ErrorRate => (
                "errorRate",
                leaf(
                    Test::Threshold {
                        signal: Signal::ServerErrorRatio,
                        cmp: Cmp::Above,
                        threshold: self.obj.error_budget,
                    },
                    min,
                ),
            ),
            AlarmKind::KvCacheSaturation => (
                "kvCacheSaturation",
                leaf(
                    Test::Threshold {
                        signal: Signal::KvCacheUsage,
                        cmp: Cmp::Above,
                        threshold: t.kv_saturation,
                    },
                    0,
                ),
            ),
            AlarmKind::LatencySpike => (
                "latencySpike",
                leaf(
                    Test::RiseOverStable {
                        signal: Signal::TtftP99,
                        ratio: t.latency_ratio,
                        floor: self.obj.ttft_p99 * t.latency_floor_of_objective,
                    },
                    min,
                ),
            ),
            AlarmKind::ErrorRise => (
                "errorRise",
                leaf(
                    Test::RiseOverStable {
                        signal: Signal::ServerErrorRatio,
                        ratio: t.error_ratio,
                        floor: self.obj.error_budget * t.error_floor_of_budget,
                    },
                    min,
                ),
            ),
            AlarmKind::QualityRegression => (
                "qualityRegression",
                leaf(
                    // The quality gate supplies `canary / stable − 1` of
                    // the perplexity on the golden references
                    // (`quality::PerplexityDrift::reading`).
                    Test::External {
                        key: crate::quality::REGRESSION_ALARM.into(),
                        cmp: Cmp::Above,
                        threshold: self.perplexity_margin,
                    },
                    0,
                ),
            ),
        }
    }
}

fn unreachable_child() -> Result<Node, CompileError> {
    // Innermost leaves have no groups; `node` returns before calling this.
    Err(CompileError::Shape {
        path: "leaf".into(),
        found: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> InferenceServiceSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn names(n: &Node) -> Vec<String> {
        let mut out = Vec::new();
        n.walk(&mut |n| out.push(n.name.clone()));
        out
    }

    #[test]
    fn default_spec_compiles_to_any_of_four_slo_and_builtin_leaves() {
        let s = spec("model: { name: m, uri: 'file:///m' }");
        let tree = compile(&s).unwrap();
        assert_eq!(
            names(&tree.root),
            [
                "any-1",
                "ttftP99",
                "itlP99",
                "errorRate",
                "kvCacheSaturation"
            ]
        );
        let leaves = tree.leaves();
        assert_eq!(
            leaves[0].1,
            &Leaf {
                test: Test::Threshold {
                    signal: Signal::TtftP99,
                    cmp: Cmp::Above,
                    threshold: 0.8
                },
                min_requests: DEFAULT_MIN_REQUESTS
            }
        );
        assert_eq!(leaves[0].1.test.threshold_text(), "> 800ms");
        match &leaves[2].1.test {
            Test::Threshold { threshold, .. } => assert!((threshold - 0.001).abs() < 1e-12),
            t => panic!("{t:?}"),
        }
        assert_eq!(leaves[3].1.min_requests, 0, "a gauge needs no requests");
    }

    #[test]
    fn design_sketch_tree_with_for_and_relative_leaves() {
        let s = spec(
            r#"
model: { name: m, uri: 'file:///m' }
slo: { ttftP99: 500ms, itlP99: 50ms, availability: "99" }
rollout:
  analysis:
    rollbackOn:
      any:
        - slo: ttftP99
        - all: [ { alarm: latencySpike }, { alarm: errorRise } ]
          for: 30s
        - query: { promql: "rate(x{revision=\"$revision\"}[1m])", above: 0.2, for: 1m }
        - query: { promql: "y", below: 3 }
          for: 10s
        - not: { alarm: errorRate }
"#,
        );
        let tree = compile(&s).unwrap();
        assert_eq!(
            names(&tree.root),
            [
                "any-3",
                "ttftP99",
                "all-1",
                "latencySpike",
                "errorRise",
                "query-1",
                "query-2",
                "not-2",
                "errorRate"
            ]
        );
        let NodeKind::Any(children) = &tree.root.kind else {
            panic!()
        };
        assert_eq!(children[1].hold, Duration::from_secs(30));
        assert_eq!(children[2].hold, Duration::from_secs(60), "query's own for");
        assert_eq!(children[3].hold, Duration::from_secs(10), "node for wins");
        let NodeKind::All(pair) = &children[1].kind else {
            panic!()
        };
        let NodeKind::Leaf(spike) = &pair[0].kind else {
            panic!()
        };
        assert_eq!(
            spike.test,
            Test::RiseOverStable {
                signal: Signal::TtftP99,
                ratio: 1.2,
                floor: 0.25
            }
        );
        let NodeKind::Leaf(rise) = &pair[1].kind else {
            panic!()
        };
        match rise.test {
            Test::RiseOverStable { ratio, floor, .. } => {
                assert_eq!(ratio, 2.0);
                assert!((floor - 0.005).abs() < 1e-12);
            }
            ref t => panic!("{t:?}"),
        }
        assert_eq!(
            tree.queries(),
            [
                ("query-1", "rate(x{revision=\"$revision\"}[1m])"),
                ("query-2", "y")
            ]
        );
        assert!(children[1].reported() && !tree.root.reported());
    }

    #[test]
    fn duplicate_leaves_get_unique_names() {
        let s = spec(
            "model: { name: m, uri: 'file:///m' }\nrollout: { analysis: { rollbackOn: { any: [ { alarm: errorRate }, { not: { alarm: errorRate } } ] } } }",
        );
        assert_eq!(
            names(&compile(&s).unwrap().root),
            ["any-2", "errorRate", "not-1", "errorRate-2"]
        );
    }

    #[test]
    fn a_node_with_two_keys_or_a_bad_availability_is_refused_with_its_path() {
        let s = spec(
            "model: { name: m, uri: 'file:///m' }\nrollout: { analysis: { rollbackOn: { any: [ { slo: ttftP99 }, { slo: itlP99, alarm: errorRate } ] } } }",
        );
        assert_eq!(
            compile(&s),
            Err(CompileError::Shape {
                path: "rollbackOn.any[1]".into(),
                found: 2
            })
        );
        let mut s = spec("model: { name: m, uri: 'file:///m' }");
        s.slo.availability = "abc".into();
        assert_eq!(compile(&s), Err(CompileError::Availability("abc".into())));
    }

    #[test]
    fn quality_leaf_reads_the_perplexity_drift_above_its_margin() {
        let s = spec(
            "model: { name: m, uri: 'file:///m' }\nrollout: { analysis: { quality: { goldenSet: { configMap: g }, minScore: 0.8, perplexityMargin: 0.25 }, rollbackOn: { alarm: qualityRegression } } }",
        );
        let tree = compile(&s).unwrap();
        assert_eq!(
            tree.leaves()[0].1.test,
            Test::External {
                key: "qualityRegression".into(),
                cmp: Cmp::Above,
                threshold: 0.25
            }
        );
        // Without a quality section the default margin applies (the leaf
        // then has no reading and holds as unknown).
        let s = spec(
            "model: { name: m, uri: 'file:///m' }\nrollout: { analysis: { rollbackOn: { alarm: qualityRegression } } }",
        );
        assert!(matches!(
            compile(&s).unwrap().leaves()[0].1.test,
            Test::External { cmp: Cmp::Above, threshold, .. } if (threshold - 0.1).abs() < 1e-12
        ));
    }
}
