//! TLS verification: custom CA, verification on by default, explicit opt-out.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Responder, SECRET, ok};
use iaas_client::actions::*;
use iaas_client::{Client, Config, Credentials, Error};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;
use tokio_rustls::rustls;

/// A throwaway CA and a `localhost` certificate it signed.
struct TestPki {
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn pki() -> TestPki {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "iaas-client test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    }
}

fn https_config(r: &Responder, ca_file: Option<&Path>, insecure: bool) -> Config {
    let creds = Credentials::new("AKIDTEST", SECRET).unwrap();
    let mut cfg = Config::new(format!("https://localhost:{}", r.addr.port()), "z1", creds);
    cfg.tls.ca_file = ca_file.map(Path::to_path_buf);
    cfg.tls.insecure_skip_verify = insecure;
    cfg.retry.max_elapsed = Duration::ZERO;
    cfg
}

#[tokio::test]
async fn tls_with_custom_ca_and_verification_on_by_default() {
    let pki = pki();
    let r = Responder::start_tls(pki.acceptor.clone(), |_, _| {
        ok(json!({"total_count": 0, "tag_set": []}))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    let trusted = Client::new(https_config(&r, Some(&ca_file), false)).unwrap();
    trusted
        .describe_tags(&DescribeTags::default())
        .await
        .unwrap();
    assert!(r.seen()[0].signature_ok);

    // Verification is on by default, and a rejected certificate is not
    // retried (with the default 60 s retry budget this returns at once).
    let mut cfg = https_config(&r, None, false);
    cfg.retry = Default::default();
    let untrusted = Client::new(cfg).unwrap();
    let e = untrusted
        .describe_tags(&DescribeTags::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e}");
    assert!(e.is_tls_failure(), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert_eq!(untrusted.stats()["DescribeTags"].retries, 0);

    let insecure = Client::new(https_config(&r, None, true)).unwrap();
    insecure
        .describe_tags(&DescribeTags::default())
        .await
        .unwrap();
}

#[test]
fn bad_ca_file_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Credentials::new("AK", SECRET).unwrap();
    let mut cfg = Config::new("https://localhost", "z1", creds);
    cfg.tls.ca_file = Some(dir.path().join("missing.pem"));
    let e = Client::new(cfg.clone()).unwrap_err();
    assert!(e.to_string().contains("tls.ca_file"), "{e}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    cfg.tls.ca_file = Some(empty);
    let e = Client::new(cfg).unwrap_err();
    assert!(e.to_string().contains("tls.ca_file"), "{e}");
}
