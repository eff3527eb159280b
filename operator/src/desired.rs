//! One pass's decisions, composed into the state the object should have.
//!
//! Pure: from the spec, what is observed (children and stored status) and
//! the latest signal snapshot it runs `autoscale` (serving and warm counts)
//! → `alarm` (a verdict per revision, `status.alarms`, the signal
//! conditions) → `rollout` (revisions, sizes, traffic, memory; it gets the
//! verdicts) → `pool` (rotation labels) → `status` (the value) →
//! `children` (the objects) → `events` (what people are told), and
//! returns a [`Desired`] that `plan::plan_writes` compares with what is
//! observed. The controller only gathers the inputs and executes the plan.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::alarm::{self, AnalysisInput, Targets};
use crate::autoscale::{self, AutoscaleInput, PodState, Signals};
use crate::children::{self, Parent, TemplateConfig, UnsupportedUri};
use crate::claims::{self, ClaimStatus, NameConflict};
use crate::crd::{InferenceServiceSpec, InferenceServiceStatus, QualityStatus};
use crate::events::{self, Note};
use crate::observe::{self, Observed};
use crate::pool::{self, RotationChange};
use crate::reason::Reason;
use crate::revision::revision_of;
use crate::rollout::manual::{self, ManualControl};
use crate::rollout::{self, Decision, Progress, QualityVerdict, RolloutInput};
use crate::route::{self, RouteStatus, RouteView};
use crate::signals::{Latest, Reading};
use crate::status::{self, StatusInput};

/// What one pass starts from.
#[derive(Clone, Debug)]
pub struct PassInput<'a> {
    /// Name, namespace and owner reference of the InferenceService.
    pub parent: &'a Parent,
    /// Its spec.
    pub spec: &'a InferenceServiceSpec,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// Its children and stored status.
    pub observed: &'a Observed,
    /// Pod template settings of this operator.
    pub template: &'a TemplateConfig,
    /// The time of this pass.
    pub now: Timestamp,
    /// The traffic hand-off time (see `rollout`).
    pub handoff: Duration,
    /// The user's requests (`rollout::manual::read`).
    pub manual: &'a ManualControl,
    /// The quality gate's answer for the target.
    pub quality: &'a QualityVerdict,
    /// The quality gate's results of this pass, for `status.quality`.
    pub quality_status: Option<QualityStatus>,
    /// What the object's signal poller covers (`alarm::targets` of this
    /// spec and observation).
    pub targets: &'a Targets,
    /// The poller's latest snapshot (`Latest::NotConfigured` without a
    /// Prometheus).
    pub signals: &'a Latest,
    /// Readings supplied by other parts (the quality gate, later), by leaf.
    pub external: &'a BTreeMap<String, Reading>,
    /// The older InferenceService that holds this one's model name, if
    /// any (`claims::conflict_of`).
    pub name_conflict: Option<&'a NameConflict>,
}

/// One revision's Deployment as it should be.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredDeployment {
    /// Its size.
    pub replicas: i32,
    /// The whole object, for the current spec's revision. An older
    /// revision's template cannot be rebuilt from the current spec, so only
    /// its size is known.
    pub object: Option<Box<Deployment>>,
}

/// The state the object and its children should have after this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The InferenceService's name (Deployment names derive from it).
    pub name: String,
    /// Deployments by revision; a revision missing here and present in
    /// `prune` is deleted.
    pub deployments: BTreeMap<String, DesiredDeployment>,
    /// The Service selecting every revision's serving pods.
    pub service: Box<Service>,
    /// The Service of each revision with pods or traffic, by revision; an
    /// observed one missing here is deleted with the prunes.
    pub revision_services: BTreeMap<String, Box<Service>>,
    /// The HTTPRoute, where the Gateway API is served and the route is this
    /// object's to write (`route`).
    pub route: Option<Box<serde_json::Value>>,
    /// Pods whose rotation label changes.
    pub rotation: Vec<RotationChange>,
    /// The status.
    pub status: Box<InferenceServiceStatus>,
    /// Retired revisions whose Deployments are deleted.
    pub prune: Vec<String>,
    /// What to tell people.
    pub events: Vec<Note>,
    /// Manual request annotations acted on (or ignored) this pass, to
    /// remove after status is written.
    pub consumed: Vec<&'static str>,
    /// Rollbacks decided this pass, by reason (for the metric).
    pub rollbacks: Vec<Reason>,
    /// Serving-count changes of this pass, as (direction, reason) labels
    /// of `steward_operator_scale_events_total`.
    pub scale_events: Vec<(&'static str, &'static str)>,
    /// True when nothing is under way (the next look is the resync).
    pub settled: bool,
    /// When a time-based decision is due, if one is pending.
    pub requeue_after: Option<Duration>,
}

/// Decides the whole pass.
pub fn desired(input: &PassInput<'_>) -> Result<Desired, UnsupportedUri> {
    let obs = input.observed;
    let target = revision_of(input.spec);
    // The autoscaler sizes the revision that holds the traffic (the first
    // one while it starts) from its signals; a canary gets the same plan.
    let scaled = obs
        .status
        .stable_revision
        .clone()
        .unwrap_or_else(|| target.clone());
    let signals = Signals::from_latest(input.signals, input.now, input.targets.interval, &scaled);
    // During a canary the count follows the load of both revisions: the
    // canary's pods carry part of it (docs/operator.md, "During a canary").
    let serving_ready =
        |rev: &str| {
            observe::count(obs.pods_of(rev).filter(|p| {
                p.ready && !p.terminating && p.rotation == Some(pool::Rotation::Serving)
            }))
        };
    let signals = match (&signals, obs.status.canary_revision.as_deref()) {
        (Signals::Fresh(stable), Some(canary)) if canary != scaled => {
            match Signals::from_latest(input.signals, input.now, input.targets.interval, canary) {
                Signals::Fresh(c) => Signals::Fresh(autoscale::with_canary(
                    stable,
                    serving_ready(&scaled),
                    &c,
                    serving_ready(canary),
                )),
                Signals::Unavailable(_) => signals,
            }
        }
        _ => signals,
    };
    // Per-pod loads only from a fresh snapshot: stale ones are unknown.
    let fresh = input.signals.fresh(input.now, input.targets.interval);
    let pods: Vec<PodState> = obs
        .pods_of(&scaled)
        .map(|p| PodState {
            name: p.name.clone(),
            rotation: p.rotation,
            ready: p.ready,
            terminating: p.terminating,
            draining_since: p.draining_since,
            load: fresh.and_then(|s| s.pod_load(&p.name)),
            unschedulable: p
                .problem
                .as_ref()
                .filter(|pr| pr.reason == "Unschedulable")
                .map(|pr| pr.message.clone()),
        })
        .collect();
    let scaling = autoscale::autoscale(&AutoscaleInput {
        revision: &scaled,
        replicas: &input.spec.replicas,
        autoscaling: &input.spec.autoscaling,
        signals: &signals,
        pods: &pods,
        memory: &obs.status.autoscaling,
        now: input.now,
        drain_delay: input.handoff,
    });
    let scale = scaling.plan;
    // Judge against the stable revision that holds the traffic now (the
    // baseline of relative leaves), before the rollout decides.
    let analysis = alarm::analyse(&AnalysisInput {
        spec: input.spec,
        targets: input.targets,
        stable: obs.status.stable_revision.as_deref(),
        signals: input.signals,
        external: input.external,
        previous: &obs.status,
        generation: input.generation,
        now: input.now,
    });
    let plan = rollout::decide(&RolloutInput {
        target: &target,
        scale,
        observed: obs,
        now: input.now,
        handoff: input.handoff,
        steps: &input.spec.rollout.steps,
        unknown_timeout: input.spec.rollout.analysis.unknown_timeout.map(|d| d.get()),
        manual: input.manual,
        quality: input.quality,
        verdicts: &analysis.verdicts,
    });
    let mut status = status::compute(&StatusInput {
        plan: &plan,
        observed: obs,
        generation: input.generation,
        now: Time(input.now),
        quality: input.quality_status.clone(),
    });
    analysis.write_into(&mut status);
    status.utilization = signals.utilization_text();
    status.selector = Some(children::serving_selector(&input.parent.name));
    autoscale::report::write_into(
        &scaling,
        &mut status,
        &obs.status,
        input.generation,
        &Time(input.now),
    );
    // A losing claim on the model name gets no traffic from the router:
    // never Ready (before the transitions, so events follow it).
    let now = Time(input.now);
    claims::write_into(
        input.name_conflict,
        &ClaimStatus {
            model: &input.spec.model.name,
            previous: &obs.status,
            generation: input.generation,
            now: &now,
        },
        &mut status,
    );
    // The revisions' Services and the HTTPRoute over them (`route`).
    let running = plan
        .revisions
        .iter()
        .filter(|(_, p)| p.replicas > 0)
        .map(|(rev, _)| rev.as_str());
    let backends = route::backends(&input.parent.name, &plan.traffic, running);
    let revision_services = backends
        .iter()
        .map(|b| {
            let svc = children::revision_service(input.parent, input.spec, &b.revision);
            (b.revision.clone(), Box::new(svc))
        })
        .collect();
    let route_input = RouteStatus {
        namespace: &input.parent.namespace,
        name: &input.parent.name,
        spec: input.spec,
        previous: &obs.status,
        generation: input.generation,
        now: &now,
    };
    route::write_into(&obs.route, &route_input, &mut status);
    let http_route = match &obs.route {
        RouteView::Absent | RouteView::Owned { .. } => Some(Box::new(route::http_route(
            input.parent,
            input.spec,
            &backends,
        ))),
        RouteView::Unavailable | RouteView::Foreign { .. } => None,
    };
    let rotation = plan
        .revisions
        .iter()
        .filter_map(|(rev, p)| {
            let leaving = (*rev == scaled)
                .then_some(scaling.drain.as_deref())
                .flatten();
            p.pool
                .map(|scale| pool::assign_leaving(obs, rev, scale, leaving))
        })
        .flatten()
        .collect();
    let mut deployments = BTreeMap::new();
    for (rev, p) in &plan.revisions {
        let object = if *rev == target {
            let d = children::revision_deployment(
                input.parent,
                input.spec,
                rev,
                p.replicas,
                input.template,
            )?;
            Some(Box::new(d))
        } else {
            None
        };
        deployments.insert(
            rev.clone(),
            DesiredDeployment {
                replicas: p.replicas,
                object,
            },
        );
    }
    let transitions = status::transitions(&obs.status, &status);
    let mut notes = events::for_manual(input.manual);
    notes.extend(events::for_decisions(&plan.decisions));
    notes.extend(events::for_transitions(&transitions));
    notes.extend(events::for_alarms(&analysis.transitions));
    notes.extend(autoscale::report::notes(&scaling, &obs.status));
    notes.extend(claims::notes(input.name_conflict, &obs.status));
    notes.extend(route::notes(&obs.route, &route_input));
    // A promotion asked for before the target is ready waits for it with
    // its annotation in place.
    let consumed = input
        .manual
        .consumed
        .iter()
        .copied()
        .filter(|k| !(plan.promote_pending && *k == manual::PROMOTE))
        .collect();
    let rollbacks = plan
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::RolledBack { cause, .. } => Some(cause.reason()),
            _ => None,
        })
        .collect();
    Ok(Desired {
        name: input.parent.name.clone(),
        deployments,
        service: Box::new(children::service(input.parent, input.spec)),
        revision_services,
        route: http_route,
        rotation,
        status: Box::new(status),
        prune: plan.prune,
        events: notes,
        consumed,
        rollbacks,
        scale_events: scaling
            .event
            .iter()
            .map(|e| (e.direction.as_str(), e.cause.as_str()))
            .collect(),
        settled: plan.progress == Progress::Settled,
        requeue_after: rollout::earliest(
            rollout::earliest(plan.requeue_after, analysis.requeue_after),
            scaling.requeue_after,
        ),
    })
}
