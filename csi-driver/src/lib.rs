//! CSI driver for the cloud's block disks.
//!
//! - [`identity`], [`controller`], [`node`]: the three CSI services.
//! - [`mount`], [`device`], [`format`]: node-side primitives (mountinfo,
//!   device discovery, safe format and growth).
//! - [`error`]: the one error type and its mapping to gRPC codes.
//! - [`server`]: serving the services on a unix socket.

/// Generated CSI v1 types and services.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

pub mod cli;
pub mod cloud;
pub mod controller;
pub mod device;
pub mod error;
pub mod format;
pub mod identity;
pub mod inflight;
pub mod metrics;
pub mod mount;
pub mod node;
pub mod server;
#[cfg(test)]
mod testutil;
pub mod validate;
