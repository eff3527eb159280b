//! The OpenAI-compatible HTTP surface: request types and their validation
//! into `ValidRequest` (`validate`), the error type that maps to status codes
//! and OpenAI error bodies (`error`), and the axum routes (`routes`).

pub mod error;
pub mod routes;
pub mod validate;

pub use error::ApiError;
