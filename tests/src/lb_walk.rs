//! The walk's load-balancer part: a Service of type LoadBalancer, translated
//! by the cloud-controller-manager's own Service translation and reconciled
//! by the shared lb-controller, gets a real proxy on an EIP at the VPC edge;
//! a client namespace reaches the pods behind it over HTTP; deletion leaves
//! nothing in the cloud.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, ensure};
use iaas_client::Client;
use iaas_client::actions::*;

use crate::netns::{self, HttpServer};
use crate::walk::Walk;

/// A pod the CNI part wired, as the LB part sees it.
#[derive(Debug, Clone)]
pub struct PodView {
    /// Its namespace.
    pub ns: String,
    /// Its VPC-routable address.
    pub ip: Ipv4Addr,
}

/// Inputs of the LB part.
#[derive(Debug)]
pub struct LbWalk {
    /// The VPC router's namespace (where EIPs are answered for).
    pub vpc_ns: String,
    /// The emulator's credentials file (the CCM's cloud-config points at it).
    pub credentials_file: std::path::PathBuf,
}

const SERVICE_PORT: u16 = 80;
const POD_PORT: u16 = 8080;

fn service() -> anyhow::Result<k8s_openapi::api::core::v1::Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web", "namespace": "walk", "uid": "6f1c2a4e-0000-4000-8000-00000000walk",
            "annotations": {"cloudsuite.io/load-balancer-backend-type": "pod"}
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": POD_PORT, "protocol": "TCP"}]
        }
    }))?)
}

fn endpoint_slice(
    pods: &[PodView],
) -> anyhow::Result<k8s_openapi::api::discovery::v1::EndpointSlice> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "walk", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": pods.iter().map(|p| serde_json::json!({"addresses": [p.ip.to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}]
    }))?)
}

impl LbWalk {
    /// Runs the LB steps on pods that exist; returns whether all passed.
    pub async fn run(&self, walk: &mut Walk, client: &Client, pods: &[PodView]) -> bool {
        walk.section("Service type=LoadBalancer: a real proxy at the VPC edge");
        let mut servers = Vec::new();
        let mut client_ns = None;
        let mut address = None;
        let (config, _) = match cloud_provider::config::build(
            cloud_provider::config::CloudConfigFile {
                credentials_file: Some(self.credentials_file.clone()),
                cluster_id: Some("walk".into()),
                ..Default::default()
            },
            "walk cloud-config",
            None,
            |_| None,
        ) {
            Ok(c) => c,
            Err(e) => {
                walk.step("cloud-config", async move {
                    Err::<String, _>(anyhow::anyhow!("{e}"))
                })
                .await;
                return false;
            }
        };
        let reconciler = lb_controller::Reconciler::new(client.clone(), config.cluster_id.clone());
        let ok = walk
            .step(
                "HTTP servers in 2 pods (the Service's endpoints)",
                start_servers(pods, &mut servers),
            )
            .await
            && walk
                .step(
                    "client namespace linked to the VPC edge",
                    self.attach_client(&mut client_ns),
                )
                .await
            && walk
                .step(
                    "Service -> CCM translation -> lb-controller ensure",
                    ensure_lb(&reconciler, &config, pods, &mut address),
                )
                .await
            && walk
                .step(
                    "HTTP from the client via the EIP reaches both pods",
                    traffic(client_ns.as_ref(), address, pods),
                )
                .await
            && walk
                .step(
                    "resync: a second ensure makes zero cloud writes",
                    idempotent(&reconciler, &config, pods),
                )
                .await;
        let _ = ok;
        walk.step(
            "Service deleted: LB, listener, EIP, security group gone",
            delete_lb(&reconciler, client),
        )
        .await;
        drop(servers);
        if let Some(c) = &client_ns {
            crate::ingress_walk::run(walk, client, pods, c.name()).await;
        }
        drop(client_ns);
        walk.all_passed()
    }

    async fn attach_client(&self, out: &mut Option<netns::Client>) -> anyhow::Result<String> {
        let name = format!("walk{}-client", std::process::id());
        let c = netns::Client::attach(&name, &self.vpc_ns, 1)?;
        let detail = format!("{} at {} via {}", c.name(), c.addr, self.vpc_ns);
        *out = Some(c);
        Ok(detail)
    }
}

async fn start_servers(pods: &[PodView], servers: &mut Vec<HttpServer>) -> anyhow::Result<String> {
    for p in pods.iter().take(2) {
        servers.push(HttpServer::start(
            &p.ns,
            SocketAddr::from((p.ip, POD_PORT)),
            &format!("hello from pod {}", p.ip),
        )?);
    }
    ensure!(servers.len() == 2, "need 2 pods, have {}", servers.len());
    Ok(pods
        .iter()
        .take(2)
        .map(|p| format!("{}:{POD_PORT}", p.ip))
        .collect::<Vec<_>>()
        .join(", "))
}

async fn desired(
    config: &cloud_provider::config::CloudConfig,
    pods: &[PodView],
) -> anyhow::Result<lb_controller::DesiredLb> {
    let svc = service()?;
    let slices = vec![endpoint_slice(&pods[..2])?];
    Ok(cloud_provider::services::translate_with(
        &svc,
        &BTreeMap::new(),
        &slices,
        &BTreeMap::new(),
        config,
    )?)
}

async fn ensure_lb(
    reconciler: &lb_controller::Reconciler,
    config: &cloud_provider::config::CloudConfig,
    pods: &[PodView],
    address: &mut Option<Ipv4Addr>,
) -> anyhow::Result<String> {
    let want = desired(config, pods).await?;
    let status = reconciler.ensure(&want).await?;
    let addr: Ipv4Addr = status.addresses.first().context("no LB address")?.parse()?;
    *address = Some(addr);
    Ok(format!(
        "{} on EIP {addr}:{SERVICE_PORT} -> pods :{POD_PORT}",
        status.lb_id
    ))
}

async fn traffic(
    client: Option<&netns::Client>,
    address: Option<Ipv4Addr>,
    pods: &[PodView],
) -> anyhow::Result<String> {
    let client = client.context("no client namespace")?.name().to_string();
    let addr = SocketAddr::from((address.context("no address")?, SERVICE_PORT));
    let mut seen = BTreeSet::new();
    let mut last_err = None;
    // The proxy starts with the job; health checks may take a moment to pass.
    for _ in 0..40 {
        let (c, a) = (client.clone(), addr);
        match tokio::task::spawn_blocking(move || netns::http_get(&c, a, "web.walk", "/")).await? {
            Ok(body) => {
                seen.insert(body.split(" xff=").next().unwrap_or_default().to_string());
                if seen.len() == 2 {
                    break;
                }
            }
            Err(e) => {
                last_err = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
    ensure!(
        seen.len() == 2,
        "reached {} of 2 pods via {addr} (last error: {last_err:?}); answers: {seen:?}",
        seen.len()
    );
    let _ = pods;
    Ok(format!(
        "{} -> {addr}: {}",
        client,
        seen.into_iter().collect::<Vec<_>>().join(" | ")
    ))
}

async fn idempotent(
    reconciler: &lb_controller::Reconciler,
    config: &cloud_provider::config::CloudConfig,
    pods: &[PodView],
) -> anyhow::Result<String> {
    let before = writes(reconciler.client());
    let want = desired(config, pods).await?;
    reconciler.ensure(&want).await?;
    let after = writes(reconciler.client());
    ensure!(
        after == before,
        "{} write calls on an unchanged Service",
        after - before
    );
    Ok("0 writes".into())
}

fn writes(client: &Client) -> u64 {
    client
        .stats()
        .iter()
        .filter(|(action, _)| !action.starts_with("Describe"))
        .map(|(_, s)| s.calls)
        .sum()
}

async fn delete_lb(
    reconciler: &lb_controller::Reconciler,
    client: &Client,
) -> anyhow::Result<String> {
    let svc = service()?;
    let owner = cloud_provider::services::owner(&svc, "walk");
    reconciler.delete(&owner).await?;
    let lbs = client
        .describe_load_balancers_all(&DescribeLoadBalancers::default())
        .await?;
    let live: Vec<_> = lbs
        .iter()
        .filter(|l| !matches!(l.status.as_str(), "deleted" | "ceased"))
        .map(|l| l.loadbalancer_id.clone())
        .collect();
    ensure!(live.is_empty(), "load balancers left: {live:?}");
    let eips = client.describe_eips_all(&DescribeEips::default()).await?;
    let held: Vec<_> = eips
        .iter()
        .filter(|e| e.status != "released")
        .map(|e| e.eip_id.clone())
        .collect();
    ensure!(held.is_empty(), "EIPs left: {held:?}");
    let sgs = client
        .describe_security_groups_all(&DescribeSecurityGroups::default())
        .await?;
    let ours: Vec<_> = sgs
        .iter()
        .filter(|g| g.is_default == 0)
        .map(|g| g.security_group_id.clone())
        .collect();
    ensure!(ours.is_empty(), "security groups left: {ours:?}");
    Ok("0 LBs, 0 EIPs, 0 non-default security groups".into())
}
