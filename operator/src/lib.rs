//! steward-operator: turns `InferenceService` objects into revisions of
//! steward-engine pods, shifts traffic between them and reports status.
//!
//! One reconcile pass: `observe` (children and stored status → plain views)
//! → `desired`, which runs `autoscale` (serving / warm counts) → `rollout`
//! (revisions, sizes, traffic, memory) → `pool` (rotation labels) →
//! `status` (the value) → `children` (the objects) → `route` (the
//! Gateway API HTTPRoute, where served) → `events`; then
//! `plan::plan_writes` lists only the writes that change something, in an
//! order that never leaves the data plane without endpoints, and
//! `controller` executes them. Everything before `controller` is pure and
//! unit tested (`tests/layering.rs` keeps it that way); `leader`, `http`,
//! `metrics` and `run` wrap the process around it.

pub mod alarm;
pub mod autoscale;
pub mod children;
pub mod claims;
pub mod config;
pub mod controller;
pub mod crd;
pub mod dashboard;
pub mod desired;
pub mod events;
pub mod http;
pub mod invalid;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod pool;
pub mod quality;
pub mod reason;
pub mod revision;
pub mod rollout;
pub mod route;
pub mod rules;
pub mod run;
pub mod security;
pub mod signals;
pub mod status;
