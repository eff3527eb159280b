//! `GoDuration`: the duration type of every duration field in the CRD.
//!
//! Kubernetes writes durations the way Go's `time.ParseDuration` reads them
//! (`45s`, `2m`, `1h30m`, `800ms`). The schema carries a CEL rule so the API
//! server refuses anything else with a readable message, and the Rust side
//! parses with `kube::core::Duration`, which implements the same grammar, so a
//! value the server accepted always deserializes here.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The rule and its message; shared with the docs and the tests.
pub const DURATION_RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')";
/// The message the API server returns when [`DURATION_RULE`] fails.
pub const DURATION_MESSAGE: &str = "must be a positive duration such as 800ms, 45s, 2m or 1h30m";

/// A non-negative duration written in Go's `time.Duration` syntax.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(Duration);

/// A string that is not a non-negative Go duration.
#[derive(Debug, thiserror::Error)]
#[error("{input:?} {DURATION_MESSAGE}")]
pub struct DurationParseError {
    input: String,
}

impl GoDuration {
    /// Wraps a std duration.
    pub const fn new(d: Duration) -> Self {
        Self(d)
    }

    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// A duration of whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// The std duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Self {
        d.0
    }
}

impl FromStr for GoDuration {
    type Err = DurationParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationParseError {
            input: s.to_owned(),
        };
        // The schema refuses signs and bare numbers; do the same here so a
        // value read from a file behaves like one read from the API server.
        if s.is_empty() || s.starts_with(['+', '-']) || s.chars().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        let parsed: kube::core::Duration = s.parse().map_err(|_| err())?;
        if parsed.is_negative() {
            return Err(err());
        }
        Ok(Self(parsed.into()))
    }
}

impl fmt::Display for GoDuration {
    /// Prints the shortest exact Go form: `1h30m`, `45s`, `800ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let nanos = d.subsec_nanos();
        if d.as_secs() == 0 || nanos != 0 {
            let total = d.as_nanos();
            return if total.is_multiple_of(1_000_000) {
                write!(f, "{}ms", total / 1_000_000)
            } else if total.is_multiple_of(1_000) {
                write!(f, "{}us", total / 1_000)
            } else {
                write!(f, "{total}ns")
            };
        }
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [
                { "rule": DURATION_RULE, "message": DURATION_MESSAGE }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations_and_prints_them_back() {
        for (text, want) in [
            ("45s", Duration::from_secs(45)),
            ("2m", Duration::from_secs(120)),
            ("1h30m", Duration::from_secs(5400)),
            ("800ms", Duration::from_millis(800)),
            ("1.5s", Duration::from_millis(1500)),
        ] {
            let d: GoDuration = text.parse().unwrap();
            assert_eq!(d.get(), want, "{text}");
        }
        assert_eq!(GoDuration::from_secs(5400).to_string(), "1h30m");
        assert_eq!(GoDuration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(GoDuration::from_secs(45).to_string(), "45s");
    }

    #[test]
    fn refuses_numbers_signs_and_words() {
        for bad in ["", "45", "-5s", "+5s", "five seconds", "5 s", "1d"] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?} parsed");
        }
    }
}
