//! The write plan against a small simulation of the API server and the
//! kubelet: writes are applied to the observed state, Deployments get ready
//! pods, and passes repeat until nothing is left to write.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::children::{Parent, TemplateConfig};
use crate::crd::{InferenceServiceSpec, TrafficTarget};
use crate::desired::{desired, PassInput};
use crate::events::Severity;
use crate::observe::{PodView, ServiceView};
use crate::pool::Rotation;
use crate::reason::Reason;
use crate::revision::revision_of;
use crate::rollout::{ManualControl, QualityVerdict};
use crate::route::RouteView;
use crate::signals::{Latest, Signal, Snapshot};

const HANDOFF: Duration = Duration::from_secs(2);

fn parent() -> Parent {
    Parent {
        name: "chat".into(),
        namespace: "ns".into(),
        owner: OwnerReference {
            api_version: "serving.steward.dev/v1alpha1".into(),
            kind: "InferenceService".into(),
            name: "chat".into(),
            uid: "u1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    }
}

/// A spec with `extra`; no canary steps (promote once ready) unless
/// `extra` sets `rollout` itself.
fn spec(extra: &str) -> InferenceServiceSpec {
    let rollout = if extra.contains("rollout:") {
        ""
    } else {
        "rollout: { steps: [] }"
    };
    serde_yaml::from_str(&format!(
        "model: {{ name: m, uri: 'file:///models/m' }}\n{rollout}\n{extra}"
    ))
    .expect("spec")
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("time")
}

/// One pass without Prometheus: the desired state and its writes.
fn pass(spec: &InferenceServiceSpec, obs: &Observed, now: i64) -> (Desired, Vec<Write>) {
    pass_with(spec, obs, now, &Latest::NotConfigured)
}

/// One pass over the given signals.
fn pass_with(
    spec: &InferenceServiceSpec,
    obs: &Observed,
    now: i64,
    signals: &Latest,
) -> (Desired, Vec<Write>) {
    let d = desired(&PassInput {
        parent: &parent(),
        spec,
        generation: Some(1),
        observed: obs,
        template: &TemplateConfig::default(),
        now: at(now),
        handoff: HANDOFF,
        manual: &ManualControl::default(),
        quality: &QualityVerdict::NotConfigured,
        quality_status: None,
        targets: &crate::alarm::targets(spec, obs),
        signals,
        external: &std::collections::BTreeMap::new(),
        name_conflict: None,
    })
    .expect("desired");
    let w = plan_writes(&d, obs);
    (d, w)
}

/// What the API server would show after the writes, and what the kubelet
/// does by `now`: Deployments get their pods (ready at once, labelled
/// serving by the template), extra pods go.
fn apply(obs: &mut Observed, writes: &[Write], now: i64) {
    for w in writes {
        match w {
            Write::ApplyDeployment { object, .. } => {
                let rev = object.metadata.labels.as_ref().expect("labels")
                    [crate::crd::labels::REVISION]
                    .clone();
                let replicas = object.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let created = obs.deployments.get(&rev).and_then(|d| d.created);
                obs.deployments.insert(
                    rev.clone(),
                    DeploymentView {
                        revision: rev,
                        replicas,
                        applied_hash: applied_hash(&object.metadata).map(str::to_owned),
                        created: created.or(Some(at(now))),
                        deadline_exceeded: None,
                    },
                );
            }
            Write::ScaleDeployment { name, replicas } => {
                let d = obs
                    .deployments
                    .values_mut()
                    .find(|d| deployment_name("chat", &d.revision) == *name)
                    .expect("scaled deployment exists");
                d.replicas = *replicas;
            }
            Write::ApplyService(svc) => {
                let view = ServiceView {
                    applied_hash: applied_hash(&svc.metadata).map(str::to_owned),
                };
                let rev = svc
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(crate::crd::labels::REVISION));
                match rev {
                    Some(rev) => {
                        obs.revision_services.insert(rev.clone(), view);
                    }
                    None => obs.service = Some(view),
                }
            }
            Write::ApplyRoute(r) => {
                obs.route = RouteView::Owned {
                    applied_hash: crate::route::hash_of(r).map(str::to_owned),
                    backends: crate::route::backend_weights(r),
                };
            }
            Write::DeleteService { name } => obs
                .revision_services
                .retain(|rev, _| revision_service_name("chat", rev) != *name),
            Write::LabelPod(c) => {
                if let Some(p) = obs.pods.iter_mut().find(|p| p.name == c.pod) {
                    p.rotation = Some(c.rotation);
                }
            }
            Write::Status(s) => obs.status = (**s).clone(),
            Write::DeleteDeployment { name } => obs
                .deployments
                .retain(|_, d| deployment_name("chat", &d.revision) != *name),
            Write::RemoveAnnotations(_) | Write::Event(_) => {}
        }
    }
    kubelet(obs, now);
}

fn kubelet(obs: &mut Observed, now: i64) {
    let sizes: BTreeMap<String, i32> = obs
        .deployments
        .values()
        .map(|d| (d.revision.clone(), d.replicas))
        .collect();
    obs.pods.retain(|p| {
        let want = sizes.get(&p.revision).copied().unwrap_or(0);
        let idx: i32 = p
            .name
            .rsplit('-')
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        idx < want
    });
    for (rev, n) in sizes {
        for i in 0..n {
            let name = format!("{rev}-{i}");
            if !obs.pods.iter().any(|p| p.name == name) {
                obs.pods.push(PodView {
                    name,
                    revision: rev.clone(),
                    rotation: Some(Rotation::Serving),
                    ready: true,
                    ready_since: Some(at(now)),
                    terminating: false,
                    problem: None,
                    draining_since: None,
                });
            }
        }
    }
    obs.pods.sort_by(|a, b| a.name.cmp(&b.name));
}

/// Runs passes one second apart until one plans no writes; returns every
/// pass's writes and the time after.
fn converge(
    spec: &InferenceServiceSpec,
    obs: &mut Observed,
    mut now: i64,
) -> (Vec<Vec<Write>>, i64) {
    let mut log = Vec::new();
    for _ in 0..20 {
        let (d, writes) = pass(spec, obs, now);
        if writes.is_empty() && d.requeue_after.is_none() {
            return (log, now);
        }
        apply(obs, &writes, now);
        log.push(writes);
        now += 1;
    }
    panic!("no convergence in 20 passes: last writes {:?}", log.last());
}

fn traffic_of(w: &[Write]) -> Option<Vec<TrafficTarget>> {
    w.iter().find_map(|w| match w {
        Write::Status(s) => Some(s.traffic.clone()),
        _ => None,
    })
}

#[test]
fn a_converged_object_plans_no_writes() {
    let spec = spec("replicas: { min: 2, warm: 1 }");
    let mut obs = Observed::default();
    let (log, now) = converge(&spec, &mut obs, 100);
    assert!(!log.is_empty());
    assert_eq!(obs.status.phase, crate::crd::Phase::Ready);
    assert_eq!(obs.status.serving_warm.as_deref(), Some("2/1"));
    // Later passes, at any time, still plan nothing.
    for later in [now, now + 1, now + 3600] {
        let (_, writes) = pass(&spec, &obs, later);
        assert!(writes.is_empty(), "at {later}: {writes:?}");
    }
}

/// The weights of a pass's HTTPRoute write, by Service name.
fn route_weights(w: &[Write]) -> Option<Vec<(String, i64)>> {
    w.iter().find_map(|w| match w {
        Write::ApplyRoute(r) => Some(crate::route::backend_weights(r)),
        _ => None,
    })
}

/// Every pass that writes new weights to status writes the same weights
/// to the HTTPRoute, and a revision's Service exists before the route
/// names it and goes only after the route stopped naming it.
#[test]
fn the_route_follows_status_traffic_in_the_same_pass_through_a_rollout() {
    let v1 = spec("replicas: { min: 2 }");
    let mut obs = Observed {
        route: RouteView::Absent,
        ..Observed::default()
    };
    let (_, now) = converge(&v1, &mut obs, 100);
    let r1 = revision_of(&v1);
    let svc = |rev: &str| revision_service_name("chat", rev);
    assert_eq!(obs.revision_services.keys().collect::<Vec<_>>(), [&r1]);
    let (_, writes) = pass(&v1, &obs, now);
    assert!(writes.is_empty(), "converged with a route: {writes:?}");

    let v2 = spec("replicas: { min: 2 }\nengine: { maxBatchTokens: 4096 }");
    let r2 = revision_of(&v2);
    let mut named = Vec::new();
    for now in now..now + 40 {
        let (d, writes) = pass(&v2, &obs, now);
        if writes.is_empty() && d.requeue_after.is_none() {
            break;
        }
        if let Some(traffic) = traffic_of(&writes).filter(|t| *t != obs.status.traffic) {
            let route = route_weights(&writes).expect("new weights without a route write");
            for t in &traffic {
                let w = route.iter().find(|(n, _)| *n == svc(&t.revision));
                assert_eq!(
                    w.map(|w| w.1),
                    Some(i64::from(t.weight)),
                    "{route:?} vs {traffic:?}"
                );
            }
        }
        apply(&mut obs, &writes, now);
        if let RouteView::Owned { .. } = obs.route {
            for rev in obs.deployments.keys() {
                let in_route =
                    route_weights(&writes).is_some_and(|r| r.iter().any(|(n, _)| *n == svc(rev)));
                if in_route {
                    assert!(
                        obs.revision_services.contains_key(rev),
                        "{rev} routed without a Service"
                    );
                }
            }
        }
        if let Some(r) = route_weights(&writes) {
            named.push(r);
        }
    }
    assert_eq!(obs.status.stable_revision.as_deref(), Some(r2.as_str()));
    // The new revision came into the route at 0 before it took the traffic,
    // and the old one left it (with its Service) once at zero.
    assert!(
        named
            .iter()
            .any(|r| r.contains(&(svc(&r2), 0)) && r.contains(&(svc(&r1), 100))),
        "{named:?}"
    );
    assert_eq!(named.last(), Some(&vec![(svc(&r2), 100)]), "{named:?}");
    assert_eq!(obs.revision_services.keys().collect::<Vec<_>>(), [&r2]);
}

/// A canary at a step: two backendRefs, 100 - N and N.
#[test]
fn a_canary_step_splits_the_route() {
    let v1 = spec("replicas: { min: 1 }\nrollout: { steps: [ { weight: 30, pause: 1h } ] }");
    let mut obs = Observed {
        route: RouteView::Absent,
        ..Observed::default()
    };
    let (_, now) = converge(&v1, &mut obs, 100);
    let v2 = spec(
        "replicas: { min: 1 }\nrollout: { steps: [ { weight: 30, pause: 1h } ] }\nengine: { maxBatchTokens: 4096 }",
    );
    let (r1, r2) = (revision_of(&v1), revision_of(&v2));
    for now in now..now + 20 {
        let (_, writes) = pass(&v2, &obs, now);
        apply(&mut obs, &writes, now);
        if obs.status.canary_weight == Some(30) {
            break;
        }
    }
    assert_eq!(obs.status.canary_weight, Some(30), "{:?}", obs.status);
    let RouteView::Owned { applied_hash, .. } = &obs.route else {
        panic!("no route: {:?}", obs.route);
    };
    let backends = crate::route::backends("chat", &obs.status.traffic, [r1.as_str(), r2.as_str()]);
    let expected = crate::route::http_route(&parent(), &v2, &backends);
    assert_eq!(applied_hash.as_deref(), crate::route::hash_of(&expected));
    assert_eq!(
        backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [70, 30]
    );
}

/// Someone else's HTTPRoute of the same name is never written, and the
/// Services are still kept.
#[test]
fn a_foreign_route_is_left_alone() {
    let v1 = spec("");
    let mut obs = Observed {
        route: RouteView::Foreign {
            managers: vec!["kubectl-edit".into()],
        },
        ..Observed::default()
    };
    let (log, _) = converge(&v1, &mut obs, 100);
    assert!(log
        .iter()
        .flatten()
        .all(|w| !matches!(w, Write::ApplyRoute(_))));
    assert_eq!(obs.revision_services.len(), 1);
    let c = obs
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::route::CONDITION)
        .expect("GatewayRoute condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RouteNotOwned")
    );
}

#[test]
fn writes_come_in_the_documented_order() {
    let spec = spec("");
    let target = revision_of(&spec);
    let object = crate::children::revision_deployment(
        &parent(),
        &spec,
        &target,
        2,
        &TemplateConfig::default(),
    )
    .expect("deployment");
    let view = |rev: &str, replicas| DeploymentView {
        revision: rev.into(),
        replicas,
        applied_hash: Some("h".into()),
        created: None,
        deadline_exceeded: None,
    };
    let size_only = |replicas| DesiredDeployment {
        replicas,
        object: None,
    };
    let obs = Observed {
        deployments: [view("grown", 1), view("old", 2), view("ancient", 0)]
            .into_iter()
            .map(|d| (d.revision.clone(), d))
            .collect(),
        revision_services: BTreeMap::from([(
            "gone".into(),
            ServiceView {
                applied_hash: Some("h".into()),
            },
        )]),
        route: RouteView::Absent,
        ..Observed::default()
    };
    let grown_svc = crate::children::revision_service(&parent(), &spec, "grown");
    let d = Desired {
        name: "chat".into(),
        deployments: BTreeMap::from([
            (
                target.clone(),
                DesiredDeployment {
                    replicas: 2,
                    object: Some(Box::new(object)),
                },
            ),
            ("grown".into(), size_only(3)),
            ("old".into(), size_only(0)),
        ]),
        service: Box::new(crate::children::service(&parent(), &spec)),
        revision_services: BTreeMap::from([("grown".into(), Box::new(grown_svc))]),
        route: Some(Box::new(crate::route::http_route(
            &parent(),
            &spec,
            &crate::route::backends("chat", &[], ["grown"]),
        ))),
        rotation: vec![RotationChange {
            pod: "p".into(),
            rotation: Rotation::Warm,
        }],
        status: Box::default(),
        prune: vec!["ancient".into()],
        events: vec![Note {
            severity: Severity::Normal,
            reason: Reason::RevisionPruned,
            action: "PruneRevision",
            message: "m".into(),
        }],
        consumed: vec![crate::rollout::manual::ABORT],
        rollbacks: Vec::new(),
        scale_events: Vec::new(),
        settled: false,
        requeue_after: None,
    };
    let mut d = d;
    d.status.phase = crate::crd::Phase::Progressing;
    let order: Vec<(&str, &str)> = plan_writes(&d, &obs)
        .iter()
        .map(|w| (w.kind(), w.verb()))
        .collect();
    assert_eq!(
        order,
        [
            ("Deployment", "apply"), // grow: the target (a hex name), new
            ("Deployment", "scale"), // grow: grown 1 -> 3
            ("Service", "apply"),    // the Service
            ("Service", "apply"),    // grown's own Service
            ("Pod", "label"),        // rotation
            ("InferenceService/status", "apply"),
            ("HTTPRoute", "apply"),           // the same weights as status
            ("InferenceService", "annotate"), // manual requests consumed
            ("Deployment", "scale"),          // shrink: old 2 -> 0
            ("Deployment", "delete"),         // prune
            ("Service", "delete"),            // gone's Service, out of the route
            ("Event", "create"),
        ]
    );
}

/// Issue 13, fault 10: status (weights) and the old revision's scale-down
/// were written in one pass, so a router that saw the old pods terminate
/// before the new weights answered 503. Now the old revision shrinks only
/// in a later pass, a hand-off after its weight fell, and weight rises only
/// onto pods in rotation for the hand-off.
#[test]
fn traffic_moves_before_old_pods_leave_and_after_new_pods_serve() {
    let v1 = spec("replicas: { min: 2 }");
    let mut obs = Observed::default();
    let (_, start) = converge(&v1, &mut obs, 100);
    let r1 = revision_of(&v1);
    let v2 = spec("replicas: { min: 2 }\nengine: { maxBatchTokens: 4096 }");
    let r2 = revision_of(&v2);

    let mut weight_fell_at = None;
    let mut shrunk_at = None;
    // One pass a second, for at most 30 s.
    for now in start..start + 30 {
        let (d, writes) = pass(&v2, &obs, now);
        if writes.is_empty() && d.settled {
            break;
        }
        if let Some(traffic) = traffic_of(&writes) {
            if traffic[0].revision == r2 && weight_fell_at.is_none() {
                weight_fell_at = Some(now);
                // Rising side: every r2 pod serving and ready for the hand-off.
                let serving: Vec<&PodView> = obs
                    .pods_of(&r2)
                    .filter(|p| p.ready && p.rotation == Some(Rotation::Serving))
                    .collect();
                assert_eq!(serving.len(), 2, "weight rose onto {serving:?}");
                for p in serving {
                    let since = p.ready_since.expect("ready time");
                    assert!(
                        at(now).duration_since(since) >= HANDOFF.try_into().expect("fits"),
                        "weight rose onto {} ready for less than the hand-off",
                        p.name
                    );
                }
            }
        }
        let shrinks_r1 = writes.iter().any(|w| {
            matches!(w, Write::ScaleDeployment { name, replicas: 0 } if *name == deployment_name("chat", &r1))
        });
        if shrinks_r1 {
            assert_eq!(
                obs.status.traffic[0].revision, r2,
                "r1 shrank before (or in the pass that) its weight fell"
            );
            shrunk_at.get_or_insert(now);
        }
        apply(&mut obs, &writes, now);
    }
    let (fell, shrunk) = (
        weight_fell_at.expect("traffic moved to r2"),
        shrunk_at.expect("r1 went to zero"),
    );
    assert!(
        shrunk - fell >= 2,
        "r1 shrank {}s after its weight fell, before the hand-off",
        shrunk - fell
    );
    assert_eq!(obs.status.phase, crate::crd::Phase::Ready);
    assert_eq!(obs.deployments[&r1].replicas, 0);
    assert!(obs.pods_of(&r1).next().is_none());
}

/// A snapshot taken at `at` in which `revision` shows TTFT p99 `ttft`
/// seconds over 100 requests and nothing else amiss.
fn snapshot(at_s: i64, revision: &str, ttft: f64) -> Latest {
    let one = |v: f64| -> crate::signals::Series { Ok([(revision.to_owned(), v)].into()) };
    let mut signals: BTreeMap<Signal, crate::signals::Series> = Signal::ALL
        .iter()
        .map(|s| (*s, Ok(BTreeMap::new())))
        .collect();
    signals.insert(Signal::TtftP99, one(ttft));
    signals.insert(Signal::Requests, one(100.0));
    for s in [
        Signal::ItlP99,
        Signal::ServerErrorRatio,
        Signal::KvCacheUsage,
    ] {
        signals.insert(s, one(0.0));
    }
    Latest::Taken(std::sync::Arc::new(Snapshot {
        taken_at: at(at_s),
        window: Duration::from_secs(30),
        signals,
        queries: BTreeMap::new(),
        pod_loads: BTreeMap::new(),
    }))
}

fn alarm_events(w: &[Write]) -> Vec<(Reason, String)> {
    w.iter()
        .filter_map(|w| match w {
            Write::Event(n) if matches!(n.reason, Reason::AlarmFiring | Reason::AlarmResolved) => {
                Some((n.reason, n.message.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_leaf_that_starts_firing_reaches_status_and_one_event_and_steady_signals_plan_no_writes() {
    let spec = spec("slo: { ttftP99: 600ms }\nrollout: { steps: [], analysis: { interval: 2s } }");
    let mut obs = Observed::default();
    let (_, now) = converge(&spec, &mut obs, 100);
    let stable = obs
        .status
        .stable_revision
        .clone()
        .expect("a stable revision");
    let leaf = |o: &Observed| {
        o.status
            .alarms
            .iter()
            .find(|a| a.revision == stable && a.name == "ttftP99")
            .map(|a| (a.state, a.value.clone()))
    };

    // Fast: Ok, the column shows it; the first pass writes status.
    let fast = snapshot(now, &stable, 0.2);
    let (d, w) = pass_with(&spec, &obs, now, &fast);
    assert_eq!(
        d.requeue_after,
        Some(Duration::from_secs(4)),
        "two intervals"
    );
    assert!(alarm_events(&w).is_empty(), "{w:?}");
    apply(&mut obs, &w, now);
    assert_eq!(
        leaf(&obs),
        Some((crate::crd::AlarmState::Ok, Some("200ms".into())))
    );
    assert_eq!(obs.status.ttft_p99.as_deref(), Some("200ms"));
    let (_, w) = pass_with(&spec, &obs, now + 1, &fast);
    assert!(w.is_empty(), "the same signals plan nothing: {w:?}");

    // Slow: Firing at once (no `for:`), one Warning event naming it.
    let slow = snapshot(now + 2, &stable, 1.1);
    let (_, w) = pass_with(&spec, &obs, now + 2, &slow);
    let told = alarm_events(&w);
    assert_eq!(told.len(), 1, "{w:?}");
    assert_eq!(told[0].0, Reason::AlarmFiring);
    assert!(told[0].1.contains(&stable) && told[0].1.contains("ttftP99"));
    apply(&mut obs, &w, now + 2);
    assert_eq!(
        leaf(&obs).map(|l| l.0),
        Some(crate::crd::AlarmState::Firing)
    );
    let (_, w) = pass_with(&spec, &obs, now + 3, &slow);
    assert!(
        w.is_empty(),
        "still firing: no second event, no write: {w:?}"
    );

    // The snapshot goes stale (two intervals): unknown, never Ok, and the
    // leaf is told to have stopped firing.
    let (_, w) = pass_with(&spec, &obs, now + 7, &slow);
    let told = alarm_events(&w);
    assert_eq!(told.len(), 1, "{w:?}");
    assert_eq!(told[0].0, Reason::AlarmResolved);
    apply(&mut obs, &w, now + 7);
    assert_eq!(
        leaf(&obs).map(|l| l.0),
        Some(crate::crd::AlarmState::NoData)
    );
    assert_eq!(obs.status.ttft_p99, None, "blank, never 0");
}

/// A fresh low-load snapshot of `revision` with each pod's own load.
fn low_load(at_s: i64, revision: &str, pods: &[(&str, f64)]) -> Latest {
    let one = |v: f64| -> crate::signals::Series { Ok([(revision.to_owned(), v)].into()) };
    let mut signals: BTreeMap<Signal, crate::signals::Series> = Signal::ALL
        .iter()
        .map(|s| (*s, Ok(BTreeMap::new())))
        .collect();
    signals.insert(Signal::ExecutorUtilization, one(0.1));
    signals.insert(Signal::KvCacheUsage, one(0.2));
    signals.insert(Signal::QueueWaitingPerPod, one(0.0));
    Latest::Taken(std::sync::Arc::new(Snapshot {
        taken_at: at(at_s),
        window: Duration::from_secs(30),
        signals,
        queries: BTreeMap::new(),
        pod_loads: pods.iter().map(|(p, v)| ((*p).to_owned(), *v)).collect(),
    }))
}

#[test]
fn scale_in_drains_the_pod_prometheus_reads_as_least_loaded() {
    let spec = spec(
        "replicas: { min: 1, max: 3 }\nautoscaling: { scaleInAfter: 10s }\nrollout: { steps: [], analysis: { interval: 2s } }",
    );
    let mut obs = Observed::default();
    let (_, mut now) = converge(&spec, &mut obs, 100);
    let rev = obs.status.stable_revision.clone().expect("stable");
    // Three serving pods, as after a scale-out.
    obs.status.autoscaling.serving = Some(3);
    let (_, mut now) = {
        let (_, w) = pass(&spec, &obs, now);
        apply(&mut obs, &w, now);
        now += 1;
        converge(&spec, &mut obs, now)
    };
    assert_eq!(obs.pods_of(&rev).count(), 3);
    // The middle pod is the least loaded: not the last by name.
    let quiet = format!("{rev}-1");
    let loads = [
        (format!("{rev}-0"), 0.30),
        (quiet.clone(), 0.05),
        (format!("{rev}-2"), 0.40),
    ];
    let loads: Vec<(&str, f64)> = loads.iter().map(|(p, v)| (p.as_str(), *v)).collect();
    let end = now + 30;
    let drained = loop {
        assert!(now < end, "no scale-in within the window");
        let (_, w) = pass_with(&spec, &obs, now, &low_load(now, &rev, &loads));
        let to_drain = w.iter().find_map(|w| match w {
            Write::LabelPod(c) if c.rotation == Rotation::Draining => Some(c.pod.clone()),
            _ => None,
        });
        apply(&mut obs, &w, now);
        if let Some(p) = to_drain {
            break p;
        }
        now += 2;
    };
    assert_eq!(drained, quiet);
}
