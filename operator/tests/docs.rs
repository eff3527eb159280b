//! docs/signals.md shows the exact PromQL of every signal; this keeps the
//! page equal to the builders, and the dashboard file equal to its
//! generator.

use std::path::Path;
use std::time::Duration;

use steward_operator::signals::promql::{query, Scope, Window};
use steward_operator::signals::Signal;

fn repo(p: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn signals_page_lists_the_exact_query_of_every_signal() {
    let page = repo("docs/signals.md");
    let scope = Scope::service("team-a", "chat");
    for s in Signal::ALL {
        let row = format!(
            "| `{s}` | `{}` |",
            query(s, &scope, Window(Duration::from_secs(60)))
        );
        assert!(
            page.contains(&row),
            "docs/signals.md lacks or misstates:\n{row}"
        );
    }
}

/// The KEDA example (examples/keda/scaledobject.yaml, shown in
/// docs/operator.md) triggers on the built-in autoscaler's signals
/// themselves, summed over the serving pods instead of averaged (KEDA's
/// AverageValue divides by the serving count).
#[test]
fn keda_example_triggers_on_the_autoscaler_signals_summed() {
    let example: serde_yaml::Value =
        serde_yaml::from_str(&repo("examples/keda/scaledobject.yaml")).expect("YAML");
    let queries: Vec<String> = example["spec"]["triggers"]
        .as_sequence()
        .expect("triggers")
        .iter()
        .map(|t| t["metadata"]["query"].as_str().expect("a query").to_owned())
        .collect();
    let scope = Scope::service("team-a", "chat");
    let summed = |s: Signal| {
        query(s, &scope, Window(Duration::from_secs(60))).replacen(
            "avg by (namespace, service, revision) (",
            "sum(",
            1,
        )
    };
    let want = vec![
        summed(Signal::KvCacheUsage),
        summed(Signal::ExecutorUtilization),
        summed(Signal::QueueWaitingPerPod),
    ];
    assert_eq!(queries, want);
    let page = repo("docs/operator.md");
    for q in &want {
        assert!(
            page.contains(q),
            "docs/operator.md lacks the KEDA query {q}"
        );
    }
}

#[test]
fn chart_dashboard_matches_its_generator() {
    assert_eq!(
        repo("charts/steward/dashboards/steward-inferenceservice.json"),
        steward_operator::dashboard::dashboard_json(),
        "run `cargo run --release -p steward-operator --bin steward-crdgen`"
    );
}
