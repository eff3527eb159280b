//! Phase 9 (issue 11 scenario 7): the leader killed in the middle of a
//! step's pause, with real signals and load. The in-process operator hands
//! the object over to two `steward-operator` processes with leader
//! election (Lease of 4 s, renewed every 1 s, as in `--test restart`); a
//! canary walks one step of 30% with a 16 s pause; 6 s into the pause the
//! leader gets SIGKILL (the Lease is not released).
//!
//! Asserted: the standby takes the Lease before the pause ends; the step,
//! its weight and `status.rollout.stepStartedAt` never change until the
//! promotion; the promotion lands when the original pause ends (see
//! [`EARLY`] and [`LATE`]), not a pause after the takeover; exactly one
//! `RevisionPromoted` event for the canary; no rollback; the load through
//! the router sees 0 failed requests and 0 cut streams.
//!
//! `--test restart` covers the rest of leader changes (a revision change
//! with stand-in engines, the killed replica back as a standby, hung and
//! skewed leaders); the chaos suite kills the leader under load outside a
//! canary.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use steward_e2e::parts::{lease_holder, OperatorOptions, OperatorProc};
use steward_e2e::testing::eventually;
use steward_operator::crd::InferenceService;

use super::{
    canary_weight, load, no_loss, promoted_from, revision_with, status_of, watch_steps, System,
    NAME,
};
use crate::support::apply;

/// The step's pause.
const PAUSE: Duration = Duration::from_secs(16);
/// When in the pause the leader is killed.
const KILL_AFTER: Duration = Duration::from_secs(6);
/// `--lease-duration`, `--lease-renew`.
const LEASE: (Duration, Duration) = (Duration::from_secs(4), Duration::from_secs(1));
/// How much earlier than the pause the promotion may be seen:
/// `stepStartedAt` is written with whole seconds (up to 1 s before the
/// write), and status is read every 100 ms.
const EARLY: Duration = Duration::from_millis(1500);
/// How much later: the new leader requeues the object for the pause's
/// end; its poller has a fresh snapshot long before (one interval, 2 s,
/// after the takeover); then the pass and its status write on a shared
/// 2-core machine. A pause restarted by the new leader would end at
/// least KILL_AFTER + (lease − renew) = 9 s late (the standby cannot take
/// the Lease sooner than a lease after the last renewal), so LATE must stay
/// below that.
const LATE: Duration = Duration::from_secs(5);
/// How long the phase's load runs: past the promotion and the drain.
const LOAD_SECS: u64 = 32;

fn replica(sys: &System, id: &str) -> OperatorProc {
    OperatorProc::start(OperatorOptions {
        kubeconfig: sys.env.kubeconfig.clone(),
        identity: id.into(),
        lease_namespace: sys.env.ns.clone(),
        namespace: Some(sys.env.ns.clone()),
        lease: LEASE,
        prometheus_url: Some(sys.prometheus.url()),
        log: sys.dir.join(format!("operator-{id}.log")),
    })
    .expect("steward-operator starts")
}

async fn holder(sys: &System) -> Option<String> {
    lease_holder(&sys.env.client, &sys.env.ns, "steward-operator").await
}

/// `RevisionPromoted` events naming `revision`, each counted with its
/// repeats (a second promotion by another replica is another event; by the
/// same one, a repeat).
async fn promotions_of(sys: &System, revision: &str) -> u64 {
    let events: Api<Event> = Api::namespaced(sys.env.client.clone(), &sys.env.ns);
    let list = events
        .list(&ListParams::default())
        .await
        .expect("events list");
    list.items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RevisionPromoted"))
        .filter(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains(&format!("revision {revision} takes")))
        })
        .map(|e| {
            let series = e.series.as_ref().and_then(|s| s.count).unwrap_or(0);
            u64::try_from(series.max(e.count.unwrap_or(1)).max(1)).unwrap_or(1)
        })
        .sum()
}

/// Phase 9; the last phase (the in-process operator is stopped for it).
pub async fn leader_killed_mid_pause(sys: &mut System, stable: &str) {
    assert!(
        KILL_AFTER + LEASE.0 - LEASE.1 > LATE && KILL_AFTER + LATE < PAUSE,
        "the bounds tell a kept pause from a restarted one"
    );
    sys.operator.shut_down().await;
    let sys: &System = sys;
    let env = &sys.env;
    let mut replicas = [replica(sys, "op-a"), replica(sys, "op-b")];
    let leader = eventually(Duration::from_secs(30), || holder(sys))
        .await
        .expect("one replica takes the Lease");
    let t = Instant::now();
    let (lg, report) = load(sys, "leader", LOAD_SECS);
    apply(
        env,
        &revision_with(
            env,
            160,
            &[],
            json!({ "rollout": { "steps": [ { "weight": 30, "pause": format!("{}s", PAUSE.as_secs()) } ] } }),
        ),
    )
    .await
    .expect("the revision applies");
    let (o, _) = watch_steps(
        sys,
        Duration::from_secs(30),
        "the canary at step 1 (30%)",
        |o| canary_weight(o) == 30,
    )
    .await;
    let at_step = Instant::now();
    let s = status_of(&o);
    let canary = s.canary_revision.clone().expect("canary");
    let started = s.rollout.step_started_at.clone().expect("stepStartedAt");
    eprintln!(
        "[canary] leader: {leader} leads; canary {canary} at 30% {:.1}s after apply (stepStartedAt {})",
        t.elapsed().as_secs_f64(),
        started.0
    );

    tokio::time::sleep_until((at_step + KILL_AFTER).into()).await;
    let idx = replicas
        .iter()
        .position(|r| r.opts.identity == leader)
        .expect("the leader is one of ours");
    replicas[idx].crash();
    let killed = Instant::now();
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);

    // Every status read until the promotion: the step must not move.
    let mut took_over: Option<(Instant, String)> = None;
    let mut seen = Vec::new();
    let promoted = loop {
        assert!(
            at_step.elapsed() < PAUSE + Duration::from_secs(30),
            "not promoted within 30 s of the pause's end; seen {seen:?}"
        );
        if took_over.is_none() {
            if let Some(h) = holder(sys).await.filter(|h| *h != leader) {
                took_over = Some((Instant::now(), h));
            }
        }
        if let Ok(o) = api.get(NAME).await {
            let s = status_of(&o);
            if s.stable_revision.as_deref() == Some(canary.as_str()) {
                break Instant::now();
            }
            let now = (
                s.rollout.step,
                canary_weight(&o),
                s.rollout.step_started_at.map(|t| t.0.to_string()),
            );
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (took_over, successor) = took_over.expect("the standby took the Lease");
    let after = promoted - at_step;
    eprintln!(
        "[canary] leader {leader} killed {:.1}s into the {}s pause; {successor} took over {:.1}s later; promoted {:.1}s after the step began (status until then {seen:?})",
        (killed - at_step).as_secs_f64(),
        PAUSE.as_secs(),
        (took_over - killed).as_secs_f64(),
        after.as_secs_f64()
    );
    assert!(
        took_over < at_step + PAUSE,
        "the standby took over mid-pause ({:?} after the kill)",
        took_over - killed
    );
    let kept = (Some(1), 30, Some(started.0.to_string()));
    assert!(
        seen.iter().all(|s| *s == kept),
        "step, weight and stepStartedAt kept across the leader change: {seen:?}"
    );
    assert!(
        after + EARLY >= PAUSE && after <= PAUSE + LATE,
        "promoted when the original pause ended: {after:?} after the step began, pause {PAUSE:?}"
    );

    let (o, _) = watch_steps(
        sys,
        Duration::from_secs(30),
        "the old revision drained",
        |o| promoted_from(o, stable),
    )
    .await;
    assert_eq!(
        status_of(&o).rollout.rolled_back_revision,
        None,
        "no rollback"
    );
    let once = eventually(Duration::from_secs(20), || async {
        let n = promotions_of(sys, &canary).await;
        (n > 0).then_some(n)
    })
    .await
    .expect("a RevisionPromoted event");
    let settled = t.elapsed();
    no_loss(lg, &report, "leader").await;
    assert_eq!(
        (once, promotions_of(sys, &canary).await),
        (1, 1),
        "promoted once"
    );
    assert_eq!(
        holder(sys).await.as_deref(),
        Some(successor.as_str()),
        "the successor still leads"
    );
    assert!(
        settled < Duration::from_secs(LOAD_SECS),
        "the load covered the promotion and the drain ({settled:?})"
    );
}
