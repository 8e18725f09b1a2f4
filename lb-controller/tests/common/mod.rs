//! Shared helpers: an in-process emulator, a fast-polling client, builders
//! of desired models, and a leak checker.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use iaas_client::Client;
use iaas_client::actions::*;
use iaas_emulator::{Emulator, EmulatorConfig};
use lb_controller::model::*;
use lb_controller::{Reconciler, ReconcilerOptions};

pub const CLUSTER: &str = "c1";

/// An emulator with its data dir (removed on drop).
pub struct Cloud {
    pub emu: Emulator,
    pub dir: tempfile::TempDir,
    pub client: Client,
}

pub fn client_for(emu: &Emulator) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = iaas_client::Config::from_credentials_file(emu.credentials_file()).unwrap();
    cfg.jobs.initial_poll = Duration::from_millis(5);
    cfg.jobs.max_poll = Duration::from_millis(50);
    cfg.jobs.default_timeout = Duration::from_secs(20);
    cfg.retry.initial_delay = Duration::from_millis(10);
    cfg.retry.max_delay = Duration::from_millis(100);
    cfg.retry.max_elapsed = Duration::from_secs(3);
    cfg.rate_limit.qps = 10_000;
    cfg.rate_limit.burst = 10_000;
    Client::new(cfg).unwrap()
}

impl Cloud {
    pub async fn start() -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EmulatorConfig::for_tests(dir.path());
        cfg.job_delay_ms = 2;
        let emu = Emulator::start(cfg).await.unwrap();
        let client = client_for(&emu);
        Cloud { emu, dir, client }
    }

    pub fn reconciler(&self) -> Reconciler {
        Reconciler::new(client_for(&self.emu), CLUSTER).with_options(ReconcilerOptions {
            transition_timeout: Duration::from_secs(5),
            job_timeout: Some(Duration::from_secs(10)),
        })
    }

    /// Write calls (anything but Describe*) the emulator answered since the last reset.
    pub fn writes(&self) -> BTreeMap<String, u64> {
        self.emu
            .stats()
            .into_iter()
            .filter(|(a, s)| !a.starts_with("Describe") && s.calls > 0)
            .map(|(a, s)| (a, s.calls))
            .collect()
    }

    /// Describe calls since the last reset.
    pub fn describes(&self) -> u64 {
        self.emu
            .stats()
            .into_iter()
            .filter(|(a, _)| a.starts_with("Describe"))
            .map(|(_, s)| s.calls)
            .sum()
    }

    pub fn total_calls(&self) -> u64 {
        self.emu.stats().values().map(|s| s.calls).sum()
    }

    pub async fn instances(&self) -> Vec<String> {
        self.client
            .describe_instances_all(&DescribeInstances::default())
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.instance_id)
            .collect()
    }

    pub async fn vxnet(&self) -> String {
        self.client
            .describe_vxnets_all(&DescribeVxnets::default())
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.router.is_some())
            .map(|v| v.vxnet_id)
            .expect("a managed vxnet is seeded")
    }

    /// Asserts that nothing a reconciler could have created remains
    /// (besides what `keep_lbs` names: user resources).
    pub async fn assert_clean(&self, keep_lbs: &[&str]) {
        let c = &self.client;
        let lbs = c
            .describe_load_balancers_all(&DescribeLoadBalancers {
                verbose: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let leaked: Vec<_> = lbs
            .iter()
            .filter(|lb| !keep_lbs.contains(&lb.loadbalancer_id.as_str()))
            .map(|lb| lb.loadbalancer_id.clone())
            .collect();
        assert!(leaked.is_empty(), "leaked load balancers: {leaked:?}");
        for lb in &lbs {
            for l in &lb.listeners {
                assert!(
                    !l.loadbalancer_listener_name.starts_with("k8s_"),
                    "leaked listener {l:?}"
                );
            }
        }
        let eips = c.describe_eips_all(&DescribeEips::default()).await.unwrap();
        let leaked: Vec<_> = eips
            .iter()
            .filter(|e| e.eip_name.starts_with("k8s_"))
            .collect();
        assert!(leaked.is_empty(), "leaked EIPs: {leaked:?}");
        let sgs = c
            .describe_security_groups_all(&DescribeSecurityGroups::default())
            .await
            .unwrap();
        let leaked: Vec<_> = sgs.iter().filter(|s| s.is_default == 0).collect();
        assert!(leaked.is_empty(), "leaked security groups: {leaked:?}");
        let certs = c
            .describe_server_certificates_all(&DescribeServerCertificates::default())
            .await
            .unwrap();
        assert!(certs.is_empty(), "leaked certificates: {certs:?}");
        let policies = c
            .describe_load_balancer_policies_all(&DescribeLoadBalancerPolicies::default())
            .await
            .unwrap();
        assert!(policies.is_empty(), "leaked policies: {policies:?}");
        let tags = c.describe_tags_all(&DescribeTags::default()).await.unwrap();
        assert!(tags.is_empty(), "leaked tags: {tags:?}");
    }
}

pub fn owner(name: &str) -> LbOwner {
    LbOwner {
        cluster_id: CLUSTER.into(),
        kind: OwnerKind::Service,
        namespace: "default".into(),
        name: name.into(),
        uid: format!("{:08x}-0000-4000-8000-000000000000", fxhash(name)),
    }
}

fn fxhash(s: &str) -> u32 {
    s.bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
}

pub fn backend(instance: &str, port: u16) -> DesiredBackend {
    DesiredBackend {
        target: BackendTarget::Instance(instance.into()),
        port,
        weight: 1,
    }
}

/// A public L4 LB: tcp/80 and udp/53 on every instance.
pub fn l4(name: &str, instances: &[String]) -> DesiredLb {
    DesiredLb {
        owner: owner(name),
        network: LbNetwork::Public {
            eip: EipSource::Allocate { bandwidth: 10 },
        },
        reuse_existing: None,
        loadbalancer_type: 0,
        source_ranges: vec!["10.0.0.0/8".into()],
        listeners: vec![
            DesiredListener::l4(
                80,
                Protocol::Tcp,
                instances.iter().map(|i| backend(i, 30080)).collect(),
            ),
            DesiredListener::l4(
                53,
                Protocol::Udp,
                instances.iter().map(|i| backend(i, 30053)).collect(),
            ),
        ],
    }
}

pub fn cert(n: &str) -> DesiredCert {
    DesiredCert {
        name: format!("default/{n}"),
        pem_chain: format!("-----BEGIN CERTIFICATE-----\nMII{n}\n-----END CERTIFICATE-----\n"),
        pem_key: format!("-----BEGIN PRIVATE KEY-----\nMII{n}\n-----END PRIVATE KEY-----\n"),
    }
}

/// An L7 LB: http/80 and https/443 with host/path rules.
pub fn l7(name: &str, instances: &[String], cert_name: &str) -> DesiredLb {
    let mut d = l4(name, instances);
    d.owner.kind = OwnerKind::Ingress;
    d.source_ranges.clear();
    let mut http = DesiredListener::l4(80, Protocol::Http, vec![backend(&instances[0], 30000)]);
    http.forwardfor = true;
    http.rules = vec![
        DesiredRule {
            host: Some("a.example.com".into()),
            path_prefix: Some("/api".into()),
            // Plain prefixes: the emulator's API accepts `~`/`=` url rules
            // only once its L7 data plane lands.
            path_match: PathMatch::StringPrefix,
            backends: vec![backend(&instances[1], 30001)],
        },
        DesiredRule {
            host: Some("*.example.com".into()),
            path_prefix: None,
            path_match: PathMatch::StringPrefix,
            backends: vec![backend(&instances[2], 30002)],
        },
    ];
    let mut https = http.clone();
    https.port = 443;
    https.protocol = Protocol::Https;
    https.certificates = vec![cert(cert_name)];
    d.listeners = vec![http, https];
    d
}
