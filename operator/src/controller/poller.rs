//! Signal pollers: one task per InferenceService, outside the reconcile,
//! that runs the signal queries every `analysis.interval`, keeps the latest
//! [`Snapshot`], and wakes the object's reconcile when the snapshot changes.
//!
//! The reconcile calls [`Pollers::observe`] with a [`PollPlan`] (what to
//! query, how often) and gets the [`Latest`] snapshot back; it never waits
//! on Prometheus. A poller ends by itself when its object leaves the
//! controller's store. Without a Prometheus address every object reads
//! [`Latest::NotConfigured`]: signals unavailable, never zero.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use super::prometheus::Prometheus;
use crate::crd::UncheckedInferenceService;
use crate::metrics::Metrics;
use crate::signals::promql::{self, Scope, Window};
use crate::signals::{Latest, QueryError, QueryErrorKind, Reading, Series, Signal, Snapshot};

/// What a poller queries and how often; computed by the reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollPlan {
    /// The InferenceService's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `analysis.interval`.
    pub interval: Duration,
    /// Revisions that custom queries run for.
    pub revisions: Vec<String>,
    /// Custom PromQL leaves: (leaf name, PromQL with `$revision` etc.).
    pub queries: Vec<(String, String)>,
}

// The controller watches the raw form (`crd::check`), so its store and
// its wake-ups are keyed by it.
type Key = ObjectRef<UncheckedInferenceService>;

struct Entry {
    plan: watch::Sender<PollPlan>,
    latest: watch::Receiver<Latest>,
}

/// Every poller of this operator replica.
pub struct Pollers {
    prometheus: Option<Arc<Prometheus>>,
    entries: Mutex<HashMap<Key, Entry>>,
    wake: mpsc::Sender<Key>,
    metrics: Arc<Metrics>,
}

impl Pollers {
    /// Pollers that query `prometheus` (none configured: `None`), and the
    /// stream of objects to wake, for `Controller::reconcile_on`.
    pub fn new(
        prometheus: Option<Arc<Prometheus>>,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, mpsc::Receiver<Key>) {
        let (wake, rx) = mpsc::channel(1024);
        (
            Arc::new(Self {
                prometheus,
                entries: Mutex::new(HashMap::new()),
                wake,
                metrics,
            }),
            rx,
        )
    }

    /// True when a Prometheus address is configured.
    pub fn configured(&self) -> bool {
        self.prometheus.is_some()
    }

    /// Starts or updates the poller of `plan`'s object and returns its
    /// latest snapshot. `store` is the controller's store of
    /// InferenceServices; the poller ends when the object leaves it.
    pub fn observe(&self, plan: PollPlan, store: &Store<UncheckedInferenceService>) -> Latest {
        let Some(prom) = &self.prometheus else {
            return Latest::NotConfigured;
        };
        let key = ObjectRef::new(&plan.name).within(&plan.namespace);
        let Ok(mut entries) = self.entries.lock() else {
            return Latest::Waiting;
        };
        entries.retain(|_, e| !e.plan.is_closed());
        if let Some(e) = entries.get(&key) {
            e.plan.send_if_modified(|p| {
                let changed = *p != plan;
                if changed {
                    *p = plan.clone();
                }
                changed
            });
            return e.latest.borrow().clone();
        }
        let (plan_tx, plan_rx) = watch::channel(plan);
        let (latest_tx, latest_rx) = watch::channel(Latest::Waiting);
        entries.insert(
            key.clone(),
            Entry {
                plan: plan_tx,
                latest: latest_rx,
            },
        );
        self.metrics.pollers_running(entries.len());
        tokio::spawn(poll(Task {
            key,
            prom: prom.clone(),
            plan: plan_rx,
            latest: latest_tx,
            wake: self.wake.clone(),
            store: store.clone(),
            metrics: self.metrics.clone(),
        }));
        Latest::Waiting
    }
}

struct Task {
    key: Key,
    prom: Arc<Prometheus>,
    plan: watch::Receiver<PollPlan>,
    latest: watch::Sender<Latest>,
    wake: mpsc::Sender<Key>,
    store: Store<UncheckedInferenceService>,
    metrics: Arc<Metrics>,
}

async fn poll(mut t: Task) {
    info!(object = %t.key, "signal poller started");
    let mut previous: Option<Arc<Snapshot>> = None;
    loop {
        if t.store.get(&t.key).is_none() {
            // Gone from the store after its first list: deleted.
            match t.store.wait_until_ready().await {
                Ok(()) if t.store.get(&t.key).is_some() => {}
                _ => break,
            }
        }
        let plan = t.plan.borrow_and_update().clone();
        let snap = Arc::new(take(&t.prom, &plan).await);
        let changed = previous
            .as_ref()
            .is_none_or(|p| p.signals != snap.signals || p.queries != snap.queries);
        let _ = t.latest.send(Latest::Taken(snap.clone()));
        previous = Some(snap);
        if changed && t.wake.try_send(t.key.clone()).is_err() {
            t.metrics.poller_wake_dropped();
        }
        tokio::select! {
            () = tokio::time::sleep(plan.interval) => {}
            r = t.plan.changed() => if r.is_err() { break },
        }
    }
    debug!(object = %t.key, "signal poller stopped");
}

/// One snapshot: every standard signal (one grouped query each) and every
/// custom leaf per revision, all at once, each bounded by the interval.
pub async fn take(prom: &Prometheus, plan: &PollPlan) -> Snapshot {
    let taken_at = Timestamp::now();
    let window = Window::for_interval(plan.interval);
    let limit = plan.interval.max(Duration::from_secs(1));
    let scope = Scope::service(&plan.namespace, &plan.name);
    let standard = join_all(Signal::ALL.iter().map(|s| {
        let q = promql::query(*s, &scope, window);
        async move { (*s, by_revision(prom.query(&q, limit).await)) }
    }));
    let custom = join_all(plan.queries.iter().flat_map(|(leaf, text)| {
        plan.revisions.iter().map(move |rev| {
            let q = promql::substitute(text, &Scope::revision(&plan.namespace, &plan.name, rev));
            async move {
                (
                    leaf.clone(),
                    rev.clone(),
                    scalar(prom.query(&q, limit).await),
                )
            }
        })
    }));
    let per_pod = join_all(
        [Signal::ExecutorUtilization, Signal::KvCacheUsage]
            .iter()
            .filter_map(|s| promql::per_pod(*s, &scope, window))
            .map(|q| async move { prom.query(&q, limit).await }),
    );
    let (standard, custom, per_pod) = futures::join!(standard, custom, per_pod);
    let mut queries: BTreeMap<String, BTreeMap<String, Reading>> = BTreeMap::new();
    for (leaf, rev, reading) in custom {
        queries.entry(leaf).or_default().insert(rev, reading);
    }
    Snapshot {
        taken_at,
        window: window.0,
        signals: standard.into_iter().collect(),
        queries,
        pod_loads: pod_loads(per_pod),
    }
}

/// The higher of each pod's per-pod utilisation readings; a failed query
/// leaves its pods unknown (the victim choice falls back to the name).
fn pod_loads(
    results: Vec<Result<Vec<super::prometheus::Sample>, QueryError>>,
) -> BTreeMap<String, f64> {
    let mut loads: BTreeMap<String, f64> = BTreeMap::new();
    for (labels, value) in results.into_iter().flatten().flatten() {
        let Some(pod) = labels.get(promql::LABEL_POD) else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        let e = loads.entry(pod.clone()).or_insert(value);
        *e = e.max(value);
    }
    loads
}

fn by_revision(r: Result<Vec<super::prometheus::Sample>, QueryError>) -> Series {
    r.map(|v| {
        v.into_iter()
            .filter_map(|(labels, value)| {
                Some((labels.get(promql::LABEL_REVISION)?.clone(), value))
            })
            .collect()
    })
}

/// A custom query must give one value; several series are summed away by
/// taking the first only if there is exactly one.
fn scalar(r: Result<Vec<super::prometheus::Sample>, QueryError>) -> Reading {
    match r {
        Err(e) => Reading::Error(e),
        Ok(v) if v.is_empty() => Reading::NoData,
        Ok(v) if v.len() == 1 => Reading::Value(v[0].1),
        Ok(v) => Reading::Error(QueryError {
            kind: QueryErrorKind::Invalid,
            message: format!(
                "the query returns {} series for one revision; aggregate it to one value (e.g. sum or max)",
                v.len()
            ),
        }),
    }
}
