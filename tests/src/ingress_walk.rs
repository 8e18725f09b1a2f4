//! The walk's Ingress part: an Ingress with two hosts, Prefix and Exact
//! paths and TLS, translated by the Ingress controller's own translation and
//! reconciled by lb-controller into an L7 load balancer; a client namespace
//! sends real HTTP and HTTPS (verifying the chain and the name) through it to
//! different pods.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use iaas_client::Client;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use lb_controller::ingress::translate::{self, Settings, Snapshot};

use crate::lb_walk::PodView;
use crate::netns::{self, HttpServer};
use crate::walk::Walk;

const POD_PORT: u16 = 8081;
const HOST_A: &str = "shop.walk.test";
const HOST_B: &str = "blog.walk.test";

struct Tls {
    ca_pem: String,
    secret: Secret,
}

fn tls_material() -> anyhow::Result<Tls> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec![HOST_A.to_string(), HOST_B.to_string()])?
        .signed_by(&key, &issuer)?;
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "walk-tls", "namespace": "walk"},
        "data": {"tls.crt": b64(&leaf.pem()), "tls.key": b64(&key.serialize_pem())}
    }))?;
    Ok(Tls {
        ca_pem: ca_cert.pem(),
        secret,
    })
}

fn objects(pods: &[PodView]) -> anyhow::Result<(Ingress, Vec<Service>, Vec<EndpointSlice>)> {
    let ingress: Ingress = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {
            "name": "site", "namespace": "walk", "uid": "00000000-0000-4000-8000-0000000ingr",
            "annotations": {"ingress.cloudsuite.io/backend-type": "pod"}
        },
        "spec": {
            "ingressClassName": "cloudsuite",
            "tls": [{"hosts": [HOST_A, HOST_B], "secretName": "walk-tls"}],
            "rules": [
                {"host": HOST_A, "http": {"paths": [
                    {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 80}}}},
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
                ]}},
                {"host": HOST_B, "http": {"paths": [
                    {"path": "/about", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {"number": 80}}}},
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
                ]}}
            ]
        }
    }))?;
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (name, pod) in [("api", &pods[0]), ("web", &pods[1])] {
        services.push(serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "walk"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": POD_PORT, "protocol": "TCP"}]}
        }))?);
        slices.push(serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-x"), "namespace": "walk", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [pod.ip.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}]
        }))?);
    }
    Ok((ingress, services, slices))
}

/// Runs the Ingress steps on pods that exist, from `client_ns`.
pub async fn run(walk: &mut Walk, client: &Client, pods: &[PodView], client_ns: &str) -> bool {
    walk.section("Ingress: an L7 load balancer with host/path rules and TLS");
    if pods.len() < 2 {
        walk.skip("Ingress", "needs 2 pods");
        return false;
    }
    let reconciler = lb_controller::Reconciler::new(client.clone(), "walk");
    let mut servers = Vec::new();
    let mut address = None;
    let mut ca = String::new();
    let ok = walk
        .step("HTTP servers in 2 pods (Services api and web)", async {
            for (name, p) in [("api", &pods[0]), ("web", &pods[1])] {
                servers.push(HttpServer::start(
                    &p.ns,
                    SocketAddr::from((p.ip, POD_PORT)),
                    &format!("{name} pod {}", p.ip),
                )?);
            }
            Ok(format!("api -> {}, web -> {}", pods[0].ip, pods[1].ip))
        })
        .await
        && walk
            .step(
                "Ingress -> controller translation -> lb-controller ensure",
                ensure(&reconciler, pods, &mut address, &mut ca),
            )
            .await;
    if ok {
        walk.step(
            "HTTP routed by host and path (Prefix element-wise, Exact)",
            http_matrix(client_ns, address),
        )
        .await;
        walk.step(
            "HTTPS with SNI, chain and name verified against the test CA",
            https(client_ns, address, &ca),
        )
        .await;
    }
    walk.step(
        "Ingress deleted: LB, listeners, certificate, policies gone",
        delete(&reconciler, client, pods),
    )
    .await;
    drop(servers);
    walk.all_passed()
}

fn arcs<T>(v: Vec<T>) -> Vec<std::sync::Arc<T>> {
    v.into_iter().map(std::sync::Arc::new).collect()
}

async fn ensure(
    reconciler: &lb_controller::Reconciler,
    pods: &[PodView],
    address: &mut Option<Ipv4Addr>,
    ca: &mut String,
) -> anyhow::Result<String> {
    let tls = tls_material()?;
    *ca = tls.ca_pem.clone();
    let (ingress, services, slices) = objects(pods)?;
    let key = translate::lb_key(&ingress).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let secrets = [std::sync::Arc::new(tls.secret)];
    let (services, slices) = (arcs(services), arcs(slices));
    let snap = Snapshot {
        services: &services,
        slices: &slices,
        nodes: &[],
        secrets: &secrets,
    };
    let t = translate::translate(
        &key,
        std::slice::from_ref(&ingress),
        &snap,
        &Settings::new("walk"),
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    ensure!(t.notices.is_empty(), "translation notices: {:?}", t.notices);
    let status = reconciler.ensure(&t.desired).await?;
    let addr: Ipv4Addr = status.addresses.first().context("no address")?.parse()?;
    *address = Some(addr);
    Ok(format!(
        "{} on {addr}: http :80 and https :443",
        status.lb_id
    ))
}

async fn get(ns: &str, addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<String> {
    let (ns, host, path) = (ns.to_string(), host.to_string(), path.to_string());
    let mut last = None;
    for _ in 0..40 {
        let (n, h, p) = (ns.clone(), host.clone(), path.clone());
        match tokio::task::spawn_blocking(move || netns::http_get(&n, addr, &h, &p)).await? {
            Ok(body) => {
                return Ok(body
                    .split(" xff=")
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string());
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")))
}

async fn http_matrix(ns: &str, address: Option<Ipv4Addr>) -> anyhow::Result<String> {
    let addr = SocketAddr::from((address.context("no address")?, 80));
    // (host, path, expected Service) — Prefix matches whole path elements only.
    let cases = [
        (HOST_A, "/api", "api"),
        (HOST_A, "/api/orders", "api"),
        (HOST_A, "/apiary", "web"),
        (HOST_A, "/", "web"),
        (HOST_B, "/about", "api"),
        (HOST_B, "/about/team", "web"),
    ];
    for (host, path, want) in cases {
        let body = get(ns, addr, host, path).await?;
        ensure!(
            body.starts_with(want),
            "{host}{path} reached {body:?}, expected the {want} pod"
        );
    }
    Ok(format!(
        "{} host/path cases routed as Kubernetes specifies",
        cases.len()
    ))
}

async fn https(ns: &str, address: Option<Ipv4Addr>, ca: &str) -> anyhow::Result<String> {
    let addr = SocketAddr::from((address.context("no address")?, 443));
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = std::io::BufReader::new(ca.as_bytes());
    for cert in rustls_pemfile_certs(&mut reader)? {
        roots.add(cert)?;
    }
    let config = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let ns = ns.to_string();
    let body = tokio::task::spawn_blocking(move || {
        netns::in_netns(&ns, move || -> anyhow::Result<String> {
            use std::io::{Read as _, Write as _};
            let name = rustls::pki_types::ServerName::try_from(HOST_B)?;
            let conn = rustls::ClientConnection::new(config, name)?;
            let tcp =
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))?;
            tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            write!(
                tls,
                "GET /about HTTP/1.1\r\nHost: {HOST_B}\r\nConnection: close\r\n\r\n"
            )?;
            let mut out = String::new();
            let _ = tls.read_to_string(&mut out);
            Ok(out)
        })?
    })
    .await??;
    ensure!(
        body.starts_with("HTTP/1.1 200"),
        "https answer: {}",
        body.lines().next().unwrap_or("")
    );
    ensure!(
        body.contains("api pod"),
        "https {HOST_B}/about reached the wrong pod: {body}"
    );
    let proto = body.to_ascii_lowercase().contains("xff=");
    Ok(format!(
        "https://{HOST_B}/about verified and routed (X-Forwarded-For seen: {proto})"
    ))
}

/// PEM certificates from a reader (CERTIFICATE blocks only).
fn rustls_pemfile_certs(
    reader: &mut dyn std::io::BufRead,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut text = Vec::new();
    reader.read_to_end(&mut text)?;
    Ok(rustls::pki_types::CertificateDer::pem_slice_iter(&text).collect::<Result<Vec<_>, _>>()?)
}

async fn delete(
    reconciler: &lb_controller::Reconciler,
    client: &Client,
    pods: &[PodView],
) -> anyhow::Result<String> {
    let (ingress, _, _) = objects(pods)?;
    let key = translate::lb_key(&ingress).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    reconciler.delete(&key.owner("walk")).await?;
    let lbs = client
        .describe_load_balancers_all(&Default::default())
        .await?;
    ensure!(
        lbs.iter()
            .all(|l| matches!(l.status.as_str(), "deleted" | "ceased")),
        "load balancers left"
    );
    let certs = client
        .describe_server_certificates_all(&Default::default())
        .await?;
    ensure!(certs.is_empty(), "{} certificates left", certs.len());
    let policies = client
        .describe_load_balancer_policies_all(&Default::default())
        .await?;
    ensure!(policies.is_empty(), "{} policies left", policies.len());
    Ok("0 LBs, 0 certificates, 0 policies".into())
}
