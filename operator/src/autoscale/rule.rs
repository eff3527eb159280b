//! The scaling rule, per signal: scale out as soon as a signal reaches its
//! target, to `ceil(current × value / target)` pods (at least one more);
//! scale in only to a count whose pods would run below the target minus
//! the tolerance.
//!
//! Pure arithmetic over plain numbers; `super::decide` takes the highest
//! answer over the signals and applies the bounds, the scale-in window and
//! the one-pod-at-a-time rule.
//!
//! Why the tolerance sits below the target only: the promise is scale-out
//! at `targetUtilization` (70% by default), not at 77%, and a steady load
//! must not flap. Scaling in to `n` pods only when `current × value / n`
//! stays under `target × (1 − TOLERANCE)` leaves a band of at least 10%
//! between where a scale-in lands and where the next scale-out starts.

/// Relative distance below the target inside which nothing is removed: a
/// signal between 90% and 100% of its target keeps the current count, and
/// a scale-in lands on a count that runs below 90% of the target.
pub const TOLERANCE: f64 = 0.1;

/// Float noise allowed around a whole number or the target before
/// rounding, so that `3 × 0.525 / 0.7` (2.9999999999999996 or
/// 3.0000000000000004) gives 3 and `0.7 / 0.7` reads as at the target.
const ROUNDING_SLACK: f64 = 1e-9;

/// Where a signal stands against its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Band {
    /// At or above the target: more pods wanted.
    High,
    /// Below the target, within the tolerance: the count stays.
    Within,
    /// Below the target by more than the tolerance: fewer pods may do.
    Low,
}

/// The band of `value` against `target` (both in the same unit; `target`
/// positive). A value that is not a finite number is never read as low:
/// it counts as within, so it cannot cause a scale-in.
pub fn band(value: f64, target: f64) -> Band {
    if !value.is_finite() || !target.is_finite() || target <= 0.0 {
        return Band::Within;
    }
    let ratio = value.max(0.0) / target;
    if ratio >= 1.0 - ROUNDING_SLACK {
        Band::High
    } else if ratio < 1.0 - TOLERANCE - ROUNDING_SLACK {
        Band::Low
    } else {
        Band::Within
    }
}

/// Serving pods one signal asks for. At or above the target:
/// `ceil(current × value / target)`, at least `current + 1`. Below the
/// target by more than the tolerance: `ceil(current × value / (target ×
/// (1 − TOLERANCE)))`, the fewest pods that would run under the scale-in
/// line. Otherwise `current`. Not clamped to the spec's bounds (the caller
/// does that after taking the highest answer). A negative value counts as
/// zero; a value that is not finite keeps `current`; nothing scales from
/// zero pods.
pub fn desired(current: i32, value: f64, target: f64) -> i32 {
    let current = current.max(0);
    let per_pod = match band(value, target) {
        Band::Within => return current,
        _ if current == 0 => return 0,
        Band::High => target,
        Band::Low => target * (1.0 - TOLERANCE),
    };
    let want = f64::from(current) * value.max(0.0) / per_pod;
    let want = (want - ROUNDING_SLACK).ceil();
    let want = if want >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        // In 0..i32::MAX: `value` and `current` are non-negative.
        want.max(0.0) as i32
    };
    if band(value, target) == Band::High {
        want.max(current.saturating_add(1))
    } else {
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_the_rule() {
        // (current, value, target, want)
        let cases: &[(i32, f64, f64, i32)] = &[
            // At the target: one more pod (scale-out starts at 70%, not 77%).
            (2, 0.70, 0.70, 3),
            (10, 0.70, 0.70, 11),
            // Above: ceil(current × ratio), at least one more.
            (2, 0.76, 0.70, 3),   // 2.17 -> 3
            (4, 0.77, 0.70, 5),   // 4.4 -> 5
            (2, 1.00, 0.70, 3),   // 2.86 -> 3
            (3, 1.00, 0.70, 5),   // 4.29 -> 5
            (1, 1.00, 0.70, 2),   // 1.43 -> 2
            (10, 1.00, 0.70, 15), // 14.29 -> 15
            // Below, within 10%: the count stays.
            (2, 0.69, 0.70, 2),
            (2, 0.64, 0.70, 2), // ratio 0.914
            (4, 0.63, 0.70, 4), // exactly 0.9: still within
            // Below the band: the fewest pods that run under 63%.
            (4, 0.35, 0.70, 3),  // 2.22 -> 3 (2 pods would run at 70%)
            (4, 0.30, 0.70, 2),  // 1.90 -> 2 (60% each)
            (4, 0.0, 0.70, 0),   // idle: the bounds keep min
            (3, 0.525, 0.70, 3), // low (ratio 0.75), but 2.5 rounds up to 3
            // Queue: target 1 waiting request per pod.
            (2, 3.0, 1.0, 6),
            (2, 1.0, 1.0, 3),
            (2, 0.0, 1.0, 0),
            // Nothing to scale from.
            (0, 1.0, 0.70, 0),
        ];
        for &(current, value, target, want) in cases {
            assert_eq!(
                desired(current, value, target),
                want,
                "current {current}, value {value}, target {target}"
            );
        }
    }

    #[test]
    fn a_scale_in_never_lands_where_the_next_scale_out_starts() {
        // For every count and reading below the band, the pods left would
        // run under the scale-in line, so under the scale-out line too.
        for current in 1..=40 {
            for v in 0..630 {
                let value = f64::from(v) / 1000.0;
                let n = desired(current, value, 0.7);
                assert!(n <= current);
                if n > 0 && n < current {
                    let after = f64::from(current) * value / f64::from(n);
                    assert!(
                        after < 0.63 + 1e-9,
                        "{current} at {value} -> {n} at {after}"
                    );
                    assert_eq!(desired(n, after, 0.7), n, "{current} at {value}");
                }
            }
        }
    }

    #[test]
    fn rounding_noise_does_not_add_a_pod() {
        // 4 × 0.875 / 0.7 is 5 up to float noise; it must not become 6.
        assert_eq!(desired(4, 0.875, 0.7), 5);
        // 10 × 0.315 / 0.63 is 5 up to float noise.
        assert_eq!(desired(10, 0.315, 0.7), 5);
        // A reading a hair under the target from float noise is at it.
        assert_eq!(band(0.7 - 1e-12, 0.7), Band::High);
    }

    #[test]
    fn values_that_are_not_numbers_never_scale() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(desired(3, v, 0.7), 3);
            assert_eq!(band(v, 0.7), Band::Within);
        }
        assert_eq!(desired(3, 0.9, 0.0), 3);
        assert_eq!(band(0.9, -1.0), Band::Within);
    }

    #[test]
    fn negative_values_count_as_zero_and_huge_ones_saturate() {
        assert_eq!(desired(3, -5.0, 0.7), 0);
        assert_eq!(band(-5.0, 0.7), Band::Low);
        assert_eq!(desired(i32::MAX, 10.0, 0.7), i32::MAX);
        assert_eq!(desired(1000, 1e300, 0.7), i32::MAX);
    }

    #[test]
    fn bands() {
        assert_eq!(band(0.78, 0.7), Band::High);
        assert_eq!(band(0.7, 0.7), Band::High);
        assert_eq!(band(0.69, 0.7), Band::Within);
        assert_eq!(band(0.63, 0.7), Band::Within);
        assert_eq!(band(0.62, 0.7), Band::Low);
    }
}
