//! Cloud load balancers for the Service (L4) and Ingress (L7) controllers.
//!
//! The library knows nothing of Kubernetes: controllers translate their
//! objects into a [`DesiredLb`] and call [`Reconciler::ensure`] /
//! [`Reconciler::delete`].
//!
//! - [`model`]: the desired state, its validation and the deterministic names.
//! - [`observe`]: reading the cloud by ownership tag (batched for resyncs).
//! - [`plan`]: the pure diff, desired + observed -> ordered operations.
//! - [`reconcile`]: executing plans, waiting on jobs, crash-safe by construction.
//! - [`Error`]: the one error type, with metric labels and retryability.
//! - [`nodes`]: which Nodes may receive LB traffic (shared with the Service controller).
//! - [`ingress`]: the Ingress controller built on the above (binary `ingress-controller`).
//!
//! ```no_run
//! use lb_controller::model::*;
//! use lb_controller::Reconciler;
//!
//! # async fn demo(client: iaas_client::Client) -> Result<(), lb_controller::Error> {
//! let r = Reconciler::new(client, "cluster-1");
//! let owner = LbOwner {
//!     cluster_id: "cluster-1".into(),
//!     kind: OwnerKind::Service,
//!     namespace: "default".into(),
//!     name: "web".into(),
//!     uid: "6f1c2a7e-0000-0000-0000-000000000000".into(),
//! };
//! let desired = DesiredLb {
//!     owner: owner.clone(),
//!     network: LbNetwork::Public { eip: EipSource::Allocate { bandwidth: 10 } },
//!     reuse_existing: None,
//!     loadbalancer_type: 0,
//!     source_ranges: vec![],
//!     listeners: vec![DesiredListener::l4(80, Protocol::Tcp, vec![DesiredBackend {
//!         target: BackendTarget::Instance("i-node1".into()),
//!         port: 30080,
//!         weight: 1,
//!     }])],
//! };
//! let status = r.ensure(&desired).await?;
//! println!("{} on {:?}", status.lb_id, status.addresses);
//! r.delete(&owner).await?;
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod ingress;
pub mod model;
pub mod nodes;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod watch;

pub use error::{Error, Result};
pub use model::{DesiredLb, LbOwner};
pub use reconcile::{LbStatus, Reconciler, ReconcilerOptions};
