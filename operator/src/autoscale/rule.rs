//! The HPA rule, per signal: `ceil(current × value / target)`, with a
//! tolerance band around the target inside which the count stays.
//!
//! Pure arithmetic over plain numbers; `super::decide` takes the highest
//! answer over the signals and applies the bounds, the scale-in window and
//! the one-pod-at-a-time rule.

/// Relative distance from the target inside which nothing changes: a
/// signal between 90% and 110% of its target keeps the current count
/// (the Kubernetes HPA's default, which keeps a count from flapping on
/// noise).
pub const TOLERANCE: f64 = 0.1;

/// Float noise allowed below a whole number before rounding up, so that
/// `3 × 0.525 / 0.7` (2.9999999999999996 or 3.0000000000000004) gives 3.
const ROUNDING_SLACK: f64 = 1e-9;

/// Where a signal stands against its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Band {
    /// Above target by more than the tolerance: more pods wanted.
    High,
    /// Within the tolerance: the count stays.
    Within,
    /// Below target by more than the tolerance: fewer pods would do.
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
    if ratio > 1.0 + TOLERANCE + ROUNDING_SLACK {
        Band::High
    } else if ratio < 1.0 - TOLERANCE - ROUNDING_SLACK {
        Band::Low
    } else {
        Band::Within
    }
}

/// Serving pods one signal asks for: `ceil(current × value / target)`, or
/// `current` inside the tolerance band. Not clamped to the spec's bounds
/// (the caller does that after taking the highest answer). A negative
/// value counts as zero; a value that is not finite keeps `current`.
pub fn desired(current: i32, value: f64, target: f64) -> i32 {
    if band(value, target) == Band::Within {
        return current;
    }
    let want = f64::from(current.max(0)) * value.max(0.0) / target;
    let want = (want - ROUNDING_SLACK).ceil();
    if want >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        // In 0..i32::MAX: `value` and `current` are non-negative.
        want.max(0.0) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_the_rule() {
        // (current, value, target, want)
        let cases: &[(i32, f64, f64, i32)] = &[
            // Inside ±10%: the count stays, whichever way it leans.
            (2, 0.70, 0.70, 2),
            (2, 0.76, 0.70, 2), // ratio 1.086
            (2, 0.64, 0.70, 2), // ratio 0.914
            (4, 0.77, 0.70, 4), // exactly 1.1: still within
            // Above: ceil(current × ratio).
            (2, 0.78, 0.70, 3),   // 2.23 -> 3
            (2, 0.90, 0.70, 3),   // 2.57 -> 3
            (2, 1.00, 0.70, 3),   // 2.86 -> 3
            (3, 1.00, 0.70, 5),   // 4.29 -> 5
            (1, 1.00, 0.70, 2),   // 1.43 -> 2
            (10, 1.00, 0.70, 15), // 14.29 -> 15
            // Below: fewer.
            (4, 0.35, 0.70, 2),  // exactly half
            (4, 0.30, 0.70, 2),  // 1.71 -> 2
            (4, 0.0, 0.70, 0),   // idle: the bounds keep min
            (3, 0.525, 0.70, 3), // low (ratio 0.75), but 2.25 rounds up to 3
            // Queue: target 1 waiting request per pod.
            (2, 3.0, 1.0, 6),
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
    fn rounding_noise_does_not_add_a_pod() {
        // 4 × 0.525 / 0.7 is 3 up to float noise; it must not become 4.
        assert_eq!(desired(4, 0.525, 0.7), 3);
        assert_eq!(desired(10, 0.35, 0.7), 5);
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
        assert_eq!(band(0.7, 0.7), Band::Within);
        assert_eq!(band(0.62, 0.7), Band::Low);
    }
}
