//! The in-memory index of discovered InferenceServices and pods.
//!
//! Discovery feeds it with synchronous `apply` / `delete` / `reset` calls
//! (`reset` replaces a whole kind after a (re-)list, so objects deleted while
//! a watch was down disappear). Every mutation rebuilds the immutable
//! [`RoutingTable`] and publishes it; request handlers only ever read the
//! latest published table, never the index itself.
//!
//! The views here are plain structs with no Kubernetes types, so routing is
//! testable by feeding the index directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use crate::table::RoutingTable;

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Per-tenant limits from `spec.limits.perTenant`; `None` fields are unlimited.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantLimits {
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub max_concurrent: Option<u32>,
}

/// One entry of `status.traffic`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficWeight {
    pub revision: String,
    pub weight: u32,
}

/// What the router needs from an InferenceService.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceView {
    pub key: ObjKey,
    /// `metadata.creationTimestamp` in Unix seconds: the age of the model
    /// name claim (docs/router.md, "Model names"). `None` only for static routes.
    pub created: Option<i64>,
    /// `spec.model.name`: what clients put in the request's `model`.
    pub model: String,
    /// `status.traffic`.
    pub traffic: Vec<TrafficWeight>,
    /// `spec.limits.perTenant`, if set.
    pub tenant_limits: Option<TenantLimits>,
}

/// What the router needs from a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub key: ObjKey,
    /// `metadata.uid`: the identity of the endpoint, so a new pod that gets
    /// a dead pod's IP starts with fresh load and health state.
    pub uid: String,
    /// Label `serving.steward.dev/service`.
    pub service: String,
    /// Label `serving.steward.dev/revision`.
    pub revision: String,
    /// Label `serving.steward.dev/rotation` is `serving`.
    pub serving: bool,
    /// Condition `Ready` is `True`.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Pod IP and the `http` container port, once assigned.
    pub addr: Option<SocketAddr>,
}

impl PodView {
    /// Only serving, ready, non-terminating pods with an address take new requests.
    pub fn routable(&self) -> bool {
        self.serving && self.ready && !self.terminating && self.addr.is_some()
    }
}

/// The mutable index. Not shared directly; see [`SharedIndex`].
#[derive(Debug, Default)]
pub struct Index {
    services: BTreeMap<ObjKey, ServiceView>,
    pods: BTreeMap<ObjKey, PodView>,
}

impl Index {
    pub fn apply_service(&mut self, svc: ServiceView) {
        self.services.insert(svc.key.clone(), svc);
    }

    pub fn delete_service(&mut self, key: &ObjKey) {
        self.services.remove(key);
    }

    pub fn reset_services(&mut self, all: impl IntoIterator<Item = ServiceView>) {
        self.services = all.into_iter().map(|s| (s.key.clone(), s)).collect();
    }

    pub fn apply_pod(&mut self, pod: PodView) {
        self.pods.insert(pod.key.clone(), pod);
    }

    pub fn delete_pod(&mut self, key: &ObjKey) {
        self.pods.remove(key);
    }

    pub fn reset_pods(&mut self, all: impl IntoIterator<Item = PodView>) {
        self.pods = all.into_iter().map(|p| (p.key.clone(), p)).collect();
    }

    pub fn service(&self, key: &ObjKey) -> Option<&ServiceView> {
        self.services.get(key)
    }

    pub fn pod(&self, key: &ObjKey) -> Option<&PodView> {
        self.pods.get(key)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceView> {
        self.services.values()
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodView> {
        self.pods.values()
    }

    /// Computes the routing table from the current state.
    pub fn table(&self) -> RoutingTable {
        RoutingTable::build(self.services.values(), self.pods.values())
    }
}

/// The index behind a lock plus the latest published table.
///
/// Cloning is cheap; all clones see the same state.
#[derive(Clone, Default)]
pub struct SharedIndex {
    inner: Arc<SharedInner>,
}

#[derive(Default)]
struct SharedInner {
    index: Mutex<Index>,
    table: RwLock<Arc<RoutingTable>>,
}

impl SharedIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest routing table; cheap (one `Arc` clone).
    pub fn table(&self) -> Arc<RoutingTable> {
        match self.inner.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Applies `f` to the index and publishes the rebuilt table.
    pub fn update<R>(&self, f: impl FnOnce(&mut Index) -> R) -> R {
        let mut index = match self.inner.index.lock() {
            Ok(i) => i,
            Err(poisoned) => poisoned.into_inner(),
        };
        let out = f(&mut index);
        let table = Arc::new(index.table());
        let previous = match self.inner.table.write() {
            Ok(mut t) => std::mem::replace(&mut *t, table.clone()),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), table.clone()),
        };
        if previous.conflicts != table.conflicts {
            for c in table
                .conflicts
                .iter()
                .filter(|c| !previous.conflicts.contains(c))
            {
                tracing::warn!(model = %c.model, claim = %c.claim, owner = %c.owner,
                    "model name already owned by an older InferenceService; this claim gets no traffic");
            }
            for c in previous
                .conflicts
                .iter()
                .filter(|c| !table.conflicts.contains(c))
            {
                tracing::info!(model = %c.model, claim = %c.claim, "model name conflict resolved");
            }
        }
        out
    }

    pub fn apply_service(&self, svc: ServiceView) {
        self.update(|i| i.apply_service(svc));
    }

    pub fn delete_service(&self, key: &ObjKey) {
        self.update(|i| i.delete_service(key));
    }

    pub fn reset_services(&self, all: Vec<ServiceView>) {
        self.update(|i| i.reset_services(all));
    }

    pub fn apply_pod(&self, pod: PodView) {
        self.update(|i| i.apply_pod(pod));
    }

    pub fn delete_pod(&self, key: &ObjKey) {
        self.update(|i| i.delete_pod(key));
    }

    pub fn reset_pods(&self, all: Vec<PodView>) {
        self.update(|i| i.reset_pods(all));
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small builders for index tests.
    use super::*;

    pub fn service(ns: &str, name: &str, model: &str, traffic: &[(&str, u32)]) -> ServiceView {
        ServiceView {
            key: ObjKey::new(ns, name),
            created: Some(0),
            model: model.to_string(),
            traffic: traffic
                .iter()
                .map(|(r, w)| TrafficWeight {
                    revision: r.to_string(),
                    weight: *w,
                })
                .collect(),
            tenant_limits: None,
        }
    }

    pub fn pod(ns: &str, name: &str, service: &str, revision: &str, ip: [u8; 4]) -> PodView {
        PodView {
            key: ObjKey::new(ns, name),
            uid: format!("uid-{ns}-{name}"),
            service: service.to_string(),
            revision: revision.to_string(),
            serving: true,
            ready: true,
            terminating: false,
            addr: Some(SocketAddr::from((ip, 8000))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn reset_drops_objects_missing_from_the_relist() {
        let idx = SharedIndex::new();
        idx.apply_service(service("ns", "chat", "chat-small", &[("r1", 100)]));
        idx.apply_pod(pod("ns", "p1", "chat", "r1", [127, 0, 0, 2]));
        idx.apply_pod(pod("ns", "p2", "chat", "r1", [127, 0, 0, 3]));
        assert_eq!(idx.table().endpoint_count(), 2);
        idx.reset_pods(vec![pod("ns", "p2", "chat", "r1", [127, 0, 0, 3])]);
        assert_eq!(idx.table().endpoint_count(), 1);
        idx.reset_services(vec![]);
        assert!(idx.table().lookup("chat-small").is_none());
    }

    #[test]
    fn delete_pod_removes_its_endpoint_from_the_published_table() {
        let idx = SharedIndex::new();
        idx.apply_service(service("ns", "chat", "m", &[("r1", 100)]));
        idx.apply_pod(pod("ns", "p1", "chat", "r1", [127, 0, 0, 2]));
        let before = idx.table();
        idx.delete_pod(&ObjKey::new("ns", "p1"));
        assert_eq!(before.endpoint_count(), 1, "old snapshots stay valid");
        assert_eq!(idx.table().endpoint_count(), 0);
    }
}
