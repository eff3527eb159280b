//! The immutable routing table: model name → service → revisions (with
//! weight > 0) → endpoints.
//!
//! Built from the index on every change and swapped in whole, so a request
//! sees one consistent view. Invariants: a revision appears only if
//! `status.traffic` gives it a positive weight; an endpoint appears only if
//! its pod is routable (serving, ready, not terminating, has an address) and
//! carries the service's and revision's labels in the same namespace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::index::{ObjKey, PodView, ServiceView, TenantLimits};

/// One revision that takes traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionRoute {
    pub name: String,
    pub weight: u32,
    /// Sorted, de-duplicated.
    pub endpoints: Vec<SocketAddr>,
}

/// One InferenceService as the router sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRoute {
    pub key: ObjKey,
    pub model: String,
    pub revisions: Vec<RevisionRoute>,
    pub tenant_limits: Option<TenantLimits>,
}

impl ServiceRoute {
    pub fn has_endpoints(&self) -> bool {
        self.revisions.iter().any(|r| !r.endpoints.is_empty())
    }
}

/// Model name → service; see the module docs for the invariants.
#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    models: HashMap<String, Arc<ServiceRoute>>,
    /// Models claimed by more than one service; the first by namespace/name wins.
    pub conflicts: Vec<String>,
}

impl RoutingTable {
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a ServiceView>,
        pods: impl IntoIterator<Item = &'a PodView>,
    ) -> Self {
        // (namespace, service, revision) → endpoints.
        let mut eps: HashMap<(&str, &str, &str), BTreeSet<SocketAddr>> = HashMap::new();
        for p in pods {
            if let (true, Some(addr)) = (p.routable(), p.addr) {
                eps.entry((&p.key.namespace, &p.service, &p.revision))
                    .or_default()
                    .insert(addr);
            }
        }
        let mut by_key: BTreeMap<&ObjKey, &ServiceView> = BTreeMap::new();
        for s in services {
            by_key.insert(&s.key, s);
        }
        let mut models: HashMap<String, Arc<ServiceRoute>> = HashMap::new();
        let mut conflicts = Vec::new();
        for (key, svc) in by_key {
            if models.contains_key(&svc.model) {
                conflicts.push(svc.model.clone());
                continue;
            }
            let mut revisions: Vec<RevisionRoute> = Vec::new();
            for t in svc.traffic.iter().filter(|t| t.weight > 0) {
                if revisions.iter().any(|r| r.name == t.revision) {
                    continue;
                }
                let endpoints = eps
                    .get(&(
                        key.namespace.as_str(),
                        key.name.as_str(),
                        t.revision.as_str(),
                    ))
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                revisions.push(RevisionRoute {
                    name: t.revision.clone(),
                    weight: t.weight,
                    endpoints,
                });
            }
            models.insert(
                svc.model.clone(),
                Arc::new(ServiceRoute {
                    key: key.clone(),
                    model: svc.model.clone(),
                    revisions,
                    tenant_limits: svc.tenant_limits.clone(),
                }),
            );
        }
        Self { models, conflicts }
    }

    pub fn lookup(&self, model: &str) -> Option<&Arc<ServiceRoute>> {
        self.models.get(model)
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<ServiceRoute>> {
        self.models.values()
    }

    /// Every endpoint that may receive traffic (what the load poller watches).
    pub fn endpoints(&self) -> BTreeSet<SocketAddr> {
        self.models
            .values()
            .flat_map(|s| s.revisions.iter().flat_map(|r| r.endpoints.iter().copied()))
            .collect()
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::fixtures::{pod, service};

    fn build(svcs: &[ServiceView], pods: &[PodView]) -> RoutingTable {
        RoutingTable::build(svcs, pods)
    }

    #[test]
    fn only_serving_ready_live_pods_of_weighted_revisions_are_endpoints() {
        let svc = service(
            "ns",
            "chat",
            "chat-small",
            &[("r1", 75), ("r2", 25), ("r3", 0)],
        );
        let ok = pod("ns", "a", "chat", "r1", [127, 0, 0, 2]);
        let mut warm = pod("ns", "b", "chat", "r1", [127, 0, 0, 3]);
        warm.serving = false;
        let mut unready = pod("ns", "c", "chat", "r1", [127, 0, 0, 4]);
        unready.ready = false;
        let mut dying = pod("ns", "d", "chat", "r1", [127, 0, 0, 5]);
        dying.terminating = true;
        let mut no_ip = pod("ns", "e", "chat", "r1", [127, 0, 0, 6]);
        no_ip.addr = None;
        let canary = pod("ns", "f", "chat", "r2", [127, 0, 0, 7]);
        let zero_weight = pod("ns", "g", "chat", "r3", [127, 0, 0, 8]);
        let other_ns = pod("other", "h", "chat", "r1", [127, 0, 0, 9]);
        let t = build(
            &[svc],
            &[
                ok,
                warm,
                unready,
                dying,
                no_ip,
                canary,
                zero_weight,
                other_ns,
            ],
        );
        let route = t.lookup("chat-small").expect("model is routed");
        let revs: Vec<(&str, u32, Vec<SocketAddr>)> = route
            .revisions
            .iter()
            .map(|r| (r.name.as_str(), r.weight, r.endpoints.clone()))
            .collect();
        assert_eq!(
            revs,
            vec![
                ("r1", 75, vec![SocketAddr::from(([127, 0, 0, 2], 8000))]),
                ("r2", 25, vec![SocketAddr::from(([127, 0, 0, 7], 8000))]),
            ]
        );
    }

    #[test]
    fn a_service_without_pods_is_known_but_has_no_endpoints() {
        let t = build(&[service("ns", "chat", "m", &[("r1", 100)])], &[]);
        let route = t.lookup("m").expect("known");
        assert!(!route.has_endpoints());
        assert!(t.lookup("other").is_none());
    }

    #[test]
    fn duplicate_model_names_resolve_to_the_first_service_and_are_reported() {
        let a = service("a", "chat", "m", &[("r1", 100)]);
        let b = service("b", "chat", "m", &[("r9", 100)]);
        let t = build(&[b, a], &[]);
        assert_eq!(t.lookup("m").map(|s| s.key.namespace.as_str()), Some("a"));
        assert_eq!(t.conflicts, vec!["m".to_string()]);
    }
}
