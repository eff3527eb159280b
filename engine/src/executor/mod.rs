//! The executor: `core` runs scheduled steps on the model; `actor` owns the
//! core on a dedicated thread and talks to the HTTP side through a bounded
//! command channel (handle + command enum + task).

pub mod actor;
pub mod core;
pub mod score;

pub use self::actor::{spawn, ActorConfig, EngineHandle, Event, FinishReason, Submission};
pub use self::core::{EngineCore, StepOutput};
