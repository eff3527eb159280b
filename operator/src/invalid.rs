//! Status of an object the operator cannot act on (a spec that fails
//! [`crate::crd::UncheckedInferenceService::check`]): phase `Failed`, a
//! `Degraded` condition with reason `InvalidSpec` whose message names the
//! field, and `Progressing` false. Nothing else changes: the children stay
//! as they are, so a revision that served before keeps serving until the
//! spec is fixed. Pure; the controller writes it only when it differs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{InferenceServiceStatus, Phase, SpecError};
use crate::reason::Reason;
use crate::status::condition;

/// The reason on the conditions, the event and the error metric.
pub const REASON: Reason = Reason::InvalidSpec;

fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) {
    let old = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = old
        .and_then(|i| conditions.get(i))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    let new = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: REASON.as_str().to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match old {
        Some(i) => conditions[i] = new,
        None => conditions.push(new),
    }
}

/// The status to write for an object whose spec cannot be acted on.
pub fn status(
    previous: &InferenceServiceStatus,
    generation: Option<i64>,
    err: &SpecError,
    now: Time,
) -> InferenceServiceStatus {
    let mut s = previous.clone();
    s.phase = Phase::Failed;
    s.observed_generation = generation;
    set(
        &mut s.conditions,
        condition::DEGRADED,
        "True",
        format!("the spec cannot be acted on: {err}"),
        generation,
        &now,
    );
    set(
        &mut s.conditions,
        condition::PROGRESSING,
        "False",
        "no rollout until the spec is fixed; existing pods keep serving".to_owned(),
        generation,
        &now,
    );
    s
}

/// True when `new` says something `previous` did not (the event is worth
/// sending).
pub fn is_news(previous: &InferenceServiceStatus, new: &InferenceServiceStatus) -> bool {
    let degraded = |s: &InferenceServiceStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::DEGRADED)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    degraded(previous) != degraded(new)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap_or_default())
    }

    #[test]
    fn names_the_field_keeps_the_rest_and_is_stable_across_passes() {
        let err = SpecError {
            field: "spec.draining.window".into(),
            message: "too long".into(),
        };
        let previous = InferenceServiceStatus {
            stable_revision: Some("abc".into()),
            ..InferenceServiceStatus::default()
        };
        let first = status(&previous, Some(2), &err, at(10));
        assert_eq!(first.phase, Phase::Failed);
        assert_eq!(first.stable_revision.as_deref(), Some("abc"));
        let degraded = first
            .conditions
            .iter()
            .find(|c| c.type_ == condition::DEGRADED)
            .expect("Degraded");
        assert_eq!(degraded.reason, REASON.as_str());
        assert!(degraded.message.contains("spec.draining.window"));
        assert!(is_news(&previous, &first));
        // A second pass changes nothing: no write, no event.
        let second = status(&first, Some(2), &err, at(20));
        assert_eq!(first, second);
        assert!(!is_news(&first, &second));
    }
}
