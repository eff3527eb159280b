//! The `InferenceService` spec: what a platform team writes.
//!
//! Every field the final product uses is here, even where a later part of the
//! operator implements the behaviour, so manifests keep one shape. Defaults
//! live in the schema (the API server fills them in, so `kubectl get -o yaml`
//! shows the effective values) and in `Default` impls (so Rust code that
//! builds a spec gets the same values). Cross-field rules are CEL
//! (`x-kubernetes-validations`) so a bad manifest is refused at `kubectl
//! apply` with a message that names the field.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::alarm::{AlarmExpr, AlarmKind, SloSignal};
use super::duration::{fields, GoDuration};
use super::names;
use super::status::InferenceServiceStatus;

/// Desired state of an `InferenceService`.
// Clippy reads the repeated `printcolumn(type_ = "string")` keys as
// duplicated attributes; they are separate columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "serving.steward.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    plural = "inferenceservices",
    singular = "inferenceservice",
    shortname = "llmsvc",
    category = "steward",
    namespaced,
    status = "InferenceServiceStatus",
    derive = "PartialEq",
    doc = "An LLM served by steward-engine pods, rolled out in revisions.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "ready pods / desired pods"
    ),
    printcolumn(
        name = "Serving/Warm",
        type_ = "string",
        json_path = ".status.servingWarm",
        description = "pods in rotation / warm pods"
    ),
    printcolumn(
        name = "Stable",
        type_ = "string",
        json_path = ".status.stableRevision"
    ),
    printcolumn(
        name = "Canary",
        type_ = "string",
        json_path = ".status.canaryRevision"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.canaryWeight",
        description = "percent of traffic on the canary"
    ),
    printcolumn(
        name = "Step",
        type_ = "integer",
        json_path = ".status.rollout.step",
        description = "the canary's step of spec.rollout.steps"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "TTFT-P99",
        type_ = "string",
        json_path = ".status.ttftP99",
        description = "observed time to first token, p99"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Util",
        type_ = "string",
        json_path = ".status.utilization",
        description = "the scaled revision's utilisation (the higher of executor and KV cache)",
        priority = "1"
    ),
    printcolumn(
        name = "Alarm",
        type_ = "string",
        json_path = ".status.firing",
        description = "the firing rollbackOn alarm of each revision, as leaf (revision)",
        priority = "1"
    ),
    scale(
        spec_replicas_path = ".spec.replicas.min",
        status_replicas_path = ".status.replicas.serving",
        label_selector_path = ".status.selector"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "!has(self.limits) || !has(self.limits.maxTokensPerRequest) || self.limits.maxTokensPerRequest <= self.model.maxContextTokens", "message": "limits.maxTokensPerRequest must not exceed model.maxContextTokens"}]))]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// The model to serve.
    pub model: ModelSpec,
    /// The engine that serves it; every field shapes the pods.
    #[serde(default)]
    pub engine: EngineSpec,
    /// How many pods: serving bounds and the warm pool.
    #[serde(default)]
    pub replicas: ReplicasSpec,
    /// When to scale between `replicas.min` and `replicas.max`.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// The service level objectives alarms are compiled from.
    #[serde(default)]
    pub slo: SloSpec,
    /// How a new revision takes traffic.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// How pods leave rotation.
    #[serde(default)]
    pub draining: DrainingSpec,
    /// Request limits enforced by the router and the engine.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Where the revisions' HTTPRoute attaches, on clusters that serve the
    /// Gateway API (docs/rollouts.md, "Gateway API"). Routing only: it
    /// never changes the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
}

/// The model: its public name and where its weights are.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// The name clients put in the OpenAI `model` field.
    #[schemars(length(min = 1, max = 128))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.matches('^[A-Za-z0-9][A-Za-z0-9._:/-]*$')", "message": "model.name must start with a letter or digit and contain only letters, digits and . _ : / -"}]))]
    pub name: String,
    /// Where the Hugging Face-style model directory is: `file:///abs/path`
    /// (a path on the node) or `pvc://claim/path` (a path inside a
    /// PersistentVolumeClaim, mounted read-only).
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.matches('^(file:///[^\\\\s]*|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\\\\s]*)?)$')", "message": "model.uri must use a supported scheme: file:///absolute/path or pvc://claim/path"}]))]
    pub uri: String,
    /// The longest prompt plus completion, in tokens.
    #[serde(default = "default_max_context_tokens")]
    #[schemars(range(min = 16, max = 1048576))]
    pub max_context_tokens: i32,
}

fn default_max_context_tokens() -> i32 {
    4096
}

/// Image pull policy of the engine container.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// CPU and memory for the engine container (GPUs are `engine.gpus`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EngineResources {
    /// CPU request and limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": names::QUANTITY_RULE, "message": names::quantity_message("cpu")}]))]
    pub cpu: Option<Quantity>,
    /// Memory request and limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": names::QUANTITY_RULE, "message": names::quantity_message("memory")}]))]
    pub memory: Option<Quantity>,
}

/// The engine: image and the knobs passed to `steward-engine serve`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EngineSpec {
    /// Container image of steward-engine.
    #[schemars(length(min = 1, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": names::IMAGE_RULE, "message": names::IMAGE_MESSAGE}]))]
    pub image: String,
    /// Image pull policy; the cluster's default when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// GPUs per pod (`nvidia.com/gpu`); 0 runs on CPU.
    #[schemars(range(min = 0, max = 16))]
    pub gpus: i32,
    /// Token budget of one batch step (`--max-batch-tokens`).
    #[schemars(range(min = 1, max = 1048576))]
    pub max_batch_tokens: i32,
    /// Paged KV cache size in blocks (`--kv-cache-blocks`).
    #[schemars(range(min = 1, max = 16777216))]
    pub kv_cache_blocks: i32,
    /// Container port of the engine's HTTP server, named `http`.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Also export vLLM-compatible metric names (`--vllm-metrics`).
    pub vllm_metrics: bool,
    /// CPU and memory of the engine container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<EngineResources>,
    /// Node labels the pods must match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 63}, "x-kubernetes-validations" = [
        {"rule": names::LABEL_KEYS_RULE, "message": names::LABEL_KEYS_MESSAGE},
        {"rule": names::LABEL_VALUES_RULE, "message": names::LABEL_VALUES_MESSAGE},
    ]))]
    pub node_selector: BTreeMap<String, String>,
    /// Extra arguments appended to `steward-engine serve`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("items" = {"type": "string", "maxLength": names::MAX_ARG_LEN}))]
    pub extra_args: Vec<String>,
}

impl Default for EngineSpec {
    fn default() -> Self {
        Self {
            image: "steward-engine:0.1".into(),
            image_pull_policy: None,
            gpus: 1,
            max_batch_tokens: 8192,
            kv_cache_blocks: 2048,
            port: 8000,
            vllm_metrics: false,
            resources: None,
            node_selector: BTreeMap::new(),
            extra_args: Vec::new(),
        }
    }
}

/// Pod counts. Serving pods take traffic; warm pods are loaded and ready but
/// out of rotation, so scale-out takes seconds instead of a cold start.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "!has(self.max) || self.min <= self.max", "message": "replicas.min must be less than or equal to replicas.max"}]))]
#[serde(rename_all = "camelCase", default)]
pub struct ReplicasSpec {
    /// Fewest serving pods.
    #[schemars(range(min = 0, max = 1000))]
    pub min: i32,
    /// Most serving pods; unset means `min` (no autoscaling).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max: Option<i32>,
    /// Warm pods kept beside the serving ones.
    #[schemars(range(min = 0, max = 100))]
    pub warm: i32,
}

impl Default for ReplicasSpec {
    fn default() -> Self {
        Self {
            min: 1,
            max: None,
            warm: 0,
        }
    }
}

impl ReplicasSpec {
    /// The upper bound of serving pods (`max`, else `min`).
    pub fn effective_max(&self) -> i32 {
        self.max.unwrap_or(self.min)
    }
}

/// Utilisation-driven scaling between `replicas.min` and `replicas.max`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AutoscalingSpec {
    /// Who sets the serving count: `builtin` (the operator, from the
    /// signals, between `replicas.min` and `replicas.max`) or `external`
    /// (an HPA or KEDA through the scale subresource, which writes
    /// `replicas.min`; the operator follows it, warm pool first, one
    /// draining pod at a time, capped at `replicas.max` when set).
    pub mode: AutoscalingMode,
    /// Scale out when utilisation (KV cache and batch) passes this percent.
    #[schemars(range(min = 1, max = 100))]
    pub target_utilization: i32,
    /// How long utilisation must stay low before a pod is removed.
    #[schemars(schema_with = "fields::scale_in_after::schema")]
    #[serde(deserialize_with = "fields::scale_in_after::deserialize")]
    pub scale_in_after: GoDuration,
}

/// Who owns the serving count.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalingMode {
    /// The operator scales from its signals.
    #[default]
    Builtin,
    /// Something else (HPA, KEDA) writes `replicas.min` through the scale
    /// subresource; the operator only follows it.
    External,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            mode: AutoscalingMode::Builtin,
            target_utilization: 70,
            scale_in_after: GoDuration::from_secs(300),
        }
    }
}

/// Service level objectives.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SloSpec {
    /// Time to first token, 99th percentile.
    #[schemars(schema_with = "fields::ttft_p99::schema")]
    #[serde(deserialize_with = "fields::ttft_p99::deserialize")]
    pub ttft_p99: GoDuration,
    /// Inter-token latency, 99th percentile.
    #[schemars(schema_with = "fields::itl_p99::schema")]
    #[serde(deserialize_with = "fields::itl_p99::deserialize")]
    pub itl_p99: GoDuration,
    /// Share of requests answered without a server error, in percent
    /// (a string such as "99.9").
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.matches('^[0-9]{1,3}(\\\\.[0-9]{1,6})?$') && double(self) > 0.0 && double(self) <= 100.0", "message": "slo.availability must be a percentage greater than 0 and at most 100, such as \"99.9\""}]))]
    pub availability: String,
}

impl Default for SloSpec {
    fn default() -> Self {
        Self {
            ttft_p99: GoDuration::from_millis(800),
            itl_p99: GoDuration::from_millis(80),
            availability: "99.9".into(),
        }
    }
}

/// One canary step: the canary's share of traffic and how long to hold it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Percent of traffic on the new revision during this step.
    #[schemars(range(min = 1, max = 99))]
    pub weight: i32,
    /// How long to hold the step while analysis runs.
    #[serde(
        default = "default_step_pause",
        deserialize_with = "fields::step_pause::deserialize"
    )]
    #[schemars(schema_with = "fields::step_pause::schema")]
    pub pause: GoDuration,
}

fn default_step_pause() -> GoDuration {
    GoDuration::from_secs(60)
}

/// How a new revision takes traffic.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RolloutSpec {
    /// Canary steps, in strictly increasing weight; after the last one the
    /// new revision is promoted to 100%. Empty means promote as soon as the
    /// new revision is ready.
    #[schemars(length(max = 10))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.map(s, s.weight).isSorted() && self.all(a, self.exists_one(b, b.weight == a.weight))", "message": "rollout.steps weights must be strictly increasing"}]))]
    pub steps: Vec<RolloutStep>,
    /// Canary analysis.
    pub analysis: AnalysisSpec,
    /// Hold the rollout where it is: no step forward and no promotion while
    /// true (analysis still runs and can still roll back). Set by
    /// `kubectl steward pause` / `resume` (docs/rollouts.md).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            steps: vec![
                RolloutStep {
                    weight: 5,
                    pause: GoDuration::from_secs(120),
                },
                RolloutStep {
                    weight: 25,
                    pause: GoDuration::from_secs(300),
                },
                RolloutStep {
                    weight: 50,
                    pause: GoDuration::from_secs(300),
                },
            ],
            analysis: AnalysisSpec::default(),
            paused: false,
        }
    }
}

/// Canary analysis: how often, what rolls back, and the quality gate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AnalysisSpec {
    /// How often alarms are evaluated during a rollout.
    #[schemars(schema_with = "fields::analysis_interval::schema")]
    #[serde(deserialize_with = "fields::analysis_interval::deserialize")]
    pub interval: GoDuration,
    /// The composite alarm that rolls the canary back.
    pub rollback_on: AlarmExpr,
    /// How long the canary's verdict may stay unknown (no data, too few
    /// requests, Prometheus unavailable) at a step before the rollout fails
    /// and rolls back with reason `AnalysisUnavailable`. Unset: the step
    /// holds, with a condition saying why, and never promotes blind.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "fields::unknown_timeout::deserialize_opt"
    )]
    #[schemars(schema_with = "fields::unknown_timeout::schema")]
    pub unknown_timeout: Option<GoDuration>,
    /// The golden-set quality gate; no gate when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualitySpec>,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            interval: GoDuration::from_secs(15),
            rollback_on: AlarmExpr::any_of_defaults(&[
                (Some(SloSignal::TtftP99), None),
                (Some(SloSignal::ItlP99), None),
                (None, Some(AlarmKind::ErrorRate)),
                (None, Some(AlarmKind::KvCacheSaturation)),
            ]),
            quality: None,
            unknown_timeout: None,
        }
    }
}

/// A reference to the ConfigMap holding the golden prompts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GoldenSetRef {
    /// Name of a ConfigMap in the InferenceService's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": names::SUBDOMAIN_RULE, "message": names::GOLDEN_SET_MESSAGE}]))]
    pub config_map: String,
}

/// The quality gate: canary answers to a golden set, scored.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QualitySpec {
    /// Where the golden prompts and references are.
    pub golden_set: GoldenSetRef,
    /// Lowest acceptable score, 0 to 1.
    #[serde(default = "default_min_score")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_score: f64,
    /// Score each category of the golden set on its own (otherwise one
    /// score over every entry).
    #[serde(default)]
    pub per_category: bool,
    /// How far the canary's score may fall below the stable revision's
    /// (score points, 0 to 1) before it rolls back, even above `minScore`.
    #[serde(default = "default_score_margin")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub margin: f64,
    /// How much higher the canary's perplexity on the golden references may
    /// be than the stable's, as a fraction (0.1 = 10%), before the
    /// `qualityRegression` alarm fires.
    #[serde(default = "default_perplexity_margin")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub perplexity_margin: f64,
}

fn default_min_score() -> f64 {
    0.9
}

fn default_score_margin() -> f64 {
    0.05
}

fn default_perplexity_margin() -> f64 {
    0.1
}

/// How a pod leaves rotation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DrainingSpec {
    /// The longest a draining pod waits for its open streams.
    #[schemars(schema_with = "fields::drain_window::schema")]
    #[serde(deserialize_with = "fields::drain_window::deserialize")]
    pub window: GoDuration,
}

impl Default for DrainingSpec {
    fn default() -> Self {
        Self {
            window: GoDuration::from_secs(45),
        }
    }
}

/// Per-tenant request limits, enforced by the router.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "!has(self.burst) || self.burst >= self.requestsPerSecond", "message": "limits.perTenant.burst must be at least requestsPerSecond"}]))]
#[serde(rename_all = "camelCase")]
pub struct TenantLimits {
    /// Sustained requests per second per tenant.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: i32,
    /// Token-bucket size; twice `requestsPerSecond` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<i32>,
    /// Requests in flight per tenant; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_concurrent: Option<i32>,
}

impl TenantLimits {
    /// The token-bucket size after defaulting.
    pub fn effective_burst(&self) -> i32 {
        self.burst
            .unwrap_or_else(|| self.requests_per_second.saturating_mul(2))
    }
}

/// Request limits.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct LimitsSpec {
    /// Per-tenant rate and concurrency; no per-tenant limit when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_tenant: Option<TenantLimits>,
    /// Cap on `max_tokens` of one request (`--max-tokens-cap`); the
    /// context length when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_tokens_per_request: Option<i32>,
}

/// The Gateway API side of routing: the parents of the HTTPRoute the
/// operator writes per InferenceService (`gateway.networking.k8s.io/v1`),
/// whose backendRefs carry `status.traffic`'s weights.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    /// The Gateways (or listeners of them) the route attaches to, written
    /// as the route's `spec.parentRefs`. Empty: the operator leaves
    /// `parentRefs` alone, so the route attaches to nothing until someone
    /// adds parents to it (the operator does not remove them).
    #[schemars(length(max = 32))]
    pub parent_refs: Vec<GatewayParentRef>,
}

/// One parent of the HTTPRoute: a Gateway, by name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    /// The Gateway's name.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": names::SUBDOMAIN_RULE, "message": names::PARENT_NAME_MESSAGE}]))]
    pub name: String,
    /// The Gateway's namespace; the InferenceService's when unset (a
    /// Gateway in another namespace must allow routes from this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": names::DNS_LABEL_RULE, "message": names::PARENT_NAMESPACE_MESSAGE}]))]
    pub namespace: Option<String>,
    /// One listener of the Gateway, by name; every listener that allows
    /// the route when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": names::SUBDOMAIN_RULE, "message": names::PARENT_SECTION_MESSAGE}]))]
    pub section_name: Option<String>,
    /// Listeners on this port only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}
