//! Every generated alert has a runbook in docs/runbooks/<alert>.md and
//! every runbook there belongs to an alert; each runbook has the four parts
//! an on-call engineer needs.

use std::collections::BTreeSet;
use std::path::Path;

use steward_operator::rules::ALERTS;

#[test]
fn alerts_and_runbooks_are_one_to_one() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/runbooks");
    let runbooks: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("docs/runbooks exists")
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().to_string();
            n.strip_suffix(".md").map(str::to_string)
        })
        .filter(|n| n != "README")
        .collect();
    let alerts: BTreeSet<String> = ALERTS.iter().map(|a| a.to_string()).collect();
    let missing: Vec<_> = alerts.difference(&runbooks).collect();
    let orphans: Vec<_> = runbooks.difference(&alerts).collect();
    assert!(missing.is_empty(), "alerts without a runbook: {missing:?}");
    assert!(orphans.is_empty(), "runbooks without an alert: {orphans:?}");
    for a in ALERTS {
        let text = std::fs::read_to_string(dir.join(format!("{a}.md"))).unwrap();
        for part in ["## What it means", "## Confirm", "## Fix", "## Escalate"] {
            assert!(text.contains(part), "{a}.md lacks '{part}'");
        }
    }
}
