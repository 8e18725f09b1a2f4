//! The runtime's input: environment variables and the stdin network
//! configuration, parsed and validated before anything touches the machine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// A parsed CIDR: an address with its prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::/n`; the error says what is wrong (the
    /// caller adds the field name).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = l
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?} prefix must be 0..={max}"))?;
        let c = Cidr { addr, prefix };
        if c.mask() & ip_bits(addr) != ip_bits(addr) {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(c)
    }

    /// The network mask as an integer in the family's width.
    fn mask(&self) -> u128 {
        let width = self.width();
        if self.prefix == 0 {
            0
        } else {
            (u128::MAX << (width - u32::from(self.prefix))) & family_max(width)
        }
    }

    fn width(&self) -> u32 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// Whether `ip` lies inside (same family and network).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && ip_bits(ip) & self.mask() == ip_bits(self.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn family_max(width: u32) -> u128 {
    if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

/// An address as an integer (IPv4 in the low 32 bits).
pub fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

/// The inverse of [`ip_bits`] for the family of `like`.
pub fn ip_from_bits(bits: u128, like: IpAddr) -> IpAddr {
    match like {
        // Truncation is intended: IPv4 values never exceed 32 bits here.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

/// One pool of one family: a subnet and an optional inclusive sub-range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Network address.
    pub network: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// First address handed out.
    pub first: IpAddr,
    /// Last address handed out.
    pub last: IpAddr,
}

impl Pool {
    /// Parses a subnet (IPv4 up to /30, IPv6 up to /126); the first and the
    /// last address of the subnet are never handed out (network and
    /// broadcast in IPv4, the subnet-router anycast in IPv6).
    pub fn parse(
        field: &str,
        subnet: &str,
        start: Option<&str>,
        end: Option<&str>,
    ) -> CniResult<Self> {
        let bad = |why: String| CniError::new(Code::InvalidConfig, format!("{field}: {why}"));
        let cidr = Cidr::parse(subnet).map_err(bad)?;
        let limit = if cidr.addr.is_ipv4() { 30 } else { 126 };
        if cidr.prefix > limit {
            return Err(bad(format!(
                "{subnet:?} prefix must be at most /{limit} to leave host addresses"
            )));
        }
        let net = ip_bits(cidr.addr);
        let bcast = net | (!cidr.mask() & family_max(cidr.width()));
        let inside = |what: &str, s: &str| -> CniResult<u128> {
            let ip: IpAddr = s
                .parse()
                .map_err(|_| bad(format!("{what} {s:?} is not an IP address")))?;
            let v = ip_bits(ip);
            if ip.is_ipv4() != cidr.addr.is_ipv4() || v <= net || v >= bcast {
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
            network: cidr.addr,
            prefix: cidr.prefix,
            first: ip_from_bits(first, cidr.addr),
            last: ip_from_bits(last, cidr.addr),
        })
    }

    /// Whether the pool is IPv6.
    pub fn is_v6(&self) -> bool {
        self.network.is_ipv6()
    }

    /// How many addresses the pool hands out.
    pub fn size(&self) -> u128 {
        ip_bits(self.last) - ip_bits(self.first) + 1
    }

    /// Whether `ip` is one the pool hands out.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_v6()
            && (ip_bits(self.first)..=ip_bits(self.last)).contains(&ip_bits(ip))
    }

    /// The subnet in CIDR notation.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
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
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
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
    #[serde(rename = "nonMasqueradeCIDRs")]
    non_masquerade_cidrs: Option<Vec<String>>,
    #[serde(rename = "bigTCP")]
    big_tcp: Option<bool>,
}

/// The network configuration from stdin, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` (one of [`SUPPORTED_VERSIONS`]).
    pub cni_version: String,
    /// Network name (a directory name under the data dir).
    pub name: String,
    /// Pools to allocate from, in order (empty: no pod CIDR known yet).
    /// A pod gets one address per family present (dual-stack), each from
    /// the first pool of its family with room.
    pub pools: Vec<Pool>,
    /// Pod MTU; `None` takes the node uplink's.
    pub mtu: Option<u32>,
    /// `bigTCP` (default true): create the pod's veth pair with the GSO/GRO
    /// size limits of the node's uplink, so a NIC with BIG TCP (segments
    /// above 64 KiB) carries the pod's traffic in segments as large; no
    /// effect when the uplink has the legacy 64 KiB. `false` keeps the
    /// kernel's defaults: for pods whose traffic enters a tunnel, which
    /// cannot carry larger segments.
    pub big_tcp: bool,
    /// `<dataDir>/<name>`: where leases live.
    pub lease_dir: PathBuf,
    /// `prevResult` (CHECK; DEL may carry it).
    pub prev_result: Option<serde_json::Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
    /// DNS settings passed through into the result.
    pub dns: Option<serde_json::Value>,
    /// `ipMasq`: SNAT pod traffic leaving for destinations outside
    /// [`NetConf::non_masquerade`] to the node's address (off by default).
    pub ip_masq: bool,
    /// `nonMasqueradeCIDRs`: destinations reached with the pod's own
    /// address (the VPC and cluster CIDRs); the pod ranges always are.
    pub non_masquerade: Vec<Cidr>,
}

/// Decodes the configuration; a value of the wrong type names its field
/// (`bigTCP`, `ranges[0][1].subnet`).
fn decode(bytes: &[u8]) -> CniResult<ConfWire> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let fail = |path: Option<String>, e: serde_json::Error| {
        let msg = match path {
            Some(p) if !(e.is_syntax() || e.is_eof()) && p != "." => {
                format!("network configuration field {p} has the wrong type")
            }
            _ => "network configuration on stdin is not valid JSON".to_string(),
        };
        CniError::new(Code::Decode, msg).with_details(e.to_string())
    };
    let wire: ConfWire = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        fail(Some(path), e.into_inner())
    })?;
    de.end().map_err(|e| fail(None, e))?;
    Ok(wire)
}

impl NetConf {
    /// Parses stdin. The version is read first so an error can be reported
    /// in the caller's version even when the rest is broken.
    pub fn parse(bytes: &[u8]) -> CniResult<Self> {
        let wire: ConfWire = decode(bytes)?;
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
        let mut pools = Vec::new();
        if let Some(cidr) = wire.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
            pools.push(Pool::parse("podCIDR", cidr, None, None)?);
        }
        for (i, cidr) in wire.pod_cidrs.iter().flatten().enumerate() {
            pools.push(Pool::parse(&format!("podCIDRs[{i}]"), cidr, None, None)?);
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
        let mut non_masquerade = Vec::new();
        for (i, c) in wire.non_masquerade_cidrs.iter().flatten().enumerate() {
            non_masquerade.push(Cidr::parse(c).map_err(|why| {
                CniError::new(
                    Code::InvalidConfig,
                    format!("nonMasqueradeCIDRs[{i}]: {why}"),
                )
            })?);
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
            big_tcp: wire.big_tcp.unwrap_or(true),
            prev_result: wire.prev_result,
            valid_attachments: wire.valid_attachments,
            dns: wire.dns,
            ip_masq: wire.ip_masq,
            non_masquerade,
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
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"k","podCIDRs":["10.1.0.0/24","fd00:1::/64"],"ipMasq":true,"nonMasqueradeCIDRs":["172.31.0.0/16"]}"#,
        )
        .unwrap();
        assert_eq!(c.pools.len(), 2);
        assert!(c.pools[1].is_v6());
        assert_eq!(c.pools[1].size(), (1u128 << 64) - 2);
        assert!(c.pools[1].contains("fd00:1::5".parse().unwrap()));
        assert!(!c.pools[1].contains("10.1.0.5".parse().unwrap()));
        assert!(c.ip_masq);
        assert_eq!(c.non_masquerade[0].to_string(), "172.31.0.0/16");
        assert!(c.non_masquerade[0].contains("172.31.200.1".parse().unwrap()));
        assert!(!c.non_masquerade[0].contains("172.32.0.1".parse().unwrap()));
        assert!(c.big_tcp, "bigTCP defaults to on");
        let c = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"k","bigTCP":false}"#).unwrap();
        assert!(!c.big_tcp);
        for (conf, code, word) in [
            (&br#"{"#[..], Code::Decode, "JSON"),
            (br#"{"name":"k"}"#, Code::InvalidConfig, "cniVersion"),
            (br#"{"cniVersion":"0.1.0","name":"k"}"#, Code::IncompatibleVersion, "0.1.0"),
            (br#"{"cniVersion":"1.0.0","name":"../x"}"#, Code::InvalidConfig, "name"),
            (br#"{"cniVersion":"1.0.0","name":"k","podCIDR":"10.0.0.1/24"}"#, Code::InvalidConfig, "podCIDR"),
            (br#"{"cniVersion":"1.0.0","name":"k","podCIDR":"fd00::/127"}"#, Code::InvalidConfig, "/126"),
            (br#"{"cniVersion":"1.0.0","name":"k","podCIDRs":["10.0.0.0/24","fd00::1/64"]}"#, Code::InvalidConfig, "podCIDRs[1]"),
            (br#"{"cniVersion":"1.0.0","name":"k","nonMasqueradeCIDRs":["10.0.0.0/33"]}"#, Code::InvalidConfig, "nonMasqueradeCIDRs[0]"),
            (br#"{"cniVersion":"1.0.0","name":"k","mtu":10}"#, Code::InvalidConfig, "mtu"),
            (br#"{"cniVersion":"1.0.0","name":"k","bigTCP":"yes"}"#, Code::Decode, "bigTCP"),
            (br#"{"cniVersion":"1.0.0","name":"k","ranges":[[{"subnet":7}]]}"#, Code::Decode, "ranges[0][0].subnet"),
            (br#"{"cniVersion":"1.0.0","name":"k"} x"#, Code::Decode, "JSON"),
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
