//! Fault injection: test aids that make a replica regress on cue (slower
//! first token, slower tokens, server errors, failing steps, wrong answers),
//! so canary analysis, alarms and the router's ejection can be proven
//! against a real engine. Never for production: every `--fault-*` flag is
//! refused at start-up unless `--enable-fault-injection` is also given, a
//! replica with faults says so in a start-up warning and in
//! `steward_engine_fault_injection_enabled`, and each injected fault is
//! counted in `steward_engine_faults_injected_total{fault}`.
//!
//! `FaultArgs` are the flags; `FaultPlan::from_args` validates them ("parse,
//! don't validate"); the decisions (`FaultPlan::*`) are pure functions of
//! the plan and a caller-owned RNG, so tests pin them with a seeded RNG.
//! Where each fault bites:
//! - prefill delay: the HTTP handler waits before submitting the request,
//!   so it shows in time to first token (measured from arrival) only;
//! - token delay + jitter: the engine thread sleeps after every step that
//!   produced tokens, like a slower accelerator (inter-token latency rises
//!   for every stream);
//! - server errors: the HTTP handler answers 500 `internal_error` after
//!   validation (a client's mistake is still a 4xx);
//! - step errors: a model step fails, failing every request in it (in-band
//!   after the stream's head), as a broken accelerator would;
//! - corrupt tokens: a sampled token is replaced by a random non-EOS token;
//! - logit noise: Gaussian noise on every logit row before sampling and
//!   scoring, so answers *and* log-probabilities (perplexity) degrade.

use std::time::Duration;

use rand::Rng;

/// The fault flags (test aids; see docs/engine.md).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultArgs {
    /// Allow the --fault-* test aids; without it any of them is refused at
    /// start-up. Never set this in production.
    #[arg(long, env = "STEWARD_ENABLE_FAULT_INJECTION")]
    pub enable_fault_injection: bool,
    /// TEST AID: added to every generation request before it enters the
    /// engine (raises time to first token only).
    #[arg(long, env = "STEWARD_FAULT_PREFILL_DELAY", value_parser = humantime::parse_duration)]
    pub fault_prefill_delay: Option<Duration>,
    /// TEST AID: added after every model step that produced tokens (raises
    /// inter-token latency of every stream).
    #[arg(long, env = "STEWARD_FAULT_TOKEN_DELAY", value_parser = humantime::parse_duration)]
    pub fault_token_delay: Option<Duration>,
    /// TEST AID: a uniform random extra in [0, jitter) on top of
    /// --fault-token-delay, drawn per step.
    #[arg(long, env = "STEWARD_FAULT_TOKEN_JITTER", value_parser = humantime::parse_duration)]
    pub fault_token_jitter: Option<Duration>,
    /// TEST AID: fraction (0-1) of valid generation requests answered with
    /// 500 internal_error before they start.
    #[arg(long, env = "STEWARD_FAULT_ERROR_RATE")]
    pub fault_error_rate: Option<f64>,
    /// TEST AID: fraction (0-1) of model steps that fail (every request in
    /// the step fails; streams get an in-band internal_error).
    #[arg(long, env = "STEWARD_FAULT_STEP_ERROR_RATE")]
    pub fault_step_error_rate: Option<f64>,
    /// TEST AID: fraction (0-1) of sampled tokens replaced by a random
    /// non-EOS token (latency and errors look fine, answers are wrong).
    #[arg(long, env = "STEWARD_FAULT_CORRUPT_TOKEN_RATE")]
    pub fault_corrupt_token_rate: Option<f64>,
    /// TEST AID: standard deviation of Gaussian noise added to every logit
    /// before sampling and scoring (answers and logprobs degrade).
    #[arg(long, env = "STEWARD_FAULT_LOGIT_NOISE")]
    pub fault_logit_noise: Option<f64>,
    /// TEST AID: added to the model load at start-up, so a tiny model
    /// starts as slowly as a large one loading onto a GPU (counted in the
    /// cold-start metrics).
    #[arg(long, env = "STEWARD_FAULT_LOAD_DELAY", value_parser = humantime::parse_duration)]
    pub fault_load_delay: Option<Duration>,
    /// TEST AID: seed of the fault decisions (default: random).
    #[arg(long, env = "STEWARD_FAULT_SEED")]
    pub fault_seed: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultError {
    #[error("{flags} are test aids and need --enable-fault-injection")]
    NotEnabled { flags: String },
    #[error("--{flag} must be a fraction between 0 and 1, got {value}")]
    Rate { flag: &'static str, value: f64 },
    #[error("--fault-logit-noise must be a finite number >= 0, got {0}")]
    Noise(f64),
}

/// The stable `fault` label values of `steward_engine_faults_injected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    PrefillDelay,
    TokenDelay,
    ServerError,
    StepError,
    CorruptToken,
    LogitNoise,
    LoadDelay,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::PrefillDelay => "prefill_delay",
            Fault::TokenDelay => "token_delay",
            Fault::ServerError => "server_error",
            Fault::StepError => "step_error",
            Fault::CorruptToken => "corrupt_token",
            Fault::LogitNoise => "logit_noise",
            Fault::LoadDelay => "load_delay",
        }
    }
}

/// Validated faults; `FaultPlan::default()` injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    pub prefill_delay: Duration,
    pub token_delay: Duration,
    pub token_jitter: Duration,
    pub error_rate: f64,
    pub step_error_rate: f64,
    pub corrupt_token_rate: f64,
    pub logit_noise: f64,
    pub load_delay: Duration,
    pub seed: Option<u64>,
}

fn rate(flag: &'static str, v: Option<f64>) -> Result<f64, FaultError> {
    match v {
        None => Ok(0.0),
        Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Some(value) => Err(FaultError::Rate { flag, value }),
    }
}

impl FaultPlan {
    /// Validates the flags. Any fault flag without `--enable-fault-injection`
    /// is an error, even a zero one: a flag in a manifest that does nothing
    /// would hide a mistake.
    pub fn from_args(a: &FaultArgs) -> Result<Self, FaultError> {
        let given: Vec<&str> = [
            ("--fault-prefill-delay", a.fault_prefill_delay.is_some()),
            ("--fault-token-delay", a.fault_token_delay.is_some()),
            ("--fault-token-jitter", a.fault_token_jitter.is_some()),
            ("--fault-error-rate", a.fault_error_rate.is_some()),
            ("--fault-step-error-rate", a.fault_step_error_rate.is_some()),
            (
                "--fault-corrupt-token-rate",
                a.fault_corrupt_token_rate.is_some(),
            ),
            ("--fault-logit-noise", a.fault_logit_noise.is_some()),
            ("--fault-load-delay", a.fault_load_delay.is_some()),
            ("--fault-seed", a.fault_seed.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        if !a.enable_fault_injection && !given.is_empty() {
            return Err(FaultError::NotEnabled {
                flags: given.join(", "),
            });
        }
        let logit_noise = match a.fault_logit_noise {
            None => 0.0,
            Some(n) if n.is_finite() && n >= 0.0 => n,
            Some(n) => return Err(FaultError::Noise(n)),
        };
        Ok(Self {
            prefill_delay: a.fault_prefill_delay.unwrap_or_default(),
            token_delay: a.fault_token_delay.unwrap_or_default(),
            token_jitter: a.fault_token_jitter.unwrap_or_default(),
            error_rate: rate("fault-error-rate", a.fault_error_rate)?,
            step_error_rate: rate("fault-step-error-rate", a.fault_step_error_rate)?,
            corrupt_token_rate: rate("fault-corrupt-token-rate", a.fault_corrupt_token_rate)?,
            logit_noise,
            load_delay: a.fault_load_delay.unwrap_or_default(),
            seed: a.fault_seed,
        })
    }

    /// True when any fault can fire.
    pub fn any(&self) -> bool {
        !self.prefill_delay.is_zero()
            || !self.token_delay.is_zero()
            || !self.token_jitter.is_zero()
            || self.error_rate > 0.0
            || self.step_error_rate > 0.0
            || self.corrupt_token_rate > 0.0
            || self.logit_noise > 0.0
            || !self.load_delay.is_zero()
    }

    /// Whether this request is answered with an injected 500.
    pub fn fail_request(&self, rng: &mut impl Rng) -> bool {
        hit(self.error_rate, rng)
    }

    /// Whether this model step fails.
    pub fn fail_step(&self, rng: &mut impl Rng) -> bool {
        hit(self.step_error_rate, rng)
    }

    /// The pause after a step that produced tokens, if any.
    pub fn token_pause(&self, rng: &mut impl Rng) -> Option<Duration> {
        if self.token_delay.is_zero() && self.token_jitter.is_zero() {
            return None;
        }
        let jitter = self.token_jitter.mul_f64(rng.random::<f64>());
        Some(self.token_delay + jitter)
    }

    /// The token to emit instead of `tok`, or None to keep it. The
    /// replacement is never an EOS id, so lengths are unchanged.
    pub fn corrupt_token(
        &self,
        tok: u32,
        vocab: usize,
        eos: &[u32],
        rng: &mut impl Rng,
    ) -> Option<u32> {
        if vocab < 2 || !hit(self.corrupt_token_rate, rng) {
            return None;
        }
        for _ in 0..16 {
            let t = rng.random_range(0..vocab as u32);
            if t != tok && !eos.contains(&t) {
                return Some(t);
            }
        }
        None
    }

    /// Adds N(0, logit_noise²) to each logit; returns whether it did.
    pub fn perturb_logits(&self, logits: &mut [f32], rng: &mut impl Rng) -> bool {
        if self.logit_noise <= 0.0 {
            return false;
        }
        let s = self.logit_noise as f32;
        for v in logits.iter_mut() {
            *v += s * standard_normal(rng);
        }
        true
    }

    /// A one-line summary of the active faults for the start-up warning.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.prefill_delay.is_zero() {
            parts.push(format!("prefill_delay={:?}", self.prefill_delay));
        }
        if !self.load_delay.is_zero() {
            parts.push(format!("load_delay={:?}", self.load_delay));
        }
        if !self.token_delay.is_zero() || !self.token_jitter.is_zero() {
            parts.push(format!(
                "token_delay={:?}+jitter<{:?}",
                self.token_delay, self.token_jitter
            ));
        }
        for (name, r) in [
            ("error_rate", self.error_rate),
            ("step_error_rate", self.step_error_rate),
            ("corrupt_token_rate", self.corrupt_token_rate),
            ("logit_noise", self.logit_noise),
        ] {
            if r > 0.0 {
                parts.push(format!("{name}={r}"));
            }
        }
        parts.join(" ")
    }
}

fn hit(rate: f64, rng: &mut impl Rng) -> bool {
    rate > 0.0 && (rate >= 1.0 || rng.random::<f64>() < rate)
}

/// Box-Muller; one draw per call is enough for test noise.
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn enabled() -> FaultArgs {
        FaultArgs {
            enable_fault_injection: true,
            ..FaultArgs::default()
        }
    }

    #[test]
    fn fault_flags_are_refused_without_enable_fault_injection() {
        let a = FaultArgs {
            fault_prefill_delay: Some(Duration::from_millis(500)),
            fault_error_rate: Some(0.0),
            ..FaultArgs::default()
        };
        let e = FaultPlan::from_args(&a).unwrap_err();
        assert_eq!(
            e,
            FaultError::NotEnabled {
                flags: "--fault-prefill-delay, --fault-error-rate".into()
            }
        );
        assert!(e.to_string().contains("--enable-fault-injection"));
        assert_eq!(
            FaultPlan::from_args(&FaultArgs::default()),
            Ok(FaultPlan::default())
        );
        assert!(!FaultPlan::default().any());
    }

    #[test]
    fn rates_outside_zero_one_and_bad_noise_are_refused() {
        for bad in [-0.1, 1.5, f64::NAN] {
            let a = FaultArgs {
                fault_corrupt_token_rate: Some(bad),
                ..enabled()
            };
            assert!(matches!(
                FaultPlan::from_args(&a),
                Err(FaultError::Rate {
                    flag: "fault-corrupt-token-rate",
                    ..
                })
            ));
        }
        let a = FaultArgs {
            fault_logit_noise: Some(-1.0),
            ..enabled()
        };
        assert_eq!(FaultPlan::from_args(&a), Err(FaultError::Noise(-1.0)));
    }

    #[test]
    fn error_rate_fires_at_about_its_rate_and_never_or_always_at_the_ends() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = FaultPlan {
            error_rate: 0.3,
            ..FaultPlan::default()
        };
        let n = (0..10_000).filter(|_| p.fail_request(&mut rng)).count();
        assert!((2700..3300).contains(&n), "{n}");
        let never = FaultPlan::default();
        assert!((0..1000).all(|_| !never.fail_request(&mut rng)));
        let always = FaultPlan {
            error_rate: 1.0,
            step_error_rate: 1.0,
            ..FaultPlan::default()
        };
        assert!((0..1000).all(|_| always.fail_request(&mut rng) && always.fail_step(&mut rng)));
    }

    #[test]
    fn token_pause_is_delay_plus_jitter_below_the_bound() {
        let mut rng = StdRng::seed_from_u64(2);
        assert_eq!(FaultPlan::default().token_pause(&mut rng), None);
        let p = FaultPlan {
            token_delay: Duration::from_millis(20),
            token_jitter: Duration::from_millis(10),
            ..FaultPlan::default()
        };
        let pauses: Vec<Duration> = (0..200).map(|_| p.token_pause(&mut rng).unwrap()).collect();
        assert!(pauses
            .iter()
            .all(|d| *d >= Duration::from_millis(20) && *d < Duration::from_millis(30)));
        assert!(pauses.iter().any(|d| *d > Duration::from_millis(25)));
        assert!(pauses.iter().any(|d| *d < Duration::from_millis(25)));
    }

    #[test]
    fn corrupt_tokens_are_never_eos_nor_the_sampled_token() {
        let mut rng = StdRng::seed_from_u64(3);
        let p = FaultPlan {
            corrupt_token_rate: 1.0,
            ..FaultPlan::default()
        };
        for _ in 0..1000 {
            let t = p.corrupt_token(5, 8, &[0, 1], &mut rng).unwrap();
            assert!(t != 5 && t != 0 && t != 1 && t < 8);
        }
        assert_eq!(
            FaultPlan::default().corrupt_token(5, 8, &[], &mut rng),
            None
        );
    }

    #[test]
    fn logit_noise_has_about_the_asked_spread() {
        let mut rng = StdRng::seed_from_u64(4);
        let p = FaultPlan {
            logit_noise: 2.0,
            ..FaultPlan::default()
        };
        let mut v = vec![0.0f32; 20_000];
        assert!(p.perturb_logits(&mut v, &mut rng));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.1, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.1, "{var}");
        let mut w = vec![1.0f32; 4];
        assert!(!FaultPlan::default().perturb_logits(&mut w, &mut rng));
        assert_eq!(w, vec![1.0; 4]);
    }
}
