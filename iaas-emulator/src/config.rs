//! Emulator configuration (library struct and the binary's YAML file).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::dataplane::DataPlane;
use crate::error::EmuError;
use crate::faults::FaultConfig;

/// Size bounds of one volume type, in GB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeTypeBounds {
    /// Smallest size.
    pub min_gb: u64,
    /// Largest size.
    pub max_gb: u64,
    /// Sizes must be multiples of this.
    pub step_gb: u64,
}

/// A preset access key pair (tests); generated at first start otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

/// An existing host to present as an instance (for example the machine a
/// local cluster's node runs on). Adoption is idempotent by name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptedHost {
    /// Instance name (usually the node's hostname).
    pub name: String,
    /// Its private address.
    pub private_ip: String,
    /// Instance type label (default `host`).
    #[serde(default)]
    pub instance_type: Option<String>,
}

/// Everything the emulator is started with. The YAML file of the binary has
/// the same field names; absent fields take the defaults below.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Where `state.redb`, `credentials.yaml` and `tls/` live.
    pub data_dir: PathBuf,
    /// Address to bind; port 0 picks an ephemeral port. Default 127.0.0.1:0.
    pub listen: SocketAddr,
    /// Serve HTTPS with a self-signed certificate (`<data_dir>/tls/cert.pem`).
    pub tls: bool,
    /// The zone this emulator is (requests naming another zone get 1100).
    pub zone: String,
    /// Instances seeded at first start (`node-1`..).
    pub instances: u32,
    /// Delay between job steps (pending -> working -> done), in ms.
    pub job_delay_ms: u64,
    /// Most volumes attached to one instance.
    pub attach_limit: u32,
    /// Size bounds per volume type; a type not listed is rejected.
    pub volume_types: BTreeMap<i32, VolumeTypeBounds>,
    /// CIDR EIPs are allocated from (loopback by default so LB proxies can
    /// bind without root).
    pub eip_pool: String,
    /// The seeded VPC's address range.
    pub vpc_network: String,
    /// The seeded managed vxnet's CIDR (inside `vpc_network`).
    pub vxnet_network: String,
    /// Serve `/admin/` (fault injection and stats); 404 otherwise.
    pub admin_enabled: bool,
    /// Faults active from the start.
    pub faults: FaultConfig,
    /// Preset key pair; generated at first start when absent.
    pub credentials: Option<Credentials>,
    /// Accepted clock skew of `time_stamp`, in seconds.
    pub max_clock_skew_secs: i64,
    /// Existing hosts presented as instances (adopted at every start).
    pub adopted_instances: Vec<AdoptedHost>,
    /// GSO/GRO size limit (bytes) the instance NICs of the network data
    /// plane advertise: 65536 emulates a NIC without BIG TCP.
    pub nic_gso_max_size: u32,
    /// Drivers used by jobs; not part of the YAML file.
    #[serde(skip, default = "DataPlane::noop")]
    pub data_plane: DataPlane,
}

/// The default per-type size table: QingCloud's 10..5000 GB in steps of 10.
pub fn default_volume_types() -> BTreeMap<i32, VolumeTypeBounds> {
    [0, 2, 3, 5]
        .into_iter()
        .map(|t| {
            (
                t,
                VolumeTypeBounds {
                    min_gb: 10,
                    max_gb: 5000,
                    step_gb: 10,
                },
            )
        })
        .collect()
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            data_dir: PathBuf::from("/var/lib/iaas-emulator"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            zone: "emu1".to_string(),
            instances: 3,
            job_delay_ms: 50,
            attach_limit: 10,
            volume_types: default_volume_types(),
            eip_pool: "127.77.0.0/24".to_string(),
            vpc_network: "172.30.0.0/16".to_string(),
            vxnet_network: "172.30.1.0/24".to_string(),
            admin_enabled: false,
            faults: FaultConfig::default(),
            credentials: None,
            max_clock_skew_secs: 60,
            adopted_instances: Vec::new(),
            nic_gso_max_size: crate::dataplane::network::NIC_GSO_MAX_SIZE,
            data_plane: DataPlane::noop(),
        }
    }
}

impl EmulatorConfig {
    /// Test defaults: ephemeral port, 10 ms job steps, no-op data plane, zone `emu1`.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        EmulatorConfig {
            data_dir: data_dir.into(),
            job_delay_ms: 10,
            ..Default::default()
        }
    }

    /// Reads a YAML config file.
    pub fn from_yaml_file(path: &Path) -> Result<Self, EmuError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EmuError::io(format!("reading {}", path.display()), e))?;
        serde_yaml::from_str(&text)
            .map_err(|e| EmuError::Config(format!("{}: {e}", path.display())))
    }

    /// The job step delay.
    pub fn job_delay(&self) -> Duration {
        Duration::from_millis(self.job_delay_ms)
    }

    /// Checks values that would make the emulator misbehave later.
    pub fn validate(&self) -> Result<(), EmuError> {
        let bad = |m: String| Err(EmuError::Config(m));
        if self.zone.is_empty() || self.zone != self.zone.to_ascii_lowercase() {
            return bad(format!("zone {:?} must be non-empty lower case", self.zone));
        }
        for (t, b) in &self.volume_types {
            if b.step_gb == 0 || b.min_gb > b.max_gb || b.min_gb == 0 {
                return bad(format!(
                    "volume_types.{t}: need 0 < min_gb <= max_gb and step_gb > 0"
                ));
            }
        }
        for (name, v) in [
            ("eip_pool", &self.eip_pool),
            ("vpc_network", &self.vpc_network),
            ("vxnet_network", &self.vxnet_network),
        ] {
            crate::util::Cidr::parse(v, true)
                .map_err(|e| EmuError::Config(format!("{name}: {e}")))?;
        }
        if !(65_536..=crate::dataplane::network::NIC_GSO_LIMIT).contains(&self.nic_gso_max_size) {
            return bad(format!(
                "nic_gso_max_size: {} is outside 65536..={} (a veth's largest)",
                self.nic_gso_max_size,
                crate::dataplane::network::NIC_GSO_LIMIT
            ));
        }
        if self.instances > 200 {
            return bad(format!(
                "instances: {} is more than the vxnet holds (200)",
                self.instances
            ));
        }
        self.faults
            .validate()
            .map_err(|e| EmuError::Config(format!("faults.{e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_defaults_and_overrides() {
        let c: EmulatorConfig = serde_yaml::from_str(
            "zone: test1\ninstances: 5\nvolume_types:\n  0: {min_gb: 1, max_gb: 100, step_gb: 1}\nfaults:\n  job_delay_ms: 0\n",
        )
        .unwrap();
        assert_eq!(c.zone, "test1");
        assert_eq!(c.instances, 5);
        assert_eq!(c.volume_types[&0].max_gb, 100);
        assert_eq!(c.attach_limit, 10);
        assert_eq!(c.faults.job_delay_ms, Some(0));
        c.validate().unwrap();
        assert_eq!(c.nic_gso_max_size, 196_608);
        assert!(serde_yaml::from_str::<EmulatorConfig>("zonee: x\n").is_err());
        for (size, ok) in [
            (65_536, true),
            (524_280, true),
            (65_535, false),
            (1 << 20, false),
        ] {
            let c: EmulatorConfig =
                serde_yaml::from_str(&format!("nic_gso_max_size: {size}\n")).unwrap();
            match c.validate() {
                Ok(()) => assert!(ok, "{size} accepted"),
                Err(e) => {
                    assert!(!ok, "{size} rejected: {e}");
                    assert!(e.to_string().contains("nic_gso_max_size"), "{e}");
                }
            }
        }
    }
}
