//! The embedded QingCloud-style IaaS.
//!
//! [`Emulator::start`] opens a crash-safe store under the data dir (seeding a
//! zone, a VPC, instances and credentials at first start), serves the signed
//! API of `docs/API-REFERENCE.md` over HTTP(S), runs asynchronous actions as
//! jobs through the data-plane drivers, and injects faults on request.
//!
//! Modules: [`config`] (what it starts with), [`api`] (the actions),
//! [`jobs`] (the job engine), [`store`]/[`state`] (persistence),
//! [`commit`] (group commit: many requests per durable transaction), [`faults`]
//! (fault injection and call stats), [`server`] (HTTP and `/admin/`),
//! [`dataplane`] (the driver seam).

pub mod api;
pub mod commit;
pub mod config;
pub mod dataplane;
pub mod emulator;
pub mod error;
pub mod faults;
pub mod jobs;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod util;

#[cfg(test)]
mod tests;

pub use commit::CommitStats;
pub use config::{Credentials, EmulatorConfig, VolumeTypeBounds};
pub use dataplane::DataPlane;
pub use emulator::Emulator;
pub use error::{ApiError, EmuError};
pub use faults::{ActionStats, FaultConfig};
