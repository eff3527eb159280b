//! steward-operator: turns `InferenceService` objects into revisions of
//! steward-engine pods, shifts traffic between them and reports status.
//!
//! `crd` holds the resource types (shared with the router).

pub mod crd;
