//! Every query of the Grafana dashboard runs against a real Prometheus
//! (Debian's, started by `steward_e2e::prometheus`) and must not error. The
//! Grafana variables get real values, as Grafana would fill them in.

use steward_e2e::prometheus::{LocalPrometheus, PrometheusOptions};

#[tokio::test]
async fn every_dashboard_query_runs_on_prometheus_without_error() {
    let dir = tempfile::tempdir().unwrap();
    let prom = LocalPrometheus::start(None, PrometheusOptions::in_dir(dir.path()))
        .await
        .expect("prometheus starts (tools/setup.sh prometheus)");
    let queries = steward_operator::dashboard::queries();
    assert!(!queries.is_empty());
    for q in &queries {
        let filled = q
            .replace("$namespace", "team-a")
            .replace("$service", "chat");
        prom.query(&filled)
            .await
            .unwrap_or_else(|e| panic!("dashboard query failed: {filled}\n{e:#}"));
    }
    // The template variables' label_values() queries are Grafana functions;
    // their inner selectors must parse too.
    for sel in [
        "steward_engine_responses_total",
        "steward_engine_responses_total{namespace=\"team-a\"}",
    ] {
        prom.query(sel).await.expect("variable selector runs");
    }
    println!("{} dashboard queries ran on Prometheus", queries.len());
}
