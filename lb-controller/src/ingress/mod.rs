//! The Ingress controller (L7): Ingresses of our IngressClass become cloud
//! load balancers with host/path rules and TLS, through the same
//! [`DesiredLb`](crate::DesiredLb) model and reconciler as Service LBs.
//!
//! - [`annotations`]: every annotation and well-known name.
//! - [`translate`]: pure Ingress(es) -> `DesiredLb` translation (class
//!   selection, groups and precedence, pathType semantics, backends, TLS).
//! - [`controller`]: the reconcile loop (finalizer, ensure, status, Events,
//!   deletion), the batched resync ([`controller::resync_all`]), the
//!   watches, and [`controller::run`].
//!
//! The binary `ingress-controller` wires it with suite-runtime's logging,
//! metrics, health, leader election and graceful shutdown.

pub mod annotations;
pub mod controller;
pub mod rbac;
pub mod translate;

#[cfg(test)]
mod tests;

pub use annotations::{CONTROLLER_NAME, FINALIZER};
pub use controller::{Ctx, Error, ResyncReport, Stores, reconcile, resync_all, run};
pub use translate::{LbKey, Settings, Snapshot, TranslateError, Translation, translate};
