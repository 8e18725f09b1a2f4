//! The network data plane: instances are network namespaces on a VPC bridge.
//!
//! Layout, all of it inside namespaces this driver creates (the machine's
//! root namespace is never touched):
//! - one *VPC namespace* per router, `<prefix>-<router id>`: the router
//!   itself. It holds one Linux bridge per vxnet (`br-<vxnet>`), carrying the
//!   router's `manager_ip` (the vxnet gateway) and forwards between them
//!   (`ip_forward=1`). Router statics of type 9 become kernel routes here;
//! - one *instance namespace* per instance, `<prefix>-<instance id>`, with
//!   `eth0` (one end of a veth pair whose other end is a port of the bridge),
//!   the instance's private address and a default route via the gateway.
//!
//! The default prefix is `cse-<short id>` where the short id is a hash of the
//! emulator's data dir, so a restarted emulator finds (and replays onto) the
//! namespaces it made before, and two emulators never share one.
//!
//! Routes programmed from statics carry a dedicated routing protocol number
//! ([`ROUTE_PROTO`]), so reconciling them never touches a route someone else
//! added (the connected routes of the bridges, for instance).
//!
//! Every call is idempotent (the job engine replays unfinished jobs) and the
//! work is done with the `ip` command: these calls are rare and the command's
//! behaviour is the reference one operators know.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use futures::TryStreamExt;
use iaas_client::model::{Instance, RouterStatic, STATIC_TYPE_ROUTE, Vxnet};
use rtnetlink::LinkUnspec;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use serde::Deserialize;

use super::{DataPlaneError, DpResult, NetworkDriver};

/// The routing protocol number marking routes this driver owns
/// (`ip route ... proto 77`); 77 is unassigned in `/etc/iproute2/rt_protos`.
pub const ROUTE_PROTO: u8 = 77;

/// The interface name of an instance's NIC inside its namespace.
pub const INSTANCE_IFNAME: &str = "eth0";

/// Where `ip netns` keeps its namespace handles.
/// Where `ip netns` keeps namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The GSO/GRO size limit (bytes, IPv4 and IPv6) every emulated NIC
/// advertises: NICs of clouds that offer "BIG TCP" let the stack build
/// segments larger than the legacy 64 KiB, and veth pairs (what these NICs
/// are) take up to 512 KiB. 192 KiB is the size BIG TCP deployments commonly
/// use. A pod network matched to the uplink (the CNI plugin reads it) sends
/// 192 KiB segments across the VPC; a tunnel device cannot carry them.
pub const NIC_GSO_MAX_SIZE: u32 = 196_608;

/// The largest GSO size a veth takes (its `tso_max_size`).
pub const NIC_GSO_LIMIT: u32 = 524_280;

/// Longest Linux interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Whether this process can run the namespace driver: effective uid 0 and an
/// `ip` command on PATH.
pub fn supported() -> bool {
    effective_uid_is_root() && find_on_path("ip")
}

fn effective_uid_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn find_on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// 64-bit FNV-1a: a stable hash for names that must survive restarts and
/// rebuilds (std's hasher makes no such promise).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The default namespace prefix for an emulator keeping its state in `data_dir`.
pub fn default_prefix(data_dir: &Path) -> String {
    let canonical = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = fnv1a(canonical.as_os_str().as_encoded_bytes());
    format!("cse-{:06x}", hash & 0xff_ffff)
}

/// Builds an interface name `<tag><id rest>` of at most 15 characters: the id
/// with its resource prefix (`vxnet-`, `i-`) stripped when that fits, a hash
/// of the whole id otherwise.
fn ifname(tag: &str, id: &str, strip: &str) -> String {
    let rest = id.strip_prefix(strip).unwrap_or(id);
    if tag.len() + rest.len() <= IFNAME_MAX && rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        format!("{tag}{rest}")
    } else {
        let width = IFNAME_MAX - tag.len();
        let hex = format!("{:016x}", fnv1a(id.as_bytes()));
        format!("{tag}{}", &hex[..width.min(16)])
    }
}

/// Checks an id that becomes part of a namespace or interface name: ASCII
/// letters, digits, `-`, `_`, `.`, at most 64 characters, not `.`/`..`.
fn check_id(what: &str, id: &str) -> DpResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(DataPlaneError(format!(
            "{what} {id:?} is not usable in a namespace name (letters, digits, '-', '_', '.'; at most 64)"
        )))
    }
}

/// An IPv4 network `addr/len` with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Net4 {
    addr: Ipv4Addr,
    len: u8,
}

impl Net4 {
    /// Parses `a.b.c.d/len`; with `strict` host bits must be zero.
    fn parse(what: &str, s: &str, strict: bool) -> DpResult<(Ipv4Addr, Net4)> {
        let bad = || DataPlaneError(format!("{what} {s:?} is not an IPv4 CIDR"));
        let (a, l) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let net = Ipv4Addr::from(u32::from(addr) & mask);
        if strict && net != addr {
            return Err(DataPlaneError(format!(
                "{what} {s:?} has host bits set (the network is {net}/{len})"
            )));
        }
        Ok((addr, Net4 { addr: net, len }))
    }
}

impl std::fmt::Display for Net4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Instances as namespaces on per-VPC bridges, driven with the `ip` command.
#[derive(Debug)]
pub struct NamespaceNetworkDriver {
    /// Every namespace this driver makes starts with `<prefix>-`.
    prefix: String,
    /// Serialises calls: each is a read-modify-write of kernel state.
    lock: Mutex<()>,
    /// GSO/GRO limit of instance NICs and bridges ([`NIC_GSO_MAX_SIZE`]).
    nic_gso_max_size: u32,
}

impl NamespaceNetworkDriver {
    /// A driver whose namespaces are named `<prefix>-...`. The prefix must be
    /// a short plain name (letters, digits, `-`), at most 32 characters.
    pub fn new(prefix: &str) -> DpResult<Self> {
        if prefix.is_empty()
            || prefix.len() > 32
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(DataPlaneError(format!(
                "network namespace prefix {prefix:?} must be 1-32 letters, digits or '-'"
            )));
        }
        Ok(NamespaceNetworkDriver {
            prefix: prefix.to_string(),
            lock: Mutex::new(()),
            nic_gso_max_size: NIC_GSO_MAX_SIZE,
        })
    }

    /// The same driver with NICs advertising `size` bytes of GSO/GRO
    /// (65536: a NIC without BIG TCP). Applied as instances come up.
    pub fn with_nic_gso_max_size(mut self, size: u32) -> Self {
        self.nic_gso_max_size = size;
        self
    }

    /// A driver with the default prefix for this data dir ([`default_prefix`]).
    pub fn for_data_dir(data_dir: &Path) -> DpResult<Self> {
        Self::new(&default_prefix(data_dir))
    }

    /// The namespace prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace of an instance.
    pub fn instance_netns(&self, instance_id: &str) -> String {
        format!("{}-{instance_id}", self.prefix)
    }

    /// The VPC namespace of a router (the router itself).
    pub fn vpc_netns(&self, router_id: &str) -> String {
        format!("{}-{router_id}", self.prefix)
    }

    /// The bridge name of a vxnet inside its VPC namespace.
    pub fn bridge_name(vxnet_id: &str) -> String {
        ifname("br-", vxnet_id, "vxnet-")
    }

    /// The bridge-side veth name of an instance inside its VPC namespace.
    pub fn port_name(instance_id: &str) -> String {
        ifname("vi-", instance_id, "i-")
    }

    /// Namespaces this driver made that exist now.
    pub fn namespaces(&self) -> DpResult<Vec<String>> {
        let owned = format!("{}-", self.prefix);
        let entries = match fs::read_dir(NETNS_DIR) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DataPlaneError::new(&format!("list {NETNS_DIR}"), e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&owned))
            .collect();
        names.sort();
        Ok(names)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // The kernel holds the state; a panic mid-call leaves nothing in
        // memory to repair, so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The routes this driver programmed in a router's namespace, as
    /// `(destination, next hop)`.
    pub fn owned_routes(&self, router_id: &str) -> DpResult<Vec<(String, String)>> {
        check_id("router id", router_id)?;
        let ns = self.vpc_netns(router_id);
        if !netns_exists(&ns) {
            return Ok(Vec::new());
        }
        Ok(list_owned_routes(&ns)?
            .into_iter()
            .map(|(dst, gw)| (dst.to_string(), gw.to_string()))
            .collect())
    }

    /// The VPC namespace for a vxnet, its gateway and its network.
    fn segment_of(&self, vxnet: &Vxnet) -> DpResult<(String, Ipv4Addr, Net4)> {
        check_id("vxnet id", &vxnet.vxnet_id)?;
        let r = vxnet
            .router
            .as_ref()
            .filter(|r| !r.router_id.is_empty())
            .ok_or_else(|| {
                DataPlaneError(format!(
                    "vxnet {} has no router: only VPC vxnets carry instances here",
                    vxnet.vxnet_id
                ))
            })?;
        check_id("router id", &r.router_id)?;
        let (_, net) = Net4::parse("vxnet ip_network", &r.ip_network, false)?;
        let gw: Ipv4Addr = r.manager_ip.parse().map_err(|_| {
            DataPlaneError(format!(
                "vxnet {} router manager_ip {:?} is not an IPv4 address",
                vxnet.vxnet_id, r.manager_ip
            ))
        })?;
        Ok((self.vpc_netns(&r.router_id), gw, net))
    }

    /// Creates the segment namespace and the vxnet's bridge in it.
    fn ensure_segment(&self, ns: &str, bridge: &str, gw: Ipv4Addr, net: Net4) -> DpResult<()> {
        ensure_netns(ns)?;
        // A router forwards between its vxnets and towards static next hops.
        ip(&[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ])?;
        if !link_exists(ns, bridge)? {
            ip(&["-n", ns, "link", "add", bridge, "type", "bridge"])?;
        }
        let want = format!("{gw}/{}", net.len);
        if !addresses(ns, bridge)?.contains(&want) {
            ip(&["-n", ns, "addr", "replace", &want, "dev", bridge])?;
        }
        ip(&["-n", ns, "link", "set", bridge, "up"])?;
        Ok(())
    }
}

impl NetworkDriver for NamespaceNetworkDriver {
    fn instance_up(&self, instance: &Instance, vxnet: &Vxnet) -> DpResult<()> {
        let _g = self.guard();
        check_id("instance id", &instance.instance_id)?;
        let (seg_ns, gw, net) = self.segment_of(vxnet)?;
        let nic = instance
            .vxnets
            .iter()
            .find(|n| n.vxnet_id == vxnet.vxnet_id)
            .ok_or_else(|| {
                DataPlaneError(format!(
                    "instance {} has no NIC on vxnet {}",
                    instance.instance_id, vxnet.vxnet_id
                ))
            })?;
        let private: Ipv4Addr = nic.private_ip.parse().map_err(|_| {
            DataPlaneError(format!(
                "instance {} private_ip {:?} is not an IPv4 address",
                instance.instance_id, nic.private_ip
            ))
        })?;
        if !Net4::parse("private_ip", &format!("{private}/{}", net.len), false)
            .is_ok_and(|(_, n)| n == net)
            || private == gw
        {
            return Err(DataPlaneError(format!(
                "instance {} private_ip {private} is not a host address of vxnet {} ({net}, gateway {gw})",
                instance.instance_id, vxnet.vxnet_id
            )));
        }
        let len = net.len;

        let bridge = Self::bridge_name(&vxnet.vxnet_id);
        let port = Self::port_name(&instance.instance_id);
        let inst_ns = self.instance_netns(&instance.instance_id);
        self.ensure_segment(&seg_ns, &bridge, gw, net)?;
        ensure_netns(&inst_ns)?;
        ip(&["-n", &inst_ns, "link", "set", "lo", "up"])?;

        if !link_exists(&seg_ns, &port)? || !link_exists(&inst_ns, INSTANCE_IFNAME)? {
            // A half-made pair (a crash between steps) is rebuilt whole:
            // deleting either end removes both.
            if link_exists(&seg_ns, &port)? {
                ip(&["-n", &seg_ns, "link", "del", &port])?;
            }
            if link_exists(&inst_ns, INSTANCE_IFNAME)? {
                ip(&["-n", &inst_ns, "link", "del", INSTANCE_IFNAME])?;
            }
            // Created inside the segment namespace with the peer sent
            // straight into the instance's: neither end ever exists in the
            // root namespace.
            ip(&[
                "-n",
                &seg_ns,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                INSTANCE_IFNAME,
                "netns",
                &inst_ns,
            ])?;
        }
        // Both ends of the NIC advertise BIG TCP, and so does the bridge:
        // the router sends through the bridge device, whose own limits stay
        // at the kernel's default unless set (after a port has joined: a
        // bridge takes its largest possible size from its ports).
        let size = self.nic_gso_max_size;
        set_gso_limits(&seg_ns, &port, size)?;
        set_gso_limits(&inst_ns, INSTANCE_IFNAME, size)?;
        ip(&["-n", &seg_ns, "link", "set", &port, "master", &bridge, "up"])?;
        set_gso_limits(&seg_ns, &bridge, size)?;

        let want = format!("{private}/{len}");
        let have = addresses(&inst_ns, INSTANCE_IFNAME)?;
        if have.len() != 1 || have[0] != want {
            ip(&["-n", &inst_ns, "addr", "flush", "dev", INSTANCE_IFNAME])?;
            ip(&["-n", &inst_ns, "addr", "add", &want, "dev", INSTANCE_IFNAME])?;
        }
        ip(&["-n", &inst_ns, "link", "set", INSTANCE_IFNAME, "up"])?;
        ip(&[
            "-n",
            &inst_ns,
            "route",
            "replace",
            "default",
            "via",
            &gw.to_string(),
        ])?;
        Ok(())
    }

    fn instance_down(&self, instance_id: &str) -> DpResult<()> {
        let _g = self.guard();
        check_id("instance id", instance_id)?;
        let ns = self.instance_netns(instance_id);
        // The kernel dismantles a deleted namespace's devices later, on a
        // work queue; deleting eth0 first removes the bridge port now, so a
        // replay of instance_up right after finds a clean bridge.
        if netns_exists(&ns) && link_exists(&ns, INSTANCE_IFNAME)? {
            ip(&["-n", &ns, "link", "del", INSTANCE_IFNAME])?;
        }
        delete_netns(&ns)
    }

    fn apply_router_statics(&self, router_id: &str, statics: &[RouterStatic]) -> DpResult<()> {
        let _g = self.guard();
        check_id("router id", router_id)?;
        let mut want: BTreeMap<Net4, Ipv4Addr> = BTreeMap::new();
        for s in statics
            .iter()
            .filter(|s| s.static_type == STATIC_TYPE_ROUTE && s.disabled == 0)
        {
            let what = format!("router static {} val1", s.router_static_id);
            let (_, dst) = Net4::parse(&what, &s.val1, true)?;
            let hop: Ipv4Addr = s.val2.trim().parse().map_err(|_| {
                DataPlaneError(format!(
                    "router static {} val2 {:?} is not an IPv4 next hop",
                    s.router_static_id, s.val2
                ))
            })?;
            if let Some(prev) = want.insert(dst, hop)
                && prev != hop
            {
                return Err(DataPlaneError(format!(
                    "router {router_id} has two routes for {dst} (via {prev} and via {hop})"
                )));
            }
        }
        let ns = self.vpc_netns(router_id);
        if !netns_exists(&ns) {
            if want.is_empty() {
                return Ok(());
            }
            return Err(DataPlaneError(format!(
                "router {router_id} has no vxnet with a running instance: no next hop of its routes is reachable"
            )));
        }
        let have = list_owned_routes(&ns)?;
        let proto = ROUTE_PROTO.to_string();
        for (dst, gw) in &have {
            if want.get(dst) != Some(gw) {
                ip(&["-n", &ns, "route", "del", &dst.to_string(), "proto", &proto])?;
            }
        }
        for (dst, gw) in &want {
            if have.iter().any(|(d, g)| d == dst && g == gw) {
                continue;
            }
            ip(&[
                "-n",
                &ns,
                "route",
                "replace",
                &dst.to_string(),
                "via",
                &gw.to_string(),
                "proto",
                &proto,
            ])
            .map_err(|e| {
                DataPlaneError(format!(
                    "route {dst} via {gw} in router {router_id}: {}",
                    e.0
                ))
            })?;
        }
        Ok(())
    }

    fn shutdown(&self) -> DpResult<()> {
        let _g = self.guard();
        let mut first_err = None;
        for ns in self.namespaces()? {
            if let Err(e) = delete_netns(&ns) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Runs `ip` with `args`, returning stdout; a failure carries stderr.
fn ip(args: &[&str]) -> DpResult<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| DataPlaneError::new("run ip", e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DataPlaneError(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// GSO/GRO size limits of a link (bytes): `(gso_ipv4, gro_ipv4, gso, gro)`,
/// the last two being the IPv6 (and pre-6.3 kernels' only) limits.
pub type GsoLimits = (u32, u32, u32, u32);

/// Runs `f` with a netlink handle whose socket lives in namespace `ns`, on a
/// thread of its own (`setns` moves only the calling thread).
fn with_netlink_in<T: Send>(
    ns: &str,
    f: impl AsyncFnOnce(rtnetlink::Handle) -> DpResult<T> + Send,
) -> DpResult<T> {
    let path = Path::new(NETNS_DIR).join(ns);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let file = fs::File::open(&path)
                    .map_err(|e| DataPlaneError::new(&format!("open {}", path.display()), e))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| DataPlaneError::new(&format!("enter {}", path.display()), e))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|e| DataPlaneError::new("build a netlink runtime", e))?;
                rt.block_on(async move {
                    let (conn, handle, _) = rtnetlink::new_connection()
                        .map_err(|e| DataPlaneError::new("open a netlink socket", e))?;
                    let conn = tokio::spawn(conn);
                    let out = f(handle).await;
                    conn.abort();
                    out
                })
            })
            .join()
            .map_err(|_| DataPlaneError(format!("netlink thread for {ns} panicked")))?
    })
}

async fn link_by_name(h: &rtnetlink::Handle, dev: &str) -> DpResult<LinkMessage> {
    h.link()
        .get()
        .match_name(dev.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| DataPlaneError::new(&format!("look up link {dev}"), e))?
        .ok_or_else(|| DataPlaneError(format!("link {dev} not found")))
}

/// Sets the GSO and GRO size limits of `dev` in `ns` to `size` for both
/// families. (`ip` of iproute2 6.1 has no keyword for the IPv4 ones, which
/// kernels since 6.3 keep apart from the IPv6 ones.)
pub fn set_gso_limits(ns: &str, dev: &str, size: u32) -> DpResult<()> {
    with_netlink_in(ns, async move |h| {
        let link = link_by_name(&h, dev).await?;
        let mut msg = LinkUnspec::new_with_index(link.header.index).build();
        msg.attributes.extend([
            LinkAttribute::GsoMaxSize(size),
            LinkAttribute::GroMaxSize(size),
            LinkAttribute::GsoIpv4MaxSize(size),
            LinkAttribute::GroIpv4MaxSize(size),
        ]);
        h.link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| DataPlaneError::new(&format!("set GSO/GRO limits of {dev} in {ns}"), e))
    })
}

/// The GSO/GRO size limits of `dev` in `ns` (0 for any the kernel does not
/// report).
pub fn gso_limits(ns: &str, dev: &str) -> DpResult<GsoLimits> {
    with_netlink_in(ns, async move |h| {
        let link = link_by_name(&h, dev).await?;
        let mut l = (0, 0, 0, 0);
        for a in &link.attributes {
            match a {
                LinkAttribute::GsoIpv4MaxSize(v) => l.0 = *v,
                LinkAttribute::GroIpv4MaxSize(v) => l.1 = *v,
                LinkAttribute::GsoMaxSize(v) => l.2 = *v,
                LinkAttribute::GroMaxSize(v) => l.3 = *v,
                _ => {}
            }
        }
        Ok(l)
    })
}

fn netns_exists(ns: &str) -> bool {
    Path::new(NETNS_DIR).join(ns).exists()
}

fn ensure_netns(ns: &str) -> DpResult<()> {
    if !netns_exists(ns) {
        match ip(&["netns", "add", ns]) {
            Ok(_) => {}
            // Lost a race with another creator: the namespace is there.
            Err(_) if netns_exists(ns) => {}
            Err(e) => return Err(e),
        }
    }
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

fn delete_netns(ns: &str) -> DpResult<()> {
    if !netns_exists(ns) {
        return Ok(());
    }
    match ip(&["netns", "del", ns]) {
        Ok(_) => Ok(()),
        Err(_) if !netns_exists(ns) => Ok(()),
        Err(e) => Err(e),
    }
}

fn link_exists(ns: &str, name: &str) -> DpResult<bool> {
    #[derive(Deserialize)]
    struct Link {
        ifname: String,
    }
    let out = ip(&["-n", ns, "-j", "link", "show"])?;
    let links: Vec<Link> = parse_json(&out)?;
    Ok(links.iter().any(|l| l.ifname == name))
}

/// IPv4 addresses of `dev` in `ns`, as `addr/len`.
fn addresses(ns: &str, dev: &str) -> DpResult<Vec<String>> {
    #[derive(Deserialize)]
    struct AddrInfo {
        family: String,
        local: String,
        prefixlen: u8,
    }
    #[derive(Deserialize)]
    struct Iface {
        #[serde(default)]
        addr_info: Vec<AddrInfo>,
    }
    let out = ip(&["-n", ns, "-j", "addr", "show", "dev", dev])?;
    let ifaces: Vec<Iface> = parse_json(&out)?;
    Ok(ifaces
        .iter()
        .flat_map(|i| i.addr_info.iter())
        .filter(|a| a.family == "inet")
        .map(|a| format!("{}/{}", a.local, a.prefixlen))
        .collect())
}

/// The routes carrying [`ROUTE_PROTO`] in `ns`'s main table.
fn list_owned_routes(ns: &str) -> DpResult<Vec<(Net4, Ipv4Addr)>> {
    #[derive(Deserialize)]
    struct Route {
        dst: String,
        #[serde(default)]
        gateway: Option<String>,
    }
    let out = ip(&[
        "-n",
        ns,
        "-j",
        "-4",
        "route",
        "show",
        "proto",
        &ROUTE_PROTO.to_string(),
    ])?;
    let routes: Vec<Route> = parse_json(&out)?;
    let mut owned = Vec::new();
    for r in routes {
        // `ip` prints a host route without its /32.
        let dst = if r.dst.contains('/') {
            r.dst.clone()
        } else {
            format!("{}/32", r.dst)
        };
        let (_, net) = Net4::parse("route dst", &dst, false)?;
        let gw = r
            .gateway
            .as_deref()
            .and_then(|g| g.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        owned.push((net, gw));
    }
    Ok(owned)
}

fn parse_json<T: serde::de::DeserializeOwned>(out: &str) -> DpResult<Vec<T>> {
    // `ip -j` prints nothing at all for an empty result on some versions.
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(out).map_err(|e| DataPlaneError::new("parse ip -j output", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_and_are_stable() {
        assert_eq!(
            NamespaceNetworkDriver::bridge_name("vxnet-abc123"),
            "br-abc123"
        );
        assert_eq!(
            NamespaceNetworkDriver::port_name("i-0a1b2c3d"),
            "vi-0a1b2c3d"
        );
        let long = NamespaceNetworkDriver::port_name("i-averyveryverylongid");
        assert_eq!(long.len(), IFNAME_MAX);
        assert_eq!(
            long,
            NamespaceNetworkDriver::port_name("i-averyveryverylongid")
        );
        assert_ne!(
            long,
            NamespaceNetworkDriver::port_name("i-averyveryverylongie")
        );
        assert!(NamespaceNetworkDriver::port_name("i-a_b").starts_with("vi-"));
    }

    #[test]
    fn ids_and_prefixes_are_checked() {
        assert!(check_id("instance id", "i-abc.1_2").is_ok());
        for bad in ["", "..", "a/b", "a b", "x;rm", &"a".repeat(65)] {
            let err = check_id("instance id", bad).unwrap_err();
            assert!(err.0.contains("instance id"), "{err}");
        }
        assert!(NamespaceNetworkDriver::new("cse-1").is_ok());
        assert!(NamespaceNetworkDriver::new("cse/1").is_err());
        assert!(NamespaceNetworkDriver::new("").is_err());
    }

    #[test]
    fn default_prefix_depends_on_the_data_dir() {
        let a = default_prefix(Path::new("/nonexistent/a"));
        let b = default_prefix(Path::new("/nonexistent/b"));
        assert!(a.starts_with("cse-") && a.len() == 10, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, default_prefix(Path::new("/nonexistent/a")));
    }

    #[test]
    fn cidrs_parse_strictly() {
        let (_, n) = Net4::parse("val1", "10.244.1.0/24", true).unwrap();
        assert_eq!(n.to_string(), "10.244.1.0/24");
        let err = Net4::parse("val1", "10.244.1.5/24", true).unwrap_err();
        assert!(err.0.contains("host bits"), "{err}");
        assert!(Net4::parse("val1", "10.244.1.0/33", true).is_err());
        assert!(Net4::parse("val1", "nope", true).is_err());
        let (a, n) = Net4::parse("ip_network", "172.30.1.7/24", false).unwrap();
        assert_eq!(
            (a.to_string(), n.to_string()),
            ("172.30.1.7".into(), "172.30.1.0/24".into())
        );
    }

    /// Privileged tests: real namespaces, real bridge, real TCP through them.
    mod privileged {
        use super::*;
        use iaas_client::model::{InstanceVxnet, VxnetRouter};
        use std::io::{Read, Write};
        use std::net::{SocketAddr, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::time::Duration;

        static SEQ: AtomicU32 = AtomicU32::new(0);

        /// A driver with a unique prefix whose namespaces go away on drop.
        struct Guard(NamespaceNetworkDriver);

        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = self.0.shutdown();
            }
        }

        fn driver() -> Option<Guard> {
            if !supported() {
                eprintln!("skipping: needs root and ip");
                return None;
            }
            let prefix = format!(
                "cset{}x{}",
                std::process::id() % 100_000,
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            Some(Guard(NamespaceNetworkDriver::new(&prefix).unwrap()))
        }

        fn vxnet() -> Vxnet {
            Vxnet {
                vxnet_id: "vxnet-t1".into(),
                vxnet_type: 1,
                router: Some(VxnetRouter {
                    router_id: "rtr-t1".into(),
                    ip_network: "172.30.1.0/24".into(),
                    manager_ip: "172.30.1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }

        fn instance(id: &str, ip: &str) -> Instance {
            Instance {
                instance_id: id.into(),
                vxnets: vec![InstanceVxnet {
                    vxnet_id: "vxnet-t1".into(),
                    private_ip: ip.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }
        }

        /// Runs `f` on a fresh thread that has entered namespace `ns`.
        fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
            let path = Path::new(NETNS_DIR).join(ns);
            std::thread::spawn(move || {
                let fd = fs::File::open(&path).unwrap();
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        }

        /// Whether a TCP connection from `from` reaches a listener on
        /// `to_addr` inside `to`, exchanging one message.
        fn tcp_reaches(from: &str, to: &str, to_addr: Ipv4Addr) -> bool {
            let listener = in_netns(to, move || TcpListener::bind((to_addr, 0)).unwrap());
            let port = listener.local_addr().unwrap().port();
            let server = std::thread::spawn(move || {
                listener.set_nonblocking(false).unwrap();
                if let Ok((mut s, _)) = listener.accept() {
                    let mut b = [0u8; 4];
                    if s.read_exact(&mut b).is_ok() {
                        let _ = s.write_all(&b);
                    }
                }
            });
            let ok = in_netns(from, move || {
                let addr = SocketAddr::from((to_addr, port));
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                    return false;
                };
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut b = [0u8; 4];
                s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
            });
            if !ok {
                // Unblock the accept with a connection from the listener's own namespace.
                in_netns(to, move || {
                    let _ = TcpStream::connect_timeout(
                        &SocketAddr::from((to_addr, port)),
                        Duration::from_secs(1),
                    );
                });
            }
            server.join().unwrap();
            ok
        }

        fn root_links() -> String {
            ip(&["-o", "link", "show"]).unwrap()
        }

        #[test]
        fn two_instances_talk_through_the_bridge() {
            let Some(g) = driver() else { return };
            let d = &g.0;
            let before = root_links();
            let a = instance("i-ta", "172.30.1.11");
            let b = instance("i-tb", "172.30.1.12");
            d.instance_up(&a, &vxnet()).unwrap();
            d.instance_up(&b, &vxnet()).unwrap();
            // Replays change nothing and do not fail.
            d.instance_up(&a, &vxnet()).unwrap();
            assert_eq!(root_links(), before, "root namespace links changed");
            let ns_a = d.instance_netns("i-ta");
            let ns_b = d.instance_netns("i-tb");
            assert_eq!(
                addresses(&ns_a, INSTANCE_IFNAME).unwrap(),
                vec!["172.30.1.11/24"]
            );
            assert!(tcp_reaches(&ns_a, &ns_b, "172.30.1.12".parse().unwrap()));
            // Every device on the path advertises BIG TCP: the NIC, its
            // bridge port and the bridge the router sends through.
            let big = (
                NIC_GSO_MAX_SIZE,
                NIC_GSO_MAX_SIZE,
                NIC_GSO_MAX_SIZE,
                NIC_GSO_MAX_SIZE,
            );
            let vpc = d.vpc_netns("rtr-t1");
            for (ns, dev) in [
                (ns_a.clone(), INSTANCE_IFNAME.to_string()),
                (vpc.clone(), NamespaceNetworkDriver::port_name("i-ta")),
                (vpc.clone(), NamespaceNetworkDriver::bridge_name("vxnet-t1")),
            ] {
                assert_eq!(gso_limits(&ns, &dev).unwrap(), big, "{dev} in {ns}");
            }
            assert!(gso_limits(&ns_a, "nope0").is_err());
            assert!(tcp_reaches(&ns_b, &ns_a, "172.30.1.11".parse().unwrap()));
            // The gateway answers from the VPC namespace.
            assert!(tcp_reaches(
                &ns_a,
                &d.vpc_netns("rtr-t1"),
                "172.30.1.1".parse().unwrap()
            ));

            // A changed address is applied on replay.
            let a2 = instance("i-ta", "172.30.1.21");
            d.instance_up(&a2, &vxnet()).unwrap();
            assert_eq!(
                addresses(&ns_a, INSTANCE_IFNAME).unwrap(),
                vec!["172.30.1.21/24"]
            );

            d.instance_down("i-ta").unwrap();
            d.instance_down("i-ta").unwrap();
            assert!(!netns_exists(&ns_a));
            assert!(
                !link_exists(
                    &d.vpc_netns("rtr-t1"),
                    &NamespaceNetworkDriver::port_name("i-ta")
                )
                .unwrap()
            );
            d.shutdown().unwrap();
            assert!(d.namespaces().unwrap().is_empty());
        }

        #[test]
        fn a_nic_without_big_tcp_can_be_emulated() {
            let Some(g) = driver() else { return };
            let d = Guard(
                NamespaceNetworkDriver::new(&format!("{}s", g.0.prefix()))
                    .unwrap()
                    .with_nic_gso_max_size(65_536),
            );
            drop(g);
            d.0.instance_up(&instance("i-sa", "172.30.1.11"), &vxnet())
                .unwrap();
            let legacy = (65_536, 65_536, 65_536, 65_536);
            let ns = d.0.instance_netns("i-sa");
            assert_eq!(gso_limits(&ns, INSTANCE_IFNAME).unwrap(), legacy);
            let vpc = d.0.vpc_netns("rtr-t1");
            let bridge = NamespaceNetworkDriver::bridge_name("vxnet-t1");
            assert_eq!(gso_limits(&vpc, &bridge).unwrap(), legacy);
        }

        #[test]
        fn route_static_reaches_a_network_behind_an_instance() {
            let Some(g) = driver() else { return };
            let d = &g.0;
            d.instance_up(&instance("i-ra", "172.30.1.11"), &vxnet())
                .unwrap();
            d.instance_up(&instance("i-rb", "172.30.1.12"), &vxnet())
                .unwrap();
            let ns_a = d.instance_netns("i-ra");
            let ns_b = d.instance_netns("i-rb");
            let vpc = d.vpc_netns("rtr-t1");
            // A /24 that lives on instance A (as a pod CIDR would); on
            // loopback because the dummy link type may not be built.
            ip(&["-n", &ns_a, "addr", "add", "10.244.1.1/24", "dev", "lo"]).unwrap();
            let pod: Ipv4Addr = "10.244.1.1".parse().unwrap();
            assert!(
                !tcp_reaches(&ns_b, &ns_a, pod),
                "reachable before the route exists"
            );

            // A route someone else owns in the VPC namespace must survive.
            ip(&[
                "-n",
                &vpc,
                "route",
                "add",
                "10.99.0.0/16",
                "via",
                "172.30.1.12",
            ])
            .unwrap();
            let route = |dst: &str, hop: &str, id: &str| RouterStatic {
                router_static_id: id.into(),
                router_id: "rtr-t1".into(),
                static_type: STATIC_TYPE_ROUTE,
                val1: dst.into(),
                val2: hop.into(),
                ..Default::default()
            };
            let other_type = RouterStatic {
                static_type: 1,
                val1: "80".into(),
                ..Default::default()
            };
            let disabled = RouterStatic {
                disabled: 1,
                ..route("10.244.7.0/24", "172.30.1.12", "rtrs-d")
            };
            d.apply_router_statics(
                "rtr-t1",
                &[
                    route("10.244.1.0/24", "172.30.1.11", "rtrs-a"),
                    route("10.244.2.0/24", "172.30.1.12", "rtrs-b"),
                    other_type,
                    disabled,
                ],
            )
            .unwrap();
            assert_eq!(
                d.owned_routes("rtr-t1").unwrap(),
                vec![
                    ("10.244.1.0/24".to_string(), "172.30.1.11".to_string()),
                    ("10.244.2.0/24".to_string(), "172.30.1.12".to_string()),
                ]
            );
            assert!(
                tcp_reaches(&ns_b, &ns_a, pod),
                "not reachable through the VPC route"
            );

            // Exactly the given set: the stale one goes, a moved one moves.
            d.apply_router_statics("rtr-t1", &[route("10.244.2.0/24", "172.30.1.11", "rtrs-b")])
                .unwrap();
            assert_eq!(
                d.owned_routes("rtr-t1").unwrap(),
                vec![("10.244.2.0/24".to_string(), "172.30.1.11".to_string())]
            );
            assert!(!tcp_reaches(&ns_b, &ns_a, pod));
            let foreign = ip(&["-n", &vpc, "route", "show", "10.99.0.0/16"]).unwrap();
            assert!(
                foreign.contains("172.30.1.12"),
                "foreign route removed: {foreign:?}"
            );

            let err = d
                .apply_router_statics("rtr-t1", &[route("10.244.3.5/24", "172.30.1.11", "rtrs-x")])
                .unwrap_err();
            assert!(
                err.0.contains("rtrs-x") && err.0.contains("host bits"),
                "{err}"
            );
            d.apply_router_statics("rtr-t1", &[]).unwrap();
            assert!(d.owned_routes("rtr-t1").unwrap().is_empty());
        }
    }
}
