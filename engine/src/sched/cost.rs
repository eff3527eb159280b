//! What a step costs, learned from the steps the engine runs, and the
//! largest prompt chunk a step with decodes may carry within a budget.
//!
//! The model is a table of step times by the step's token count, in
//! buckets of [`BUCKET_TOKENS`] tokens, each an exponentially weighted
//! mean of the forward times observed for steps of that size (decode-only,
//! mixed and prompt-only steps alike: a step's cost depends on how many
//! token rows it computes, not on whose they are). Buckets rather than a
//! straight line, because a step's time is not linear in its tokens: a CPU
//! kernel that streams the weights once per 16 rows makes 1-16 rows cost
//! the same and 17 a second pass; a GPU step hardly changes until hundreds
//! of tokens.
//!
//! [`StepCost::chunk`] answers: beside `d` decodes, how many prompt tokens
//! keep the step within `ratio` times a step of the `d` decodes alone? It
//! walks the buckets upward from the decodes' own and stops at the first
//! whose time is over the budget. A bucket never seen above every seen one
//! is tried once (one bucket past the known ones), so the table learns its
//! way up to the budget instead of staying at the floor forever; a bucket
//! never seen below a seen one takes the next seen bucket above it (the
//! cautious side). Times are made non-decreasing in tokens when read, so a
//! noisy small bucket cannot open a larger chunk.
//!
//! Pure: no clock, no tensors. The engine loop feeds it
//! ([`StepCost::observe`]) and the scheduler reads it.

use std::time::Duration;

/// Tokens per bucket of the table.
pub const BUCKET_TOKENS: usize = 8;

/// Weight of a new observation in its bucket's mean.
const ALPHA: f64 = 0.2;

/// Step times by token count, learned online.
#[derive(Debug, Clone)]
pub struct StepCost {
    /// Mean forward seconds per bucket; `None` until a step of that size ran.
    secs: Vec<Option<f64>>,
}

impl StepCost {
    /// A table for steps of up to `max_tokens` tokens.
    pub fn new(max_tokens: usize) -> Self {
        Self {
            secs: vec![None; bucket(max_tokens.max(1)) + 1],
        }
    }

    /// Records one step of `tokens` tokens that took `forward`.
    pub fn observe(&mut self, tokens: usize, forward: Duration) {
        if tokens == 0 {
            return;
        }
        let i = bucket(tokens).min(self.secs.len() - 1);
        let t = forward.as_secs_f64();
        self.secs[i] = Some(match self.secs[i] {
            Some(m) => m + ALPHA * (t - m),
            None => t,
        });
    }

    /// The expected time of a step of `tokens` tokens: its bucket's mean,
    /// raised to the highest mean below it; a bucket never seen takes the
    /// next seen one above it. `None` above every seen bucket.
    pub fn estimate(&self, tokens: usize) -> Option<f64> {
        let i = bucket(tokens.max(1)).min(self.secs.len() - 1);
        let floor = self.secs[..i].iter().flatten().copied().fold(0.0, f64::max);
        let own = self.secs[i..].iter().flatten().next().copied()?;
        Some(own.max(floor))
    }

    /// The most prompt tokens (at most `cap`) a step may add to `decodes`
    /// decodes so that it takes at most `ratio` times the decodes alone.
    /// `None` while the decodes' own step time is unknown.
    pub fn chunk(&self, decodes: usize, ratio: f64, cap: usize) -> Option<usize> {
        let base = self.estimate(decodes)?;
        let budget = base * ratio;
        let mut best = 0;
        let mut top = bucket(decodes.max(1));
        loop {
            // The tokens that fill bucket `top`, beside the decodes.
            let k = ((top + 1) * BUCKET_TOKENS).saturating_sub(decodes).min(cap);
            match self.estimate(decodes + k) {
                Some(t) if t > budget => break,
                Some(_) => best = k,
                None => {
                    // Past every seen bucket: try it once.
                    best = k;
                    break;
                }
            }
            if k >= cap {
                break;
            }
            top += 1;
        }
        Some(best)
    }
}

fn bucket(tokens: usize) -> usize {
    tokens.saturating_sub(1) / BUCKET_TOKENS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    /// A CPU-like table: one weight pass per 16 rows (10 ms each) plus a
    /// fixed 2 ms.
    fn cpu_like() -> StepCost {
        let mut c = StepCost::new(512);
        for rows in [1usize, 8, 16, 17, 30, 32, 40, 48, 60, 64, 80] {
            let passes = rows.div_ceil(16) as f64;
            c.observe(rows, ms(2.0 + 10.0 * passes));
        }
        c
    }

    #[test]
    fn unknown_until_the_decodes_own_size_ran() {
        let mut c = StepCost::new(512);
        assert_eq!(c.chunk(16, 2.5, 64), None);
        c.observe(100, ms(50.0));
        // 16 decodes never ran alone, but a larger step did: the cautious
        // estimate is the larger step's time.
        assert_eq!(c.estimate(16), Some(0.05));
    }

    #[test]
    fn the_chunk_stops_at_the_first_bucket_over_the_budget() {
        let c = cpu_like();
        // 16 decodes: 12 ms; budget 2.5x = 30 ms: 32 rows (22 ms) fit, 48
        // rows (32 ms) do not: 16 prompt tokens.
        assert_eq!(c.chunk(16, 2.5, 64), Some(16));
        // Budget 3x = 36 ms: 48 rows (32 ms) fit, 64 rows (42 ms) do not.
        assert_eq!(c.chunk(16, 3.0, 64), Some(32));
        // 4 decodes fill their own bucket for free, then the next bucket.
        assert_eq!(c.chunk(4, 2.0, 64), Some(28));
        // The cap wins.
        assert_eq!(c.chunk(16, 10.0, 40), Some(40));
    }

    #[test]
    fn one_bucket_past_the_known_ones_is_tried_then_learned() {
        const B: usize = BUCKET_TOKENS;
        let mut c = StepCost::new(512);
        c.observe(16, ms(10.0));
        // Nothing known above 16 rows: the next bucket is tried.
        assert_eq!(c.chunk(16, 2.5, 64), Some(B));
        c.observe(16 + B, ms(20.0));
        assert_eq!(c.chunk(16, 2.5, 64), Some(2 * B));
        c.observe(16 + 2 * B, ms(30.0));
        // 16 + 2B rows within 2.5 x 10 ms? No (30 > 25): back to B.
        assert_eq!(c.chunk(16, 2.5, 64), Some(B));
    }

    #[test]
    fn a_flat_device_reaches_the_cap() {
        let mut c = StepCost::new(512);
        for rows in (1..=512).step_by(16) {
            c.observe(rows, ms(5.0 + rows as f64 * 0.001));
        }
        assert_eq!(c.chunk(16, 2.5, 256), Some(256));
    }

    #[test]
    fn estimates_never_fall_as_tokens_grow() {
        let mut c = StepCost::new(512);
        c.observe(16, ms(30.0)); // a noisy small bucket
        c.observe(32, ms(20.0));
        assert_eq!(c.estimate(32), Some(0.03));
        // An unseen bucket between two seen ones takes the one above it.
        c.observe(64, ms(40.0));
        assert_eq!(c.estimate(48), Some(0.04));
    }

    #[test]
    fn observations_move_a_bucket_gradually() {
        let mut c = StepCost::new(64);
        c.observe(10, ms(10.0));
        c.observe(10, ms(20.0));
        let t = c.estimate(10).unwrap_or_default();
        assert!((t - 0.012).abs() < 1e-9, "{t}");
        // Steps larger than the table land in its last bucket.
        c.observe(1000, ms(90.0));
        assert_eq!(c.estimate(64), Some(0.09));
    }
}
