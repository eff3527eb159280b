//! Phase 4 of the autoscale cluster test: KEDA owns the count
//! (`autoscaling.mode: external`, issue 12 scenario 5).
//!
//! Real parts end to end: KEDA's operator and metrics server built from
//! the pinned module ([`steward_e2e::keda`]), the controller-manager's own
//! HPA controller reading `external.metrics.k8s.io` through kube-apiserver's
//! aggregation layer, the InferenceService's scale subresource, the same
//! Prometheus, engines, router and load generator as phases 1–3.
//!
//! The object of phases 1–3 (2 serving + 1 warm) is switched to
//! `autoscaling.mode: external` and a ScaledObject is applied with the
//! built-in autoscaler's three signals as Prometheus triggers: KV-cache
//! usage and executor utilisation of the serving pods against 70%, waiting
//! requests against 1 per pod (summed: KEDA's default `AverageValue`
//! target divides by the replica count, so `threshold: 0.7` is 70% per
//! serving pod; the HPA takes the largest, as the built-in autoscaler
//! does). Then:
//! 1. the load step through the router: the HPA raises `spec.replicas.min`
//!    to 3 through the scale subresource and the operator follows with a
//!    third serving pod (the warm one) and a backfill;
//! 2. the load stops: the HPA holds 3 for its scale-down stabilisation
//!    window, and for all that time the operator keeps 3 serving although
//!    utilisation is near zero and the object's own `scaleInAfter` (10 s)
//!    has long passed: it does not fight the count;
//! 3. the HPA lowers `replicas.min` to 2: one pod drains and goes.
//!
//! Throughout, the operator never writes `spec` (managedFields: only the
//! HPA's scale update owns `replicas.min`), and its scale events say
//! `external`.

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use steward_e2e::keda::{KedaOptions, LocalKeda};
use steward_e2e::testing::eventually;
use steward_operator::crd::InferenceService;
use steward_operator::signals::{promql, Scope, Signal, Window};

use crate::support::{apply, finish, wait_for};
use crate::system::{all_pods, loadgen, object, serving_memory, settle, with, Shape, System};

/// Field manager of the ScaledObject the test applies.
const MANAGER: &str = "test-user";
/// The HPA's scale-down stabilisation window: how long it keeps the count
/// after the load falls (Kubernetes' default is 300 s).
const SCALE_DOWN_WINDOW_SECS: u64 = 45;
/// How long the load step runs: past KEDA's scale-out and the backfill.
const KEDA_STEP_SECS: u64 = 45;

fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    )
}

/// The ScaledObject of this test: what docs/operator.md shows, with the
/// test's Prometheus and short windows. Each trigger is the autoscaler's
/// own utilisation signal (`promql::query`) summed over the serving pods.
pub fn scaled_object(ns: &str, name: &str, prometheus: &str) -> Value {
    let scope = Scope::service(ns, name);
    let trigger = |trigger: &str, signal: Signal, threshold: &str| {
        let avg = promql::query(signal, &scope, Window(Duration::from_secs(30)));
        let sum = avg.replacen("avg by (namespace, service, revision) (", "sum(", 1);
        assert_ne!(sum, avg, "the signal's query is an average by revision");
        json!({
            "type": "prometheus",
            "name": trigger,
            "metadata": {
                "serverAddress": prometheus,
                "query": sum,
                "threshold": threshold,
            },
        })
    };
    json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "serving.steward.dev/v1alpha1",
                "kind": "InferenceService",
                "name": name,
            },
            "pollingInterval": 5,
            "minReplicaCount": 2,
            "maxReplicaCount": 3,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": SCALE_DOWN_WINDOW_SECS,
                            "policies": [{ "type": "Pods", "value": 1, "periodSeconds": 15 }],
                        },
                    },
                },
            },
            "triggers": [
                trigger("kv-cache-usage", Signal::KvCacheUsage, "0.7"),
                trigger("executor-utilization", Signal::ExecutorUtilization, "0.7"),
                trigger("queue", Signal::QueueWaitingPerPod, "1"),
            ],
        },
    })
}

/// One trigger's query read once a second during the load step: when it
/// first passed the HPA's band (its target per serving pod, +10%, on two
/// serving pods) and the highest and last sums, so a failure shows how
/// far the load drove each signal.
struct TriggerReadings {
    name: String,
    query: String,
    band: f64,
    crossed: Option<Duration>,
    max: Option<f64>,
    last: Option<f64>,
}

impl TriggerReadings {
    fn new(trigger: &Value) -> Self {
        let target: f64 = trigger["metadata"]["threshold"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        Self {
            name: trigger["name"].as_str().unwrap_or_default().to_string(),
            query: trigger["metadata"]["query"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            band: target * 2.0 * 1.1,
            crossed: None,
            max: None,
            last: None,
        }
    }

    fn record(&mut self, at: Duration, value: Option<f64>) {
        self.last = value;
        if let Some(v) = value {
            self.max = Some(self.max.map_or(v, |m| m.max(v)));
            if self.crossed.is_none() && v > self.band {
                self.crossed = Some(at);
            }
        }
    }
}

fn summary(readings: &[TriggerReadings]) -> String {
    let num = |v: Option<f64>| v.map_or("none".into(), |v| format!("{v:.2}"));
    readings
        .iter()
        .map(|r| {
            format!(
                "{} past {:.2} at {} (max {}, last {})",
                r.name,
                r.band,
                r.crossed
                    .map_or("never".into(), |d| format!("{:.0}s", d.as_secs_f64())),
                num(r.max),
                num(r.last)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `spec.replicas.min` as the API server has it.
async fn replicas_min(api: &Api<InferenceService>, name: &str) -> Option<i32> {
    Some(api.get_opt(name).await.ok()??.spec.replicas.min)
}

/// The HPA's status, for failure messages.
async fn hpa_status(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
) -> Option<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerStatus> {
    hpas.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|h| h.status)
}

/// The messages of the HPA controller's `SuccessfulRescale` events on
/// `hpa` ("New size: 3; reason: external metric ... above target").
async fn hpa_rescales(env: &crate::support::TestEnv, hpa: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let mut list: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("HorizontalPodAutoscaler")
                && e.involved_object.name.as_deref() == Some(hpa)
                && e.reason.as_deref() == Some("SuccessfulRescale")
        })
        .collect();
    list.sort_by_key(|e| e.metadata.creation_timestamp.clone());
    list.into_iter().filter_map(|e| e.message).collect()
}

/// Who owns `spec.replicas.min`, and every manager that wrote `spec`
/// (through the main resource or the scale subresource).
fn spec_writers(o: &InferenceService) -> (Vec<String>, Vec<String>) {
    let mut min_owners = Vec::new();
    let mut spec_writers = Vec::new();
    for e in o.metadata.managed_fields.iter().flatten() {
        let fields = e.fields_v1.as_ref().map(|f| &f.0);
        let who = format!(
            "{} ({}{})",
            e.manager.clone().unwrap_or_default(),
            e.operation.clone().unwrap_or_default(),
            e.subresource
                .as_ref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default()
        );
        if let Some(spec) = fields.and_then(|f| f.get("f:spec")) {
            spec_writers.push(who.clone());
            if spec
                .get("f:replicas")
                .and_then(|r| r.get("f:min"))
                .is_some()
            {
                min_owners.push(who);
            }
        }
    }
    (min_owners, spec_writers)
}

pub async fn keda_owns_the_count(sys: &System, name: &str, model: &str, shape: &Shape<'_>) {
    let t0 = Instant::now();
    let env = &sys.env;
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let kubeconfig = env.kubeconfig.clone();
    let keda = LocalKeda::start(
        env.client.clone(),
        KedaOptions {
            kubeconfig,
            dir: sys.dir.join("keda"),
        },
    )
    .await
    .expect("KEDA starts and its APIService becomes Available");

    // The example of the docs is valid against KEDA's own CRD schema.
    let so_api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &scaled_object_resource());
    let example_path = steward_e2e::parts::repo_root().join("examples/keda/scaledobject.yaml");
    let mut example: DynamicObject = serde_yaml::from_str(
        &std::fs::read_to_string(&example_path).expect("examples/keda/scaledobject.yaml"),
    )
    .expect("the example is one ScaledObject");
    example.metadata.namespace = Some(env.ns.clone());
    so_api
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &example,
        )
        .await
        .unwrap_or_else(|e| panic!("{} is refused by KEDA's CRD: {e}", example_path.display()));

    // The count goes to KEDA: external mode, then the ScaledObject.
    let mut manifest = object(env, name, shape);
    manifest["spec"]["autoscaling"]["mode"] = json!("external");
    apply(env, &manifest).await.expect("external mode applies");
    let so = scaled_object(&env.ns, name, &sys.prometheus.url());
    so_api
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&so),
        )
        .await
        .expect("the ScaledObject applies");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(env.client.clone(), &env.ns);
    let hpa_name = format!("keda-hpa-{name}");
    // KEDA made its HPA on the scale subresource and the HPA controller
    // read the external metrics through the aggregation layer.
    let hpa = eventually(Duration::from_secs(90), || async {
        let h = hpas.get_opt(&hpa_name).await.ok()??;
        let st = h.status.as_ref()?;
        let able = st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "ScalingActive" && c.status == "True");
        (able && st.current_metrics.as_ref().is_some_and(|m| m.len() == 3)).then_some(h)
    })
    .await;
    let hpa = match hpa {
        Ok(h) => h,
        Err(e) => panic!(
            "KEDA's HPA {hpa_name} never read its external metrics: {e}; HPA status: {:?}; \
             APIService: {}; logs in {}",
            hpa_status(&hpas, &hpa_name).await,
            keda.api_service_message().await,
            keda.log_dir().display()
        ),
    };
    let target = hpa.spec.map(|s| s.scale_target_ref);
    assert_eq!(
        target
            .as_ref()
            .map(|t| (t.kind.as_str(), t.api_version.as_deref())),
        Some(("InferenceService", Some("serving.steward.dev/v1alpha1"))),
        "KEDA's HPA scales the InferenceService itself"
    );
    settle(
        env,
        name,
        2,
        1,
        Duration::from_secs(60),
        "2 serving + 1 warm under KEDA at rest",
    )
    .await;
    eprintln!(
        "[autoscale/keda] KEDA up in {:.1}s; its HPA reads the three triggers {:.1}s into the phase",
        keda.startup_time().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    // 1. The load step: KEDA's HPA raises replicas.min, the operator follows.
    let t_step = Instant::now();
    let (lg, report) = loadgen(
        sys,
        model,
        "keda-step",
        34,
        ("fixed:16", "fixed:32"),
        KEDA_STEP_SECS,
    );
    // Until the HPA acts, once a second: when each trigger's query crossed
    // the HPA's band in Prometheus (its target per serving pod, +10%, on
    // two serving pods). The HPA reads every 15 s and writes its status
    // together with the scale.
    let triggers = so["spec"]["triggers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut readings: Vec<TriggerReadings> = triggers.iter().map(TriggerReadings::new).collect();
    loop {
        if replicas_min(&api, name).await == Some(3) {
            break;
        }
        assert!(
            t_step.elapsed() < Duration::from_secs(KEDA_STEP_SECS + 30),
            "KEDA's HPA did not raise replicas.min to 3 under load; each trigger's sum in \
             Prometheus, once a second (band: {{target}} x 2 pods x 1.1): [{}]; HPA status: {:?}",
            summary(&readings),
            hpa_status(&hpas, &hpa_name).await
        );
        for r in &mut readings {
            let value = sys.prometheus.query(&r.query).await.ok().and_then(|d| {
                d["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
            });
            r.record(t_step.elapsed(), value);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let first_crossing = summary(&readings);
    let keda_scaled = t_step.elapsed();
    wait_for(
        env,
        name,
        Duration::from_secs(60),
        "3 serving after KEDA's scale",
        |o| {
            serving_memory(o) == Some(3) && o.status.as_ref().map(|s| s.replicas.serving) == Some(3)
        },
    )
    .await;
    let serving3 = t_step.elapsed();
    settle(
        env,
        name,
        3,
        1,
        Duration::from_secs(90),
        "3 serving + 1 warm (backfilled) under KEDA",
    )
    .await;
    eprintln!(
        "[autoscale/keda] load step at 0s: triggers in Prometheus [{}], KEDA's HPA set replicas.min 3 at {:.1}s, 3 serving at {:.1}s, backfilled at {:.1}s",
        first_crossing,
        keda_scaled.as_secs_f64(),
        serving3.as_secs_f64(),
        t_step.elapsed().as_secs_f64()
    );
    let r = finish(lg, &report, Duration::from_secs(KEDA_STEP_SECS + 90)).await;
    assert!(r.sent > 100, "the load reached the engines: {r:?}");
    assert_eq!(
        (r.failed, r.abandoned),
        (0, 0),
        "no failed request: {}",
        r.errors
    );

    // 2. The load is gone: as long as KEDA says 3, there are 3 serving,
    //    although scaleInAfter (10 s) has passed many times over.
    let t_low = Instant::now();
    let mut held = Duration::ZERO;
    while replicas_min(&api, name).await == Some(3) {
        let p = all_pods(env, name).await;
        assert_eq!(
            (with(&p, "serving").len(), with(&p, "draining").len()),
            (3, 0),
            "the operator changed the count KEDA set ({:.1}s after the load): {p:?}",
            t_low.elapsed().as_secs_f64()
        );
        held = t_low.elapsed();
        assert!(
            held < Duration::from_secs(SCALE_DOWN_WINDOW_SECS + 90),
            "KEDA's HPA never scaled down"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The built-in autoscaler would have scaled in about 25 s after the
    // load (30 s averaged readings below the band, then scaleInAfter 10 s).
    assert!(
        held >= Duration::from_secs(30),
        "KEDA held 3 for only {held:?} after the load: the hold proves nothing"
    );
    eprintln!(
        "[autoscale/keda] load stopped: 3 serving held for {:.1}s (KEDA's count; scaleInAfter is {}), then replicas.min {:?}",
        held.as_secs_f64(),
        shape.scale_in_after,
        replicas_min(&api, name).await
    );

    // 3. KEDA lowers the count: one pod drains and goes.
    settle(
        env,
        name,
        2,
        1,
        Duration::from_secs(90),
        "2 serving + 1 warm after KEDA's scale-down",
    )
    .await;
    eprintln!(
        "[autoscale/keda] 2 serving + 1 warm {:.1}s after the load stopped",
        t_low.elapsed().as_secs_f64()
    );
    let o = api.get(name).await.expect("the object");
    let (min_owners, writers) = spec_writers(&o);
    assert!(
        writers.iter().all(|w| !w.starts_with("steward-operator ")),
        "the operator wrote spec: {writers:?}"
    );
    assert!(
        min_owners
            .iter()
            .any(|w| w.starts_with("kube-controller-manager ") && w.ends_with(", scale)")),
        "replicas.min is owned by the HPA's scale update: {min_owners:?}"
    );
    let reason = o
        .status
        .as_ref()
        .and_then(|s| s.autoscaling.last_scale_reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("external"),
        "the last scale says external: {reason}"
    );
    let rescales = hpa_rescales(env, &hpa_name).await;
    assert!(
        rescales.iter().any(|m| m.starts_with("New size: 3"))
            && rescales.iter().any(|m| m.starts_with("New size: 2")),
        "the HPA controller itself rescaled: {rescales:?}"
    );
    let outs = sys.operator.metrics.scale_events("out", "external");
    let ins = sys.operator.metrics.scale_events("in", "external");
    assert!(
        outs >= 1 && ins >= 1,
        "scale events external: out {outs}, in {ins}"
    );
    eprintln!(
        "[autoscale/keda] HPA events {rescales:?}; replicas.min owners {min_owners:?}; spec writers {writers:?}; phase {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    so_api
        .delete(name, &Default::default())
        .await
        .expect("the ScaledObject deletes");
    keda.stop().await;
}
