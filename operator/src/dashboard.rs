//! The Grafana dashboard of an InferenceService, generated from the same
//! PromQL builders as the alarms and alert rules (`signals::promql`), with
//! Grafana variables `$namespace` and `$service` in place of the label
//! values. `steward-crdgen` writes it to
//! `charts/steward/dashboards/steward-inferenceservice.json`; a test fails
//! when the file drifts and runs every query against a real Prometheus.

use std::time::Duration;

use serde_json::{json, Value};

use crate::signals::promql::{self, Scope, Window};
use crate::signals::Signal;

/// The dashboard's uid.
pub const UID: &str = "steward-inferenceservice";

/// One panel: title, unit, queries (PromQL, legend).
struct Panel {
    title: &'static str,
    unit: &'static str,
    description: &'static str,
    targets: Vec<(String, &'static str)>,
}

/// Every query of the dashboard, with `$namespace` and `$service` unfilled.
pub fn queries() -> Vec<String> {
    panels()
        .into_iter()
        .flat_map(|p| p.targets.into_iter().map(|(q, _)| q))
        .collect()
}

fn panels() -> Vec<Panel> {
    let scope = Scope::service("$namespace", "$service");
    let w = Window(Duration::from_secs(300));
    let q = |s: Signal| promql::query(s, &scope, w);
    let by_rev = "{{revision}}";
    vec![
        Panel {
            title: "TTFT p99 by revision",
            unit: "s",
            description: "Time to first token, 99th percentile over 5m.",
            targets: vec![(q(Signal::TtftP99), by_rev)],
        },
        Panel {
            title: "Inter-token latency p99 by revision",
            unit: "s",
            description: "Time between consecutive tokens, 99th percentile over 5m.",
            targets: vec![(q(Signal::ItlP99), by_rev)],
        },
        Panel {
            title: "End-to-end latency p99 by revision",
            unit: "s",
            description: "Arrival to last token, 99th percentile over 5m.",
            targets: vec![(q(Signal::E2eP99), by_rev)],
        },
        Panel {
            title: "Server errors (5xx share)",
            unit: "percentunit",
            description: "5xx over non-4xx responses; 4xx never count.",
            targets: vec![(q(Signal::ServerErrorRatio), by_rev)],
        },
        Panel {
            title: "Traffic by revision (requests/s)",
            unit: "reqps",
            description: "Responses per second of the generation routes.",
            targets: vec![(q(Signal::RequestRate), by_rev)],
        },
        Panel {
            title: "Output tokens/s by revision",
            unit: "short",
            description: "Generated tokens per second.",
            targets: vec![(q(Signal::OutputTokensPerSecond), by_rev)],
        },
        Panel {
            title: "KV-cache usage (serving pods)",
            unit: "percentunit",
            description: "Average over serving pods; the alarm kvCacheSaturation fires over 90%.",
            targets: vec![(q(Signal::KvCacheUsage), by_rev)],
        },
        Panel {
            title: "Executor utilisation (serving pods)",
            unit: "percentunit",
            description: "Share of the step capacity used (busy time weighted by how full each step was); the autoscaler targets 70%.",
            targets: vec![(q(Signal::ExecutorUtilization), by_rev)],
        },
        Panel {
            title: "Waiting requests per pod",
            unit: "short",
            description: "Requests accepted but not yet running, per serving pod.",
            targets: vec![(q(Signal::QueueWaitingPerPod), by_rev)],
        },
        Panel {
            title: "Prefix-cache hit rate",
            unit: "percentunit",
            description: "Full-block prefix-cache hits over lookups.",
            targets: vec![(q(Signal::PrefixCacheHitRate), by_rev)],
        },
        Panel {
            title: "Rollouts: pods scraped by revision",
            unit: "short",
            description: "Engine pods up per revision; a rollout shows as one revision rising while another falls.",
            targets: vec![(
                format!(
                    "sum by (revision) (up{{{}}})",
                    scope.matchers(&[])
                ),
                by_rev,
            )],
        },
    ]
}

/// The dashboard JSON (Grafana schema 39).
pub fn dashboard() -> Value {
    let panels: Vec<Value> = panels()
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let targets: Vec<Value> = p
                .targets
                .iter()
                .enumerate()
                .map(|(j, (expr, legend))| {
                    json!({
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                        "expr": expr,
                        "legendFormat": legend,
                        "refId": char::from(b'A' + j as u8).to_string(),
                    })
                })
                .collect();
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "description": p.description,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": targets,
            })
        })
        .collect();
    let var = |name: &str, query: &str| {
        json!({
            "name": name,
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": "A"},
            "definition": query,
            "refresh": 2,
            "includeAll": false,
            "multi": false,
        })
    };
    json!({
        "uid": UID,
        "title": "Steward / InferenceService",
        "description": "Per-revision signals of one InferenceService, from the same PromQL the operator's alarms and alert rules use (docs/signals.md).",
        "tags": ["steward"],
        "schemaVersion": 39,
        "editable": true,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            var("namespace", "label_values(steward_engine_responses_total, namespace)"),
            var("service", "label_values(steward_engine_responses_total{namespace=\"$namespace\"}, service)"),
        ]},
        "panels": panels,
    })
}

/// The dashboard file's text, as the chart holds it.
pub fn dashboard_json() -> String {
    let mut s = serde_json::to_string_pretty(&dashboard()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_panel_query_comes_from_the_signal_builders() {
        let qs = queries();
        assert_eq!(qs.len(), 11);
        assert_eq!(
            qs[0],
            promql::query(
                Signal::TtftP99,
                &Scope::service("$namespace", "$service"),
                Window(Duration::from_secs(300))
            )
        );
        assert!(qs
            .iter()
            .all(|q| q.contains(r#"namespace="$namespace",service="$service""#)));
        let d = dashboard();
        assert_eq!(d["panels"].as_array().unwrap().len(), 11);
        assert_eq!(d["panels"][0]["targets"][0]["expr"], qs[0].as_str());
    }
}
