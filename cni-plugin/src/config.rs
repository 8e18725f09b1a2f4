//! The runtime's input: environment variables and the stdin network
//! configuration, parsed and validated before anything touches the machine.

use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{CniError, CniResult, Code};

/// The CNI version this plugin speaks natively.
pub const CNI_VERSION: &str = "1.1.0";

/// Every `cniVersion` accepted in a configuration.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// Where leases live unless `dataDir` says otherwise (`<dir>/<network name>`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify a container's attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Release everything not in the valid attachments.
    Gc,
    /// Report readiness.
    Status,
}

impl Command {
    fn parse(s: &str) -> CniResult<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!(
                        "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"
                    ),
                ));
            }
        })
    }
}

/// The environment of one invocation, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (ADD, CHECK; optional for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
}

impl Env {
    /// Reads and validates the variables through `get` (the process
    /// environment in the binary, a map in tests).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> CniResult<Self> {
        let command = Command::parse(
            &get("CNI_COMMAND")
                .ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_COMMAND is not set"))?,
        )?;
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |name: &str| -> CniResult<String> {
            match get(name) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(CniError::new(
                    Code::InvalidEnv,
                    format!("{name} is required for this command"),
                )),
            }
        };
        let (container_id, ifname) = if needs_container {
            let id = required("CNI_CONTAINERID")?;
            validate_container_id(&id)?;
            let ifname = required("CNI_IFNAME")?;
            validate_ifname(&ifname)?;
            (id, ifname)
        } else {
            (String::new(), String::new())
        };
        let netns = match get("CNI_NETNS").filter(|v| !v.is_empty()) {
            Some(p) if needs_container => Some(validate_netns(&p)?),
            _ => None,
        };
        if netns.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(CniError::new(
                Code::InvalidEnv,
                "CNI_NETNS is required for this command",
            ));
        }
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
        })
    }
}

/// Container ids: letters, digits, `_`, `.`, `-`, starting with a letter or
/// digit (the spec's rule), at most 1024 bytes.
pub fn validate_container_id(id: &str) -> CniResult<()> {
    let ok = id.len() <= 1024
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnv,
            format!(
                "CNI_CONTAINERID {id:?} must be letters, digits, '_', '.', '-' starting with a letter or digit"
            ),
        ))
    }
}

/// Interface names: at most 15 bytes, no `/`, `:`, whitespace, not `.`/`..`.
pub fn validate_ifname(name: &str) -> CniResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnv,
            format!(
                "CNI_IFNAME {name:?} is not a valid interface name (1-15 printable characters, no '/', ':' or spaces)"
            ),
        ))
    }
}

/// Netns paths: absolute, normal components only (no `..`, no `.`), no NUL.
pub fn validate_netns(p: &str) -> CniResult<PathBuf> {
    let path = Path::new(p);
    let ok = path.is_absolute()
        && !p.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_NETNS {p:?} must be an absolute path without '.' or '..' components"),
        ))
    }
}

/// One IPv4 pool: a subnet and an optional inclusive sub-range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// First address handed out.
    pub first: Ipv4Addr,
    /// Last address handed out.
    pub last: Ipv4Addr,
}

impl Pool {
    /// Parses a subnet; the network and broadcast addresses are never handed out.
    pub fn parse(
        field: &str,
        subnet: &str,
        start: Option<&str>,
        end: Option<&str>,
    ) -> CniResult<Self> {
        let bad = |why: String| CniError::new(Code::InvalidConfig, format!("{field}: {why}"));
        let (a, l) = subnet
            .split_once('/')
            .ok_or_else(|| bad(format!("{subnet:?} is not a CIDR")))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| {
            if a.contains(':') {
                bad(format!("{subnet:?}: IPv6 pod ranges are not supported yet"))
            } else {
                bad(format!("{subnet:?} is not an IPv4 CIDR"))
            }
        })?;
        let prefix: u8 = l
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| bad(format!("{subnet:?} prefix must be 0..=30")))?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let net = u32::from(addr) & mask;
        if net != u32::from(addr) {
            return Err(bad(format!("{subnet:?} has host bits set")));
        }
        let bcast = net | !mask;
        let inside = |what: &str, s: &str| -> CniResult<u32> {
            let ip: Ipv4Addr = s
                .parse()
                .map_err(|_| bad(format!("{what} {s:?} is not an IPv4 address")))?;
            let v = u32::from(ip);
            if v <= net || v >= bcast {
                return Err(bad(format!("{what} {s} is not a host address of {subnet}")));
            }
            Ok(v)
        };
        let first = start
            .map(|s| inside("rangeStart", s))
            .transpose()?
            .unwrap_or(net + 1);
        let last = end
            .map(|s| inside("rangeEnd", s))
            .transpose()?
            .unwrap_or(bcast - 1);
        if first > last {
            return Err(bad(format!("rangeStart is after rangeEnd in {subnet}")));
        }
        Ok(Pool {
            network: Ipv4Addr::from(net),
            prefix,
            first: Ipv4Addr::from(first),
            last: Ipv4Addr::from(last),
        })
    }

    /// How many addresses the pool hands out.
    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Whether `ip` is one the pool hands out.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }
}

/// A `{containerID, ifname}` pair from `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

#[derive(Debug, Deserialize)]
struct RangeWire {
    subnet: String,
    #[serde(rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ConfWire {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    ranges: Option<Vec<Vec<RangeWire>>>,
    mtu: Option<u32>,
    #[serde(rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(rename = "prevResult")]
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    dns: Option<serde_json::Value>,
    #[serde(rename = "ipMasq", default)]
    ip_masq: bool,
}

/// The network configuration from stdin, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` (one of [`SUPPORTED_VERSIONS`]).
    pub cni_version: String,
    /// Network name (a directory name under the data dir).
    pub name: String,
    /// Pools to allocate from, in order (empty: no pod CIDR known yet).
    pub pools: Vec<Pool>,
    /// Pod MTU; `None` takes the node uplink's.
    pub mtu: Option<u32>,
    /// `<dataDir>/<name>`: where leases live.
    pub lease_dir: PathBuf,
    /// `prevResult` (CHECK; DEL may carry it).
    pub prev_result: Option<serde_json::Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
    /// DNS settings passed through into the result.
    pub dns: Option<serde_json::Value>,
}

impl NetConf {
    /// Parses stdin. The version is read first so an error can be reported
    /// in the caller's version even when the rest is broken.
    pub fn parse(bytes: &[u8]) -> CniResult<Self> {
        let wire: ConfWire = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                Code::Decode,
                "network configuration on stdin is not valid JSON",
            )
            .with_details(e.to_string())
        })?;
        let cni_version = wire
            .cni_version
            .ok_or_else(|| CniError::new(Code::InvalidConfig, "cniVersion is required"))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "cniVersion {cni_version:?} is not supported (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = wire
            .name
            .ok_or_else(|| CniError::new(Code::InvalidConfig, "name is required"))?;
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!("name {name:?} must be 1-128 letters, digits, '_', '.', '-'"),
            ));
        }
        if wire.kind.as_deref().is_some_and(str::is_empty) {
            return Err(CniError::new(Code::InvalidConfig, "type must not be empty"));
        }
        if wire.ip_masq {
            return Err(CniError::new(
                Code::UnsupportedField,
                "ipMasq is not supported by this build: pods are VPC-routable, no masquerade is needed",
            ));
        }
        let mut pools = Vec::new();
        if let Some(cidr) = wire.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
            pools.push(Pool::parse("podCIDR", cidr, None, None)?);
        }
        for (i, set) in wire.ranges.iter().flatten().enumerate() {
            for (j, r) in set.iter().enumerate() {
                pools.push(Pool::parse(
                    &format!("ranges[{i}][{j}].subnet"),
                    &r.subnet,
                    r.range_start.as_deref(),
                    r.range_end.as_deref(),
                )?);
            }
        }
        if let Some(m) = wire.mtu
            && !(576..=65535).contains(&m)
        {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!("mtu {m} must be within 576..=65535"),
            ));
        }
        let data_dir = match wire.data_dir {
            Some(d) => validate_dir("dataDir", &d)?,
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };
        Ok(NetConf {
            cni_version,
            lease_dir: data_dir.join(&name),
            name,
            pools,
            mtu: wire.mtu,
            prev_result: wire.prev_result,
            valid_attachments: wire.valid_attachments,
            dns: wire.dns,
        })
    }

    /// Best effort: the `cniVersion` of a configuration that may not parse,
    /// so errors are reported in the caller's version.
    pub fn sniff_version(bytes: &[u8]) -> String {
        #[derive(Deserialize)]
        struct V {
            #[serde(rename = "cniVersion")]
            cni_version: Option<String>,
        }
        serde_json::from_slice::<V>(bytes)
            .ok()
            .and_then(|v| v.cni_version)
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| CNI_VERSION.to_string())
    }
}

fn validate_dir(field: &str, d: &str) -> CniResult<PathBuf> {
    let p = Path::new(d);
    if p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    {
        Ok(p.to_path_buf())
    } else {
        Err(CniError::new(
            Code::InvalidConfig,
            format!("{field} {d:?} must be an absolute path without '.' or '..'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> CniResult<Env> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::parse(|k| m.get(k).cloned())
    }

    #[test]
    fn env_is_validated_and_names_the_variable() {
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1.2_3"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(ok.command, Command::Add);
        for (vars, name) in [
            (vec![("CNI_COMMAND", "FOO")], "CNI_COMMAND"),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "../etc"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a;rm -rf"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0/x"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_IFNAME",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "averyveryverylongname"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_IFNAME",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/run/../etc"),
                ],
                "CNI_NETNS",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "rel/ns"),
                ],
                "CNI_NETNS",
            ),
            (
                vec![
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_NETNS",
            ),
        ] {
            let err = env(&vars).unwrap_err();
            assert_eq!(err.code, Code::InvalidEnv);
            assert!(err.msg.contains(name), "{err} should name {name}");
        }
        // DEL without a netns is legal (the netns may be gone).
        assert!(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0")
            ])
            .is_ok()
        );
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn config_parses_pools_and_rejects_bad_fields() {
        let c = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"k8s","type":"cloudsuite-cni","podCIDR":"10.244.1.0/24"}"#).unwrap();
        assert_eq!(c.pools[0].size(), 254);
        assert_eq!(c.lease_dir, Path::new("/var/lib/cni/networks/k8s"));
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"k","ranges":[[{"subnet":"10.1.0.0/29","rangeStart":"10.1.0.2","rangeEnd":"10.1.0.4"}]],"dataDir":"/tmp/x"}"#,
        )
        .unwrap();
        assert_eq!(c.pools[0].size(), 3);
        for (conf, code, word) in [
            (&br#"{"#[..], Code::Decode, "JSON"),
            (br#"{"name":"k"}"#, Code::InvalidConfig, "cniVersion"),
            (br#"{"cniVersion":"0.1.0","name":"k"}"#, Code::IncompatibleVersion, "0.1.0"),
            (br#"{"cniVersion":"1.0.0","name":"../x"}"#, Code::InvalidConfig, "name"),
            (br#"{"cniVersion":"1.0.0","name":"k","podCIDR":"10.0.0.1/24"}"#, Code::InvalidConfig, "podCIDR"),
            (br#"{"cniVersion":"1.0.0","name":"k","podCIDR":"fd00::/64"}"#, Code::InvalidConfig, "IPv6"),
            (br#"{"cniVersion":"1.0.0","name":"k","mtu":10}"#, Code::InvalidConfig, "mtu"),
            (br#"{"cniVersion":"1.0.0","name":"k","dataDir":"/a/../b"}"#, Code::InvalidConfig, "dataDir"),
            (
                br#"{"cniVersion":"1.0.0","name":"k","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}"#,
                Code::InvalidConfig,
                "ranges[0][0]",
            ),
        ] {
            let err = NetConf::parse(conf).unwrap_err();
            assert_eq!(err.code, code, "{err}");
            assert!(err.to_string().contains(word), "{err} should mention {word}");
        }
    }
}
