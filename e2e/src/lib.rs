//! Steward's local system for tests and demos: the upstream Kubernetes
//! control plane on loopback ([`cluster::LocalCluster`]), a node program
//! that runs pods as local processes ([`node`]), and the helpers both use.

pub mod certs;
pub mod cluster;
pub mod faults;
pub mod keda;
pub mod node;
pub mod parts;
pub mod proc;
pub mod prometheus;
pub mod streams;
pub mod testing;
pub mod tools;

pub use cluster::{client_from_kubeconfig, create_namespace, ClusterOptions, LocalCluster};
pub use keda::{KedaOptions, LocalKeda};
pub use node::{LocalNode, NodeOptions};
