//! One reconcile pass over one InferenceService: observe from the stores
//! and the object's signal poller (started or updated here, never waited
//! on), decide with the pure modules (`alarm::targets`, `desired`, `plan`),
//! execute the planned writes in their order (see `plan` for why that
//! order), then bring the object's PrometheusRule up to date.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::poller::PollPlan;
use super::quality::{target_of, RunKey, RunRequest, RunState};
use super::rules::RuleTarget;
use super::writes;
use super::{caches_ready, owned_by, Context, ReconcileError};
use crate::alarm;
use crate::children::Parent;
use crate::crd::{labels, InferenceService, QualityStatus};
use crate::desired::{desired, PassInput};
use crate::observe::Observed;
use crate::plan::plan_writes;
use crate::quality::GateSettings;
use crate::revision::revision_of;
use crate::rollout::manual::{self, RolloutView};
use crate::rollout::QualityVerdict;
use crate::route::RouteView;

pub(crate) async fn reconcile(
    obj: &InferenceService,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    if obj.metadata.deletion_timestamp.is_some() {
        // Owner references make the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    caches_ready(ctx).await?;
    let ns = obj
        .namespace()
        .ok_or(ReconcileError::Incomplete("namespace"))?;
    let uid = obj.uid().ok_or(ReconcileError::Incomplete("uid"))?;
    let name = obj.name_any();
    let owner = obj
        .controller_owner_ref(&())
        .ok_or(ReconcileError::Incomplete("owner reference"))?;
    let parent = Parent {
        name: name.clone(),
        namespace: ns.clone(),
        owner,
    };

    // Observe.
    let deployments: Vec<Arc<Deployment>> = ctx.deployments.state_filter(|d| {
        d.metadata.namespace.as_deref() == Some(ns.as_str()) && owned_by(&d.metadata, &uid)
    });
    let pods: Vec<Arc<Pod>> = ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && p.labels().get(labels::SERVICE) == Some(&name)
    });
    let service = ctx
        .services
        .get(&ObjectRef::new(&name).within(&ns))
        .filter(|s| owned_by(&s.metadata, &uid));
    let revision_services = ctx.services.state_filter(|s| {
        s.metadata.namespace.as_deref() == Some(ns.as_str())
            && owned_by(&s.metadata, &uid)
            && s.labels().contains_key(labels::REVISION)
    });
    let mut observed = Observed::from_objects(
        deployments.iter().map(AsRef::as_ref),
        pods.iter().map(AsRef::as_ref),
        service.as_deref(),
        obj.status.as_ref(),
    )
    .with_revision_services(revision_services.iter().map(AsRef::as_ref));
    observed.route =
        super::gateway::observe(&ctx.client, &ctx.gateway, &ctx.routes, &ns, &name, &uid)
            .await
            .map_err(|source| ReconcileError::Read {
                kind: "HTTPRoute",
                name: name.clone(),
                source,
            })?;

    // The user's requests, judged against the status they saw.
    let stored = obj.status.clone().unwrap_or_default();
    let manual = manual::read(
        obj.annotations(),
        obj.spec.rollout.paused,
        RolloutView {
            canary: stored.canary_revision.as_deref(),
            rolled_back: stored.rollout.rolled_back_revision.as_deref(),
        },
    );
    let (quality, quality_status) = quality_gate(ctx, obj, &ns, &name, &observed, &pods);
    // The signals of the revisions worth judging, from the object's poller.
    let targets = alarm::targets(&obj.spec, &observed);
    let signals = ctx.pollers.observe(
        PollPlan {
            namespace: ns.clone(),
            name: name.clone(),
            interval: targets.interval,
            revisions: targets.revisions.clone(),
            queries: targets.queries.clone(),
        },
        &ctx.objects,
    );

    // Who holds the model name (the claims of the watch scope).
    let claims = super::claims_of(&ctx.claims);
    let name_conflict = crate::claims::conflict_of(&ns, &name, &claims);

    // Decide.
    let want = desired(&PassInput {
        parent: &parent,
        spec: &obj.spec,
        generation: obj.metadata.generation,
        observed: &observed,
        template: &ctx.cfg.template,
        now: Timestamp::now(),
        handoff: ctx.cfg.handoff,
        manual: &manual,
        quality: &quality,
        quality_status,
        targets: &targets,
        signals: &signals,
        external: &BTreeMap::new(),
        name_conflict: name_conflict.as_ref(),
    })?;
    let plan = plan_writes(&want, &observed);

    // Act.
    writes::execute(ctx, &ns, &name, &obj.object_ref(&()), plan).await?;
    for reason in &want.rollbacks {
        ctx.metrics.rolled_back(*reason);
    }
    for (direction, reason) in &want.scale_events {
        ctx.metrics.scaled(direction, reason);
    }
    // The SLO alert rules. A spec whose objectives do not compile has no
    // rules; its AlarmQueryInvalid condition already says why.
    if let Ok(file) = crate::rules::rule_file(&ns, &name, &obj.spec, &ctx.cfg.signals.rules) {
        let target = RuleTarget {
            name: &name,
            namespace: &ns,
            owner: &parent.owner,
            file: &file,
        };
        writes::sync_rules(ctx, target).await?;
    }

    let next = if want.settled {
        ctx.cfg.resync
    } else {
        ctx.cfg.progress_requeue
    };
    // A pending hand-off is due sooner than the periodic look.
    let next = want
        .requeue_after
        .map_or(next, |d| next.min(d + Duration::from_millis(100)));
    // Someone else's route is not watched (it lacks the operator's label):
    // look again every recheck, so its deletion lets the operator write its
    // own route soon.
    let next = if matches!(observed.route, RouteView::Foreign { .. }) {
        next.min(ctx.cfg.gateway.recheck)
    } else {
        next
    };
    Ok(Action::requeue(next))
}

/// Asks the runner for the quality gate's answer on the target, when one
/// would replace a stable revision and `analysis.quality` is set: one
/// ready pod of each revision is asked (`controller::quality`). The runner
/// never blocks; a run in progress answers `Running` and the pass looks
/// again soon (`rollout::QUALITY_POLL`).
fn quality_gate(
    ctx: &Context,
    obj: &InferenceService,
    ns: &str,
    name: &str,
    observed: &Observed,
    pods: &[Arc<Pod>],
) -> (QualityVerdict, Option<QualityStatus>) {
    let Some(spec) = obj.spec.rollout.analysis.quality.as_ref() else {
        return (QualityVerdict::NotConfigured, None);
    };
    let target = revision_of(&obj.spec);
    let rollout = &observed.status.rollout;
    let stable = observed
        .status
        .stable_revision
        .as_deref()
        .filter(|s| *s != target && observed.deployments.contains_key(*s));
    let Some(stable) = stable else {
        // Nothing to compare with (first revision, or the target is stable).
        return (QualityVerdict::NotConfigured, None);
    };
    if rollout.rolled_back_revision.as_deref() == Some(target.as_str()) {
        return (QualityVerdict::NotStarted, None);
    }
    let ready_pod = |rev: &str| {
        pods.iter()
            .filter(|p| p.labels().get(labels::REVISION).map(String::as_str) == Some(rev))
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .find_map(|p| target_of(p, rev))
    };
    let (Some(canary), Some(stable_pod)) = (ready_pod(&target), ready_pod(stable)) else {
        return (QualityVerdict::NotStarted, None);
    };
    let step = rollout.step.unwrap_or(1);
    let req = RunRequest {
        key: RunKey {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            canary: target.clone(),
            stable: stable.to_owned(),
            step,
        },
        config_map: spec.golden_set.config_map.clone(),
        settings: GateSettings::from(spec),
        canary,
        stable: stable_pod,
    };
    match ctx.quality.poll(req) {
        RunState::Running => (QualityVerdict::Running, None),
        RunState::Done(report) => (
            QualityVerdict::Decided(report.gate.clone()),
            Some(report.to_status(&target, stable, step)),
        ),
    }
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
