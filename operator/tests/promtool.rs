//! The generated SLO alert rules under Prometheus' own tool: `promtool
//! check rules` on the rule files of several specs, and `promtool test
//! rules` (operator/tests/promtool/*.test.yaml) with synthetic series that
//! prove each alert fires, and stays quiet, when it should.
//!
//! promtool comes with Debian's `prometheus` package (`tools/setup.sh`).

use std::path::Path;
use std::process::Command;

use steward_operator::crd::InferenceServiceSpec;
use steward_operator::rules::{rule_file, rule_file_yaml, RuleOptions, ALERTS};

fn promtool() -> std::path::PathBuf {
    steward_e2e::tools::find_tool("promtool").expect("promtool (tools/setup.sh prometheus)")
}

fn spec(yaml: &str) -> InferenceServiceSpec {
    serde_yaml::from_str(yaml).expect("spec parses")
}

fn write_rules(
    dir: &Path,
    ns: &str,
    name: &str,
    spec: &InferenceServiceSpec,
) -> std::path::PathBuf {
    let file = rule_file(ns, name, spec, &RuleOptions::default()).expect("rules compile");
    let path = dir.join("rules.yaml");
    std::fs::write(&path, rule_file_yaml(&file).expect("yaml")).expect("write rules");
    path
}

#[test]
fn generated_rule_files_pass_promtool_check() {
    let dir = tempfile::tempdir().unwrap();
    for (ns, name, yaml) in [
        ("team-a", "chat", "model: { name: m, uri: 'file:///m' }"),
        (
            "x",
            "svc-2",
            "model: { name: m, uri: 'file:///m' }\nslo: { ttftP99: 2s, itlP99: 150ms, availability: '99.95' }",
        ),
        ("y", "z", "model: { name: m, uri: 'file:///m' }\nslo: { availability: '100' }"),
    ] {
        let path = write_rules(dir.path(), ns, name, &spec(yaml));
        let out = Command::new(promtool())
            .arg("check")
            .arg("rules")
            .arg(&path)
            .output()
            .expect("promtool runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{ns}/{name}: {text}");
        assert!(
            text.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
            "{text}"
        );
    }
}

#[test]
fn promtool_unit_tests_prove_each_alert_fires_and_stays_quiet() {
    let dir = tempfile::tempdir().unwrap();
    write_rules(
        dir.path(),
        "team-a",
        "chat",
        &spec("model: { name: m, uri: 'file:///m' }"),
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/promtool");
    let mut files = Vec::new();
    let mut cases = 0;
    let mut tested = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().ends_with(".test.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        for t in doc["tests"].as_sequence().unwrap() {
            for a in t["alert_rule_test"].as_sequence().unwrap() {
                cases += 1;
                tested.insert(a["alertname"].as_str().unwrap().to_string());
            }
        }
        let dest = dir.path().join(p.file_name().unwrap());
        std::fs::write(&dest, text).unwrap();
        files.push(dest);
    }
    assert!(!files.is_empty());
    let out = Command::new(promtool())
        .arg("test")
        .arg("rules")
        .args(&files)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let untested: Vec<_> = ALERTS.iter().filter(|a| !tested.contains(**a)).collect();
    assert!(
        untested.is_empty(),
        "alerts without a promtool test: {untested:?}"
    );
    println!(
        "promtool test rules: {cases} alert test cases over {} alerts passed",
        ALERTS.len()
    );
}
