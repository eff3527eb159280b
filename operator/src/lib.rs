//! steward-operator: turns `InferenceService` objects into revisions of
//! steward-engine pods, shifts traffic between them and reports status.
//!
//! Flow of one reconcile: `observe` (children → plain views) → `rollout`
//! (which revisions at what size, who gets traffic) → `status` (the status
//! value) → `children` (the objects to apply) → `controller` (applies only
//! what differs). Everything before `controller` is pure and unit tested;
//! `leader`, `http`, `metrics` and `run` wrap the process around it.

pub mod alarm;
pub mod children;
pub mod config;
pub mod controller;
pub mod crd;
pub mod dashboard;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod revision;
pub mod roles;
pub mod rollout;
pub mod rules;
pub mod run;
pub mod signals;
pub mod status;
