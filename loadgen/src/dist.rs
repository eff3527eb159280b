//! Length distributions for prompts and outputs, parsed from the command line.
//!
//! A spec is one of `fixed:N`, `uniform:A-B`, `lognormal:MEDIAN,SIGMA` or
//! `pareto:MIN,ALPHA`, each optionally followed by `@MAX` to clip the long
//! tail (`pareto:16,1.5@512`). Sampling is pure: it takes the caller's RNG so
//! request `i` of a seeded run is the same on every run and every target.
//! Every sample is at least 1.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// A length spec that failed to parse; the message names the expected form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DistError {
    #[error("unknown distribution '{0}' (expected fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA or pareto:MIN,ALPHA, optionally @MAX)")]
    UnknownKind(String),
    #[error("bad parameters '{params}' for {kind}: {why}")]
    BadParams {
        kind: &'static str,
        params: String,
        why: &'static str,
    },
}

/// The shape of a length distribution, before clipping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Fixed(u32),
    /// Inclusive on both ends.
    Uniform(u32, u32),
    /// `exp(N(ln median, sigma^2))`: most requests short, a heavy right tail.
    LogNormal {
        median: f64,
        sigma: f64,
    },
    /// Pareto type I: `min / U^(1/alpha)`; alpha near 1 gives a very long tail.
    Pareto {
        min: f64,
        alpha: f64,
    },
}

/// A length distribution with an optional upper clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthDist {
    pub shape: Shape,
    pub max: Option<u32>,
}

impl LengthDist {
    pub fn fixed(n: u32) -> Self {
        Self {
            shape: Shape::Fixed(n),
            max: None,
        }
    }

    /// Draws one length (>= 1, <= max when a clip is set).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let raw = match self.shape {
            Shape::Fixed(n) => f64::from(n),
            Shape::Uniform(a, b) => f64::from(rng.random_range(a..=b)),
            Shape::LogNormal { median, sigma } => {
                (median.ln() + sigma * standard_normal(rng)).exp()
            }
            Shape::Pareto { min, alpha } => {
                // 1 - U lies in (0, 1], so the power is finite.
                let u: f64 = 1.0 - rng.random::<f64>();
                min / u.powf(1.0 / alpha)
            }
        };
        let mut n = if raw.is_finite() {
            raw.round().clamp(1.0, f64::from(u32::MAX)) as u32
        } else {
            u32::MAX
        };
        if let Some(max) = self.max {
            n = n.min(max);
        }
        n.max(1)
    }
}

/// Box-Muller; one normal deviate per call is enough here.
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn parse_u32(kind: &'static str, params: &str, s: &str) -> Result<u32, DistError> {
    s.trim().parse::<u32>().map_err(|_| DistError::BadParams {
        kind,
        params: params.to_string(),
        why: "expected a whole number",
    })
}

fn parse_pos_f64(kind: &'static str, params: &str, s: &str) -> Result<f64, DistError> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(DistError::BadParams {
            kind,
            params: params.to_string(),
            why: "expected a positive number",
        }),
    }
}

fn two<'a>(
    kind: &'static str,
    params: &'a str,
    sep: char,
) -> Result<(&'a str, &'a str), DistError> {
    params.split_once(sep).ok_or(DistError::BadParams {
        kind,
        params: params.to_string(),
        why: "expected two parameters",
    })
}

impl FromStr for LengthDist {
    type Err = DistError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (body, max) = match s.split_once('@') {
            Some((body, max)) => {
                let m = parse_u32("clip", max, max)?;
                if m == 0 {
                    return Err(DistError::BadParams {
                        kind: "clip",
                        params: max.to_string(),
                        why: "the clip must be at least 1",
                    });
                }
                (body, Some(m))
            }
            None => (s, None),
        };
        let (kind, params) = body
            .split_once(':')
            .ok_or_else(|| DistError::UnknownKind(body.to_string()))?;
        let shape = match kind.trim() {
            "fixed" => Shape::Fixed(parse_u32("fixed", params, params)?.max(1)),
            "uniform" => {
                let (a, b) = two("uniform", params, '-')?;
                let (a, b) = (
                    parse_u32("uniform", params, a)?,
                    parse_u32("uniform", params, b)?,
                );
                if a > b || b == 0 {
                    return Err(DistError::BadParams {
                        kind: "uniform",
                        params: params.to_string(),
                        why: "need A <= B and B >= 1",
                    });
                }
                Shape::Uniform(a, b)
            }
            "lognormal" => {
                let (m, sd) = two("lognormal", params, ',')?;
                Shape::LogNormal {
                    median: parse_pos_f64("lognormal", params, m)?,
                    sigma: parse_pos_f64("lognormal", params, sd)?,
                }
            }
            "pareto" => {
                let (m, a) = two("pareto", params, ',')?;
                Shape::Pareto {
                    min: parse_pos_f64("pareto", params, m)?,
                    alpha: parse_pos_f64("pareto", params, a)?,
                }
            }
            other => return Err(DistError::UnknownKind(other.to_string())),
        };
        Ok(Self { shape, max })
    }
}

impl fmt::Display for LengthDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shape {
            Shape::Fixed(n) => write!(f, "fixed:{n}")?,
            Shape::Uniform(a, b) => write!(f, "uniform:{a}-{b}")?,
            Shape::LogNormal { median, sigma } => write!(f, "lognormal:{median},{sigma}")?,
            Shape::Pareto { min, alpha } => write!(f, "pareto:{min},{alpha}")?,
        }
        if let Some(m) = self.max {
            write!(f, "@{m}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn draws(spec: &str, n: usize) -> Vec<u32> {
        let d: LengthDist = spec.parse().expect("valid spec");
        let mut rng = StdRng::seed_from_u64(7);
        (0..n).map(|_| d.sample(&mut rng)).collect()
    }

    #[test]
    fn fixed_always_returns_its_value() {
        assert!(draws("fixed:32", 100).iter().all(|&n| n == 32));
    }

    #[test]
    fn uniform_stays_within_inclusive_bounds_and_hits_both_ends() {
        let v = draws("uniform:4-6", 500);
        assert!(v.iter().all(|&n| (4..=6).contains(&n)));
        assert!(v.contains(&4) && v.contains(&6));
    }

    #[test]
    fn lognormal_median_is_close_to_its_parameter() {
        let mut v = draws("lognormal:64,0.8", 4001);
        v.sort_unstable();
        let median = v[2000];
        assert!((54..=75).contains(&median), "median {median}");
        assert!(*v.last().unwrap_or(&0) > 200, "has a long tail");
    }

    #[test]
    fn pareto_never_goes_below_min_and_clip_caps_the_tail() {
        let v = draws("pareto:16,1.2@256", 2000);
        assert!(v.iter().all(|&n| (16..=256).contains(&n)));
        assert!(v.contains(&256), "the clip is reached by the tail");
    }

    #[test]
    fn same_seed_gives_same_lengths() {
        assert_eq!(draws("lognormal:30,1.0", 50), draws("lognormal:30,1.0", 50));
    }

    #[test]
    fn display_round_trips_through_parse() {
        for s in [
            "fixed:8",
            "uniform:1-9",
            "lognormal:64,0.5@300",
            "pareto:16,1.5",
        ] {
            let d: LengthDist = s.parse().expect("valid");
            assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn malformed_specs_are_rejected_with_a_reason() {
        assert!(matches!(
            "normal:3".parse::<LengthDist>(),
            Err(DistError::UnknownKind(_))
        ));
        assert!("uniform:9-1".parse::<LengthDist>().is_err());
        assert!("uniform:9".parse::<LengthDist>().is_err());
        assert!("lognormal:-1,2".parse::<LengthDist>().is_err());
        assert!("fixed:abc".parse::<LengthDist>().is_err());
        assert!("fixed:8@0".parse::<LengthDist>().is_err());
        assert!("32".parse::<LengthDist>().is_err());
    }
}
