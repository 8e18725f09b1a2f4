//! Optional HTTPS: a self-signed certificate made with rcgen, kept in
//! `<data_dir>/tls/` so that clients can trust it across restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::emulator::write_private;
use crate::error::EmuError;

/// Loads (or creates) the certificate and builds the acceptor; returns the cert path.
pub fn acceptor(
    data_dir: &Path,
    addr: SocketAddr,
) -> Result<(tokio_rustls::TlsAcceptor, PathBuf), EmuError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir)
        .map_err(|e| EmuError::io(format!("creating {}", dir.display()), e))?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
            names.push(addr.ip().to_string());
        }
        let ck =
            rcgen::generate_simple_self_signed(names).map_err(|e| EmuError::Tls(e.to_string()))?;
        write_private(&key_path, ck.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, ck.cert.pem())
            .map_err(|e| EmuError::io(format!("writing {}", cert_path.display()), e))?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| EmuError::Tls(format!("{}: {e}", cert_path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| EmuError::Tls(format!("{}: {e}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| EmuError::Tls(format!("{}: {e}", key_path.display())))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| EmuError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), cert_path))
}
