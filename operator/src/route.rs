//! The Gateway API side of routing, as values: the HTTPRoute
//! (`gateway.networking.k8s.io/v1`) of one InferenceService, whose one
//! rule's backendRefs are the revisions' Services (`children::
//! revision_service`) weighted as `status.traffic`, and the `GatewayRoute`
//! condition that says what became of it.
//!
//! Pure: no client. The controller probes whether the cluster serves the
//! API (`controller::gateway`) and observes the route ([`RouteView`]); this
//! module decides what the route should be, whether it is this object's
//! to write, and what status and events say. The route is written in the
//! same pass as the status whose weights it carries (`plan`), so a
//! rollback puts the canary's backendRef at weight 0 when the router's
//! weights change.
//!
//! Invariants:
//! - every revision with a Service is a backendRef, weight 0 when it has
//!   no traffic (a canary coming up, or one rolled back and draining), so
//!   a Gateway learns the Service before weight moves onto it and a
//!   revision leaves the route only with its Service;
//! - `spec.parentRefs` is written only from `spec.gateway.parentRefs`;
//!   without them the operator does not own the field, so parents added by
//!   someone else stay;
//! - a route of the same name that this InferenceService does not own
//!   (controller owner reference) is never written: the condition names it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{json, Value};

use crate::children::{Parent, APPLIED_HASH, MANAGED_BY};
use crate::crd::{labels, InferenceServiceSpec, InferenceServiceStatus, TrafficTarget};
use crate::events::{Note, Severity};
use crate::reason::Reason;
use crate::revision::{revision_service_name, short_hash};

/// The API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The version the operator writes.
pub const VERSION: &str = "v1";
/// The kind.
pub const KIND: &str = "HTTPRoute";
/// Its plural (the resource discovery lists).
pub const PLURAL: &str = "httproutes";
/// The condition type on the InferenceService (present only where the
/// API is served).
pub const CONDITION: &str = "GatewayRoute";

/// What the controller saw of the route named like the InferenceService.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RouteView {
    /// The cluster does not serve `gateway.networking.k8s.io/v1`
    /// HTTPRoutes (or routes are turned off): nothing is written.
    #[default]
    Unavailable,
    /// No route of that name.
    Absent,
    /// This InferenceService's route, with the hash it was applied with.
    Owned {
        /// The [`APPLIED_HASH`] annotation.
        applied_hash: Option<String>,
        /// Its backendRefs as stored, (Service, weight): a hand edit of the
        /// weights leaves the annotation as it was, so they are compared
        /// too.
        backends: Vec<(String, i64)>,
    },
    /// Someone else's route of the same name.
    Foreign {
        /// The field managers that wrote it, for the message.
        managers: Vec<String>,
    },
}

/// One backendRef: a revision's Service and its share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The revision.
    pub revision: String,
    /// Its Service's name.
    pub service: String,
    /// Its weight (`status.traffic`, 0 when it has none).
    pub weight: i32,
}

/// The revisions that get a Service, and so a backendRef: every revision
/// in `traffic` (its weight) and every other one in `running` (those with
/// pods asked for; weight 0). Traffic order first, then the rest by name,
/// so the same inputs always give the same route.
pub fn backends<'a>(
    service: &str,
    traffic: &[TrafficTarget],
    running: impl IntoIterator<Item = &'a str>,
) -> Vec<Backend> {
    let backend = |revision: &str, weight: i32| Backend {
        revision: revision.to_owned(),
        service: revision_service_name(service, revision),
        weight,
    };
    let mut out: Vec<Backend> = traffic
        .iter()
        .map(|t| backend(&t.revision, t.weight))
        .collect();
    let mut rest: Vec<&str> = running
        .into_iter()
        .filter(|r| !traffic.iter().any(|t| t.revision == *r))
        .collect();
    rest.sort_unstable();
    rest.dedup();
    out.extend(rest.into_iter().map(|r| backend(r, 0)));
    out
}

/// The HTTPRoute named like the InferenceService, stamped with the hash of
/// its content ([`APPLIED_HASH`]), for server-side apply.
pub fn http_route(parent: &Parent, spec: &InferenceServiceSpec, backends: &[Backend]) -> Value {
    let refs: Vec<Value> = backends
        .iter()
        .map(|b| {
            json!({
                "kind": "Service",
                "name": b.service,
                "port": spec.engine.port,
                "weight": b.weight,
            })
        })
        .collect();
    let mut route_spec = json!({ "rules": [ { "backendRefs": refs } ] });
    let parents = spec.gateway.iter().flat_map(|g| g.parent_refs.iter());
    let parents: Vec<Value> = parents
        .map(|p| {
            let mut v = json!({ "name": p.name });
            if let Some(ns) = &p.namespace {
                v["namespace"] = json!(ns);
            }
            if let Some(s) = &p.section_name {
                v["sectionName"] = json!(s);
            }
            if let Some(port) = p.port {
                v["port"] = json!(port);
            }
            v
        })
        .collect();
    if !parents.is_empty() {
        route_spec["parentRefs"] = Value::Array(parents);
    }
    let labels = BTreeMap::from([
        (labels::SERVICE, parent.name.as_str()),
        ("app.kubernetes.io/managed-by", MANAGED_BY),
        ("app.kubernetes.io/instance", parent.name.as_str()),
    ]);
    let mut route = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": KIND,
        "metadata": {
            "name": parent.name,
            "namespace": parent.namespace,
            "labels": labels,
            "ownerReferences": [parent.owner],
        },
        "spec": route_spec,
    });
    let hash = short_hash(&route);
    route["metadata"]["annotations"] = json!({ APPLIED_HASH: hash });
    route
}

/// The hash a built route carries.
pub fn hash_of(route: &Value) -> Option<&str> {
    route["metadata"]["annotations"][APPLIED_HASH].as_str()
}

/// The (Service, weight) pairs of a route's rules, in order (a missing
/// weight is the API's default, 1).
pub fn backend_weights(route: &Value) -> Vec<(String, i64)> {
    let rules = route["spec"]["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    rules
        .iter()
        .flat_map(|r| {
            r["backendRefs"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
        })
        .map(|b| {
            (
                b["name"].as_str().unwrap_or_default().to_owned(),
                b["weight"].as_i64().unwrap_or(1),
            )
        })
        .collect()
}

/// Whether `desired` must be applied over what is observed: only when the
/// route is this object's (or absent) and its content changed.
pub fn needs_write(view: &RouteView, desired: &Value) -> bool {
    match view {
        RouteView::Unavailable | RouteView::Foreign { .. } => false,
        RouteView::Absent => true,
        RouteView::Owned {
            applied_hash,
            backends,
        } => applied_hash.as_deref() != hash_of(desired) || *backends != backend_weights(desired),
    }
}

/// What the condition and the events are computed from.
#[derive(Clone, Debug)]
pub struct RouteStatus<'a> {
    /// The route's namespace and name.
    pub namespace: &'a str,
    /// The InferenceService's (and the route's) name.
    pub name: &'a str,
    /// The spec (for the parents).
    pub spec: &'a InferenceServiceSpec,
    /// The stored status (transition times, the previous condition).
    pub previous: &'a InferenceServiceStatus,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The time of this pass.
    pub now: &'a Time,
}

fn parents_text(spec: &InferenceServiceSpec) -> Option<String> {
    let parents: Vec<String> = spec
        .gateway
        .iter()
        .flat_map(|g| g.parent_refs.iter())
        .map(|p| {
            let mut s = match &p.namespace {
                Some(ns) => format!("{ns}/{}", p.name),
                None => p.name.clone(),
            };
            if let Some(section) = &p.section_name {
                s.push('.');
                s.push_str(section);
            }
            s
        })
        .collect();
    (!parents.is_empty()).then(|| parents.join(", "))
}

/// The condition for this pass: `None` where the API is not served (no
/// condition at all then; the operator logs that once).
pub fn condition(view: &RouteView, input: &RouteStatus<'_>) -> Option<(bool, Reason, String)> {
    let route = format!("HTTPRoute {}/{}", input.namespace, input.name);
    match view {
        RouteView::Unavailable => None,
        RouteView::Foreign { managers } => {
            let by = if managers.is_empty() {
                String::new()
            } else {
                format!(" (written by {})", managers.join(", "))
            };
            Some((
                false,
                Reason::RouteNotOwned,
                format!(
                    "{route} exists and is not owned by this InferenceService{by}; Steward leaves it as it is and writes no weights to it. Delete it (Steward then writes its own), or route to the revisions' Services yourself"
                ),
            ))
        }
        RouteView::Absent | RouteView::Owned { .. } => {
            let parents = match parents_text(input.spec) {
                Some(p) => format!("attached to {p}"),
                None => "with no parents from spec.gateway.parentRefs (it serves no Gateway until parents are added)".to_owned(),
            };
            Some((
                true,
                Reason::RouteApplied,
                format!("{route} carries status.traffic's weights, {parents}"),
            ))
        }
    }
}

/// Sets (or leaves out) the condition in `status`, keeping its transition
/// time while its status holds.
pub fn write_into(view: &RouteView, input: &RouteStatus<'_>, status: &mut InferenceServiceStatus) {
    let Some((on, reason, message)) = condition(view, input) else {
        return;
    };
    let value = if on { "True" } else { "False" };
    let last_transition_time = input
        .previous
        .conditions
        .iter()
        .find(|p| p.type_ == CONDITION && p.status == value)
        .map_or_else(|| input.now.clone(), |p| p.last_transition_time.clone());
    let c = Condition {
        type_: CONDITION.to_owned(),
        status: value.to_owned(),
        reason: reason.as_str().to_owned(),
        message,
        observed_generation: input.generation,
        last_transition_time,
    };
    match status.conditions.iter_mut().find(|p| p.type_ == CONDITION) {
        Some(p) => *p = c,
        None => status.conditions.push(c),
    }
}

/// A Warning when the route turns out not to be ours (or its writers
/// change); a Normal event when the operator may write it again.
pub fn notes(view: &RouteView, input: &RouteStatus<'_>) -> Vec<Note> {
    let stored = input
        .previous
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION);
    match (condition(view, input), stored) {
        (Some((false, reason, message)), s) => {
            if s.is_some_and(|s| s.status == "False" && s.message == message) {
                return Vec::new();
            }
            vec![Note {
                severity: Severity::Warning,
                reason,
                action: "WriteHTTPRoute",
                message,
            }]
        }
        (Some((true, reason, message)), Some(s)) if s.status == "False" => vec![Note {
            severity: Severity::Normal,
            reason,
            action: "WriteHTTPRoute",
            message,
        }],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::tests::{parent, spec};
    use k8s_openapi::jiff::Timestamp;

    fn split(pairs: &[(&str, i32)]) -> Vec<TrafficTarget> {
        pairs
            .iter()
            .map(|(r, w)| TrafficTarget {
                revision: (*r).into(),
                weight: *w,
            })
            .collect()
    }

    fn weights(route: &Value) -> Vec<(String, i64)> {
        backend_weights(route)
    }

    fn status_input<'a>(
        spec: &'a InferenceServiceSpec,
        previous: &'a InferenceServiceStatus,
        now: &'a Time,
    ) -> RouteStatus<'a> {
        RouteStatus {
            namespace: "team-a",
            name: "chat",
            spec,
            previous,
            generation: Some(3),
            now,
        }
    }

    #[test]
    fn a_canary_split_becomes_two_weighted_backend_refs() {
        let b = backends(
            "chat",
            &split(&[("stable", 75), ("canary", 25)]),
            ["stable", "canary"],
        );
        let route = http_route(&parent(), &spec(""), &b);
        assert_eq!(
            weights(&route),
            vec![("chat-stable".into(), 75), ("chat-canary".into(), 25)]
        );
        assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(route["kind"], "HTTPRoute");
        assert_eq!(route["metadata"]["name"], "chat");
        assert_eq!(route["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["port"], 8000);
        assert!(hash_of(&route).is_some());
    }

    #[test]
    fn a_rolled_back_canary_stays_at_weight_zero_until_its_pods_are_gone() {
        // Rollback: traffic lists only the stable revision; the canary
        // still has pods (draining), so it keeps its Service at weight 0.
        let b = backends("chat", &split(&[("stable", 100)]), ["stable", "canary"]);
        let route = http_route(&parent(), &spec(""), &b);
        assert_eq!(
            weights(&route),
            vec![("chat-stable".into(), 100), ("chat-canary".into(), 0)]
        );
        // At zero it leaves the route (and loses its Service).
        let b = backends("chat", &split(&[("stable", 100)]), ["stable"]);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_coming_canary_is_a_backend_at_zero_before_it_gets_weight() {
        let b = backends("chat", &split(&[("old", 100)]), ["new", "old"]);
        assert_eq!(
            b.iter()
                .map(|b| (b.revision.as_str(), b.weight))
                .collect::<Vec<_>>(),
            vec![("old", 100), ("new", 0)]
        );
    }

    #[test]
    fn parent_refs_come_only_from_the_spec() {
        let b = backends("chat", &split(&[("r", 100)]), ["r"]);
        let none = http_route(&parent(), &spec(""), &b);
        assert!(none["spec"].get("parentRefs").is_none(), "{none}");
        let s = spec(
            "gateway: { parentRefs: [ { name: public, namespace: gw, sectionName: https, port: 443 }, { name: internal } ] }",
        );
        let with = http_route(&parent(), &s, &b);
        assert_eq!(
            with["spec"]["parentRefs"],
            json!([
                { "name": "public", "namespace": "gw", "sectionName": "https", "port": 443 },
                { "name": "internal" },
            ])
        );
        assert_ne!(hash_of(&none), hash_of(&with));
    }

    #[test]
    fn only_an_owned_or_absent_route_with_other_content_is_written() {
        let b = backends("chat", &split(&[("r", 100)]), ["r"]);
        let route = http_route(&parent(), &spec(""), &b);
        let same = Some(hash_of(&route).unwrap().to_owned());
        let stored = backend_weights(&route);
        assert_eq!(stored, vec![("chat-r".to_owned(), 100)]);
        assert!(!needs_write(&RouteView::Unavailable, &route));
        assert!(needs_write(&RouteView::Absent, &route));
        assert!(!needs_write(
            &RouteView::Owned {
                applied_hash: same.clone(),
                backends: stored.clone(),
            },
            &route
        ));
        assert!(needs_write(
            &RouteView::Owned {
                applied_hash: Some("old".into()),
                backends: stored,
            },
            &route
        ));
        // Weights edited by hand under the same annotation are put back.
        assert!(needs_write(
            &RouteView::Owned {
                applied_hash: same,
                backends: vec![("chat-r".to_owned(), 50)],
            },
            &route
        ));
        assert!(!needs_write(
            &RouteView::Foreign {
                managers: vec!["kubectl".into()]
            },
            &route
        ));
    }

    #[test]
    fn a_foreign_route_is_named_in_a_false_condition_and_one_warning() {
        let s = spec("");
        let previous = InferenceServiceStatus::default();
        let now = Time(Timestamp::UNIX_EPOCH);
        let input = status_input(&s, &previous, &now);
        let view = RouteView::Foreign {
            managers: vec!["kubectl-client-side-apply".into()],
        };
        let mut status = InferenceServiceStatus::default();
        write_into(&view, &input, &mut status);
        let c = &status.conditions[0];
        assert_eq!((c.type_.as_str(), c.status.as_str()), (CONDITION, "False"));
        assert_eq!(c.reason, "RouteNotOwned");
        assert!(c.message.contains("HTTPRoute team-a/chat"), "{}", c.message);
        assert!(
            c.message.contains("kubectl-client-side-apply"),
            "{}",
            c.message
        );
        let n = notes(&view, &input);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].severity, Severity::Warning);
        // Once stored, the same conflict is not announced again.
        let input = status_input(&s, &status, &now);
        assert!(notes(&view, &input).is_empty());
        // Deleted by its owner: ours again, one Normal event.
        let n = notes(&RouteView::Absent, &input);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].reason, Reason::RouteApplied);
    }

    #[test]
    fn no_condition_where_the_api_is_not_served() {
        let s = spec("");
        let previous = InferenceServiceStatus::default();
        let now = Time(Timestamp::UNIX_EPOCH);
        let input = status_input(&s, &previous, &now);
        let mut status = InferenceServiceStatus::default();
        write_into(&RouteView::Unavailable, &input, &mut status);
        assert!(status.conditions.is_empty());
        assert!(notes(&RouteView::Unavailable, &input).is_empty());
    }

    #[test]
    fn the_applied_condition_says_where_the_route_attaches() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let previous = InferenceServiceStatus::default();
        let bare = spec("");
        let (on, reason, msg) =
            condition(&RouteView::Absent, &status_input(&bare, &previous, &now)).unwrap();
        assert!(on);
        assert_eq!(reason, Reason::RouteApplied);
        assert!(msg.contains("no parents"), "{msg}");
        let s = spec(
            "gateway: { parentRefs: [ { name: public, namespace: gw, sectionName: https } ] }",
        );
        let (_, _, msg) = condition(
            &RouteView::Owned {
                applied_hash: None,
                backends: Vec::new(),
            },
            &status_input(&s, &previous, &now),
        )
        .unwrap();
        assert!(msg.contains("attached to gw/public.https"), "{msg}");
    }
}
