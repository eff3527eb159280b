//! `GoDuration`: the duration type of every duration field in the CRD, and
//! the per-field bounds that the schema and the Rust side share.
//!
//! Kubernetes writes durations the way Go's `time.ParseDuration` reads them
//! (`45s`, `2m`, `1h30m`, `800ms`). Every duration field carries two CEL
//! rules: the grammar ([`DURATION_RULE`]) and its field's range
//! ([`Bounds`]), so the API server refuses `0s`, `-5s` and
//! `9999999999999999h` with a message naming the field. The Rust side
//! parses the same grammar with checked arithmetic (never a panic, whatever
//! the digits) and checks the same range on deserialization, so an object
//! stored before a rule existed is refused at the operator's edge
//! ([`super::check`]) with the field's path instead of being acted on.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The grammar rule; shared with the docs and the tests. Each unit takes a
/// bounded number of digits, so that no string of at most 32 characters
/// that matches can overflow Go's duration: CEL's `duration()` then never
/// fails with a conversion error, which the API server would otherwise
/// report on every later update of an object stored before the rule (a
/// rule that errors is not ratcheted, so even status writes would fail).
pub const DURATION_RULE: &str = "self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?h|[0-9]{1,7}(\\\\.[0-9]{1,9})?m|[0-9]{1,9}(\\\\.[0-9]{1,9})?s|[0-9]{1,12}(\\\\.[0-9]{1,9})?ms|[0-9]{1,15}(\\\\.[0-9]{1,9})?us|[0-9]{1,18}(\\\\.[0-9]{1,9})?ns)+$')";
/// The message the API server returns when [`DURATION_RULE`] fails.
pub const DURATION_MESSAGE: &str = "must be a positive duration such as 800ms, 45s, 2m or 1h30m";

/// The longest duration Go can represent (`math.MaxInt64` nanoseconds);
/// Go's `time.ParseDuration` refuses anything longer, and so do we.
const GO_MAX_NANOS: u128 = i64::MAX as u128;

/// The longest duration any field accepts; bounds the arithmetic done with
/// durations (grace periods, deadlines) far away from overflow.
pub const LONGEST: GoDuration = GoDuration::from_secs(7 * 24 * 3600);

/// A non-negative duration written in Go's `time.Duration` syntax.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(Duration);

/// Why a string is not an acceptable duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationParseError {
    /// Not Go's duration grammar (or a sign, or no unit).
    #[error("{0:?} {DURATION_MESSAGE}")]
    Syntax(String),
    /// Longer than Go's `time.Duration` can hold.
    #[error("{0:?} is longer than a Go duration can be (about 2562047h)")]
    Overflow(String),
    /// Outside the field's range.
    #[error("{value:?} must be between {min} and {max}")]
    OutOfRange {
        /// The value as written.
        value: String,
        /// The field's shortest duration.
        min: GoDuration,
        /// The field's longest duration.
        max: GoDuration,
    },
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

/// Nanoseconds per unit of Go's duration grammar.
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{00b5}s" | "\u{03bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses `[0-9]+(\.[0-9]+)?unit` repeated, as Go does, in exact integer
/// nanoseconds (fractions truncate, as in Go). Every step is checked: a
/// string of any length gives a value or an error, never a panic.
fn parse_nanos(s: &str) -> Result<u128, DurationParseError> {
    let syntax = || DurationParseError::Syntax(s.to_owned());
    let overflow = || DurationParseError::Overflow(s.to_owned());
    if s.is_empty() {
        return Err(syntax());
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if int_len == 0 {
            return Err(syntax());
        }
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                if n == 0 {
                    return Err(syntax());
                }
                f.split_at(n)
            }
            None => ("", after),
        };
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = unit_nanos(unit).ok_or_else(syntax)?;
        // Digits beyond what u128 holds are an overflow, not a syntax error.
        let mut whole: u128 = 0;
        for d in int_part.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(d - b'0')))
                .ok_or_else(overflow)?;
            if whole > GO_MAX_NANOS {
                return Err(overflow());
            }
        }
        let mut part = whole.checked_mul(scale).ok_or_else(overflow)?;
        // Fraction: scale / 10 per digit, truncating like Go; digits past
        // nanosecond precision change nothing.
        let mut place = scale;
        for d in frac_part.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            part = part
                .checked_add(u128::from(d - b'0') * place)
                .ok_or_else(overflow)?;
        }
        total = total.checked_add(part).ok_or_else(overflow)?;
        if total > GO_MAX_NANOS {
            return Err(overflow());
        }
        rest = after;
    }
    Ok(total)
}

impl FromStr for GoDuration {
    type Err = DurationParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nanos = parse_nanos(s)?;
        let secs = u64::try_from(nanos / 1_000_000_000)
            .map_err(|_| DurationParseError::Overflow(s.to_owned()))?;
        // The remainder is below 1e9, so it fits in u32.
        let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
        Ok(Self(Duration::new(secs, sub)))
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

/// The range a duration field accepts: one value drives the CEL rule in the
/// schema and the check on deserialization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Shortest accepted (always positive: zero windows, intervals and
    /// pauses make no sense).
    pub min: GoDuration,
    /// Longest accepted.
    pub max: GoDuration,
}

impl Bounds {
    /// The message of the range rule.
    pub fn message(&self) -> String {
        format!("must be between {} and {}", self.min, self.max)
    }

    /// The CEL range rule. Guarded by the grammar so a string CEL cannot
    /// convert yields the grammar's message, not an evaluation error; a
    /// value longer than Go's limit fails `duration()` and is refused too.
    pub fn rule(&self) -> String {
        format!(
            "!{DURATION_RULE} || (duration(self) >= duration('{}') && duration(self) <= duration('{}'))",
            self.min, self.max
        )
    }

    /// The field's schema: a short string, the grammar, the range.
    pub fn schema(&self) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [
                { "rule": DURATION_RULE, "message": DURATION_MESSAGE },
                { "rule": self.rule(), "message": self.message() }
            ]
        })
    }

    /// Parses and range-checks.
    pub fn parse(&self, s: &str) -> Result<GoDuration, DurationParseError> {
        let d: GoDuration = s.parse()?;
        if d < self.min || d > self.max {
            return Err(DurationParseError::OutOfRange {
                value: s.to_owned(),
                min: self.min,
                max: self.max,
            });
        }
        Ok(d)
    }

    /// Deserializes and range-checks (for `#[serde(deserialize_with)]`).
    pub fn deserialize<'de, D: Deserializer<'de>>(&self, d: D) -> Result<GoDuration, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        self.parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Declares one field's bounds as a module with `BOUNDS`, `schema` (for
/// `#[schemars(schema_with)]`) and `deserialize` (for
/// `#[serde(deserialize_with)]`).
macro_rules! duration_field {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr) => {
        $(#[$doc])*
        pub mod $name {
            #[allow(unused_imports)]
            use super::*;

            /// The field's range.
            pub const BOUNDS: Bounds = Bounds { min: $min, max: $max };

            /// The field's schema.
            pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                BOUNDS.schema()
            }

            /// Deserializes with the range check.
            pub fn deserialize<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<GoDuration, D::Error> {
                BOUNDS.deserialize(d)
            }

            /// Deserializes an optional field (with `#[serde(default)]`)
            /// with the range check.
            #[allow(dead_code)]
            pub fn deserialize_opt<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<Option<GoDuration>, D::Error> {
                BOUNDS.deserialize(d).map(Some)
            }
        }
    };
}

/// The bounds of each duration field, by field.
pub mod fields {
    use super::{Bounds, GoDuration, LONGEST};

    const fn secs(s: u64) -> GoDuration {
        GoDuration::from_secs(s)
    }
    const fn millis(ms: u64) -> GoDuration {
        GoDuration::from_millis(ms)
    }

    duration_field!(
        /// `autoscaling.scaleInAfter`: 1s to 24h.
        scale_in_after,
        secs(1),
        secs(24 * 3600)
    );
    duration_field!(
        /// `slo.ttftP99`: 1ms to 10m.
        ttft_p99,
        millis(1),
        secs(600)
    );
    duration_field!(
        /// `slo.itlP99`: 1ms to 1m.
        itl_p99,
        millis(1),
        secs(60)
    );
    duration_field!(
        /// `rollout.steps[].pause`: 1s to a week (a long bake is legitimate).
        step_pause,
        secs(1),
        LONGEST
    );
    duration_field!(
        /// `rollout.analysis.interval`: 1s to 1h.
        analysis_interval,
        secs(1),
        secs(3600)
    );
    duration_field!(
        /// `rollout.analysis.unknownTimeout`: 1s to a week.
        unknown_timeout,
        secs(1),
        LONGEST
    );
    duration_field!(
        /// The `for` of a PromQL alarm: 1s to 24h.
        query_for,
        secs(1),
        secs(24 * 3600)
    );
    duration_field!(
        /// `draining.window`: 1s to 1h (the pod's grace period adds the
        /// operator's drain margin).
        drain_window,
        secs(1),
        secs(3600)
    );

    /// Every field's bounds, for the docs and the tests.
    pub const ALL: &[(&str, Bounds)] = &[
        ("autoscaling.scaleInAfter", scale_in_after::BOUNDS),
        ("slo.ttftP99", ttft_p99::BOUNDS),
        ("slo.itlP99", itl_p99::BOUNDS),
        ("rollout.steps[].pause", step_pause::BOUNDS),
        ("rollout.analysis.interval", analysis_interval::BOUNDS),
        ("rollout.analysis.unknownTimeout", unknown_timeout::BOUNDS),
        ("rollout.analysis.rollbackOn…query.for", query_for::BOUNDS),
        ("draining.window", drain_window::BOUNDS),
    ];
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Fields normally use their own bounds (`fields::*::schema`); this is
    /// the fallback: positive and at most [`LONGEST`].
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        Bounds {
            min: GoDuration::from_millis(1),
            max: LONGEST,
        }
        .schema()
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
            ("1.5h", Duration::from_secs(5400)),
            ("0.001s", Duration::from_millis(1)),
            ("1.0000000001s", Duration::from_secs(1)),
            ("3us", Duration::from_micros(3)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
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
        for bad in [
            "",
            "45",
            "-5s",
            "+5s",
            "five seconds",
            "5 s",
            "1d",
            ".5s",
            "5.s",
            "s",
            "5ss",
            "1h-",
        ] {
            assert!(
                matches!(
                    bad.parse::<GoDuration>(),
                    Err(DurationParseError::Syntax(_))
                ),
                "{bad:?} parsed"
            );
        }
    }

    /// Fault 0 of issue 13: `9999999999999999h` passed the schema and the
    /// operator panicked converting it (`cannot convert float seconds to
    /// Duration`). Any digits now give an error, never a panic.
    #[test]
    fn huge_durations_are_an_error_not_a_panic() {
        for huge in [
            "9999999999999999h",
            "2562048h",
            "99999999999999999999999999999999999999999999999999s",
            "9223372036854775808ns",
            "2562047h2562047h",
            "1.99999999999999999999999999999999999999999999h9999999999h",
        ] {
            assert!(
                matches!(
                    huge.parse::<GoDuration>(),
                    Err(DurationParseError::Overflow(_))
                ),
                "{huge:?}: {:?}",
                huge.parse::<GoDuration>()
            );
        }
        // Go's largest duration still parses.
        let max: GoDuration = "9223372036854775807ns".parse().unwrap();
        assert_eq!(max.get().as_nanos(), GO_MAX_NANOS);
    }

    #[test]
    fn bounds_refuse_zero_and_too_long_with_the_range_in_the_message() {
        let b = fields::drain_window::BOUNDS;
        assert_eq!(b.parse("45s").unwrap(), GoDuration::from_secs(45));
        for bad in ["0s", "0.5s", "2h", "9999999999999999h"] {
            assert!(b.parse(bad).is_err(), "{bad} accepted");
        }
        let msg = b.parse("0s").unwrap_err().to_string();
        assert!(msg.contains("between 1s and 1h"), "{msg}");
    }

    #[test]
    fn every_field_has_a_positive_minimum_below_its_maximum() {
        for (field, b) in fields::ALL {
            assert!(b.min > GoDuration::from_secs(0), "{field}");
            assert!(b.min < b.max && b.max <= LONGEST, "{field}");
            // The rule embeds the bounds in a form Go parses back.
            let rule = b.rule();
            assert!(rule.contains(&format!("duration('{}')", b.max)), "{rule}");
            assert_eq!(b.max.to_string().parse::<GoDuration>().unwrap(), b.max);
        }
    }

    /// The schema's grammar bounds the digits per unit so that CEL's
    /// `duration()` cannot overflow on any matching string of at most 32
    /// characters: every sequence of maximal components fits.
    #[test]
    fn no_string_the_schema_grammar_accepts_overflows() {
        let parts = [
            "99999h",
            "9999999m",
            "999999999s",
            "999999999999ms",
            "999999999999999us",
            "999999999999999999ns",
        ];
        fn walk(prefix: String, parts: &[&str]) {
            for p in parts {
                let s = format!("{prefix}{p}");
                if s.len() > 32 {
                    continue;
                }
                assert!(s.parse::<GoDuration>().is_ok(), "{s} overflows");
                walk(s, parts);
            }
        }
        walk(String::new(), &parts);
    }

    #[test]
    fn fuzzed_strings_never_panic() {
        // A deterministic sweep over short strings of the grammar's alphabet.
        let alphabet: Vec<char> = "0123456789.hmsun-+µ".chars().collect();
        let mut state: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((state >> (i % 50)) as usize + i * 7) % alphabet.len()])
                .collect();
            let _ = s.parse::<GoDuration>();
        }
    }
}
