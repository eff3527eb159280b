//! Weighted tenant mix, e.g. `--tenants gold:3,silver:1,free`.
//!
//! Each request draws one tenant in proportion to its weight (default 1) and
//! sends it in the tenant header. An empty mix sends no header, which the
//! engine and router treat as the default tenant.

use std::str::FromStr;

use rand::Rng;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error("tenant entry '{0}' is not NAME or NAME:WEIGHT with a positive whole weight")]
    BadEntry(String),
}

/// Tenants with cumulative weights for O(log n) picks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantMix {
    names: Vec<String>,
    cumulative: Vec<u64>,
}

impl TenantMix {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Draws a tenant, or `None` for an empty mix.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<&str> {
        let total = *self.cumulative.last()?;
        let x = rng.random_range(0..total);
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.names.get(i).map(String::as_str)
    }
}

impl FromStr for TenantMix {
    type Err = TenantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = TenantMix::default();
        let mut total = 0u64;
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, weight) = match entry.split_once(':') {
                Some((n, w)) => {
                    let w = w
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|&w| w > 0 && w < 1 << 32)
                        .ok_or_else(|| TenantError::BadEntry(entry.to_string()))?;
                    (n.trim(), w)
                }
                None => (entry, 1),
            };
            if name.is_empty() {
                return Err(TenantError::BadEntry(entry.to_string()));
            }
            total += weight;
            mix.names.push(name.to_string());
            mix.cumulative.push(total);
        }
        Ok(mix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn picks_follow_the_weights() {
        let mix: TenantMix = "a:3,b:1".parse().expect("valid");
        let mut rng = StdRng::seed_from_u64(1);
        let a = (0..4000)
            .filter(|_| mix.pick(&mut rng) == Some("a"))
            .count();
        assert!((2850..=3150).contains(&a), "a picked {a} of 4000");
    }

    #[test]
    fn weight_defaults_to_one_and_blank_entries_are_skipped() {
        let mix: TenantMix = "x, ,y".parse().expect("valid");
        assert_eq!(mix.names(), ["x", "y"]);
    }

    #[test]
    fn empty_mix_picks_nothing() {
        let mix: TenantMix = "".parse().expect("valid");
        assert!(mix.is_empty());
        assert_eq!(mix.pick(&mut StdRng::seed_from_u64(0)), None);
    }

    #[test]
    fn zero_or_malformed_weights_are_rejected() {
        assert!("a:0".parse::<TenantMix>().is_err());
        assert!("a:x".parse::<TenantMix>().is_err());
        assert!(":3".parse::<TenantMix>().is_err());
    }
}
