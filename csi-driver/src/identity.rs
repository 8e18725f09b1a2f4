//! The CSI Identity service.

use std::collections::HashMap;

use iaas_client::Client;
use iaas_client::actions::DescribeVolumes;
use tonic::{Request, Response, Status};

use crate::csi::identity_server::Identity;
use crate::csi::{self, plugin_capability};
use crate::error::Error;

/// The driver name registered with Kubernetes (the CSIDriver object).
pub const DRIVER_NAME: &str = "disk.csi.cloudsuite.io";

/// The Identity service; probes the cloud when it has a client.
#[derive(Debug, Clone)]
pub struct IdentityService {
    cloud: Option<Client>,
}

impl IdentityService {
    /// `cloud`: the controller's client (a node-only plugin has none and is
    /// ready as soon as it serves).
    pub fn new(cloud: Option<Client>) -> Self {
        IdentityService { cloud }
    }

    /// The cloud client, when this process runs the controller.
    pub fn cloud(&self) -> Option<&Client> {
        self.cloud.as_ref()
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::service::Type as S;
        use plugin_capability::volume_expansion::Type as E;
        let service = |t: S| csi::PluginCapability {
            r#type: Some(plugin_capability::Type::Service(
                plugin_capability::Service { r#type: t as i32 },
            )),
        };
        let expansion = |t: E| csi::PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(
                plugin_capability::VolumeExpansion { r#type: t as i32 },
            )),
        };
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![
                service(S::ControllerService),
                service(S::VolumeAccessibilityConstraints),
                expansion(E::Online),
                expansion(E::Offline),
            ],
        }))
    }

    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        if let Some(client) = &self.cloud {
            // The cheapest authenticated call: one volume, one page.
            client
                .describe_volumes(&DescribeVolumes {
                    limit: Some(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::FailedPrecondition(format!("cloud unreachable: {e}")))?;
        }
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}
