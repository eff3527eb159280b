//! Scheduling decisions with no tensor in sight: the block allocator with
//! its prefix cache (`blocks`), the continuous-batching scheduler that
//! plans each step (`scheduler`). The engine loop (`crate::executor`) turns a
//! plan into tensors and feeds results back.

pub mod blocks;
pub mod cost;
pub mod scheduler;

pub use blocks::{BlockAllocator, BlockId};
pub use scheduler::{PlanItem, Scheduler, SchedulerConfig, SeqId, StepPlan};
