//! SLO alert rules per InferenceService, generated from `spec.slo` with
//! the same PromQL builders the alarm poller uses (`signals::promql`), so
//! an alert and an alarm never disagree on what a signal means.
//!
//! The operator owns a `PrometheusRule` per InferenceService where the
//! prometheus-operator CRDs exist ([`prometheus_rule`]); the local system
//! mirrors those objects into rule files of its Prometheus. `promtool check
//! rules` and `promtool test rules` run over [`rule_file`]'s output in
//! `operator/tests/promtool.rs`; every alert in [`ALERTS`] has a runbook
//! in `docs/runbooks/<alert>.md` (a test keeps them 1:1).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alarm::{CompileError, Objectives};
use crate::crd::InferenceServiceSpec;
use crate::signals::promql::{self, Scope, Window};
use crate::signals::Signal;

/// Every alert the generator writes, in the order it writes them.
pub const ALERTS: [&str; 7] = [
    "StewardErrorBudgetBurnFast",
    "StewardErrorBudgetBurnSlow",
    "StewardTtftP99OverObjective",
    "StewardItlP99OverObjective",
    "StewardKvCacheSaturated",
    "StewardPrefixCacheHitRateDrop",
    "StewardNoData",
];

/// Requests a 5-minute window must hold before a latency alert may fire.
pub const ALERT_MIN_REQUESTS: u64 = 10;

/// A Prometheus rule file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RuleFile {
    /// Its groups.
    pub groups: Vec<RuleGroup>,
}

/// One rule group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RuleGroup {
    /// The group name.
    pub name: String,
    /// Its rules.
    pub rules: Vec<Rule>,
}

/// One alerting rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Rule {
    /// The alert name.
    pub alert: String,
    /// The PromQL condition.
    pub expr: String,
    /// How long the condition must hold.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    /// Labels added to the alert.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Summary, description and runbook link.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Settings that are not in the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleOptions {
    /// Prefix of `runbook_url`; the alert name and `.md` are appended.
    pub runbook_base: String,
}

impl Default for RuleOptions {
    fn default() -> Self {
        Self {
            runbook_base: "docs/runbooks/".into(),
        }
    }
}

/// A number as PromQL text without float noise (`0.001`, not
/// `0.0009999999999998899`).
fn num(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

fn mins(m: u64) -> Window {
    Window(Duration::from_secs(m * 60))
}

/// The rule file of one InferenceService.
pub fn rule_file(
    namespace: &str,
    name: &str,
    spec: &InferenceServiceSpec,
    opts: &RuleOptions,
) -> Result<RuleFile, CompileError> {
    let obj = Objectives::from_spec(spec)?;
    let scope = Scope::service(namespace, name);
    let budget = num(obj.error_budget);
    let er = |w: Window| promql::error_ratio(&scope, w);
    let burn = |long: u64, short: u64, factor: &str| {
        format!(
            "({} > ({factor} * {budget}) and {} > ({factor} * {budget}))",
            er(mins(long)),
            er(mins(short))
        )
    };
    let enough = format!(
        "{} >= {ALERT_MIN_REQUESTS}",
        promql::query(Signal::Requests, &scope, mins(5))
    );
    let who = "{{ $labels.namespace }}/{{ $labels.service }} revision {{ $labels.revision }}";
    let rule = |alert: &str, expr: String, for_: &str, severity: &str, summary: String| Rule {
        alert: alert.into(),
        expr,
        for_: Some(for_.into()),
        labels: BTreeMap::from([
            ("severity".into(), severity.into()),
            ("steward_service".into(), name.into()),
        ]),
        annotations: BTreeMap::from([
            ("summary".into(), summary),
            (
                "runbook_url".into(),
                format!("{}{alert}.md", opts.runbook_base),
            ),
        ]),
    };
    let p99 = |s: Signal| promql::query(s, &scope, mins(5));
    let up = format!("up{{{}}}", scope.matchers(&[]));
    let rules = vec![
        rule(
            ALERTS[0],
            format!("{} or {}", burn(60, 5, "14.4"), burn(360, 30, "6")),
            "2m",
            "page",
            format!("{who} is burning its {}% availability error budget fast (14.4x over 1h or 6x over 6h)", spec.slo.availability),
        ),
        rule(
            ALERTS[1],
            format!("{} or {}", burn(1440, 120, "3"), burn(4320, 360, "1")),
            "15m",
            "ticket",
            format!("{who} is burning its {}% availability error budget (3x over 1d or 1x over 3d)", spec.slo.availability),
        ),
        rule(
            ALERTS[2],
            format!("({} > {}) and ({enough})", p99(Signal::TtftP99), num(obj.ttft_p99)),
            "10m",
            "warning",
            format!("{who}: TTFT p99 is over the {} objective", spec.slo.ttft_p99),
        ),
        rule(
            ALERTS[3],
            format!("({} > {}) and ({enough})", p99(Signal::ItlP99), num(obj.itl_p99)),
            "10m",
            "warning",
            format!("{who}: inter-token latency p99 is over the {} objective", spec.slo.itl_p99),
        ),
        rule(
            ALERTS[4],
            format!("{} > 0.9", promql::query(Signal::KvCacheUsage, &scope, mins(5))),
            "10m",
            "warning",
            format!("{who}: KV cache over 90% full on average over its serving pods"),
        ),
        rule(
            ALERTS[5],
            format!(
                "{} < 0.5 * {}",
                promql::query(Signal::PrefixCacheHitRate, &scope, mins(15)),
                promql::query(Signal::PrefixCacheHitRate, &scope, mins(360))
            ),
            "15m",
            "warning",
            format!("{who}: prefix-cache hit rate fell below half of its 6h rate"),
        ),
        rule(
            ALERTS[6],
            format!("max by (namespace, service) ({up}) < 1 or absent({up})"),
            "5m",
            "page",
            "{{ $labels.namespace }}/{{ $labels.service }}: no engine pod has been scraped successfully for 5m".into(),
        ),
    ];
    Ok(RuleFile {
        groups: vec![RuleGroup {
            name: format!("steward.{namespace}.{name}.slo"),
            rules,
        }],
    })
}

/// The rule file as YAML.
pub fn rule_file_yaml(file: &RuleFile) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(file)
}

/// The `PrometheusRule` object (`monitoring.coreos.com/v1`) holding
/// `file`, owned by the InferenceService so it goes with it.
pub fn prometheus_rule(
    name: &str,
    namespace: &str,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    file: &RuleFile,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": format!("{name}-slo"),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": crate::children::MANAGED_BY,
                crate::crd::labels::SERVICE: name,
            },
            "ownerReferences": [owner],
        },
        "spec": file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InferenceServiceSpec {
        serde_yaml::from_str("model: { name: m, uri: 'file:///m' }").unwrap()
    }

    #[test]
    fn numbers_have_no_float_noise() {
        assert_eq!(num(1.0 - 99.9 / 100.0), "0.001");
        assert_eq!(num(0.8), "0.8");
        assert_eq!(num(0.08), "0.08");
        assert_eq!(num(14.0), "14");
    }

    #[test]
    fn one_group_with_every_alert_in_order_each_with_a_runbook() {
        let f = rule_file("team-a", "chat", &spec(), &RuleOptions::default()).unwrap();
        assert_eq!(f.groups.len(), 1);
        assert_eq!(f.groups[0].name, "steward.team-a.chat.slo");
        let names: Vec<&str> = f.groups[0].rules.iter().map(|r| r.alert.as_str()).collect();
        assert_eq!(names, ALERTS);
        for r in &f.groups[0].rules {
            assert_eq!(
                r.annotations["runbook_url"],
                format!("docs/runbooks/{}.md", r.alert)
            );
            assert!(
                r.annotations["summary"].contains("team-a")
                    || r.annotations["summary"].contains("$labels.namespace")
            );
        }
    }

    #[test]
    fn burn_rate_pairs_use_the_shared_error_ratio_builder() {
        let f = rule_file("team-a", "chat", &spec(), &RuleOptions::default()).unwrap();
        let fast = &f.groups[0].rules[0].expr;
        let scope = Scope::service("team-a", "chat");
        let er1h = promql::error_ratio(&scope, Window(Duration::from_secs(3600)));
        let er5m = promql::error_ratio(&scope, Window(Duration::from_secs(300)));
        assert!(
            fast.starts_with(&format!(
                "({er1h} > (14.4 * 0.001) and {er5m} > (14.4 * 0.001)) or ("
            )),
            "{fast}"
        );
        assert!(fast.contains("[6h]") && fast.contains("[30m]") && fast.contains("(6 * 0.001)"));
        let slow = &f.groups[0].rules[1].expr;
        assert!(slow.contains("[1d]") && slow.contains("[2h]") && slow.contains("(3 * 0.001)"));
        assert!(slow.contains("[3d]") && slow.contains("[6h]") && slow.contains("(1 * 0.001)"));
    }

    #[test]
    fn latency_alerts_use_the_slo_objective_and_a_request_floor() {
        let mut s = spec();
        s.slo.ttft_p99 = "1500ms".parse().unwrap();
        let f = rule_file("ns", "svc", &s, &RuleOptions::default()).unwrap();
        let ttft = &f.groups[0].rules[2];
        assert_eq!(
            ttft.expr,
            format!(
                "({} > 1.5) and ({} >= 10)",
                promql::query(Signal::TtftP99, &Scope::service("ns", "svc"), mins(5)),
                promql::query(Signal::Requests, &Scope::service("ns", "svc"), mins(5))
            )
        );
        assert_eq!(ttft.for_.as_deref(), Some("10m"));
        assert!(ttft.annotations["summary"].contains(&s.slo.ttft_p99.to_string()));
    }

    #[test]
    fn prometheus_rule_object_wraps_the_file_and_is_owned() {
        let f = rule_file("ns", "svc", &spec(), &RuleOptions::default()).unwrap();
        let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "serving.steward.dev/v1alpha1".into(),
            kind: "InferenceService".into(),
            name: "svc".into(),
            uid: "u1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let o = prometheus_rule("svc", "ns", &owner, &f);
        assert_eq!(o["metadata"]["name"], "svc-slo");
        assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(o["spec"]["groups"][0]["rules"][0]["alert"], ALERTS[0]);
        assert_eq!(o["spec"]["groups"][0]["rules"][0]["for"], "2m");
    }
}
