//! Watch loops for InferenceServices and pods.
//!
//! Each loop runs a kube-runtime watcher with the default backoff. The
//! watcher re-lists on its own after errors (`Init` … `InitApply` …
//! `InitDone`); the loop buffers a re-list and applies it as one `reset`, so
//! objects deleted while the watch was down disappear. Every
//! `resync_interval` the loop drops its watcher and starts a new one, which
//! forces a full re-list even when no error was seen.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::convert::{self, ConvertError};
use crate::index::{Index, ObjKey, PodView, ServiceView, SharedIndex};
use crate::metrics::{DiscoveryLabels, Metrics};

/// What to watch.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// One namespace, or all when `None`.
    pub namespace: Option<String>,
    /// Full re-list period.
    pub resync_interval: Duration,
}

/// One watched kind: how its objects become index entries.
trait Kind: Send + Sync + 'static {
    type Obj: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static;
    type View: Clone + Send;
    const NAME: &'static str;
    const BIT: u8;
    fn convert(obj: &Self::Obj) -> Result<Self::View, ConvertError>;
    fn previous(index: &Index, key: &ObjKey) -> Option<Self::View>;
    fn apply(index: &mut Index, view: Self::View);
    fn delete(index: &mut Index, key: &ObjKey);
    fn reset(index: &mut Index, views: Vec<Self::View>);
}

struct Services;
struct Pods;

impl Kind for Services {
    type Obj = DynamicObject;
    type View = ServiceView;
    const NAME: &'static str = "inferenceservice";
    const BIT: u8 = 1;
    fn convert(obj: &DynamicObject) -> Result<ServiceView, ConvertError> {
        convert::service_view(obj)
    }
    fn previous(index: &Index, key: &ObjKey) -> Option<ServiceView> {
        index.service(key).cloned()
    }
    fn apply(index: &mut Index, view: ServiceView) {
        index.apply_service(view);
    }
    fn delete(index: &mut Index, key: &ObjKey) {
        index.delete_service(key);
    }
    fn reset(index: &mut Index, views: Vec<ServiceView>) {
        index.reset_services(views);
    }
}

impl Kind for Pods {
    type Obj = Pod;
    type View = PodView;
    const NAME: &'static str = "pod";
    const BIT: u8 = 2;
    fn convert(obj: &Pod) -> Result<PodView, ConvertError> {
        convert::pod_view(obj)
    }
    fn previous(index: &Index, key: &ObjKey) -> Option<PodView> {
        index.pod(key).cloned()
    }
    fn apply(index: &mut Index, view: PodView) {
        index.apply_pod(view);
    }
    fn delete(index: &mut Index, key: &ObjKey) {
        index.delete_pod(key);
    }
    fn reset(index: &mut Index, views: Vec<PodView>) {
        index.reset_pods(views);
    }
}

/// The API resource of InferenceService.
pub fn inference_service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(convert::GROUP, convert::VERSION, convert::KIND),
        convert::PLURAL,
    )
}

/// Runs both watches forever; sets `ready` once both have listed once.
pub async fn run(
    client: Client,
    cfg: DiscoveryConfig,
    index: SharedIndex,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
) {
    let ar = inference_service_resource();
    let (svc_api, pod_api): (Api<DynamicObject>, Api<Pod>) = match &cfg.namespace {
        Some(ns) => (
            Api::namespaced_with(client.clone(), ns, &ar),
            Api::namespaced(client, ns),
        ),
        None => (Api::all_with(client.clone(), &ar), Api::all(client)),
    };
    let synced = Arc::new(AtomicU8::new(0));
    let svc_cfg = watcher::Config::default();
    let pod_cfg = watcher::Config::default().labels(convert::LABEL_SERVICE);
    let shared = Shared {
        index,
        metrics,
        synced,
        ready,
        resync: cfg.resync_interval,
    };
    tokio::join!(
        watch_loop::<Services>(svc_api, svc_cfg, shared.clone())
            .instrument(tracing::info_span!("watch", kind = Services::NAME)),
        watch_loop::<Pods>(pod_api, pod_cfg, shared)
            .instrument(tracing::info_span!("watch", kind = Pods::NAME)),
    );
}

#[derive(Clone)]
struct Shared {
    index: SharedIndex,
    metrics: Metrics,
    synced: Arc<AtomicU8>,
    ready: Arc<AtomicBool>,
    resync: Duration,
}

impl Shared {
    fn count(&self, kind: &str, event: &str) {
        self.metrics
            .discovery_events
            .get_or_create(&DiscoveryLabels {
                kind: kind.to_string(),
                event: event.to_string(),
            })
            .inc();
    }

    fn malformed(&self, kind: &str, err: &ConvertError, key: Option<&ObjKey>) {
        self.metrics
            .discovery_malformed
            .get_or_create(&DiscoveryLabels {
                kind: kind.to_string(),
                event: err.reason().to_string(),
            })
            .inc();
        tracing::warn!(kind, object = ?key.map(ToString::to_string), error = %err, "skipping object the router cannot read");
    }
}

fn key_of<R: Resource>(obj: &R) -> Option<ObjKey> {
    let m = obj.meta();
    Some(ObjKey::new(m.namespace.clone()?, m.name.clone()?))
}

async fn watch_loop<K: Kind>(api: Api<K::Obj>, cfg: watcher::Config, sh: Shared) {
    loop {
        let stream = watcher::watcher(api.clone(), cfg.clone()).default_backoff();
        futures::pin_mut!(stream);
        let resync = tokio::time::sleep(sh.resync);
        tokio::pin!(resync);
        let mut buffer: Vec<K::Obj> = Vec::new();
        loop {
            let ev = tokio::select! {
                _ = &mut resync => {
                    sh.count(K::NAME, "resync");
                    tracing::debug!(kind = K::NAME, "periodic resync: restarting watch for a full re-list");
                    break;
                }
                ev = stream.next() => ev,
            };
            match ev {
                None => break,
                Some(Err(e)) => {
                    sh.count(K::NAME, "error");
                    tracing::warn!(kind = K::NAME, error = %e, "watch error; the watcher backs off and re-lists");
                }
                Some(Ok(Event::Init)) => buffer.clear(),
                Some(Ok(Event::InitApply(o))) => buffer.push(o),
                Some(Ok(Event::InitDone)) => {
                    let objs = std::mem::take(&mut buffer);
                    let n = objs.len();
                    sh.index.update(|index| {
                        let views: Vec<K::View> = objs
                            .iter()
                            .filter_map(|o| match K::convert(o) {
                                Ok(v) => Some(v),
                                Err(e) => {
                                    let key = key_of(o);
                                    sh.malformed(K::NAME, &e, key.as_ref());
                                    key.and_then(|k| K::previous(index, &k))
                                }
                            })
                            .collect();
                        K::reset(index, views);
                    });
                    sh.count(K::NAME, "relist");
                    tracing::info!(kind = K::NAME, objects = n, "listed");
                    let now = sh.synced.fetch_or(K::BIT, Ordering::SeqCst) | K::BIT;
                    if now == Services::BIT | Pods::BIT {
                        sh.ready.store(true, Ordering::SeqCst);
                    }
                }
                Some(Ok(Event::Apply(o))) => {
                    sh.count(K::NAME, "apply");
                    match K::convert(&o) {
                        Ok(v) => sh.index.update(|i| K::apply(i, v)),
                        Err(e) => sh.malformed(K::NAME, &e, key_of(&o).as_ref()),
                    }
                }
                Some(Ok(Event::Delete(o))) => {
                    sh.count(K::NAME, "delete");
                    if let Some(k) = key_of(&o) {
                        sh.index.update(|i| K::delete(i, &k));
                    }
                }
            }
        }
    }
}
