//! steward-loadgen: a load generator for OpenAI-compatible endpoints.
//!
//! Flow: [`cli::Args`] → a [`workload::Workload`] (what request `i` is) and an
//! [`driver::Arrival`] (when it is sent) → [`driver::run`] sends them through
//! [`client::execute`] (timing each, parsing SSE with [`sse`]) →
//! [`report::Report`] summarises with [`stats`]. Used by the engine-vs-HF
//! benchmark (bench/engine-vs-hf.sh) and the router benchmark; [`stub`] is a fast
//! OpenAI-compatible backend for benchmarks where a model would be the bottleneck.

pub mod cli;
pub mod client;
pub mod dist;
pub mod driver;
pub mod report;
pub mod sse;
pub mod stats;
pub mod stub;
pub mod tenants;
pub mod workload;
