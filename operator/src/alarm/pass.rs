//! The alarm part of one reconcile pass, as values: which revisions the
//! signal poller covers ([`targets`]), and the judgement turned into what
//! status needs ([`analyse`] → [`Analysis`]: `status.alarms`, the TTFT-P99
//! column, the `SignalsUnavailable` and `AlarmQueryInvalid` conditions with
//! their transition times kept, the leaf transitions for events, and when
//! the next look is due).
//!
//! Flow inside a pass: the controller asks [`targets`] what to poll, hands
//! that to its poller and gets the latest snapshot back (never waiting on
//! Prometheus), then calls [`analyse`] with it and writes
//! [`Analysis::write_into`] onto the status it computed. Pure: no client,
//! no clock of its own.
//!
//! Judged revisions are those with at least one ready pod: a revision
//! without pods has no signals to judge, and listing its leaves as NoData
//! forever would only add noise to `status.alarms`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::{compile, judge, CondValue, JudgeInput, State, Transition, Verdict};
use crate::crd::{AlarmStatus, InferenceServiceSpec, InferenceServiceStatus};
use crate::observe::Observed;
use crate::signals::{Latest, Reading};

/// What the signal poller of one InferenceService covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    /// `analysis.interval`.
    pub interval: Duration,
    /// The judged revisions (at least one ready pod), sorted.
    pub revisions: Vec<String>,
    /// Custom PromQL leaves: (leaf name, PromQL with `$revision` etc.).
    pub queries: Vec<(String, String)>,
}

/// The revisions to judge and the queries to run for them.
pub fn targets(spec: &InferenceServiceSpec, observed: &Observed) -> Targets {
    let revisions = observed
        .deployments
        .keys()
        .chain(observed.pods.iter().map(|p| &p.revision))
        .filter(|rev| observed.ready_of(rev) > 0)
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let queries = compile(spec)
        .map(|t| {
            t.queries()
                .into_iter()
                .map(|(leaf, q)| (leaf.to_owned(), q.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    Targets {
        interval: spec.rollout.analysis.interval.get(),
        revisions,
        queries,
    }
}

/// What [`analyse`] reads.
#[derive(Clone, Copy, Debug)]
pub struct AnalysisInput<'a> {
    /// The spec (the tree is compiled from it).
    pub spec: &'a InferenceServiceSpec,
    /// What [`targets`] returned for this pass.
    pub targets: &'a Targets,
    /// The stable revision (baseline of relative leaves, the TTFT column).
    pub stable: Option<&'a str>,
    /// The latest signals.
    pub signals: &'a Latest,
    /// Readings supplied by other parts (the quality gate).
    pub external: &'a BTreeMap<String, Reading>,
    /// The stored status (alarm memory, condition transition times).
    pub previous: &'a InferenceServiceStatus,
    /// `metadata.generation`, stamped on the conditions.
    pub generation: Option<i64>,
    /// The time of this pass.
    pub now: Timestamp,
}

/// The alarm part of status, ready to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// The verdict per judged revision (the rollout's input once canary
    /// analysis exists).
    pub verdicts: BTreeMap<String, Verdict>,
    /// The new `status.alarms`.
    pub alarms: Vec<AlarmStatus>,
    /// The TTFT-P99 printer value (blank when unknown).
    pub ttft_p99: Option<String>,
    /// The Alarm printer value (`-o wide`): each revision whose tree fires,
    /// as `leaf (revision)`; blank when none does.
    pub firing: Option<String>,
    /// `SignalsUnavailable` and `AlarmQueryInvalid`, transition times kept.
    pub conditions: Vec<Condition>,
    /// Leaves that started or stopped firing, for events.
    pub transitions: Vec<Transition>,
    /// When to look again even if no signal changes: a pending `for:` timer
    /// is due within an interval, and a snapshot that stops coming turns
    /// stale after two. `None` when no Prometheus is configured (nothing
    /// can change without a spec or pod change).
    pub requeue_after: Option<Duration>,
}

impl Analysis {
    /// Sets `alarms`, `ttft_p99` and `firing`, and replaces (or adds) the
    /// two signal conditions, leaving every other field as computed.
    pub fn write_into(&self, status: &mut InferenceServiceStatus) {
        status.alarms = self.alarms.clone();
        status.ttft_p99 = self.ttft_p99.clone();
        status.firing = self.firing.clone();
        for c in &self.conditions {
            match status.conditions.iter_mut().find(|p| p.type_ == c.type_) {
                Some(p) => *p = c.clone(),
                None => status.conditions.push(c.clone()),
            }
        }
    }
}

/// Judges every target revision and shapes the result for status.
pub fn analyse(input: &AnalysisInput<'_>) -> Analysis {
    let tree = compile(input.spec);
    let interval = input.targets.interval;
    let j = judge(&JudgeInput {
        tree: tree.as_ref(),
        signals: input.signals,
        interval,
        stable: input.stable,
        revisions: &input.targets.revisions,
        previous: &input.previous.alarms,
        external: input.external,
        now: input.now,
    });
    let conditions = j
        .conditions
        .iter()
        .map(|c| merge(c, input.previous, input.generation, input.now))
        .collect();
    let pending = j.alarms.iter().any(|a| a.state == State::Pending);
    let requeue_after = match input.signals {
        Latest::NotConfigured => None,
        _ if pending => Some(interval),
        _ => Some(2 * interval),
    };
    let mut verdicts = j.verdicts;
    with_stable_values(&mut verdicts, &j.alarms, input.stable);
    let firing = firing_column(&verdicts);
    Analysis {
        verdicts,
        alarms: j.alarms,
        ttft_p99: j.ttft_p99,
        firing,
        conditions,
        transitions: j.transitions,
        requeue_after,
    }
}

/// `leaf (revision)` for each revision whose tree fires, comma-separated;
/// `None` when none does (a blank column, never a stale name).
fn firing_column(verdicts: &BTreeMap<String, Verdict>) -> Option<String> {
    let firing: Vec<String> = verdicts
        .iter()
        .filter_map(|(rev, v)| match v {
            Verdict::Firing { leaf, .. } => Some(format!("{leaf} ({rev})")),
            _ => None,
        })
        .collect();
    (!firing.is_empty()).then(|| firing.join(", "))
}

/// A firing leaf of an absolute test (an SLO objective, a threshold) has
/// no baseline of its own; the stable revision's value of the same leaf
/// goes in its place, so a rollback can name both values.
fn with_stable_values(
    verdicts: &mut BTreeMap<String, Verdict>,
    alarms: &[AlarmStatus],
    stable: Option<&str>,
) {
    let Some(stable) = stable else { return };
    for (rev, v) in verdicts.iter_mut() {
        let Verdict::Firing { leaf, values } = v else {
            continue;
        };
        if rev == stable || values.baseline.is_some() {
            continue;
        }
        values.baseline = alarms
            .iter()
            .find(|a| a.revision == stable && a.name == *leaf)
            .and_then(|a| a.value.clone());
    }
}

/// The condition with the previous transition time when its status did
/// not change.
fn merge(
    c: &CondValue,
    previous: &InferenceServiceStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if c.status { "True" } else { "False" };
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|p| p.type_ == c.type_ && p.status == status)
        .map_or(Time(now), |p| p.last_transition_time.clone());
    Condition {
        type_: c.type_.to_owned(),
        status: status.to_owned(),
        reason: c.reason.as_str().to_owned(),
        message: c.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::alarm::{ALARM_INVALID, SIGNALS_UNAVAILABLE};
    use crate::observe::build::{deployment, observed, pod};
    use crate::signals::{Signal, Snapshot};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// A spec with `extra`; the analysis interval is 2 s unless `extra`
    /// sets `rollout` itself.
    fn spec(extra: &str) -> InferenceServiceSpec {
        let rollout = if extra.contains("rollout:") {
            ""
        } else {
            "rollout: { analysis: { interval: 2s } }"
        };
        serde_yaml::from_str(&format!(
            "model: {{ name: m, uri: 'file:///m' }}\n{rollout}\n{extra}"
        ))
        .unwrap()
    }

    fn snapshot(at: Timestamp, ttft: &[(&str, f64)]) -> Latest {
        let by_rev = |v: Option<f64>| -> crate::signals::Series {
            Ok(ttft
                .iter()
                .map(|(r, x)| (r.to_string(), v.unwrap_or(*x)))
                .collect())
        };
        let mut signals = BTreeMap::new();
        signals.insert(Signal::TtftP99, by_rev(None));
        signals.insert(Signal::Requests, by_rev(Some(100.0)));
        for s in [
            Signal::ItlP99,
            Signal::ServerErrorRatio,
            Signal::KvCacheUsage,
        ] {
            signals.insert(s, by_rev(Some(0.0)));
        }
        Latest::Taken(Arc::new(Snapshot {
            taken_at: at,
            window: Duration::from_secs(30),
            signals,
            queries: BTreeMap::new(),
            pod_loads: BTreeMap::new(),
        }))
    }

    fn run(
        s: &InferenceServiceSpec,
        latest: &Latest,
        previous: &InferenceServiceStatus,
        now: Timestamp,
    ) -> Analysis {
        let obs = observed(
            vec![deployment("a", 1, 1), deployment("b", 2, 2)],
            vec![
                pod("a1", "a", true),
                pod("b1", "b", true),
                pod("b2", "b", false),
            ],
        );
        let targets = targets(s, &obs);
        analyse(&AnalysisInput {
            spec: s,
            targets: &targets,
            stable: Some("a"),
            signals: latest,
            external: &BTreeMap::new(),
            previous,
            generation: Some(4),
            now,
        })
    }

    #[test]
    fn targets_are_revisions_with_ready_pods_and_the_custom_queries() {
        let s = spec("rollout: { analysis: { interval: 5s, rollbackOn: { any: [ { slo: ttftP99 }, { query: { promql: 'up{revision=\"$revision\"}', below: 1 } } ] } } }");
        let obs = observed(
            vec![deployment("a", 1, 1), deployment("z", 1, 3)],
            vec![pod("a1", "a", true), pod("z1", "z", false)],
        );
        let t = targets(&s, &obs);
        assert_eq!(
            t.revisions,
            ["a"],
            "a revision without ready pods is not judged"
        );
        assert_eq!(t.interval, Duration::from_secs(5));
        assert_eq!(
            t.queries,
            [(
                "query-1".to_string(),
                "up{revision=\"$revision\"}".to_string()
            )]
        );
    }

    #[test]
    fn status_gets_alarms_column_and_conditions_with_kept_transition_times() {
        let s = spec("");
        let a = run(
            &s,
            &snapshot(t(0), &[("a", 0.2), ("b", 1.5)]),
            &Default::default(),
            t(1),
        );
        let mut status = InferenceServiceStatus::default();
        a.write_into(&mut status);
        assert!(status
            .alarms
            .iter()
            .any(|x| x.revision == "b" && x.name == "ttftP99" && x.state == State::Firing));
        assert!(status
            .alarms
            .iter()
            .filter(|x| x.revision == "a")
            .all(|x| x.state == State::Ok));
        assert_eq!(status.ttft_p99.as_deref(), Some("200ms"));
        let types: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [SIGNALS_UNAVAILABLE, ALARM_INVALID]);
        assert!(status.conditions.iter().all(|c| c.status == "False"));
        assert_eq!(a.transitions.len(), 1);
        assert_eq!(a.requeue_after, Some(Duration::from_secs(4)));
        // A rollback can name both values: the stable's value of the same
        // leaf stands in for the absolute test's missing baseline.
        let Some(Verdict::Firing { leaf, values }) = a.verdicts.get("b") else {
            panic!("{:?}", a.verdicts)
        };
        assert_eq!(leaf, "ttftP99");
        assert_eq!(values.value.as_deref(), Some("1.5s"));
        assert_eq!(values.baseline.as_deref(), Some("200ms"));

        // The next pass with Prometheus down: the condition turns true at
        // that pass's time; a pass after keeps that time.
        let down = Latest::Taken(Arc::new(Snapshot {
            taken_at: t(10),
            window: Duration::from_secs(30),
            signals: Signal::ALL
                .iter()
                .map(|s| {
                    (
                        *s,
                        Err(crate::signals::QueryError {
                            kind: crate::signals::QueryErrorKind::Unavailable,
                            message: "connection refused".into(),
                        }),
                    )
                })
                .collect(),
            queries: BTreeMap::new(),
            pod_loads: BTreeMap::new(),
        }));
        let b = run(&s, &down, &status, t(11));
        let mut status2 = status.clone();
        b.write_into(&mut status2);
        let cond = |st: &InferenceServiceStatus| {
            st.conditions
                .iter()
                .find(|c| c.type_ == SIGNALS_UNAVAILABLE)
                .cloned()
                .unwrap()
        };
        assert_eq!(cond(&status2).status, "True");
        assert_eq!(cond(&status2).last_transition_time, Time(t(11)));
        assert!(status2.alarms.iter().all(|x| x.state == State::NoData));
        assert_eq!(status2.ttft_p99, None);
        assert!(b.transitions.iter().all(|tr| !tr.firing));
        let c = run(&s, &down, &status2, t(12));
        let mut status3 = status2.clone();
        c.write_into(&mut status3);
        assert_eq!(cond(&status3).last_transition_time, Time(t(11)));
        assert_eq!(status3, status2, "nothing changed: no status write");
    }

    #[test]
    fn without_prometheus_every_leaf_is_no_data_and_nothing_requeues() {
        let a = run(&spec(""), &Latest::NotConfigured, &Default::default(), t(1));
        assert!(a.alarms.iter().all(|x| x.state == State::NoData));
        assert!(a.verdicts.values().all(Verdict::is_unknown));
        assert_eq!(a.requeue_after, None);
        assert_eq!(a.conditions[0].reason, "PrometheusNotConfigured");
        assert_eq!(a.conditions[0].status, "True");
    }
}
