//! TLS termination for https listeners: certificates chosen by SNI.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::dataplane::{DataPlaneError, DpResult};

/// An uploaded certificate ready to serve.
#[derive(Debug)]
pub struct ServedCert {
    /// Lowercase DNS names it is valid for (SANs, else the subject CN);
    /// wildcards kept as `*.example.com`.
    pub names: Vec<String>,
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
}

/// Loads one certificate from its PEM chain and PEM private key.
pub fn load_cert(
    provider: &CryptoProvider,
    id: &str,
    chain_pem: &str,
    key_pem: &str,
) -> DpResult<ServedCert> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        DataPlaneError(format!("server certificate {id}: {what}: {e}"))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate_content", &e))?;
    let Some(leaf) = chain.first() else {
        return Err(bad("certificate_content", &"no certificate in the PEM"));
    };
    let names = dns_names(leaf).map_err(|e| bad("certificate_content", &e))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("private_key", &e))?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| bad("private_key (does it match the certificate?)", &e))?;
    Ok(ServedCert {
        names,
        key: Arc::new(key),
    })
}

/// The DNS names of a leaf certificate: SAN dNSNames, else the subject CN.
fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// Chooses a listener's certificate by the client's SNI: an exact name
/// first, then a wildcard covering one label, else the first (default).
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<ServedCert>,
}

impl SniResolver {
    /// A resolver over the listener's certificates, the first being the default.
    pub fn new(certs: Vec<ServedCert>) -> DpResult<Self> {
        if certs.is_empty() {
            return Err(DataPlaneError("no server certificate".to_string()));
        }
        Ok(SniResolver { certs })
    }

    /// The certificate served for `sni` (exposed for tests and logs).
    pub fn choose(&self, sni: Option<&str>) -> &ServedCert {
        if let Some(host) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) {
            if let Some(c) = self.certs.iter().find(|c| c.names.contains(&host)) {
                return c;
            }
            if let Some((_, parent)) = host.split_once('.') {
                let wildcard = format!("*.{parent}");
                if let Some(c) = self.certs.iter().find(|c| c.names.contains(&wildcard)) {
                    return c;
                }
            }
        }
        &self.certs[0]
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).key.clone())
    }
}

/// A rustls server config for an https listener.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: SniResolver,
) -> DpResult<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DataPlaneError(format!("tls config: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
