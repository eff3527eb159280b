//! steward-engine: a Llama-family inference server on libtorch with a paged
//! KV cache, continuous batching and an OpenAI-compatible HTTP API.
//!
//! Flow: `api` parses and validates HTTP requests, `admission` decides
//! whether to take them, `executor` (an actor on its own thread) schedules
//! them with `sched` and runs `model` steps, streaming tokens back.

pub mod admission;
pub mod api;
pub mod executor;
pub mod faults;
pub mod health;
pub mod listen;
pub mod make_model;
pub mod metrics;
pub mod model;
pub mod sampling;
pub mod sched;
pub mod server;
pub mod stop;
pub mod threads;
pub mod tokenizer;
