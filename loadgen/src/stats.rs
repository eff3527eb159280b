//! Percentile summaries of latency samples.
//!
//! Samples are in milliseconds. Percentiles interpolate linearly between the
//! two nearest ranks (numpy's default), so p50 of an even-sized set is the
//! mean of the middle two. An empty set summarises to `None`, never to zeros
//! that could be mistaken for a measurement.

use serde::Serialize;

/// Percentile `p` (0..=100) of already sorted samples; `None` when empty.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = p / 100.0 * (n - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// The usual view of one latency distribution.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises the samples (any order); `None` when there are none.
    /// NaN samples are dropped.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let p = |q| percentile_sorted(&v, q).unwrap_or(f64::NAN);
        Some(Self {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            p50: p(50.0),
            p90: p(90.0),
            p99: p(99.0),
            max: v[v.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile_sorted(&v, 50.0), Some(2.5));
        assert_eq!(percentile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(percentile_sorted(&v, 100.0), Some(4.0));
    }

    #[test]
    fn p99_of_one_to_hundred_is_near_the_top() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v).expect("non-empty");
        assert!((s.p99 - 99.01).abs() < 1e-9, "{}", s.p99);
        assert_eq!(s.p50, 50.5);
        assert_eq!(s.mean, 50.5);
        assert_eq!((s.min, s.max, s.count), (1.0, 100.0, 100));
    }

    #[test]
    fn unsorted_input_is_sorted_first_and_nan_dropped() {
        let s = Summary::of(&[5.0, f64::NAN, 1.0, 3.0]).expect("non-empty");
        assert_eq!((s.count, s.p50, s.min, s.max), (3, 3.0, 1.0, 5.0));
    }

    #[test]
    fn empty_set_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(percentile_sorted(&[], 50.0), None);
    }
}
