//! Leader election through a `coordination.k8s.io/v1` Lease, so several
//! operator replicas can run and only one reconciles.
//!
//! The rule ([`may_take`]) is pure: a lease may be taken when nobody holds
//! it, when we hold it, or when its holder has not renewed within the lease
//! duration. Writes use the Lease's resourceVersion (optimistic
//! concurrency), so two candidates racing for an expired lease cannot both
//! win: the loser gets 409 Conflict and keeps waiting. A leader that fails
//! to renew before its lease expires gives up (the caller then stops
//! reconciling and exits), so two leaders never act at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{debug, info, warn};

/// Why an election step failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API server refused or could not be reached.
    #[error("lease {name}: {source}")]
    Api {
        /// The Lease name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The lease was lost (not renewed in time, or taken over).
    #[error("lost the leader lease {0}")]
    Lost(String),
}

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// Who we are (pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews (and candidates retry).
    pub renew_every: Duration,
}

/// True when `me` may take or keep the lease at `now`.
pub fn may_take(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return true;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed.0 + SignedDuration::from_secs(secs) < now
}

/// The spec we write when taking or renewing.
fn our_spec(old: Option<&LeaseSpec>, cfg: &LeaseConfig, now: Timestamp) -> LeaseSpec {
    let ours = old.and_then(|s| s.holder_identity.as_deref()) == Some(cfg.identity.as_str());
    let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time: if ours {
            old.and_then(|s| s.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..LeaseSpec::default()
    }
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl Elector {
    /// A candidate for the lease `cfg.name` in the Api's namespace.
    pub fn new(api: Api<Lease>, cfg: LeaseConfig) -> Self {
        Self { api, cfg }
    }

    fn api_err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            name: self.cfg.name.clone(),
            source,
        }
    }

    /// One attempt to take or renew; `Ok(true)` when we hold the lease.
    pub async fn try_once(&self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        let current = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.api_err(e))?;
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(our_spec(None, &self.cfg, now)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(self.api_err(e)),
                }
            }
            Some(mut lease) => {
                if !may_take(lease.spec.as_ref(), &self.cfg.identity, now) {
                    return Ok(false);
                }
                lease.spec = Some(our_spec(lease.spec.as_ref(), &self.cfg, now));
                // replace() sends the resourceVersion we read: a concurrent
                // writer makes this fail with 409 instead of both winning.
                match self
                    .api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(self.api_err(e)),
                }
            }
        }
    }

    /// Waits until we hold the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_once().await {
                Ok(true) => {
                    info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                    return;
                }
                Ok(false) => debug!(lease = %self.cfg.name, "lease held by another replica"),
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.cfg.renew_every).await;
        }
    }

    /// Renews until renewal fails for longer than the lease lasts; returns
    /// the reason leadership ended.
    pub async fn hold(&self) -> LeaderError {
        let mut last_ok = tokio::time::Instant::now();
        // Give up a little before the lease expires so that a successor
        // cannot start while we still act.
        let give_up = self
            .cfg
            .lease_duration
            .saturating_sub(self.cfg.renew_every / 2);
        loop {
            tokio::time::sleep(self.cfg.renew_every).await;
            match self.try_once().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => return LeaderError::Lost(self.cfg.name.clone()),
                Err(e) => {
                    warn!(error = %e, "lease renewal failed");
                    if last_ok.elapsed() >= give_up {
                        return LeaderError::Lost(self.cfg.name.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(who: &str, renewed: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn free_or_own_lease_may_be_taken() {
        assert!(may_take(None, "a", t(100)));
        assert!(may_take(Some(&LeaseSpec::default()), "a", t(100)));
        assert!(may_take(Some(&held_by("a", 99, 15)), "a", t(100)));
    }

    #[test]
    fn live_lease_of_another_replica_is_respected() {
        assert!(!may_take(Some(&held_by("b", 90, 15)), "a", t(100)));
    }

    #[test]
    fn expired_lease_of_another_replica_may_be_taken() {
        assert!(may_take(Some(&held_by("b", 80, 15)), "a", t(100)));
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let cfg = LeaseConfig {
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let mut old = held_by("b", 80, 15);
        old.lease_transitions = Some(3);
        assert_eq!(
            our_spec(Some(&old), &cfg, t(100)).lease_transitions,
            Some(4)
        );
        let mine = our_spec(Some(&old), &cfg, t(100));
        assert_eq!(
            our_spec(Some(&mine), &cfg, t(105)).lease_transitions,
            Some(4)
        );
    }
}
