//! Who owns a model name: the operator's half of the rule the router routes
//! by (docs/router.md, "Model names"; `router/src/table.rs::claim_order`).
//!
//! Every InferenceService claims its `spec.model.name`. Among the claims of
//! one name the oldest `creationTimestamp` wins (equal seconds: namespace,
//! then name); every other claim gets no traffic from the router. Here that
//! becomes status on the losing object: `ModelNameConflict=True` (reason
//! `ModelNameTaken`, the message names the owner as `namespace/name`), Ready
//! False with the same reason (nothing serves it), Degraded and phase
//! Degraded where it would otherwise read Ready, and a Warning event when the
//! conflict starts or its owner changes. The owner never carries the
//! condition; a claim that becomes the owner (the older one was deleted or
//! renamed its model) gets `ModelNameConflict=False` (`ModelNameOwned`).
//!
//! Pure: the controller feeds the claims of its watch scope (the same scope
//! a router with the same `--namespace` arbitrates) and wakes the claims a
//! change may affect ([`affected`]).

use std::cmp::Ordering;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};

use crate::crd::{InferenceServiceStatus, Phase};
use crate::events::{Note, Severity};
use crate::reason::Reason;
use crate::status::condition;

/// The condition type on a losing claim.
pub const CONDITION: &str = "ModelNameConflict";

/// One InferenceService's claim on a model name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.model.name`, compared exactly.
    pub model: String,
    /// `metadata.creationTimestamp` in Unix seconds (`None` sorts last).
    pub created: Option<i64>,
    /// True when the stored status carries `ModelNameConflict=True`.
    pub in_conflict: bool,
}

impl Claim {
    /// The claim of an object as stored; `None` when it names no model
    /// (an object whose spec does not parse claims nothing it can lose).
    pub fn of(
        meta: &ObjectMeta,
        spec: &serde_json::Value,
        status: Option<&serde_json::Value>,
    ) -> Option<Claim> {
        let model = spec.get("model")?.get("name")?.as_str()?;
        let in_conflict = status
            .and_then(|s| s.get("conditions"))
            .and_then(|c| c.as_array())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == CONDITION && c["status"] == "True")
            });
        Some(Claim {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            model: model.to_owned(),
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            in_conflict,
        })
    }

    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

/// The order of claims on one name; the first owns it. The router's
/// `claim_order`, the same rule.
pub fn claim_order(a: &Claim, b: &Claim) -> Ordering {
    let age = |c: &Claim| (c.created.is_none(), c.created.unwrap_or(0));
    age(a).cmp(&age(b)).then_with(|| a.key().cmp(&b.key()))
}

/// This object's claim lost: who holds the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameConflict {
    /// The contested `spec.model.name`.
    pub model: String,
    /// The owner's namespace.
    pub owner_namespace: String,
    /// The owner's name.
    pub owner_name: String,
}

impl NameConflict {
    fn message(&self) -> String {
        format!(
            "model name {:?} is held by {}/{}, an older InferenceService; the router sends this one no traffic. Choose another spec.model.name, or delete {}/{} to take the name over",
            self.model, self.owner_namespace, self.owner_name, self.owner_namespace, self.owner_name
        )
    }
}

/// The conflict of `namespace/name`, if its claim is not the owner of its
/// model name among `claims` (which include its own).
pub fn conflict_of<'a>(
    namespace: &str,
    name: &str,
    claims: impl IntoIterator<Item = &'a Claim> + Clone,
) -> Option<NameConflict> {
    let me = claims
        .clone()
        .into_iter()
        .find(|c| c.key() == (namespace, name))?;
    let owner = claims
        .into_iter()
        .filter(|c| c.model == me.model)
        .min_by(|a, b| claim_order(a, b))?;
    (owner.key() != me.key()).then(|| NameConflict {
        model: me.model.clone(),
        owner_namespace: owner.namespace.clone(),
        owner_name: owner.name.clone(),
    })
}

/// The claims whose ownership a change of `changed` may alter: every other
/// claim of the same model name, and every claim in conflict (the changed
/// object may have released their name by renaming its model or going
/// away). Returned as (namespace, name).
pub fn affected<'a>(
    changed: &Claim,
    claims: impl IntoIterator<Item = &'a Claim>,
) -> Vec<(String, String)> {
    claims
        .into_iter()
        .filter(|c| c.key() != changed.key() && (c.model == changed.model || c.in_conflict))
        .map(|c| (c.namespace.clone(), c.name.clone()))
        .collect()
}

/// What [`write_into`] needs besides the conflict.
#[derive(Clone, Debug)]
pub struct ClaimStatus<'a> {
    /// This object's `spec.model.name`.
    pub model: &'a str,
    /// The stored status (condition transition times, events).
    pub previous: &'a InferenceServiceStatus,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The time of this pass.
    pub now: &'a Time,
}

/// Puts the claim's outcome into the status computed for this pass (before
/// its transitions are taken, so the Ready and Degraded events follow it).
pub fn write_into(
    conflict: Option<&NameConflict>,
    input: &ClaimStatus<'_>,
    status: &mut InferenceServiceStatus,
) {
    let set = |status: &mut InferenceServiceStatus, type_: &str, on: bool, reason, message| {
        put(status, input, type_, on, reason, message)
    };
    let Some(c) = conflict else {
        if input
            .previous
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION)
        {
            set(
                status,
                CONDITION,
                false,
                Reason::ModelNameOwned,
                format!("this InferenceService owns model name {:?}", input.model),
            );
        }
        return;
    };
    let message = c.message();
    set(
        status,
        CONDITION,
        true,
        Reason::ModelNameTaken,
        message.clone(),
    );
    set(
        status,
        condition::READY,
        false,
        Reason::ModelNameTaken,
        message.clone(),
    );
    let degraded = status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::DEGRADED && c.status == "True");
    if !degraded {
        set(
            status,
            condition::DEGRADED,
            true,
            Reason::ModelNameTaken,
            message,
        );
    }
    if status.phase == Phase::Ready {
        status.phase = Phase::Degraded;
    }
}

/// Sets one condition, keeping its transition time when its status did not
/// change since the stored status.
fn put(
    status: &mut InferenceServiceStatus,
    input: &ClaimStatus<'_>,
    type_: &str,
    on: bool,
    reason: Reason,
    message: String,
) {
    let value = if on { "True" } else { "False" };
    let last_transition_time = input
        .previous
        .conditions
        .iter()
        .find(|p| p.type_ == type_ && p.status == value)
        .map_or_else(|| input.now.clone(), |p| p.last_transition_time.clone());
    let c = Condition {
        type_: type_.to_owned(),
        status: value.to_owned(),
        reason: reason.as_str().to_owned(),
        message,
        observed_generation: input.generation,
        last_transition_time,
    };
    match status.conditions.iter_mut().find(|p| p.type_ == type_) {
        Some(p) => *p = c,
        None => status.conditions.push(c),
    }
}

/// A Warning when the claim starts losing (or its owner changes); a Normal
/// event when it becomes the owner after losing.
pub fn notes(conflict: Option<&NameConflict>, previous: &InferenceServiceStatus) -> Vec<Note> {
    let stored = previous.conditions.iter().find(|c| c.type_ == CONDITION);
    match (conflict, stored) {
        (Some(c), s) => {
            let message = c.message();
            let same = s.is_some_and(|s| s.status == "True" && s.message == message);
            if same {
                return Vec::new();
            }
            vec![Note {
                severity: Severity::Warning,
                reason: Reason::ModelNameTaken,
                action: "ClaimModelName",
                message,
            }]
        }
        (None, Some(s)) if s.status == "True" => vec![Note {
            severity: Severity::Normal,
            reason: Reason::ModelNameOwned,
            action: "ClaimModelName",
            message: "the older claim on this model name is gone; this InferenceService owns it and gets traffic".into(),
        }],
        (None, _) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ns: &str, name: &str, model: &str, created: Option<i64>) -> Claim {
        Claim {
            namespace: ns.into(),
            name: name.into(),
            model: model.into(),
            created,
            in_conflict: false,
        }
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_000).expect("time"))
    }

    fn ready_status() -> InferenceServiceStatus {
        let cond = |t: &str, s: &str, r: &str| Condition {
            type_: t.into(),
            status: s.into(),
            reason: r.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(
                k8s_openapi::jiff::Timestamp::from_second(10).expect("time"),
            ),
        };
        InferenceServiceStatus {
            phase: Phase::Ready,
            conditions: vec![
                cond("Ready", "True", "RevisionReady"),
                cond("Progressing", "False", "RolloutComplete"),
                cond("Degraded", "False", "AsExpected"),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_oldest_claim_owns_the_name_whatever_the_namespace_order() {
        let claims = [
            claim("team-a", "chat", "m", Some(100)),
            claim("aaa", "grab", "m", Some(200)),
            claim("zzz", "other", "n", Some(50)),
        ];
        assert_eq!(conflict_of("team-a", "chat", &claims), None);
        assert_eq!(conflict_of("zzz", "other", &claims), None);
        assert_eq!(
            conflict_of("aaa", "grab", &claims),
            Some(NameConflict {
                model: "m".into(),
                owner_namespace: "team-a".into(),
                owner_name: "chat".into(),
            })
        );
    }

    #[test]
    fn equal_seconds_fall_back_to_namespace_then_name_and_no_timestamp_sorts_last() {
        let claims = [
            claim("b", "x", "m", Some(5)),
            claim("a", "y", "m", Some(5)),
            claim("a", "a", "m", None),
        ];
        assert_eq!(
            conflict_of("b", "x", &claims).map(|c| c.owner_name),
            Some("y".into())
        );
        assert!(conflict_of("a", "y", &claims).is_none());
        assert!(conflict_of("a", "a", &claims).is_some());
    }

    #[test]
    fn a_claim_not_in_the_list_and_a_name_held_alone_are_not_conflicts() {
        let claims = [claim("a", "x", "m", Some(1))];
        assert_eq!(conflict_of("a", "missing", &claims), None);
        assert_eq!(conflict_of("a", "x", &claims), None);
    }

    #[test]
    fn a_change_wakes_the_same_name_and_every_claim_in_conflict() {
        let mut stuck = claim("c", "lost", "old-name", Some(3));
        stuck.in_conflict = true;
        let claims = [
            claim("a", "owner", "m", Some(1)),
            claim("b", "rival", "m", Some(2)),
            claim("d", "else", "q", Some(4)),
            stuck,
        ];
        let changed = claim("a", "owner", "m", Some(1));
        assert_eq!(
            affected(&changed, &claims),
            vec![
                ("b".to_owned(), "rival".to_owned()),
                ("c".to_owned(), "lost".to_owned())
            ]
        );
    }

    #[test]
    fn the_claim_reads_the_stored_object() {
        let meta = ObjectMeta {
            namespace: Some("n".into()),
            name: Some("s".into()),
            creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(42).expect("time"),
            )),
            ..Default::default()
        };
        let spec = serde_json::json!({"model": {"name": "m"}});
        let status =
            serde_json::json!({"conditions": [{"type": "ModelNameConflict", "status": "True"}]});
        let c = Claim::of(&meta, &spec, Some(&status)).expect("a claim");
        assert_eq!(
            (c.model.as_str(), c.created, c.in_conflict),
            ("m", Some(42), true)
        );
        assert!(Claim::of(&meta, &serde_json::json!({"model": "m"}), None).is_none());
    }

    #[test]
    fn a_losing_claim_is_not_ready_and_says_who_holds_the_name() {
        let previous = ready_status();
        let conflict = NameConflict {
            model: "m".into(),
            owner_namespace: "team-a".into(),
            owner_name: "chat".into(),
        };
        let mut status = ready_status();
        let input = ClaimStatus {
            model: "m",
            previous: &previous,
            generation: Some(1),
            now: &now(),
        };
        write_into(Some(&conflict), &input, &mut status);
        let get = |t: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .cloned()
                .expect("condition")
        };
        let c = get(CONDITION);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "ModelNameTaken")
        );
        assert!(c.message.contains("team-a/chat"), "{}", c.message);
        assert_eq!(c.last_transition_time, now());
        let ready = get("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ModelNameTaken")
        );
        assert_eq!(get("Degraded").status, "True");
        assert_eq!(status.phase, Phase::Degraded);
        // The transition to Degraded and the conflict each tell people once.
        let notes = notes(Some(&conflict), &previous);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].severity, Severity::Warning);
        assert!(notes[0].message.contains("team-a/chat"));
        let t = crate::status::transitions(&previous, &status);
        assert!(matches!(
            t.as_slice(),
            [crate::status::Transition::BecameDegraded { reason, .. }] if reason == "ModelNameTaken"
        ));
    }

    #[test]
    fn a_settled_conflict_writes_nothing_new_and_tells_nobody_again() {
        let conflict = NameConflict {
            model: "m".into(),
            owner_namespace: "team-a".into(),
            owner_name: "chat".into(),
        };
        let first = ClaimStatus {
            model: "m",
            previous: &ready_status(),
            generation: Some(1),
            now: &now(),
        };
        let mut stored = ready_status();
        write_into(Some(&conflict), &first, &mut stored);
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).expect("time"));
        let mut again = ready_status();
        write_into(
            Some(&conflict),
            &ClaimStatus {
                model: "m",
                previous: &stored,
                generation: Some(1),
                now: &later,
            },
            &mut again,
        );
        assert_eq!(again, stored, "the same status: no write");
        assert!(notes(Some(&conflict), &stored).is_empty());
    }

    #[test]
    fn a_claim_that_wins_the_name_back_says_so_once() {
        let conflict = NameConflict {
            model: "m".into(),
            owner_namespace: "team-a".into(),
            owner_name: "chat".into(),
        };
        let mut stored = ready_status();
        write_into(
            Some(&conflict),
            &ClaimStatus {
                model: "m",
                previous: &ready_status(),
                generation: Some(1),
                now: &now(),
            },
            &mut stored,
        );
        let mut status = ready_status();
        write_into(
            None,
            &ClaimStatus {
                model: "m",
                previous: &stored,
                generation: Some(1),
                now: &now(),
            },
            &mut status,
        );
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION)
            .expect("kept, False");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ModelNameOwned")
        );
        assert_eq!(status.phase, Phase::Ready);
        let n = notes(None, &stored);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].reason, Reason::ModelNameOwned);
        // An object that never lost has no such condition at all.
        let mut plain = ready_status();
        write_into(
            None,
            &ClaimStatus {
                model: "m",
                previous: &ready_status(),
                generation: Some(1),
                now: &now(),
            },
            &mut plain,
        );
        assert_eq!(plain, ready_status());
        assert!(notes(None, &ready_status()).is_empty());
    }
}
