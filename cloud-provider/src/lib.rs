//! The cloud-controller-manager for the cloudsuite IaaS.
//!
//! - [`config`]: the `--cloud-config` file and the process flags.
//! - [`provider`]: providerIDs, node/instance matching, addresses, labels (pure).
//! - [`nodes`]: the node controller (initialisation).
//! - [`lifecycle`]: the node lifecycle controller (shutdown taint, deletion).
//! - [`routes`]: the route controller (VPC routes for pod CIDRs).
//! - [`services`]: the Service controller (type LoadBalancer).
//! - [`manager`]: wiring: clients, metrics, leader election, shutdown.
//! - [`rbac`]: the Kubernetes API calls made (the RBAC manifests grant exactly these).

pub mod annotations;
pub mod cidr;
pub mod config;
pub mod context;
pub mod lifecycle;
pub mod manager;
pub mod node_cache;
pub mod nodes;
pub mod provider;
pub mod rbac;
pub mod routes;
pub mod services;

pub use context::{Context, Error};

#[cfg(test)]
mod tests;
