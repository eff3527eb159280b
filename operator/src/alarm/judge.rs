//! `judge`: the alarm part of one reconcile, as a value. Evaluates the tree
//! for every judged revision over the latest signals, continuing the
//! memory kept in the previous `status.alarms`, and returns what status,
//! conditions and events need: the verdict per revision, the new
//! `status.alarms`, the TTFT-P99 printer value (blank when unknown), the
//! `SignalsUnavailable` and `AlarmQueryInvalid` conditions, and the leaf
//! transitions into and out of Firing.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::{evaluate, AlarmTree, CompileError, EvalInput, Memory, Remembered, State, Verdict};
use crate::crd::AlarmStatus;
use crate::reason::Reason;
use crate::signals::{Latest, Reading, Signal, Unit};

/// Condition type: signals cannot be read (no Prometheus configured, down,
/// stale).
pub const SIGNALS_UNAVAILABLE: &str = "SignalsUnavailable";
/// Condition type: the alarm tree cannot be used as written (a custom
/// PromQL that Prometheus refuses, or a tree that does not compile).
pub const ALARM_INVALID: &str = "AlarmQueryInvalid";

/// What [`judge`] reads.
#[derive(Clone, Copy, Debug)]
pub struct JudgeInput<'a> {
    /// The compiled tree, or why it does not compile.
    pub tree: Result<&'a AlarmTree, &'a CompileError>,
    /// The latest signals.
    pub signals: &'a Latest,
    /// `analysis.interval`.
    pub interval: Duration,
    /// The stable revision (baseline of relative leaves, the TTFT column).
    pub stable: Option<&'a str>,
    /// The revisions to judge (those with ready pods), in a stable order.
    pub revisions: &'a [String],
    /// The stored `status.alarms` (the memory of `for:` timers).
    pub previous: &'a [AlarmStatus],
    /// Readings supplied by other parts (the quality gate).
    pub external: &'a BTreeMap<String, Reading>,
    /// Now.
    pub now: Timestamp,
}

/// A condition as a value; the caller merges it into status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CondValue {
    /// The type.
    pub type_: &'static str,
    /// True / False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: Reason,
    /// For people.
    pub message: String,
}

/// A leaf that started or stopped firing, for an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The revision.
    pub revision: String,
    /// The node name.
    pub node: String,
    /// True: started firing; false: stopped.
    pub firing: bool,
    /// The state it is in now (`Firing`, or what it fell back to).
    pub state: State,
    /// Its value now.
    pub value: Option<String>,
    /// Its threshold.
    pub threshold: Option<String>,
}

/// The alarm part of status, as values.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// The verdict per judged revision.
    pub verdicts: BTreeMap<String, Verdict>,
    /// The new `status.alarms`.
    pub alarms: Vec<AlarmStatus>,
    /// The TTFT-P99 printer value: the stable revision's, blank when unknown.
    pub ttft_p99: Option<String>,
    /// `SignalsUnavailable` and `AlarmQueryInvalid`.
    pub conditions: Vec<CondValue>,
    /// Leaves that started or stopped firing since the previous status.
    pub transitions: Vec<Transition>,
}

fn memory_of(previous: &[AlarmStatus], revision: &str) -> Memory {
    previous
        .iter()
        .filter(|a| a.revision == revision)
        .filter_map(|a| {
            let since = a.since.as_ref()?.0;
            Some((
                a.name.clone(),
                Remembered {
                    state: a.state,
                    since,
                },
            ))
        })
        .collect()
}

/// Judges every revision.
pub fn judge(input: &JudgeInput<'_>) -> Judgement {
    let mut verdicts = BTreeMap::new();
    let mut alarms = Vec::new();
    let mut transitions = Vec::new();
    let mut conditions = Vec::new();

    let unavailable = input.signals.unavailable_reason(input.now, input.interval);
    conditions.push(match &unavailable {
        Some(why) => CondValue {
            type_: SIGNALS_UNAVAILABLE,
            status: true,
            reason: match input.signals {
                Latest::NotConfigured => Reason::PrometheusNotConfigured,
                Latest::Waiting => Reason::WaitingForFirstSnapshot,
                Latest::Taken(s) if s.is_stale(input.now, input.interval) => Reason::SignalsStale,
                Latest::Taken(_) => Reason::PrometheusUnavailable,
            },
            message: format!("{why}; every alarm is unknown and decisions that need signals hold"),
        },
        None => CondValue {
            type_: SIGNALS_UNAVAILABLE,
            status: false,
            reason: Reason::SignalsFresh,
            message: "Prometheus answers and the latest snapshot is fresh".into(),
        },
    });

    let tree = match input.tree {
        Ok(t) => t,
        Err(e) => {
            conditions.push(CondValue {
                type_: ALARM_INVALID,
                status: true,
                reason: Reason::AlarmTreeInvalid,
                message: e.to_string(),
            });
            for rev in input.revisions {
                verdicts.insert(
                    rev.clone(),
                    Verdict::Unknown {
                        why: format!("the alarm tree does not compile: {e}"),
                    },
                );
            }
            return Judgement {
                verdicts,
                alarms,
                ttft_p99: None,
                conditions,
                transitions,
            };
        }
    };
    let invalid: Vec<String> = match input.signals {
        Latest::Taken(s) => s
            .invalid_queries()
            .map(|(leaf, e)| format!("{leaf}: {e}"))
            .collect(),
        _ => Vec::new(),
    };
    conditions.push(if invalid.is_empty() {
        CondValue {
            type_: ALARM_INVALID,
            status: false,
            reason: Reason::AlarmQueriesValid,
            message: "Prometheus accepts every alarm query".into(),
        }
    } else {
        CondValue {
            type_: ALARM_INVALID,
            status: true,
            reason: Reason::QueryRefused,
            message: format!(
                "Prometheus refuses the PromQL of {}; those leaves read NoData",
                invalid.join("; ")
            ),
        }
    });

    for rev in input.revisions {
        let memory = memory_of(input.previous, rev);
        let ev = evaluate(
            tree,
            &EvalInput {
                signals: input.signals,
                interval: input.interval,
                revision: rev,
                stable: input.stable,
                external: input.external,
            },
            input.now,
            &memory,
        );
        for n in &ev.nodes {
            let was_firing = memory.get(&n.name).map(|m| m.state) == Some(State::Firing);
            let is_firing = n.state == State::Firing;
            if was_firing != is_firing {
                transitions.push(Transition {
                    revision: rev.clone(),
                    node: n.name.clone(),
                    firing: is_firing,
                    state: n.state,
                    value: n.value.clone(),
                    threshold: n.threshold.clone(),
                });
            }
            alarms.push(AlarmStatus {
                name: n.name.clone(),
                revision: rev.clone(),
                state: n.state,
                value: n.value.clone(),
                stable_value: n.baseline.clone(),
                threshold: n.threshold.clone(),
                since: Some(Time(n.since)),
                message: n.message.clone(),
            });
        }
        verdicts.insert(rev.clone(), ev.verdict);
    }
    let ttft_p99 = input
        .stable
        .and_then(|s| {
            input
                .signals
                .fresh(input.now, input.interval)?
                .reading(Signal::TtftP99, s)
                .value()
        })
        .filter(|v| v.is_finite())
        .map(|v| Unit::Seconds.format(v));
    Judgement {
        verdicts,
        alarms,
        ttft_p99,
        conditions,
        transitions,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::alarm::compile;
    use crate::crd::InferenceServiceSpec;
    use crate::signals::{QueryError, QueryErrorKind, Snapshot};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn spec() -> InferenceServiceSpec {
        serde_yaml::from_str("model: { name: m, uri: 'file:///m' }").unwrap()
    }

    fn snapshot(at: Timestamp, ttft: &[(&str, f64)]) -> Latest {
        let mut signals = BTreeMap::new();
        signals.insert(
            Signal::TtftP99,
            Ok(ttft.iter().map(|(r, v)| (r.to_string(), *v)).collect()),
        );
        signals.insert(
            Signal::Requests,
            Ok(ttft.iter().map(|(r, _)| (r.to_string(), 100.0)).collect()),
        );
        for s in [
            Signal::ItlP99,
            Signal::ServerErrorRatio,
            Signal::KvCacheUsage,
        ] {
            signals.insert(
                s,
                Ok(ttft.iter().map(|(r, _)| (r.to_string(), 0.0)).collect()),
            );
        }
        Latest::Taken(Arc::new(Snapshot {
            taken_at: at,
            window: Duration::from_secs(60),
            signals,
            queries: BTreeMap::new(),
            pod_loads: BTreeMap::new(),
        }))
    }

    fn run(latest: &Latest, previous: &[AlarmStatus], now: Timestamp) -> Judgement {
        let tree = compile(&spec());
        let revisions = vec!["a".to_string(), "b".to_string()];
        let external = BTreeMap::new();
        judge(&JudgeInput {
            tree: tree.as_ref(),
            signals: latest,
            interval: Duration::from_secs(2),
            stable: Some("a"),
            revisions: &revisions,
            previous,
            external: &external,
            now,
        })
    }

    #[test]
    fn slow_revision_fires_its_ttft_leaf_only_and_the_column_shows_stable() {
        let j = run(&snapshot(t(0), &[("a", 0.3), ("b", 1.5)]), &[], t(1));
        assert_eq!(j.verdicts["a"], Verdict::Ok);
        assert!(matches!(&j.verdicts["b"], Verdict::Firing { leaf, .. } if leaf == "ttftP99"));
        let ttft_b = j
            .alarms
            .iter()
            .find(|a| a.revision == "b" && a.name == "ttftP99")
            .unwrap();
        assert_eq!(ttft_b.state, State::Firing);
        assert_eq!(ttft_b.value.as_deref(), Some("1.5s"));
        assert_eq!(j.ttft_p99.as_deref(), Some("300ms"));
        assert_eq!(
            j.transitions,
            vec![Transition {
                revision: "b".into(),
                node: "ttftP99".into(),
                firing: true,
                state: State::Firing,
                value: Some("1.5s".into()),
                threshold: Some("> 800ms".into())
            }]
        );
        assert!(j.conditions.iter().all(|c| !c.status), "{:?}", j.conditions);
        // The next pass keeps since and makes no new transition; recovery
        // makes a "stopped firing" one.
        let j2 = run(&snapshot(t(2), &[("a", 0.3), ("b", 1.5)]), &j.alarms, t(3));
        assert!(j2.transitions.is_empty());
        assert_eq!(j2.alarms, j.alarms, "unchanged status: no write");
        let j3 = run(&snapshot(t(4), &[("a", 0.3), ("b", 0.3)]), &j2.alarms, t(5));
        assert_eq!(j3.transitions.len(), 1);
        assert!(!j3.transitions[0].firing);
    }

    #[test]
    fn prometheus_down_sets_signals_unavailable_and_blanks_the_column() {
        let mut s = match snapshot(t(0), &[("a", 0.3)]) {
            Latest::Taken(s) => (*s).clone(),
            _ => unreachable!(),
        };
        for sig in Signal::ALL {
            s.signals.insert(
                sig,
                Err(QueryError {
                    kind: QueryErrorKind::Unavailable,
                    message: "connection refused".into(),
                }),
            );
        }
        let j = run(&Latest::Taken(Arc::new(s)), &[], t(1));
        assert!(j.alarms.iter().all(|a| a.state == State::NoData));
        assert!(j.verdicts.values().all(Verdict::is_unknown));
        assert_eq!(j.ttft_p99, None, "blank, never 0");
        let c = &j.conditions[0];
        assert_eq!(
            (c.type_, c.status, c.reason),
            (SIGNALS_UNAVAILABLE, true, Reason::PrometheusUnavailable)
        );
        assert!(c.message.contains("connection refused"));
        // Not configured and stale say so.
        let j = run(&Latest::NotConfigured, &[], t(1));
        assert_eq!(j.conditions[0].reason, Reason::PrometheusNotConfigured);
        let j = run(&snapshot(t(0), &[("a", 0.3)]), &[], t(10));
        assert_eq!(j.conditions[0].reason, Reason::SignalsStale);
        assert!(j.alarms.iter().all(|a| a.state == State::NoData));
    }

    #[test]
    fn a_refused_custom_query_names_its_leaf_in_a_condition() {
        let mut s = spec();
        s.rollout.analysis.rollback_on = serde_yaml::from_str(
            "any: [ { slo: ttftP99 }, { query: { promql: 'sum(rate(x[1m]', above: 1 } } ]",
        )
        .unwrap();
        let tree = compile(&s);
        let mut snap = match snapshot(t(0), &[("a", 0.3)]) {
            Latest::Taken(s) => (*s).clone(),
            _ => unreachable!(),
        };
        snap.queries.insert(
            "query-1".into(),
            BTreeMap::from([(
                "a".to_string(),
                Reading::Error(QueryError {
                    kind: QueryErrorKind::Invalid,
                    message: "1:17: parse error: unclosed left parenthesis".into(),
                }),
            )]),
        );
        let revisions = vec!["a".to_string()];
        let external = BTreeMap::new();
        let j = judge(&JudgeInput {
            tree: tree.as_ref(),
            signals: &Latest::Taken(Arc::new(snap)),
            interval: Duration::from_secs(2),
            stable: Some("a"),
            revisions: &revisions,
            previous: &[],
            external: &external,
            now: t(1),
        });
        let c = j
            .conditions
            .iter()
            .find(|c| c.type_ == ALARM_INVALID)
            .unwrap();
        assert!(c.status);
        assert!(
            c.message.contains("query-1: 1:17: parse error"),
            "{}",
            c.message
        );
        // The SLO leaf is unaffected.
        let ttft = j.alarms.iter().find(|a| a.name == "ttftP99").unwrap();
        assert_eq!(ttft.state, State::Ok);
        let signals = j
            .conditions
            .iter()
            .find(|c| c.type_ == SIGNALS_UNAVAILABLE)
            .unwrap();
        assert!(!signals.status);
    }
}
