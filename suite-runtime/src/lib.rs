//! Process plumbing every binary of the suite needs, in one small crate:
//!
//! - [`logging`]: tracing initialisation, JSON or text.
//! - [`config`]: YAML config files whose errors name the file and the field.
//! - [`shutdown`]: a cloneable shutdown signal, triggered by SIGTERM/SIGINT.
//! - [`http`]: the metrics and health server (`/metrics`, `/healthz`, `/readyz`).
//! - [`metrics`]: reconcile counters shared by controllers.
//! - [`events`]: best-effort Kubernetes Event recording.
//! - [`leader`]: leader election on a `coordination.k8s.io` Lease; work runs
//!   only while this replica holds it.
//! - [`runtime`]: the small tokio runtime (two workers, capped malloc
//!   arenas) the binaries run on.
//!
//! ```no_run
//! use suite_runtime::{http, leader, logging, shutdown::Shutdown};
//! # async fn demo(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! logging::init(logging::LogFormat::Json, "info")?;
//! let shutdown = Shutdown::new();
//! shutdown.listen_for_signals();
//! let health = http::Health::new();
//! let registry = prometheus_client::registry::Registry::default();
//! let server = http::serve("127.0.0.1:0".parse()?, registry, health.clone(), shutdown.clone()).await?;
//! println!("metrics on {}", server.addr);
//! let cfg = leader::LeaderConfig::new("my-controller", "kube-system", "pod-1");
//! leader::run_while_leader(client, cfg, health, shutdown, || async {
//!     // controllers run here, and are stopped when the lease is lost
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod events;
pub mod http;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod runtime;
pub mod shutdown;

pub use shutdown::Shutdown;
