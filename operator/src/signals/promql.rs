//! The PromQL text of every [`Signal`]: pure functions, pinned by unit
//! tests on the exact text (docs/signals.md lists them).
//!
//! Every query selects one InferenceService (`namespace`, `service`) and
//! optionally one revision, and aggregates `by (namespace, service,
//! revision)`, so one query answers for every revision at once and its
//! result labels say which revision each value belongs to. The labels are
//! the scrape labels the local system's file_sd writer and the chart's
//! PodMonitor put on engine series (docs/local-system.md).

use std::fmt::Write as _;
use std::time::Duration;

use super::Signal;

/// Scrape label: the pod's namespace.
pub const LABEL_NAMESPACE: &str = "namespace";
/// Scrape label: the pod's `serving.steward.dev/service`.
pub const LABEL_SERVICE: &str = "service";
/// Scrape label: the pod's `serving.steward.dev/revision`.
pub const LABEL_REVISION: &str = "revision";
/// Scrape label: the pod's place in rotation, `serving.steward.dev/rotation`
/// (serving / warm / draining).
pub const LABEL_ROTATION: &str = "rotation";
/// Scrape label: the pod's name.
pub const LABEL_POD: &str = "pod";
/// The grouping of every signal.
pub const GROUP_BY: &str = "namespace, service, revision";

/// Which series a query covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The InferenceService's namespace.
    pub namespace: String,
    /// The InferenceService's name.
    pub service: String,
    /// One revision, or every revision of the service when `None`.
    pub revision: Option<String>,
}

impl Scope {
    /// Every revision of one InferenceService.
    pub fn service(namespace: &str, service: &str) -> Self {
        Self {
            namespace: namespace.into(),
            service: service.into(),
            revision: None,
        }
    }

    /// One revision.
    pub fn revision(namespace: &str, service: &str, revision: &str) -> Self {
        Self {
            revision: Some(revision.into()),
            ..Self::service(namespace, service)
        }
    }

    /// The label matchers, without braces, with `extra` matchers appended.
    pub fn matchers(&self, extra: &[&str]) -> String {
        let mut s = format!(
            "{LABEL_NAMESPACE}=\"{}\",{LABEL_SERVICE}=\"{}\"",
            escape(&self.namespace),
            escape(&self.service)
        );
        if let Some(r) = &self.revision {
            let _ = write!(s, ",{LABEL_REVISION}=\"{}\"", escape(r));
        }
        for e in extra {
            s.push(',');
            s.push_str(e);
        }
        s
    }
}

/// Escapes a label value for a PromQL string literal.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The range every rate, quantile and average covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window(pub Duration);

impl Window {
    /// The analysis window for an evaluation interval: four intervals, at
    /// least 30 s (so a rate spans several scrapes), whole seconds.
    pub fn for_interval(interval: Duration) -> Self {
        let secs = (interval.as_secs_f64() * 4.0).ceil().max(30.0) as u64;
        Window(Duration::from_secs(secs))
    }

    /// The Prometheus duration text: `30s`, `1m`, `6h`, `1d`.
    pub fn text(self) -> String {
        let s = self.0.as_secs().max(1);
        if s.is_multiple_of(86_400) {
            format!("{}d", s / 86_400)
        } else if s.is_multiple_of(3600) {
            format!("{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    }
}

/// The PromQL of `signal` over `scope` and `window`.
pub fn query(signal: Signal, scope: &Scope, window: Window) -> String {
    let w = window.text();
    let sel = scope.matchers(&[]);
    let serving = scope.matchers(&["rotation=\"serving\""]);
    let p99 = |metric: &str| {
        format!(
            "histogram_quantile(0.99, sum by ({GROUP_BY}, le) (rate({metric}_bucket{{{sel}}}[{w}])))"
        )
    };
    let sum_rate = |metric: &str, matchers: &str| {
        format!("sum by ({GROUP_BY}) (rate({metric}{{{matchers}}}[{w}]))")
    };
    let avg_serving =
        |metric: &str| format!("avg by ({GROUP_BY}) (avg_over_time({metric}{{{serving}}}[{w}]))");
    match signal {
        Signal::TtftP99 => p99("steward_engine_time_to_first_token_seconds"),
        Signal::ItlP99 => p99("steward_engine_inter_token_latency_seconds"),
        Signal::E2eP99 => p99("steward_engine_e2e_request_latency_seconds"),
        Signal::ServerErrorRatio => error_ratio(scope, window),
        Signal::KvCacheUsage => avg_serving("steward_engine_kv_cache_usage_ratio"),
        Signal::ExecutorUtilization => avg_serving("steward_engine_executor_utilization_ratio"),
        Signal::QueueWaitingPerPod => avg_serving("steward_engine_requests_waiting"),
        Signal::PrefixCacheHitRate => format!(
            "{} / {}",
            sum_rate("steward_engine_prefix_cache_hits_total", &sel),
            sum_rate("steward_engine_prefix_cache_lookups_total", &sel)
        ),
        Signal::OutputTokensPerSecond => sum_rate("steward_engine_generation_tokens_total", &sel),
        Signal::RequestRate => sum_rate("steward_engine_responses_total", &sel),
        Signal::Requests => format!(
            "sum by ({GROUP_BY}) (increase(steward_engine_responses_total{{{}}}[{w}]))",
            scope.matchers(&["class!=\"4xx\""])
        ),
        Signal::InFlight => format!(
            "sum by ({GROUP_BY}) (avg_over_time(steward_engine_requests_running{{{sel}}}[{w}])) + sum by ({GROUP_BY}) (avg_over_time(steward_engine_requests_waiting{{{sel}}}[{w}]))"
        ),
        // Idle pods step for no time: `> 0` leaves no series (no data),
        // never a division by zero.
        Signal::PodTokensPerSecond => format!(
            "{} / ({} > 0)",
            sum_rate("steward_engine_generation_tokens_total", &sel),
            sum_rate("steward_engine_step_duration_seconds_sum", &sel)
        ),
        Signal::ColdStartSeconds => format!(
            "max by ({GROUP_BY}) (max_over_time(steward_engine_cold_start_seconds{{{sel}}}[{w}]))"
        ),
        // Each serving pod's slope averaged per gauge (the slope of the
        // average), the steeper of the two. `deriv` drops the metric name,
        // so a label tells the two apart before `max`.
        Signal::UtilizationTrend => {
            let slope = |metric: &str, name: &str| {
                format!(
                    "label_replace(avg by ({GROUP_BY}) (deriv({metric}{{{serving}}}[{w}])), \"gauge\", \"{name}\", \"\", \"\")"
                )
            };
            format!(
                "max by ({GROUP_BY}) ({} or {})",
                slope("steward_engine_executor_utilization_ratio", "executor"),
                slope("steward_engine_kv_cache_usage_ratio", "kv_cache")
            )
        }
    }
}

/// The per-pod form of a utilisation signal (executor utilisation or
/// KV-cache usage): each serving pod's own average over the window,
/// grouped by pod as well. The autoscaler's scale-in takes the least
/// loaded pod (the higher of its two values); `None` for other signals.
pub fn per_pod(signal: Signal, scope: &Scope, window: Window) -> Option<String> {
    let metric = match signal {
        Signal::ExecutorUtilization => "steward_engine_executor_utilization_ratio",
        Signal::KvCacheUsage => "steward_engine_kv_cache_usage_ratio",
        _ => return None,
    };
    Some(format!(
        "max by ({GROUP_BY}, {LABEL_POD}) (avg_over_time({metric}{{{}}}[{}]))",
        scope.matchers(&["rotation=\"serving\""]),
        window.text()
    ))
}

/// 5xx responses over non-4xx responses. A revision that never answered
/// 5xx has no `class="5xx"` series; the `or 0 * …` arm gives it an
/// explicit 0 with the same labels, so "no errors" reads 0 and "no
/// traffic" (empty denominator) reads no data.
pub fn error_ratio(scope: &Scope, window: Window) -> String {
    let w = window.text();
    let errors = scope.matchers(&["class=\"5xx\""]);
    let all = scope.matchers(&[]);
    let counted = scope.matchers(&["class!=\"4xx\""]);
    let m = "steward_engine_responses_total";
    format!(
        "(sum by ({GROUP_BY}) (rate({m}{{{errors}}}[{w}])) or 0 * sum by ({GROUP_BY}) (rate({m}{{{all}}}[{w}]))) / sum by ({GROUP_BY}) (rate({m}{{{counted}}}[{w}]))"
    )
}

/// A user's PromQL with `$namespace`, `$service` and `$revision` filled in.
pub fn substitute(promql: &str, scope: &Scope) -> String {
    promql
        .replace("$namespace", &escape(&scope.namespace))
        .replace("$service", &escape(&scope.service))
        .replace(
            "$revision",
            &escape(scope.revision.as_deref().unwrap_or("")),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Scope {
        Scope::service("team-a", "chat")
    }

    const W: Window = Window(Duration::from_secs(60));

    #[test]
    fn latency_quantiles_group_by_revision_and_le() {
        assert_eq!(
            query(Signal::TtftP99, &chat(), W),
            r#"histogram_quantile(0.99, sum by (namespace, service, revision, le) (rate(steward_engine_time_to_first_token_seconds_bucket{namespace="team-a",service="chat"}[1m])))"#
        );
        assert_eq!(
            query(Signal::ItlP99, &chat(), W),
            r#"histogram_quantile(0.99, sum by (namespace, service, revision, le) (rate(steward_engine_inter_token_latency_seconds_bucket{namespace="team-a",service="chat"}[1m])))"#
        );
        assert_eq!(
            query(
                Signal::E2eP99,
                &Scope::revision("team-a", "chat", "7c9f1a"),
                W
            ),
            r#"histogram_quantile(0.99, sum by (namespace, service, revision, le) (rate(steward_engine_e2e_request_latency_seconds_bucket{namespace="team-a",service="chat",revision="7c9f1a"}[1m])))"#
        );
    }

    #[test]
    fn error_ratio_counts_5xx_only_and_reads_zero_without_errors() {
        assert_eq!(
            query(Signal::ServerErrorRatio, &chat(), W),
            r#"(sum by (namespace, service, revision) (rate(steward_engine_responses_total{namespace="team-a",service="chat",class="5xx"}[1m])) or 0 * sum by (namespace, service, revision) (rate(steward_engine_responses_total{namespace="team-a",service="chat"}[1m]))) / sum by (namespace, service, revision) (rate(steward_engine_responses_total{namespace="team-a",service="chat",class!="4xx"}[1m]))"#
        );
    }

    #[test]
    fn pod_gauges_average_over_serving_pods() {
        assert_eq!(
            query(Signal::KvCacheUsage, &chat(), W),
            r#"avg by (namespace, service, revision) (avg_over_time(steward_engine_kv_cache_usage_ratio{namespace="team-a",service="chat",rotation="serving"}[1m]))"#
        );
        assert_eq!(
            query(Signal::ExecutorUtilization, &chat(), W),
            r#"avg by (namespace, service, revision) (avg_over_time(steward_engine_executor_utilization_ratio{namespace="team-a",service="chat",rotation="serving"}[1m]))"#
        );
        assert_eq!(
            query(Signal::QueueWaitingPerPod, &chat(), W),
            r#"avg by (namespace, service, revision) (avg_over_time(steward_engine_requests_waiting{namespace="team-a",service="chat",rotation="serving"}[1m]))"#
        );
    }

    #[test]
    fn rates_and_counts() {
        assert_eq!(
            query(Signal::PrefixCacheHitRate, &chat(), W),
            r#"sum by (namespace, service, revision) (rate(steward_engine_prefix_cache_hits_total{namespace="team-a",service="chat"}[1m])) / sum by (namespace, service, revision) (rate(steward_engine_prefix_cache_lookups_total{namespace="team-a",service="chat"}[1m]))"#
        );
        assert_eq!(
            query(Signal::OutputTokensPerSecond, &chat(), W),
            r#"sum by (namespace, service, revision) (rate(steward_engine_generation_tokens_total{namespace="team-a",service="chat"}[1m]))"#
        );
        assert_eq!(
            query(Signal::RequestRate, &chat(), W),
            r#"sum by (namespace, service, revision) (rate(steward_engine_responses_total{namespace="team-a",service="chat"}[1m]))"#
        );
        assert_eq!(
            query(Signal::Requests, &chat(), W),
            r#"sum by (namespace, service, revision) (increase(steward_engine_responses_total{namespace="team-a",service="chat",class!="4xx"}[1m]))"#
        );
    }

    #[test]
    fn capacity_signals() {
        assert_eq!(
            query(Signal::InFlight, &chat(), W),
            r#"sum by (namespace, service, revision) (avg_over_time(steward_engine_requests_running{namespace="team-a",service="chat"}[1m])) + sum by (namespace, service, revision) (avg_over_time(steward_engine_requests_waiting{namespace="team-a",service="chat"}[1m]))"#
        );
        assert_eq!(
            query(Signal::PodTokensPerSecond, &chat(), W),
            r#"sum by (namespace, service, revision) (rate(steward_engine_generation_tokens_total{namespace="team-a",service="chat"}[1m])) / (sum by (namespace, service, revision) (rate(steward_engine_step_duration_seconds_sum{namespace="team-a",service="chat"}[1m])) > 0)"#
        );
        assert_eq!(
            query(Signal::ColdStartSeconds, &chat(), W),
            r#"max by (namespace, service, revision) (max_over_time(steward_engine_cold_start_seconds{namespace="team-a",service="chat"}[1m]))"#
        );
        assert_eq!(
            query(Signal::UtilizationTrend, &chat(), W),
            r#"max by (namespace, service, revision) (label_replace(avg by (namespace, service, revision) (deriv(steward_engine_executor_utilization_ratio{namespace="team-a",service="chat",rotation="serving"}[1m])), "gauge", "executor", "", "") or label_replace(avg by (namespace, service, revision) (deriv(steward_engine_kv_cache_usage_ratio{namespace="team-a",service="chat",rotation="serving"}[1m])), "gauge", "kv_cache", "", ""))"#
        );
    }

    #[test]
    fn per_pod_loads_group_by_pod_and_exist_for_utilisation_only() {
        assert_eq!(
            per_pod(Signal::KvCacheUsage, &chat(), W).as_deref(),
            Some(
                r#"max by (namespace, service, revision, pod) (avg_over_time(steward_engine_kv_cache_usage_ratio{namespace="team-a",service="chat",rotation="serving"}[1m]))"#
            )
        );
        assert_eq!(
            per_pod(Signal::ExecutorUtilization, &chat(), W).as_deref(),
            Some(
                r#"max by (namespace, service, revision, pod) (avg_over_time(steward_engine_executor_utilization_ratio{namespace="team-a",service="chat",rotation="serving"}[1m]))"#
            )
        );
        assert_eq!(per_pod(Signal::QueueWaitingPerPod, &chat(), W), None);
    }

    #[test]
    fn window_text_and_analysis_window() {
        assert_eq!(Window(Duration::from_secs(30)).text(), "30s");
        assert_eq!(Window(Duration::from_secs(90)).text(), "90s");
        assert_eq!(Window(Duration::from_secs(300)).text(), "5m");
        assert_eq!(Window(Duration::from_secs(21_600)).text(), "6h");
        assert_eq!(Window(Duration::from_secs(259_200)).text(), "3d");
        assert_eq!(
            Window::for_interval(Duration::from_secs(2)),
            Window(Duration::from_secs(30))
        );
        assert_eq!(
            Window::for_interval(Duration::from_secs(15)),
            Window(Duration::from_secs(60))
        );
    }

    #[test]
    fn label_values_are_escaped_and_user_queries_substituted() {
        let s = Scope::revision("ns", "a\"b", "r1");
        assert_eq!(
            s.matchers(&[]),
            r#"namespace="ns",service="a\"b",revision="r1""#
        );
        assert_eq!(
            substitute(
                r#"rate(x{service="$service",revision="$revision"}[1m])"#,
                &Scope::revision("ns", "chat", "abc")
            ),
            r#"rate(x{service="chat",revision="abc"}[1m])"#
        );
    }
}
