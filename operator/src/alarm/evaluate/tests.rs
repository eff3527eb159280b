//! The evaluation table: every combination of any/all/not with Ok, Firing
//! and unknown children, `for:` timing, minimum samples, stale and missing
//! snapshots, relative leaves, failed queries.

use std::sync::Arc;

use super::*;
use crate::alarm::{Cmp, Node, NodeKind};
use crate::signals::{QueryError, QueryErrorKind, Snapshot};

const REV: &str = "canary1";
const STABLE: &str = "stable1";
const INTERVAL: Duration = Duration::from_secs(15);

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

/// A leaf by the state it should read as: `O`k, `F`iring, `N`o data,
/// `I`nconclusive, `E`rror (Prometheus refused the query).
fn leaf(name: &str, kind: char) -> Node {
    let test = if kind == 'I' {
        // Reads TTFT, whose revision served too few requests (see `snap`).
        Test::Threshold {
            signal: Signal::TtftP99,
            cmp: Cmp::Above,
            threshold: 1.0,
        }
    } else {
        Test::Query {
            promql: format!("q_{name}"),
            cmp: Cmp::Above,
            threshold: 1.0,
        }
    };
    Node {
        name: name.into(),
        hold: Duration::ZERO,
        kind: NodeKind::Leaf(Leaf {
            min_requests: if kind == 'I' { 10 } else { 0 },
            test,
        }),
    }
}

fn group(kind: &str, children: Vec<Node>) -> Node {
    Node {
        name: kind.into(),
        hold: Duration::ZERO,
        kind: match kind {
            "any" => NodeKind::Any(children),
            "all" => NodeKind::All(children),
            _ => NodeKind::Not(Box::new(children.into_iter().next().unwrap())),
        },
    }
}

/// A snapshot taken at `at` where each query leaf reads by its kind letter
/// (the last char of its name), TTFT of REV is 5 s from 3 requests, and the
/// stable revision has plenty of requests.
fn snap(at: Timestamp, names: &[&str]) -> Snapshot {
    let mut queries = BTreeMap::new();
    for n in names {
        let r = match n.chars().last().unwrap() {
            'O' => Reading::Value(0.5),
            'F' => Reading::Value(2.0),
            'E' => Reading::Error(QueryError {
                kind: QueryErrorKind::Invalid,
                message: "bad_data: parse error at char 3".into(),
            }),
            _ => continue,
        };
        queries.insert(n.to_string(), BTreeMap::from([(REV.to_string(), r)]));
    }
    let mut signals = BTreeMap::new();
    signals.insert(
        Signal::TtftP99,
        Ok(BTreeMap::from([(REV.into(), 5.0), (STABLE.into(), 0.3)])),
    );
    signals.insert(
        Signal::Requests,
        Ok(BTreeMap::from([(REV.into(), 3.0), (STABLE.into(), 500.0)])),
    );
    Snapshot {
        taken_at: at,
        window: Duration::from_secs(60),
        signals,
        queries,
        pod_loads: BTreeMap::new(),
    }
}

fn run(tree: &Node, latest: &Latest, now: Timestamp, memory: &Memory) -> Evaluation {
    let external = BTreeMap::new();
    evaluate(
        &AlarmTree { root: tree.clone() },
        &EvalInput {
            signals: latest,
            interval: INTERVAL,
            revision: REV,
            stable: Some(STABLE),
            external: &external,
        },
        now,
        memory,
    )
}

fn verdict_kind(v: &Verdict) -> &'static str {
    match v {
        Verdict::Ok => "Ok",
        Verdict::Firing { .. } => "Firing",
        Verdict::Unknown { .. } => "Unknown",
    }
}

#[test]
fn any_all_not_over_ok_firing_and_unknown_children() {
    // (node, children kinds, expected verdict)
    let table: &[(&str, &str, &str)] = &[
        ("any", "OO", "Ok"),
        ("any", "OF", "Firing"),
        ("any", "FN", "Firing"),
        ("any", "IF", "Firing"),
        ("any", "ON", "Unknown"),
        ("any", "OI", "Unknown"),
        ("any", "NI", "Unknown"),
        ("any", "OE", "Unknown"),
        ("all", "FF", "Firing"),
        ("all", "FO", "Ok"),
        ("all", "OO", "Ok"),
        ("all", "ON", "Unknown"),
        ("all", "OI", "Unknown"),
        ("all", "FN", "Unknown"),
        ("all", "FI", "Unknown"),
        ("not", "O", "Firing"),
        ("not", "F", "Ok"),
        ("not", "N", "Unknown"),
        ("not", "I", "Unknown"),
    ];
    for (op, kinds, want) in table {
        let names: Vec<String> = kinds
            .chars()
            .enumerate()
            .map(|(i, k)| format!("leaf{i}{k}"))
            .collect();
        let leaves = names
            .iter()
            .map(|n| leaf(n, n.chars().last().unwrap()))
            .collect();
        let tree = group(op, leaves);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let latest = Latest::Taken(Arc::new(snap(t(0), &refs)));
        let ev = run(&tree, &latest, t(1), &Memory::new());
        assert_eq!(
            verdict_kind(&ev.verdict),
            *want,
            "{op}({kinds}) gave {:?}",
            ev.verdict
        );
        assert_eq!(ev.nodes.len(), kinds.len(), "every leaf is reported");
    }
}

#[test]
fn unknown_leaf_states_say_which_kind_and_why() {
    let tree = group(
        "any",
        vec![leaf("aN", 'N'), leaf("bI", 'I'), leaf("cE", 'E')],
    );
    let latest = Latest::Taken(Arc::new(snap(t(0), &["aN", "bI", "cE"])));
    let ev = run(&tree, &latest, t(1), &Memory::new());
    let states: Vec<State> = ev.nodes.iter().map(|n| n.state).collect();
    assert_eq!(states, [State::NoData, State::Inconclusive, State::NoData]);
    assert_eq!(
        ev.nodes[1].message.as_deref(),
        Some("3 requests in the window, fewer than the 10 needed")
    );
    assert_eq!(
        ev.nodes[1].value.as_deref(),
        Some("5s"),
        "the value is still shown"
    );
    let Verdict::Unknown { why } = &ev.verdict else {
        panic!("{:?}", ev.verdict)
    };
    assert!(why.contains("aN: no data in the window"), "{why}");
    assert!(why.contains("cE: query failed: bad_data"), "{why}");
}

#[test]
fn firing_verdict_names_the_first_firing_leaf_with_its_values() {
    let tree = group(
        "any",
        vec![
            leaf("aO", 'O'),
            group("all", vec![leaf("bF", 'F'), leaf("cF", 'F')]),
        ],
    );
    let latest = Latest::Taken(Arc::new(snap(t(0), &["aO", "bF", "cF"])));
    let ev = run(&tree, &latest, t(1), &Memory::new());
    assert_eq!(
        ev.verdict,
        Verdict::Firing {
            leaf: "bF".into(),
            values: FiringValues {
                value: Some("2".into()),
                baseline: None,
                threshold: Some("> 1".into())
            }
        }
    );
}

#[test]
fn for_holds_pending_until_the_time_has_passed_and_memory_carries_it() {
    let mut node = leaf("xF", 'F');
    node.hold = Duration::from_secs(30);
    let firing = Latest::Taken(Arc::new(snap(t(0), &["xF"])));
    let ev0 = run(&node, &firing, t(0), &Memory::new());
    assert_eq!(ev0.nodes[0].state, State::Pending);
    assert_eq!(ev0.verdict, Verdict::Ok, "pending does not fire");
    let ev1 = run(&node, &firing, t(29), &ev0.memory());
    assert_eq!(
        (ev1.nodes[0].state, ev1.nodes[0].since),
        (State::Pending, t(0))
    );
    let ev2 = run(&node, &firing, t(30), &ev1.memory());
    assert_eq!(
        (ev2.nodes[0].state, ev2.nodes[0].since),
        (State::Firing, t(30))
    );
    assert!(ev2.verdict.is_firing());
    let ev3 = run(&node, &firing_at(t(40)), t(40), &ev2.memory());
    assert_eq!(ev3.nodes[0].since, t(30), "firing keeps its since");

    // Back to Ok, then firing again: the timer starts over.
    let ok = Latest::Taken(Arc::new(snap(t(41), &["xO"])));
    let mut okay = node.clone();
    okay.name = "xO".into();
    let mem: Memory = ev3
        .memory()
        .into_values()
        .map(|r| ("xO".to_string(), r))
        .collect();
    let ev4 = run(&okay, &ok, t(45), &mem);
    assert_eq!((ev4.nodes[0].state, ev4.nodes[0].since), (State::Ok, t(45)));

    // Unknown in between resets the pending timer too.
    let unknown = Latest::Taken(Arc::new(snap(t(50), &[])));
    let ev5 = run(&node, &unknown, t(50), &ev1.memory());
    assert_eq!(ev5.nodes[0].state, State::NoData);
    let ev6 = run(&node, &firing_at(t(55)), t(55), &ev5.memory());
    assert_eq!(
        (ev6.nodes[0].state, ev6.nodes[0].since),
        (State::Pending, t(55))
    );
}

fn firing_at(at: Timestamp) -> Latest {
    Latest::Taken(Arc::new(snap(at, &["xF"])))
}

#[test]
fn for_on_a_composite_node_is_reported_and_timed() {
    let mut tree = group("any", vec![leaf("aF", 'F'), leaf("bO", 'O')]);
    tree.hold = Duration::from_secs(10);
    let latest = Latest::Taken(Arc::new(snap(t(0), &["aF", "bO"])));
    let ev = run(&tree, &latest, t(0), &Memory::new());
    assert_eq!(ev.nodes[0].name, "any");
    assert_eq!(ev.nodes[0].state, State::Pending);
    assert_eq!(ev.nodes[1].state, State::Firing, "the leaf itself fires");
    assert_eq!(ev.verdict, Verdict::Ok);
    let ev = run(&tree, &latest, t(10), &ev.memory());
    assert_eq!(ev.nodes[0].state, State::Firing);
    assert!(matches!(ev.verdict, Verdict::Firing { ref leaf, .. } if leaf == "aF"));
}

#[test]
fn minimum_requests_make_a_thin_canary_inconclusive() {
    let node = leaf("ttft", 'I');
    let mut s = snap(t(0), &[]);
    let latest = Latest::Taken(Arc::new(s.clone()));
    let ev = run(&node, &latest, t(1), &Memory::new());
    assert_eq!(ev.nodes[0].state, State::Inconclusive);
    assert!(ev.verdict.is_unknown());
    // Enough requests: the 5 s TTFT against a 1 s threshold fires.
    s.signals
        .insert(Signal::Requests, Ok(BTreeMap::from([(REV.into(), 10.0)])));
    let ev = run(
        &node,
        &Latest::Taken(Arc::new(s.clone())),
        t(1),
        &Memory::new(),
    );
    assert_eq!(ev.nodes[0].state, State::Firing);
    // No request series at all: inconclusive, never Ok.
    s.signals.insert(Signal::Requests, Ok(BTreeMap::new()));
    let ev = run(&node, &Latest::Taken(Arc::new(s)), t(1), &Memory::new());
    assert_eq!(ev.nodes[0].state, State::Inconclusive);
}

#[test]
fn stale_missing_or_unconfigured_signals_make_every_leaf_no_data() {
    let tree = group("any", vec![leaf("aF", 'F'), leaf("bO", 'O')]);
    let latest = Latest::Taken(Arc::new(snap(t(0), &["aF", "bO"])));
    // Fresh at 30 s (two intervals), stale after.
    assert!(run(&tree, &latest, t(30), &Memory::new())
        .verdict
        .is_firing());
    let stale = run(&tree, &latest, t(31), &Memory::new());
    assert!(stale.nodes.iter().all(|n| n.state == State::NoData));
    let Verdict::Unknown { why } = &stale.verdict else {
        panic!()
    };
    assert!(why.contains("older than two intervals"), "{why}");
    for (latest, words) in [
        (Latest::NotConfigured, "no Prometheus address"),
        (Latest::Waiting, "no signal snapshot"),
    ] {
        let ev = run(&tree, &latest, t(1), &Memory::new());
        assert!(ev.nodes.iter().all(|n| n.state == State::NoData));
        assert!(matches!(&ev.verdict, Verdict::Unknown { why } if why.contains(words)));
    }
}

#[test]
fn prometheus_down_makes_every_leaf_unknown_never_ok_or_firing() {
    let tree = group("any", vec![leaf("aF", 'F'), leaf("ttftI", 'I')]);
    let down = QueryError {
        kind: QueryErrorKind::Unavailable,
        message: "connection refused".into(),
    };
    let mut s = snap(t(0), &[]);
    for sig in Signal::ALL {
        s.signals.insert(sig, Err(down.clone()));
    }
    s.queries.insert(
        "aF".into(),
        BTreeMap::from([(REV.to_string(), Reading::Error(down.clone()))]),
    );
    let ev = run(&tree, &Latest::Taken(Arc::new(s)), t(1), &Memory::new());
    assert!(
        ev.nodes.iter().all(|n| n.state == State::NoData),
        "{:?}",
        ev.nodes
    );
    assert!(ev.verdict.is_unknown());
}

fn relative(floor: f64) -> Node {
    Node {
        name: "latencySpike".into(),
        hold: Duration::ZERO,
        kind: NodeKind::Leaf(Leaf {
            test: Test::RiseOverStable {
                signal: Signal::TtftP99,
                ratio: 1.2,
                floor,
            },
            min_requests: 10,
        }),
    }
}

fn ttft(canary: f64, stable: Option<f64>) -> Latest {
    let mut s = snap(t(0), &[]);
    let mut v = BTreeMap::from([(REV.to_string(), canary)]);
    if let Some(b) = stable {
        v.insert(STABLE.into(), b);
    }
    s.signals.insert(Signal::TtftP99, Ok(v));
    s.signals.insert(
        Signal::Requests,
        Ok(BTreeMap::from([(REV.into(), 50.0), (STABLE.into(), 500.0)])),
    );
    Latest::Taken(Arc::new(s))
}

#[test]
fn relative_leaves_compare_with_stable_over_the_same_window() {
    let node = relative(0.25);
    let fire = run(&node, &ttft(1.0, Some(0.5)), t(1), &Memory::new());
    assert_eq!(fire.nodes[0].state, State::Firing);
    assert_eq!(fire.nodes[0].baseline.as_deref(), Some("500ms"));
    assert_eq!(
        fire.nodes[0].threshold.as_deref(),
        Some("> 1.2× stable and > 250ms")
    );
    // Within tolerance.
    let ok = run(&node, &ttft(0.55, Some(0.5)), t(1), &Memory::new());
    assert_eq!(ok.nodes[0].state, State::Ok);
    // A busy hour: both slow, the canary no worse than 1.2x.
    let busy = run(&node, &ttft(2.1, Some(2.0)), t(1), &Memory::new());
    assert_eq!(busy.nodes[0].state, State::Ok);
    // Tiny absolute numbers never fire.
    let tiny = run(&node, &ttft(0.02, Some(0.005)), t(1), &Memory::new());
    assert_eq!(tiny.nodes[0].state, State::Ok);
    // No stable data: unknown.
    let none = run(&node, &ttft(1.0, None), t(1), &Memory::new());
    assert_eq!(none.nodes[0].state, State::NoData);
    // The stable revision judged on its own: nothing to compare, Ok.
    let external = BTreeMap::new();
    let ev = evaluate(
        &AlarmTree { root: node },
        &EvalInput {
            signals: &ttft(1.0, Some(0.5)),
            interval: INTERVAL,
            revision: REV,
            stable: Some(REV),
            external: &external,
        },
        t(1),
        &Memory::new(),
    );
    assert_eq!(ev.nodes[0].state, State::Ok);
}

#[test]
fn external_readings_feed_the_quality_leaf() {
    let node = Node {
        name: "qualityRegression".into(),
        hold: Duration::ZERO,
        kind: NodeKind::Leaf(Leaf {
            test: Test::External {
                key: "qualityRegression".into(),
                cmp: Cmp::Above,
                threshold: 0.1,
            },
            min_requests: 0,
        }),
    };
    let latest = Latest::Taken(Arc::new(snap(t(0), &[])));
    let tree = AlarmTree { root: node };
    let eval = |external: &BTreeMap<String, Reading>| {
        evaluate(
            &tree,
            &EvalInput {
                signals: &latest,
                interval: INTERVAL,
                revision: REV,
                stable: Some(STABLE),
                external,
            },
            t(1),
            &Memory::new(),
        )
    };
    assert!(eval(&BTreeMap::new()).verdict.is_unknown());
    // The reading is the perplexity drift (canary / stable − 1).
    let drifted = BTreeMap::from([("qualityRegression".to_string(), Reading::Value(0.5))]);
    assert!(eval(&drifted).verdict.is_firing());
    let fine = BTreeMap::from([("qualityRegression".to_string(), Reading::Value(0.02))]);
    assert_eq!(eval(&fine).verdict, Verdict::Ok);
}
