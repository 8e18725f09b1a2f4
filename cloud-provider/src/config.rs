//! The `--cloud-config` YAML file and the process flags.
//!
//! ```yaml
//! endpoint: https://api.qingcloud.com   # optional: else the credentials file's, QY_ENDPOINT, or the default
//! zone: pek3a
//! region: pek3                          # optional, default: the zone
//! router_id: rtr-1234
//! vxnet_id: vxnet-1234
//! cluster_id: prod-1                    # [a-z0-9-], 1..32; owns routes and LBs
//! cluster_cidr: 10.244.0.0/16           # stale routes are only deleted inside it
//! provider_name: cloudsuite             # providerID = <provider_name>://<zone>/<instance-id>
//! node_match_order: [provider-id, instance-id, node-name, hostname, internal-ip]
//! credentials_file: /etc/cloudsuite/credentials.yaml  # QingCloud SDK format, or:
//! credentials_dir: /etc/cloudsuite/secret              # a mounted Secret (access_key_id, secret_access_key)
//! # neither: QY_ACCESS_KEY_ID / QY_SECRET_ACCESS_KEY from the environment
//! load_balancer_class: cloudsuite.io/lb
//! default_eip_bandwidth: 10
//! default_lb_type: 0
//! rate_limit: { qps: 10, burst: 20 }  # IaaS calls of this process (default 10 qps, burst 20)
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use iaas_client::config::RateLimitConfig;
use iaas_client::{Config as IaasConfig, Credentials};
use serde::Deserialize;
use suite_runtime::config::ConfigError;

use crate::cidr::Cidr;
use crate::provider::MatchKey;

/// Default provider name in providerIDs.
pub const DEFAULT_PROVIDER_NAME: &str = "cloudsuite";
/// The loadBalancerClass this controller serves (besides an unset class).
pub const DEFAULT_LB_CLASS: &str = "cloudsuite.io/lb";

/// The cloud configuration file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudConfigFile {
    /// API endpoint.
    pub endpoint: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// Region label value.
    pub region: Option<String>,
    /// VPC router holding pod routes.
    pub router_id: Option<String>,
    /// Vxnet of the nodes (internal LBs are placed on it).
    pub vxnet_id: Option<String>,
    /// Cluster identity, part of owned resource names and tags.
    pub cluster_id: Option<String>,
    /// The cluster's pod address range.
    pub cluster_cidr: Option<String>,
    /// Scheme of providerIDs.
    pub provider_name: Option<String>,
    /// Node matching order.
    pub node_match_order: Option<Vec<String>>,
    /// Credentials file (QingCloud SDK format).
    pub credentials_file: Option<PathBuf>,
    /// Mounted Secret directory.
    pub credentials_dir: Option<PathBuf>,
    /// Our loadBalancerClass.
    pub load_balancer_class: Option<String>,
    /// EIP bandwidth (Mbps) when one is allocated.
    pub default_eip_bandwidth: Option<u32>,
    /// LB size class.
    pub default_lb_type: Option<i32>,
    /// Client-side rate limit of the IaaS calls (the cloud's quota is per account).
    pub rate_limit: Option<RateLimitConfig>,
}

/// The validated cloud configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudConfig {
    /// Zone of the instances.
    pub zone: String,
    /// Region label value.
    pub region: String,
    /// VPC router id (routes disabled when `None`).
    pub router_id: Option<String>,
    /// Vxnet id.
    pub vxnet_id: Option<String>,
    /// Cluster id.
    pub cluster_id: String,
    /// Pod range (stale routes deleted only inside it; routes disabled when `None`).
    pub cluster_cidr: Option<Cidr>,
    /// providerID scheme.
    pub provider_name: String,
    /// Node matching order.
    pub node_match_order: Vec<MatchKey>,
    /// Our loadBalancerClass.
    pub load_balancer_class: String,
    /// EIP bandwidth (Mbps) for allocated EIPs.
    pub default_eip_bandwidth: u32,
    /// LB size class.
    pub default_lb_type: i32,
}

/// Loads the file at `path` and builds both the CCM and the IaaS client configuration.
/// `env` is the environment lookup (a seam for tests).
pub fn load(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(CloudConfig, IaasConfig), ConfigError> {
    let file: CloudConfigFile = suite_runtime::config::load_yaml(path)?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    build(file, &path.display().to_string(), Some(base), env)
}

/// Builds the configurations from a parsed file; `origin` names it in errors.
pub fn build(
    file: CloudConfigFile,
    origin: &str,
    base: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(CloudConfig, IaasConfig), ConfigError> {
    let bad = |field: &str, msg: String| ConfigError::invalid(origin, field, msg);
    let resolve = |p: PathBuf| match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    };
    let nonempty = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());

    // Credentials: file (which may also carry endpoint and zone), Secret dir, or environment.
    let mut iaas = match (file.credentials_file, file.credentials_dir) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "credentials_file",
                "set credentials_file or credentials_dir, not both".into(),
            ));
        }
        (Some(f), None) => {
            let f = resolve(f);
            let creds =
                Credentials::from_file(&f).map_err(|e| bad("credentials_file", e.to_string()))?;
            // The SDK-format file may carry endpoint/zone too; use them as defaults.
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let extra: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_default();
            let get = |k: &str| extra.get(k).and_then(|v| v.as_str()).map(str::to_string);
            IaasConfig::new(
                get("endpoint").unwrap_or_default(),
                get("zone").unwrap_or_default(),
                creds,
            )
        }
        (None, Some(d)) => {
            let creds = Credentials::from_secret_dir(resolve(d))
                .map_err(|e| bad("credentials_dir", e.to_string()))?;
            IaasConfig::new("", "", creds)
        }
        (None, None) => {
            let creds = Credentials::from_lookup(&env).map_err(|e| {
                bad(
                    "credentials_file",
                    format!("not set, and no credentials in the environment: {e}"),
                )
            })?;
            IaasConfig::new("", "", creds)
        }
    };
    if let Some(e) =
        nonempty(file.endpoint).or_else(|| nonempty(env(iaas_client::config::ENV_ENDPOINT)))
    {
        iaas.endpoint = e;
    }
    if iaas.endpoint.is_empty() {
        iaas.endpoint = iaas_client::config::DEFAULT_ENDPOINT.to_string();
    }
    let zone = nonempty(file.zone)
        .or_else(|| nonempty(Some(iaas.zone.clone())))
        .ok_or_else(|| bad("zone", "missing".into()))?
        .to_ascii_lowercase();
    iaas.zone = zone.clone();
    iaas.validate().map_err(|e| {
        let msg = e.to_string();
        let field = if msg.contains("endpoint") {
            "endpoint"
        } else {
            "zone"
        };
        bad(field, msg)
    })?;

    let cluster_id =
        nonempty(file.cluster_id).ok_or_else(|| bad("cluster_id", "missing".into()))?;
    if cluster_id.len() > 32
        || !cluster_id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(bad(
            "cluster_id",
            format!("{cluster_id:?}: use 1..32 characters of [a-z0-9-]"),
        ));
    }
    let cluster_cidr = nonempty(file.cluster_cidr)
        .map(|c| c.parse::<Cidr>().map_err(|e| bad("cluster_cidr", e)))
        .transpose()?;
    let id_field =
        |field: &str, v: Option<String>, prefix: &str| -> Result<Option<String>, ConfigError> {
            match nonempty(v) {
                Some(id) if !id.starts_with(prefix) => Err(bad(
                    field,
                    format!("{id:?} does not look like a {prefix}xxxx id"),
                )),
                other => Ok(other),
            }
        };
    let router_id = id_field("router_id", file.router_id, "rtr-")?;
    let vxnet_id = id_field("vxnet_id", file.vxnet_id, "vxnet-")?;
    if router_id.is_some() != cluster_cidr.is_some() {
        return Err(bad(
            if router_id.is_some() {
                "cluster_cidr"
            } else {
                "router_id"
            },
            "routes need both router_id and cluster_cidr".into(),
        ));
    }
    let provider_name =
        nonempty(file.provider_name).unwrap_or_else(|| DEFAULT_PROVIDER_NAME.into());
    if !provider_name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(bad(
            "provider_name",
            format!("{provider_name:?}: use [A-Za-z0-9-]"),
        ));
    }
    let node_match_order = match file.node_match_order {
        None => MatchKey::DEFAULT_ORDER.to_vec(),
        Some(list) => {
            if list.is_empty() {
                return Err(bad("node_match_order", "empty".into()));
            }
            let mut seen = BTreeSet::new();
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                let key: MatchKey = s
                    .parse()
                    .map_err(|e: String| bad(&format!("node_match_order[{i}]"), e))?;
                if !seen.insert(key) {
                    return Err(bad(
                        &format!("node_match_order[{i}]"),
                        format!("{s:?} listed twice"),
                    ));
                }
                out.push(key);
            }
            out
        }
    };
    let load_balancer_class =
        nonempty(file.load_balancer_class).unwrap_or_else(|| DEFAULT_LB_CLASS.into());
    let default_eip_bandwidth = file.default_eip_bandwidth.unwrap_or(10);
    if !(1..=1000).contains(&default_eip_bandwidth) {
        return Err(bad(
            "default_eip_bandwidth",
            format!("{default_eip_bandwidth}: must be 1..1000 Mbps"),
        ));
    }
    let default_lb_type = file.default_lb_type.unwrap_or(0);
    if !(0..=5).contains(&default_lb_type) {
        return Err(bad(
            "default_lb_type",
            format!("{default_lb_type}: must be 0..5"),
        ));
    }
    if let Some(r) = file.rate_limit {
        if r.qps == 0 {
            return Err(bad("rate_limit.qps", "must be at least 1".into()));
        }
        if r.burst == 0 {
            return Err(bad("rate_limit.burst", "must be at least 1".into()));
        }
        iaas.rate_limit = r;
    }
    let region = nonempty(file.region).unwrap_or_else(|| zone.clone());
    Ok((
        CloudConfig {
            zone,
            region,
            router_id,
            vxnet_id,
            cluster_id,
            cluster_cidr,
            provider_name,
            node_match_order,
            load_balancer_class,
            default_eip_bandwidth,
            default_lb_type,
        },
        iaas,
    ))
}

/// Process flags (each with an environment fallback).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "cloud-controller-manager",
    version,
    about = "Cloud controller manager for the cloudsuite IaaS"
)]
pub struct Flags {
    /// The cloud configuration YAML.
    #[arg(long, env = "CCM_CLOUD_CONFIG")]
    pub cloud_config: PathBuf,
    /// Kubeconfig; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "CCM_METRICS_ADDR", default_value = "0.0.0.0:10258")]
    pub metrics_addr: SocketAddr,
    /// Run only while holding the leader Lease (disable for a single replica only).
    #[arg(long, env = "CCM_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub leader_elect_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "CCM_LEADER_ELECT_LEASE",
        default_value = "cloud-controller-manager"
    )]
    pub leader_elect_lease_name: String,
    /// Seconds a leader Lease lasts without renewal.
    #[arg(long, env = "CCM_LEADER_ELECT_LEASE_DURATION", default_value_t = 15)]
    pub leader_elect_lease_duration: u64,
    /// This replica's identity (the pod name); the hostname when absent.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Controllers to run (comma-separated: node, lifecycle, route, service).
    #[arg(
        long,
        env = "CCM_CONTROLLERS",
        value_delimiter = ',',
        default_value = "node,lifecycle,route,service"
    )]
    pub controllers: Vec<String>,
    /// Period of the node lifecycle pass (e.g. 30s, 1m).
    #[arg(long, env = "CCM_NODE_MONITOR_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub node_monitor_period: Duration,
    /// Period of the route reconciliation (also triggered by Node changes).
    #[arg(long, env = "CCM_ROUTE_RECONCILE_PERIOD", default_value = "60s", value_parser = parse_duration)]
    pub route_reconcile_period: Duration,
    /// Period after which every LoadBalancer Service is reconciled again.
    #[arg(long, env = "CCM_SERVICE_RESYNC_PERIOD", default_value = "5m", value_parser = parse_duration)]
    pub service_resync_period: Duration,
    /// Log format: text or json.
    #[arg(long, env = "CCM_LOG_FORMAT", default_value = "text")]
    pub log_format: suite_runtime::logging::LogFormat,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    iaas_client::config::parse_duration(s)
}

/// The controllers `--controllers` can name.
pub const CONTROLLERS: &[&str] = &["node", "lifecycle", "route", "service"];

impl Flags {
    /// Checks `--controllers`; the error names the flag and the unknown value.
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.controllers {
            if !CONTROLLERS.contains(&c.as_str()) {
                return Err(format!(
                    "--controllers: unknown controller {c:?} (known: {})",
                    CONTROLLERS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Whether controller `name` is enabled.
    pub fn runs(&self, name: &str) -> bool {
        self.controllers.iter().any(|c| c == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds_env(k: &str) -> Option<String> {
        match k {
            "QY_ACCESS_KEY_ID" => Some("AK".into()),
            "QY_SECRET_ACCESS_KEY" => Some("SK".into()),
            _ => None,
        }
    }

    fn parse(yaml: &str) -> Result<(CloudConfig, IaasConfig), ConfigError> {
        let file: CloudConfigFile = suite_runtime::config::parse_yaml(yaml, "cc.yaml")?;
        build(file, "cc.yaml", None, creds_env)
    }

    #[test]
    fn full_config() {
        let (c, i) = parse(
            "endpoint: http://127.0.0.1:9\nzone: EMU1\nrouter_id: rtr-1\nvxnet_id: vxnet-1\ncluster_id: c1\n\
             cluster_cidr: 10.244.0.0/16\nnode_match_order: [node-name, internal-ip]\n",
        )
        .unwrap();
        assert_eq!(c.zone, "emu1");
        assert_eq!(c.region, "emu1");
        assert_eq!(c.router_id.as_deref(), Some("rtr-1"));
        assert_eq!(
            c.node_match_order,
            vec![MatchKey::NodeName, MatchKey::InternalIp]
        );
        assert_eq!(c.provider_name, "cloudsuite");
        assert_eq!(c.load_balancer_class, DEFAULT_LB_CLASS);
        assert_eq!(i.endpoint, "http://127.0.0.1:9");
        assert_eq!(i.credentials.access_key_id, "AK");
        assert_eq!(i.rate_limit, RateLimitConfig::default());
        let (_, i) =
            parse("zone: z\ncluster_id: c\nrate_limit: { qps: 200, burst: 400 }\n").unwrap();
        assert_eq!(
            i.rate_limit,
            RateLimitConfig {
                qps: 200,
                burst: 400
            }
        );
        // A missing key keeps its default.
        let (_, i) = parse("zone: z\ncluster_id: c\nrate_limit: { qps: 50 }\n").unwrap();
        assert_eq!(i.rate_limit, RateLimitConfig { qps: 50, burst: 20 });
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("cluster_id: c1\n", "zone"),
            ("zone: z\n", "cluster_id"),
            ("zone: z\ncluster_id: C_1\n", "cluster_id"),
            (
                "zone: z\ncluster_id: c\ncluster_cidr: 10.0.0.0/33\nrouter_id: rtr-1\n",
                "cluster_cidr",
            ),
            ("zone: z\ncluster_id: c\nrouter_id: rtr-1\n", "cluster_cidr"),
            (
                "zone: z\ncluster_id: c\nrouter_id: r1\ncluster_cidr: 10.0.0.0/8\n",
                "router_id",
            ),
            (
                "zone: z\ncluster_id: c\nnode_match_order: [name, bogus]\n",
                "node_match_order[1]",
            ),
            (
                "zone: z\ncluster_id: c\nnode_match_order: [node-name, node-name]\n",
                "node_match_order[1]",
            ),
            (
                "zone: z\ncluster_id: c\ndefault_eip_bandwidth: 0\n",
                "default_eip_bandwidth",
            ),
            (
                "zone: z\ncluster_id: c\ndefault_lb_type: 9\n",
                "default_lb_type",
            ),
            ("zone: z\ncluster_id: c\nendpoint: 'ftp://x'\n", "endpoint"),
            (
                "zone: z\ncluster_id: c\ncredentials_dir: /nonexistent\n",
                "credentials_dir",
            ),
            ("zone: z\ncluster_id: c\nbogus: 1\n", "bogus"),
            (
                "zone: z\ncluster_id: c\nrate_limit: { qps: 0 }\n",
                "rate_limit.qps",
            ),
            (
                "zone: z\ncluster_id: c\nrate_limit: { qps: 5, burst: 0 }\n",
                "rate_limit.burst",
            ),
            ("zone: z\ncluster_id: c\nrate_limit: { qpm: 5 }\n", "qpm"),
        ];
        for (yaml, field) in cases {
            let e = parse(yaml).unwrap_err().to_string();
            assert!(e.contains(field), "{yaml:?}: {e}");
        }
        let file: CloudConfigFile =
            suite_runtime::config::parse_yaml("zone: z\ncluster_id: c\n", "cc.yaml").unwrap();
        let e = build(file, "cc.yaml", None, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("credentials_file") && e.contains("QY_ACCESS_KEY_ID"),
            "{e}"
        );
    }

    #[test]
    fn credentials_file_supplies_endpoint_and_zone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("creds.yaml"),
            "qy_access_key_id: K\nqy_secret_access_key: S\nzone: emu1\nendpoint: http://127.0.0.1:7\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("cc.yaml"),
            "cluster_id: c\ncredentials_file: creds.yaml\n",
        )
        .unwrap();
        let (c, i) = load(&dir.path().join("cc.yaml"), |_| None).unwrap();
        assert_eq!(c.zone, "emu1");
        assert_eq!(i.endpoint, "http://127.0.0.1:7");
        assert_eq!(i.credentials.access_key_id, "K");
    }

    #[test]
    fn flags_parse_with_defaults() {
        use clap::Parser;
        let f = Flags::try_parse_from([
            "ccm",
            "--cloud-config",
            "/x.yaml",
            "--controllers",
            "node,route",
        ])
        .unwrap();
        assert!(f.runs("node") && f.runs("route") && !f.runs("service"));
        assert_eq!(f.node_monitor_period, Duration::from_secs(30));
        f.validate().unwrap();
        let f =
            Flags::try_parse_from(["ccm", "--cloud-config", "/x.yaml", "--controllers", "nodes"])
                .unwrap();
        assert!(f.validate().unwrap_err().contains("--controllers"));
    }
}
