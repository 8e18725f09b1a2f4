//! Signed-request client for a QingCloud-style IaaS API.
//!
//! - [`sign`]: QingCloud signature v1 and Tencent TC3-HMAC-SHA256, golden-tested.
//! - [`params`]: flat `x.n.y` parameters, built from request structs and read back.
//! - [`codes`]: `ret_code` values and their retry classes.
//! - [`model`]: resource records shared with the emulator.
//! - [`config`]: endpoint, zone, credentials, timeouts, retry, rate limit, TLS.
//! - [`Client`]: signed transport with retries, rate limit, tracing and metrics.
//! - [`jobs`]: waiting for asynchronous jobs and resource states.
//! - [`actions`]: typed requests and responses, one method per action.
//! - [`Error`]: the one error type at the crate boundary.
//!
//! ```no_run
//! use iaas_client::actions::{AttachVolumes, CreateVolumes, DescribeVolumes};
//! use iaas_client::{Client, Config};
//!
//! # async fn demo() -> Result<(), iaas_client::Error> {
//! let client = Client::new(Config::from_credentials_file("/var/lib/iaas-emulator/credentials.yaml")?)?;
//! let created = client
//!     .create_volumes_and_wait(&CreateVolumes { size: 10, volume_name: Some("pvc-1".into()), ..Default::default() })
//!     .await?;
//! let job = client
//!     .attach_volumes(&AttachVolumes { volumes: created.volumes.clone(), instance: "i-1".into() })
//!     .await?;
//! client.wait_job(&job.job_id, None).await?;
//! let volumes = client
//!     .describe_volumes_all(&DescribeVolumes { volumes: created.volumes, ..Default::default() })
//!     .await?;
//! println!("device: {:?}", volumes[0].instance.as_ref().map(|i| &i.device));
//! # Ok(())
//! # }
//! ```

pub mod actions;
pub mod client;
pub mod codes;
pub mod config;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod params;
pub mod sign;

pub use actions::Page;
pub use client::Client;
pub use config::{Config, Credentials, HttpMethod};
pub use error::Error;
pub use metrics::CallStats;
