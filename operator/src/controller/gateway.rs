//! Whether the cluster serves the Gateway API's HTTPRoute, and the
//! observation of each InferenceService's route.
//!
//! The Gateway API is optional: discovery of
//! `gateway.networking.k8s.io/v1` is asked on start and again every
//! `--gateway-recheck` (and a route write that finds the resource gone
//! marks it missing at once), so installing or removing the CRDs needs no
//! restart. A change is logged once, not per object. While the API is
//! missing nothing about routes is read or written; the HTTPRoute watch
//! starts the first time it is found (`route_stream`), and every object is
//! reconciled again then (`found`).
//!
//! The route of an object is observed from that watch (routes labelled
//! `app.kubernetes.io/managed-by=steward-operator`); only when the watch
//! holds no route of this object's is the API asked for the name (a
//! route someone else made carries no such label), so a settled object
//! costs no read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::children::MANAGED_BY;
use crate::route::{self, RouteView};

/// Settings of the Gateway API integration.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Write HTTPRoutes where the API is served; `false`: never probe,
    /// never write.
    pub enabled: bool,
    /// How often discovery is asked again.
    pub recheck: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            recheck: Duration::from_secs(60),
        }
    }
}

/// The HTTPRoute kind.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(route::GROUP, route::VERSION, route::KIND),
        route::PLURAL,
    )
}

/// Whether HTTPRoutes are served, shared by every pass.
#[derive(Clone)]
pub struct GatewayApi {
    served: Arc<watch::Sender<bool>>,
    /// Whether a refusal (403) was logged already.
    refused: Arc<AtomicBool>,
}

impl GatewayApi {
    fn new() -> Self {
        Self {
            served: Arc::new(watch::channel(false).0),
            refused: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The operator may not read routes (RBAC without `httproutes`): logged
    /// once; the object is treated as if the API were not served, so the
    /// rest of the pass goes on.
    fn refused(&self, message: &str) {
        if !self.refused.swap(true, Ordering::Relaxed) {
            warn!(
                error = message,
                "may not read HTTPRoutes: no routes are written (grant get, list, watch, create, patch on gateway.networking.k8s.io httproutes, or run with --gateway-routes=false)"
            );
        }
    }

    /// True while discovery last said the API is served.
    pub fn served(&self) -> bool {
        *self.served.borrow()
    }

    fn set(&self, served: bool, why: &str) {
        let changed = self
            .served
            .send_if_modified(|s| std::mem::replace(s, served) != served);
        if changed && served {
            info!(
                api = "gateway.networking.k8s.io/v1",
                "Gateway API found: writing an HTTPRoute per InferenceService"
            );
        } else if changed {
            warn!(
                api = "gateway.networking.k8s.io/v1",
                why, "Gateway API no longer served: HTTPRoutes are not written"
            );
        }
    }

    /// A route write found the resource missing (404 on apply).
    pub fn lost(&self) {
        self.set(false, "a route write found no httproutes resource");
    }

    /// Resolves once the API is served.
    async fn wait_served(&self) {
        let mut rx = self.served.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Yields each time the API becomes served (to reconcile everything).
    pub fn found(&self) -> impl Stream<Item = ()> + Send + 'static {
        let rx = self.served.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                if *rx.borrow_and_update() {
                    return Some(((), rx));
                }
            }
        })
    }
}

/// Asks discovery whether `gateway.networking.k8s.io/v1` lists
/// `httproutes`: `Some(found)`, or `None` when the answer says nothing
/// (a transient error: keep the last state).
async fn probe(client: &Client) -> Option<bool> {
    let gv = format!("{}/{}", route::GROUP, route::VERSION);
    match client.list_api_group_resources(&gv).await {
        Ok(list) => Some(list.resources.iter().any(|r| r.name == route::PLURAL)),
        Err(kube::Error::Api(e)) if e.code == 404 => Some(false),
        Err(e) => {
            debug!(error = %e, "probing the Gateway API");
            None
        }
    }
}

/// The prober task; it stops when this is dropped (with the controller).
pub struct Prober(Option<tokio::task::JoinHandle<()>>);

impl Drop for Prober {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Starts the prober (when enabled) and returns the shared flag. The first
/// probe's answer is logged whichever it is.
pub fn start(client: Client, cfg: &GatewayConfig) -> (GatewayApi, Prober) {
    let api = GatewayApi::new();
    if !cfg.enabled {
        info!("Gateway API routes turned off (--gateway-routes=false): no HTTPRoutes are written");
        return (api, Prober(None));
    }
    let shared = api.clone();
    let every = cfg.recheck;
    let task = tokio::spawn(async move {
        let mut first = true;
        loop {
            if let Some(found) = probe(&client).await {
                if first && !found {
                    info!(
                        api = "gateway.networking.k8s.io/v1",
                        recheck = ?every,
                        "Gateway API not served: no HTTPRoutes are written (asked again periodically)"
                    );
                }
                first = false;
                shared.set(found, "discovery no longer lists httproutes");
            }
            tokio::time::sleep(every).await;
        }
    });
    (api, Prober(Some(task)))
}

/// The watch of the operator's HTTPRoutes, started once the API is served
/// (a watch of a missing resource would only fail). Its store is filled as
/// the stream is polled (by the controller).
pub fn route_stream(
    client: Client,
    namespace: Option<&str>,
    api: &GatewayApi,
) -> (
    Store<DynamicObject>,
    impl Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static,
) {
    let ar = resource();
    let writer = reflector::store::Writer::new(ar.clone());
    let store = writer.as_reader();
    let routes: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    let cfg = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"))
        .any_semantic();
    let api = api.clone();
    let stream = futures::stream::once(async move {
        api.wait_served().await;
        watcher(routes, cfg)
            .default_backoff()
            .reflect(writer)
            .touched_objects()
    })
    .flatten();
    (store, stream)
}

/// What is observed of the route named like the object.
pub async fn observe(
    client: &Client,
    api: &GatewayApi,
    store: &Store<DynamicObject>,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<RouteView, kube::Error> {
    if !api.served() {
        return Ok(RouteView::Unavailable);
    }
    let key = ObjectRef::new_with(name, resource()).within(namespace);
    if let Some(r) = store.get(&key) {
        if super::owned_by(&r.metadata, uid) {
            return Ok(view_of(&r, uid));
        }
    }
    // Not in the watch (someone else's, not made yet, or the watch is
    // behind): ask for the name. A resource that went away between probes
    // reads as absent here; the write then finds it gone (`lost`).
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource());
    match routes.get_opt(name).await {
        Ok(Some(r)) => Ok(view_of(&r, uid)),
        Ok(None) => Ok(RouteView::Absent),
        Err(kube::Error::Api(e)) if e.code == 403 => {
            api.refused(&e.message);
            Ok(RouteView::Unavailable)
        }
        Err(e) => Err(e),
    }
}

fn view_of(r: &DynamicObject, uid: &str) -> RouteView {
    if super::owned_by(&r.metadata, uid) {
        return RouteView::Owned {
            applied_hash: crate::children::applied_hash(&r.metadata).map(str::to_owned),
            backends: route::backend_weights(&r.data),
        };
    }
    let mut managers: Vec<String> = r
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    managers.sort();
    managers.dedup();
    RouteView::Foreign { managers }
}
