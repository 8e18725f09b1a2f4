//! Serving the CSI services on a unix socket.

use std::future::Future;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::controller::ControllerService;
use crate::csi::controller_server::ControllerServer;
use crate::csi::identity_server::IdentityServer;
use crate::csi::node_server::NodeServer;
use crate::error::{Error, Result};
use crate::identity::IdentityService;
use crate::metrics::{RpcMetrics, RpcMetricsLayer};
use crate::node::NodeService;

/// The services one process serves (`--mode controller|node|all`).
#[derive(Debug, Clone)]
pub struct Services {
    /// Always served.
    pub identity: IdentityService,
    /// Served in controller and all modes.
    pub controller: Option<ControllerService>,
    /// Served in node and all modes.
    pub node: Option<NodeService>,
}

/// Parses `unix:///csi/csi.sock` (or a bare absolute path) into a path.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(Error::invalid(
            "endpoint",
            format!("{endpoint:?}: expected unix:///absolute/path"),
        ));
    }
    Ok(PathBuf::from(path))
}

/// Binds the socket, removing a stale socket file left by a previous run
/// (but never a regular file or directory of the same name).
pub fn bind(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)
                .map_err(|e| Error::internal(format!("remove stale {}", path.display()), e))?;
        } else {
            return Err(Error::invalid(
                "endpoint",
                format!("{} exists and is not a socket", path.display()),
            ));
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::internal(format!("create {}", parent.display()), e))?;
    }
    UnixListener::bind(path).map_err(|e| Error::internal(format!("bind {}", path.display()), e))
}

/// Serves until `shutdown` resolves, then removes the socket.
pub async fn serve(
    services: Services,
    path: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_with_metrics(services, path, shutdown, Arc::new(RpcMetrics::new())).await
}

/// Like [`serve`], recording every call in `metrics`.
pub async fn serve_with_metrics(
    services: Services,
    path: &Path,
    shutdown: impl Future<Output = ()> + Send,
    metrics: Arc<RpcMetrics>,
) -> Result<()> {
    let listener = bind(path)?;
    tracing::info!(socket = %path.display(), controller = services.controller.is_some(), node = services.node.is_some(), "serving CSI");
    let router = tonic::transport::Server::builder()
        .layer(RpcMetricsLayer(metrics))
        .add_service(IdentityServer::new(services.identity))
        .add_optional_service(services.controller.map(ControllerServer::new))
        .add_optional_service(services.node.map(NodeServer::new));
    let result = router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(path);
    result.map_err(|e| Error::internal("gRPC server", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///csi/csi.sock").expect("uri"),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            parse_endpoint("/tmp/x.sock").expect("path"),
            PathBuf::from("/tmp/x.sock")
        );
        assert!(parse_endpoint("unix://relative.sock").is_err());
        assert!(parse_endpoint("tcp://1.2.3.4:5").is_err());
    }
}
