//! `kubectl-steward`, the kubectl plugin for steward rollouts: `status`
//! draws a rollout as a tree (once, or live with `-w`); `pause`, `resume`,
//! `promote`, `abort` and `retry` steer it through the fields and
//! annotations documented in docs/rollouts.md ("Manual control"), the same
//! ones plain `kubectl patch` can set.
//!
//! `render` and `actions` are pure (tested on fixtures); `client` talks to
//! the API server; `cli` ties them to the command line.

pub mod actions;
pub mod cli;
pub mod client;
pub mod render;
