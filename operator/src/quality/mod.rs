//! The canary quality gate (`rollout.analysis.quality`), pure parts.
//!
//! Flow at each canary step: the runner (`controller::quality`) reads the
//! golden set's ConfigMap, parses it here ([`golden`]), sends every entry
//! to one ready pod of the canary and one of the stable revision with
//! greedy decoding and asks each for the references' log-likelihood
//! ([`openai`] builds the requests and reads the answers), then [`gate`]
//! scores both revisions per category ([`score`] judges one answer) and
//! decides pass / fail / unknown; the perplexity drift is the input of the
//! `qualityRegression` alarm leaf. The rollout feeds the report's decision
//! into its step machine and writes [`gate::QualityReport::to_status`] to
//! `status.quality`.
//!
//! Nothing here does I/O; docs/rollouts.md documents the golden set format
//! and the rules.

pub mod gate;
pub mod golden;
pub mod openai;
pub mod score;

pub use gate::{
    evaluate, Answer, CategoryResult, Gate, GateSettings, LogLikelihood, PerplexityDrift,
    QualityReport, RevisionRun, Shortfall, Unknown, UnknownReason, REGRESSION_ALARM,
};
pub use golden::{GoldenEntry, GoldenSet, GoldenSetError, Input, Scorer};
