//! Leader election through a `coordination.k8s.io/v1` Lease, so several
//! operator replicas can run and only one reconciles.
//!
//! The one invariant: two leaders never act at once. Three rules keep it,
//! none of which trusts another machine's wall clock:
//!
//! - **Candidates measure on their own monotonic clock** ([`Observer`]): a
//!   lease held by someone else may be taken only after its record (its
//!   resourceVersion) has stayed unchanged for the holder's
//!   `leaseDurationSeconds`, counted from when *this* candidate first saw
//!   that record. The `renewTime` stamped by the holder is written for
//!   humans and never compared with the candidate's clock, so clock skew
//!   between machines cannot make a live lease look expired.
//! - **The leader's tenure starts when it sent the renewal**
//!   ([`Tenure`]), not when the answer came back: the record a candidate
//!   sees cannot be older than that moment, so the leader's deadline
//!   (`sent + leaseDuration - margin`) always comes before any candidate's.
//! - **Every call is bounded** by the time left in the tenure; when the
//!   deadline passes with no successful renewal, [`Elector::hold`] returns
//!   at once even if a call is still hanging, and the caller stops acting.
//!
//! Writes use the Lease's resourceVersion (optimistic concurrency), so two
//! candidates racing for a free lease cannot both win: the loser gets 409
//! Conflict and keeps waiting. [`LeaseConfig::validate`] refuses settings
//! that cannot keep the invariant (renewal not well inside the lease).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
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
    /// A call to the API server did not answer in time.
    #[error("lease {0}: the API server did not answer in time")]
    Timeout(String),
    /// The lease was lost (not renewed in time, or taken over).
    #[error("lost the leader lease {0}")]
    Lost(String),
    /// The settings cannot keep two leaders from acting at once.
    #[error("leader election settings: {0}")]
    Config(String),
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

impl LeaseConfig {
    /// Refuses settings that cannot keep the invariant: the lease must
    /// last at least a second (the Lease stores whole seconds) and fit two
    /// renewals, so one failed renewal still leaves time for another.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |m: String| Err(LeaderError::Config(m));
        if self.lease_duration < Duration::from_secs(1) {
            return bad(format!(
                "lease duration {:?} is shorter than 1s",
                self.lease_duration
            ));
        }
        if self.lease_duration > Duration::from_secs(3600) {
            return bad(format!(
                "lease duration {:?} is longer than 1h",
                self.lease_duration
            ));
        }
        if self.renew_every.is_zero() || self.renew_every.saturating_mul(2) > self.lease_duration {
            return bad(format!(
                "renew interval {:?} must be positive and at most half the lease duration {:?}",
                self.renew_every, self.lease_duration
            ));
        }
        Ok(())
    }

    /// What the Lease says: whole seconds, rounded up, so candidates never
    /// wait less than the leader assumes.
    fn duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }

    /// How early the leader stops before its lease could expire for
    /// others: half a renewal interval covers a write still in flight and
    /// clock-rate drift.
    fn margin(&self) -> Duration {
        self.renew_every / 2
    }
}

/// The leader's view: until when it may act, on its own monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tenure {
    /// Stop acting at this instant unless renewed.
    pub until: Instant,
}

impl Tenure {
    /// The tenure a renewal sent at `sent` grants. `sent` is read before
    /// the request goes out: the record others see is never older.
    pub fn after_renewal(cfg: &LeaseConfig, sent: Instant) -> Tenure {
        Tenure {
            until: sent + cfg.lease_duration.saturating_sub(cfg.margin()),
        }
    }
}

/// A candidate's memory of the lease record, on its own monotonic clock.
#[derive(Clone, Debug, Default)]
pub struct Observer {
    seen: Option<(String, Instant)>,
}

/// Who holds a lease record, as far as taking it goes.
fn holder(spec: Option<&LeaseSpec>) -> &str {
    spec.and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("")
}

impl Observer {
    /// Records `version` (the Lease's resourceVersion) as seen at `now`;
    /// the clock restarts only when the record changed.
    pub fn observe(&mut self, version: &str, now: Instant) {
        if self.seen.as_ref().is_none_or(|(v, _)| v != version) {
            self.seen = Some((version.to_owned(), now));
        }
    }

    /// True when `me` may take or keep the lease at `now`: it is free,
    /// ours, or unchanged for its whole duration since we first saw it.
    pub fn may_take(&self, spec: Option<&LeaseSpec>, me: &str, now: Instant) -> bool {
        let who = holder(spec);
        if who.is_empty() || who == me {
            return true;
        }
        let secs = spec
            .and_then(|s| s.lease_duration_seconds)
            .filter(|s| *s > 0)
            .map_or(15, |s| u64::try_from(s).unwrap_or(15));
        self.seen.as_ref().is_some_and(|(_, since)| {
            now.saturating_duration_since(*since) > Duration::from_secs(secs)
        })
    }
}

/// The spec we write when taking or renewing.
fn our_spec(old: Option<&LeaseSpec>, cfg: &LeaseConfig, now: Timestamp) -> LeaseSpec {
    let ours = holder(old) == cfg.identity;
    let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration_seconds()),
        acquire_time: if ours {
            old.and_then(|s| s.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..LeaseSpec::default()
    }
}

/// The wall clock written into `renewTime`/`acquireTime` (informational
/// only); replaceable so tests can run a skewed replica.
pub type WallClock = fn() -> Timestamp;

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observer: tokio::sync::Mutex<Observer>,
    wall: WallClock,
}

impl Elector {
    /// A candidate for the lease `cfg.name` in the Api's namespace.
    pub fn new(api: Api<Lease>, cfg: LeaseConfig) -> Result<Self, LeaderError> {
        Self::with_wall_clock(api, cfg, Timestamp::now)
    }

    /// As [`Elector::new`] with a given wall clock (tests skew it).
    pub fn with_wall_clock(
        api: Api<Lease>,
        cfg: LeaseConfig,
        wall: WallClock,
    ) -> Result<Self, LeaderError> {
        cfg.validate()?;
        Ok(Self {
            api,
            cfg,
            observer: tokio::sync::Mutex::new(Observer::default()),
            wall,
        })
    }

    fn api_err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            name: self.cfg.name.clone(),
            source,
        }
    }

    /// One attempt to take or renew, bounded by `deadline`; `Ok(true)` when
    /// we hold the lease.
    async fn try_once(&self, deadline: Instant) -> Result<bool, LeaderError> {
        match tokio::time::timeout_at(deadline, self.attempt()).await {
            Ok(r) => r,
            Err(_) => Err(LeaderError::Timeout(self.cfg.name.clone())),
        }
    }

    async fn attempt(&self) -> Result<bool, LeaderError> {
        let current = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.api_err(e))?;
        let now = (self.wall)();
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
                let version = lease.metadata.resource_version.clone().unwrap_or_default();
                {
                    let mut obs = self.observer.lock().await;
                    obs.observe(&version, Instant::now());
                    if !obs.may_take(lease.spec.as_ref(), &self.cfg.identity, Instant::now()) {
                        return Ok(false);
                    }
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

    /// Waits until we hold the lease; returns our tenure.
    pub async fn acquire(&self) -> Tenure {
        loop {
            let sent = Instant::now();
            match self.try_once(sent + self.cfg.renew_every).await {
                Ok(true) => {
                    info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                    return Tenure::after_renewal(&self.cfg, sent);
                }
                Ok(false) => debug!(lease = %self.cfg.name, "lease held by another replica"),
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep_until(sent + self.cfg.renew_every).await;
        }
    }

    /// Renews until the tenure runs out without a renewal, or someone else
    /// holds the lease; returns the reason leadership ended, at the latest
    /// at the tenure's end (a hanging call is abandoned, not awaited).
    pub async fn hold(&self, mut tenure: Tenure) -> LeaderError {
        let mut next = Instant::now() + self.cfg.renew_every;
        loop {
            if tokio::time::timeout_at(tenure.until, tokio::time::sleep_until(next))
                .await
                .is_err()
            {
                return LeaderError::Lost(self.cfg.name.clone());
            }
            let sent = Instant::now();
            match self.try_once(tenure.until).await {
                Ok(true) => {
                    tenure = Tenure::after_renewal(&self.cfg, sent);
                    next = sent + self.cfg.renew_every;
                }
                Ok(false) => return LeaderError::Lost(self.cfg.name.clone()),
                Err(e) => {
                    warn!(error = %e, "lease renewal failed");
                    if Instant::now() >= tenure.until {
                        return LeaderError::Lost(self.cfg.name.clone());
                    }
                    // Retry soon: the tenure is running out.
                    next =
                        Instant::now() + (self.cfg.renew_every / 4).max(Duration::from_millis(50));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(who: &str, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(0).unwrap_or_default())),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    fn cfg(lease: u64, renew: u64) -> LeaseConfig {
        LeaseConfig {
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_millis(lease),
            renew_every: Duration::from_millis(renew),
        }
    }

    #[test]
    fn free_or_own_lease_may_be_taken_at_once() {
        let obs = Observer::default();
        let now = Instant::now();
        assert!(obs.may_take(None, "a", now));
        assert!(obs.may_take(Some(&LeaseSpec::default()), "a", now));
        assert!(obs.may_take(Some(&held_by("a", 15)), "a", now));
    }

    /// Fault 7 of issue 13: the holder's renewTime was compared with the
    /// candidate's wall clock, so a candidate whose clock ran ahead by more
    /// than the margin took a live lease. Now only the candidate's own
    /// monotonic clock counts, from when it first saw the record.
    #[test]
    fn an_old_looking_renew_time_does_not_make_a_live_lease_takeable() {
        // renewTime is 1970: any wall-clock comparison says "expired".
        let spec = held_by("b", 15);
        let mut obs = Observer::default();
        let t0 = Instant::now();
        obs.observe("1", t0);
        assert!(!obs.may_take(Some(&spec), "a", t0));
        assert!(!obs.may_take(Some(&spec), "a", t0 + Duration::from_secs(15)));
        // The holder renews (new resourceVersion): the clock restarts.
        obs.observe("2", t0 + Duration::from_secs(10));
        assert!(!obs.may_take(Some(&spec), "a", t0 + Duration::from_secs(20)));
        // Unchanged for longer than the duration: the holder is gone.
        assert!(obs.may_take(Some(&spec), "a", t0 + Duration::from_secs(26)));
    }

    #[test]
    fn seeing_the_same_record_again_does_not_restart_the_clock() {
        let spec = held_by("b", 5);
        let mut obs = Observer::default();
        let t0 = Instant::now();
        obs.observe("7", t0);
        obs.observe("7", t0 + Duration::from_secs(4));
        assert!(obs.may_take(Some(&spec), "a", t0 + Duration::from_secs(6)));
    }

    /// Fault 7: the tenure was counted from when the renewal returned. It
    /// is counted from when it was sent, and ends before the lease could
    /// expire for a candidate who saw the renewal land.
    #[test]
    fn tenure_ends_before_any_candidate_may_take_over() {
        let c = cfg(15_000, 5_000);
        let sent = Instant::now();
        let landed = sent + Duration::from_secs(3); // a slow write
        let tenure = Tenure::after_renewal(&c, sent);
        let mut obs = Observer::default();
        obs.observe("9", landed);
        let spec = held_by("a", c.duration_seconds());
        let mut t = sent;
        while t < tenure.until + Duration::from_secs(30) {
            assert!(
                !(t < tenure.until && obs.may_take(Some(&spec), "b", t)),
                "candidate may take over at {:?} while the leader acts until {:?}",
                t - sent,
                tenure.until - sent
            );
            t += Duration::from_millis(100);
        }
        assert_eq!(tenure.until - sent, Duration::from_millis(12_500));
    }

    /// Fault 7: nothing checked that renewal fits inside the lease.
    #[test]
    fn settings_that_cannot_keep_one_leader_are_refused() {
        assert!(cfg(15_000, 5_000).validate().is_ok());
        assert!(cfg(15_000, 7_500).validate().is_ok());
        for (lease, renew) in [
            (15_000, 15_000),
            (15_000, 20_000),
            (15_000, 0),
            (500, 100),
            (10_000, 6_000),
        ] {
            assert!(cfg(lease, renew).validate().is_err(), "{lease}/{renew}");
        }
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(cfg(1_500, 500).duration_seconds(), 2);
        assert_eq!(cfg(15_000, 5_000).duration_seconds(), 15);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let c = LeaseConfig {
            identity: "a".into(),
            ..cfg(15_000, 5_000)
        };
        let mut old = held_by("b", 15);
        old.lease_transitions = Some(3);
        let t = |s| Timestamp::from_second(s).unwrap_or_default();
        assert_eq!(our_spec(Some(&old), &c, t(100)).lease_transitions, Some(4));
        let mine = our_spec(Some(&old), &c, t(100));
        assert_eq!(our_spec(Some(&mine), &c, t(105)).lease_transitions, Some(4));
    }
}
