//! Discovery: watches on InferenceServices and pods feed the [`SharedIndex`].
//!
//! [`convert`] turns API objects into index views (pure, tolerant: a
//! malformed object is skipped and counted, and an object that was good
//! before keeps its last good view); [`watch`] runs kube-runtime watchers
//! with the default backoff (so watches re-list after errors) and restarts
//! each watch on a resync interval for a full re-list, which bounds how
//! long a missed event can leave the index wrong.

pub mod convert;
pub mod static_routes;
pub mod watch;

pub use watch::{run, DiscoveryConfig};
