//! The OpenAI-compatible HTTP surface: request types and their validation
//! into `ValidRequest` (`validate`), the error type that maps to status codes
//! and OpenAI error bodies (`error`), the generation flow (`generate`), the
//! response shapes (`respond`) and the axum routes with their shared state
//! (`routes`).

pub mod error;
pub mod generate;
pub mod logprobs;
pub mod respond;
pub mod routes;
pub mod validate;

pub use error::ApiError;
