//! The immutable routing table: model name → service → revisions (with
//! weight > 0) → endpoints.
//!
//! Built from the index on every change and swapped in whole, so a request
//! sees one consistent view. Invariants: a revision appears only if
//! `status.traffic` gives it a positive weight; an endpoint appears only if
//! its pod is routable (serving, ready, not terminating, has an address) and
//! carries the service's and revision's labels in the same namespace; a
//! model name routes only to its owner, the oldest claim (docs/router.md,
//! "Model names"; [`claim_order`] is that rule), and every other claim of the
//! name is listed in [`RoutingTable::conflicts`] and gets no traffic.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::index::{ObjKey, PodView, ServiceView, TenantLimits};

/// One routable pod: its address and its identity (the pod UID), so state
/// kept per endpoint never outlives the pod when its IP is reused.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub uid: Arc<str>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, uid: impl Into<Arc<str>>) -> Self {
        Self {
            addr,
            uid: uid.into(),
        }
    }
}

/// One revision that takes traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionRoute {
    pub name: String,
    pub weight: u32,
    /// Sorted by address, one per address.
    pub endpoints: Vec<Endpoint>,
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

/// A claim on a model name that lost to an older one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub model: String,
    /// The conflicting InferenceService (gets no traffic).
    pub claim: ObjKey,
    /// The owner of the name.
    pub owner: ObjKey,
}

/// What a request's `model` resolves to.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved<'a> {
    Route(&'a Arc<ServiceRoute>),
    /// `namespace/model` where the namespace's claim on `model` lost to `owner`.
    Conflict {
        owner: &'a ObjKey,
    },
    Unknown,
}

/// The order of claims on one model name: oldest `creationTimestamp` first
/// (none sorts last), then namespace, then name. The first one owns the name.
pub fn claim_order(a: &ServiceView, b: &ServiceView) -> Ordering {
    let age = |s: &ServiceView| (s.created.is_none(), s.created.unwrap_or(0));
    age(a).cmp(&age(b)).then_with(|| a.key.cmp(&b.key))
}

#[derive(Clone, Debug)]
struct ModelEntry {
    owner: Arc<ServiceRoute>,
    /// Namespaces with a conflicting claim on this name (for qualified names).
    conflicting_namespaces: Vec<String>,
}

/// Model name → service; see the module docs for the invariants.
#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    models: HashMap<String, ModelEntry>,
    /// Claims that lost their model name, sorted.
    pub conflicts: Vec<Conflict>,
}

impl RoutingTable {
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a ServiceView>,
        pods: impl IntoIterator<Item = &'a PodView>,
    ) -> Self {
        // (namespace, service, revision) → endpoints, one per address.
        let mut eps: HashMap<(&str, &str, &str), BTreeMap<SocketAddr, &str>> = HashMap::new();
        for p in pods {
            if let (true, Some(addr)) = (p.routable(), p.addr) {
                eps.entry((&p.key.namespace, &p.service, &p.revision))
                    .or_default()
                    .entry(addr)
                    .or_insert(&p.uid);
            }
        }
        let mut claims: HashMap<&str, Vec<&ServiceView>> = HashMap::new();
        for s in services {
            claims.entry(&s.model).or_default().push(s);
        }
        let mut models: HashMap<String, ModelEntry> = HashMap::with_capacity(claims.len());
        let mut conflicts = Vec::new();
        for (model, mut svcs) in claims {
            svcs.sort_by(|a, b| claim_order(a, b));
            let owner = svcs[0];
            let mut conflicting_namespaces = Vec::new();
            for lost in &svcs[1..] {
                conflicts.push(Conflict {
                    model: model.to_string(),
                    claim: lost.key.clone(),
                    owner: owner.key.clone(),
                });
                conflicting_namespaces.push(lost.key.namespace.clone());
            }
            models.insert(
                model.to_string(),
                ModelEntry {
                    owner: Arc::new(service_route(owner, &eps)),
                    conflicting_namespaces,
                },
            );
        }
        conflicts.sort();
        Self { models, conflicts }
    }

    /// The owner of exactly this model name.
    pub fn lookup(&self, model: &str) -> Option<&Arc<ServiceRoute>> {
        self.models.get(model).map(|e| &e.owner)
    }

    /// Resolves a request's `model`: an exact name first, then a
    /// `namespace/model` qualified name (docs/router.md, "Model names").
    pub fn resolve(&self, model: &str) -> Resolved<'_> {
        if let Some(e) = self.models.get(model) {
            return Resolved::Route(&e.owner);
        }
        let Some((ns, name)) = model.split_once('/') else {
            return Resolved::Unknown;
        };
        match self.models.get(name) {
            Some(e) if e.owner.key.namespace == ns => Resolved::Route(&e.owner),
            Some(e) if e.conflicting_namespaces.iter().any(|n| n == ns) => Resolved::Conflict {
                owner: &e.owner.key,
            },
            _ => Resolved::Unknown,
        }
    }

    /// The routed services (one per model name: its owner).
    pub fn models(&self) -> impl Iterator<Item = &Arc<ServiceRoute>> {
        self.models.values().map(|e| &e.owner)
    }

    /// Every endpoint that may receive traffic (what the load poller watches).
    pub fn endpoints(&self) -> BTreeSet<Endpoint> {
        self.models()
            .flat_map(|s| s.revisions.iter().flat_map(|r| r.endpoints.iter().cloned()))
            .collect()
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints().len()
    }
}

fn service_route(
    svc: &ServiceView,
    eps: &HashMap<(&str, &str, &str), BTreeMap<SocketAddr, &str>>,
) -> ServiceRoute {
    let key = &svc.key;
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
            .map(|m| m.iter().map(|(a, uid)| Endpoint::new(*a, *uid)).collect())
            .unwrap_or_default();
        revisions.push(RevisionRoute {
            name: t.revision.clone(),
            weight: t.weight,
            endpoints,
        });
    }
    ServiceRoute {
        key: key.clone(),
        model: svc.model.clone(),
        revisions,
        tenant_limits: svc.tenant_limits.clone(),
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
            .map(|r| {
                (
                    r.name.as_str(),
                    r.weight,
                    r.endpoints.iter().map(|e| e.addr).collect(),
                )
            })
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

    fn claim(ns: &str, name: &str, model: &str, created: Option<i64>) -> ServiceView {
        let mut s = service(ns, name, model, &[("r1", 100)]);
        s.created = created;
        s
    }

    /// Issue 13 fault 1: before, the first claim by namespace/name won, so a
    /// newer InferenceService in namespace `aaa` captured another team's name.
    #[test]
    fn oldest_claim_owns_a_model_name_whatever_the_namespaces_sort_order() {
        let victim = claim("zzz", "chat", "m", Some(1_000));
        let thief = claim("aaa", "chat", "m", Some(2_000));
        for order in [vec![&victim, &thief], vec![&thief, &victim]] {
            let t = RoutingTable::build(order, &[]);
            assert_eq!(t.lookup("m").map(|s| s.key.namespace.as_str()), Some("zzz"));
            assert_eq!(
                t.conflicts,
                vec![Conflict {
                    model: "m".into(),
                    claim: ObjKey::new("aaa", "chat"),
                    owner: ObjKey::new("zzz", "chat"),
                }]
            );
        }
    }

    #[test]
    fn equal_ages_break_ties_by_namespace_then_name_and_missing_age_sorts_last() {
        let a = claim("b", "x", "m", Some(5));
        let b = claim("a", "y", "m", Some(5));
        let c = claim("a", "z", "m", Some(5));
        let d = claim("0", "static", "m", None);
        let mut v = [&d, &c, &a, &b];
        v.sort_by(|x, y| claim_order(x, y));
        let keys: Vec<String> = v.iter().map(|s| s.key.to_string()).collect();
        assert_eq!(keys, ["a/y", "a/z", "b/x", "0/static"]);
        let t = RoutingTable::build([&a, &b, &c, &d], &[]);
        assert_eq!(t.lookup("m").map(|s| s.key.to_string()), Some("a/y".into()));
        assert_eq!(t.conflicts.len(), 3);
    }

    #[test]
    fn qualified_names_reach_only_their_own_namespace_and_exact_names_win() {
        let owner = claim("team-a", "chat", "m", Some(1));
        let late = claim("team-b", "chat", "m", Some(2));
        let slashy = claim("team-c", "hf", "org/m", Some(3));
        let t = RoutingTable::build([&owner, &late, &slashy], &[]);
        let ns_of = |r: Resolved| match r {
            Resolved::Route(s) => Ok(s.key.namespace.clone()),
            Resolved::Conflict { owner } => Err(format!("conflict:{owner}")),
            Resolved::Unknown => Err("unknown".into()),
        };
        assert_eq!(ns_of(t.resolve("m")), Ok("team-a".into()));
        assert_eq!(ns_of(t.resolve("team-a/m")), Ok("team-a".into()));
        assert_eq!(
            ns_of(t.resolve("team-b/m")),
            Err("conflict:team-a/chat".into())
        );
        assert_eq!(ns_of(t.resolve("team-x/m")), Err("unknown".into()));
        assert_eq!(ns_of(t.resolve("org/m")), Ok("team-c".into()));
        assert_eq!(ns_of(t.resolve("nothing")), Err("unknown".into()));
        assert_eq!(ns_of(t.resolve("/m")), Err("unknown".into()));
    }

    #[test]
    fn a_new_pod_on_a_reused_address_is_a_different_endpoint() {
        let svc = service("ns", "chat", "m", &[("r1", 100)]);
        let old = pod("ns", "a", "chat", "r1", [127, 0, 0, 2]);
        let mut new = pod("ns", "b", "chat", "r1", [127, 0, 0, 2]);
        new.uid = "another-uid".into();
        let t1 = RoutingTable::build([&svc], [&old]);
        let t2 = RoutingTable::build([&svc], [&new]);
        let e1 = t1.endpoints().into_iter().next().expect("one");
        let e2 = t2.endpoints().into_iter().next().expect("one");
        assert_eq!(e1.addr, e2.addr);
        assert_ne!(e1, e2);
    }
}
