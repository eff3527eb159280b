//! Health of the engine thread, judged from what it publishes (`Shared`):
//! whether the thread is alive, how long ago its loop last came around (a
//! step that never returns is a hung accelerator or a deadlock) and how
//! many model steps in a row have failed. `judge` is pure; `/ready` is 503
//! unless the verdict is `Ok`, and `/health` (liveness) is 503 when the
//! thread is dead or hung, so the kubelet restarts a replica that can never
//! serve again but not one whose steps fail for a while.
//!
//! A failing engine gets no traffic while unready, so nothing would ever
//! clear its failure count: the actor runs a small probe step every
//! `PROBE_INTERVAL` while idle and failing, and a successful probe (or any
//! successful step) makes it ready again.

use std::time::Duration;

/// How often an idle engine with failed steps tries a probe step.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthLimits {
    /// The loop must come around within this long (a step included).
    pub step_timeout: Duration,
    /// Consecutive failed steps that make the replica unready.
    pub max_consecutive_failures: u32,
}

impl Default for HealthLimits {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(60),
            max_consecutive_failures: 3,
        }
    }
}

/// What the engine thread last published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSample {
    /// False once the thread has exited (or panicked outside a step).
    pub alive: bool,
    /// True when the thread was told to stop (end of a drain).
    pub stopped_on_purpose: bool,
    /// Time since the loop last came around.
    pub since_beat: Duration,
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// The engine thread is gone: nothing will ever be served.
    Dead,
    /// The loop has not come around for this long.
    Hung(Duration),
    /// This many steps in a row have failed.
    Failing(u32),
}

impl Health {
    /// Stable reason used in `/ready`, `/health` and `/load` bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Dead => "engine_dead",
            Health::Hung(_) => "engine_hung",
            Health::Failing(_) => "engine_failing",
        }
    }

    /// Whether the replica may take traffic.
    pub fn ready(self) -> bool {
        self == Health::Ok
    }

    /// Whether the process is worth keeping (liveness): a dead or hung
    /// engine thread never recovers by itself; failing steps may.
    pub fn live(self) -> bool {
        !matches!(self, Health::Dead | Health::Hung(_))
    }
}

/// Dead beats hung beats failing: the most final verdict wins.
pub fn judge(s: &HealthSample, l: &HealthLimits) -> Health {
    if !s.alive && !s.stopped_on_purpose {
        return Health::Dead;
    }
    if s.alive && s.since_beat > l.step_timeout {
        return Health::Hung(s.since_beat);
    }
    if s.consecutive_failures >= l.max_consecutive_failures.max(1) {
        return Health::Failing(s.consecutive_failures);
    }
    Health::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> HealthSample {
        HealthSample {
            alive: true,
            stopped_on_purpose: false,
            since_beat: Duration::from_millis(150),
            consecutive_failures: 0,
        }
    }

    fn limits() -> HealthLimits {
        HealthLimits {
            step_timeout: Duration::from_secs(10),
            max_consecutive_failures: 3,
        }
    }

    #[test]
    fn a_beating_engine_without_failures_is_ok() {
        assert_eq!(judge(&ok(), &limits()), Health::Ok);
        let two = HealthSample {
            consecutive_failures: 2,
            ..ok()
        };
        assert_eq!(judge(&two, &limits()), Health::Ok, "below the threshold");
    }

    #[test]
    fn a_dead_engine_thread_is_unready_and_not_live() {
        let h = judge(
            &HealthSample {
                alive: false,
                ..ok()
            },
            &limits(),
        );
        assert_eq!(h, Health::Dead);
        assert!(!h.ready() && !h.live());
        // Stopped at the end of a drain is not death.
        let h = judge(
            &HealthSample {
                alive: false,
                stopped_on_purpose: true,
                since_beat: Duration::from_secs(100),
                ..ok()
            },
            &limits(),
        );
        assert_eq!(h, Health::Ok);
    }

    #[test]
    fn a_loop_that_has_not_come_around_within_the_step_timeout_is_hung() {
        let h = judge(
            &HealthSample {
                since_beat: Duration::from_secs(11),
                ..ok()
            },
            &limits(),
        );
        assert_eq!(h, Health::Hung(Duration::from_secs(11)));
        assert!(!h.ready() && !h.live());
        assert_eq!(h.as_str(), "engine_hung");
    }

    #[test]
    fn consecutive_step_failures_make_it_unready_but_still_live() {
        let h = judge(
            &HealthSample {
                consecutive_failures: 3,
                ..ok()
            },
            &limits(),
        );
        assert_eq!(h, Health::Failing(3));
        assert!(!h.ready() && h.live());
    }

    #[test]
    fn the_most_final_verdict_wins() {
        let s = HealthSample {
            alive: false,
            since_beat: Duration::from_secs(99),
            consecutive_failures: 9,
            ..ok()
        };
        assert_eq!(judge(&s, &limits()), Health::Dead);
        let s = HealthSample { alive: true, ..s };
        assert_eq!(judge(&s, &limits()), Health::Hung(Duration::from_secs(99)));
    }
}
