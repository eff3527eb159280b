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

#[test]
fn chart_dashboard_matches_its_generator() {
    assert_eq!(
        repo("charts/steward/dashboards/steward-inferenceservice.json"),
        steward_operator::dashboard::dashboard_json(),
        "run `cargo run --release -p steward-operator --bin steward-crdgen`"
    );
}
