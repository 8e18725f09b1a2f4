//! The kernel side of an attachment, done over netlink in-process.
//!
//! Layout of one pod (`ip` notation):
//! - host: `<host veth> mtu M up`, `rp_filter=1` on it, `ip route replace
//!   <pod>/32 dev <host veth> scope link`, `net.ipv4.ip_forward=1`;
//! - pod: `<ifname> mtu M up` with `<pod>/32`, `ip neigh replace 169.254.1.1
//!   lladdr <host veth MAC> nud permanent`, `ip route replace default via
//!   169.254.1.1 dev <ifname> onlink`.
//!
//! With an IPv6 pod range as well (dual-stack): the pod gets `<pod6>/128`
//! (`nodad`, and DAD off on both veth ends so the addresses are usable at
//! once), `ip -6 neigh replace fe80::1 lladdr <host veth MAC> nud permanent`
//! and `ip -6 route replace default via fe80::1 dev <ifname>`; the host gets
//! `ip -6 route replace <pod6>/128 dev <host veth>` and IPv6 forwarding on.
//!
//! The pod never ARPs (or solicits) for its gateway (the entry is permanent)
//! and the host needs no proxy ARP and no address on the veth.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::error::{CniResult, io_err, nl_err};
use crate::netns::Netns;

/// The link-local gateway every pod routes through.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The link-local IPv6 gateway every dual-stack pod routes through.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The gateway of `ip`'s family.
pub fn gateway_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY6),
    }
}

/// The host prefix length of `ip`'s family (32 or 128).
pub fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// MTU when the node has no default route to learn it from.
pub const FALLBACK_MTU: u32 = 1500;

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// The host-side veth name of an attachment: `cse` + 12 hex digits of a hash
/// of container id and ifname (stable, so DEL finds it without state).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("cse{:012x}", h & 0xffff_ffff_ffff)
}

/// Whether a netlink error means "no such object".
fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if matches!(m.raw_code().abs(), ENODEV | ENOENT | ESRCH))
}

/// A link's index, MAC and MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Hardware address.
    pub mac: Vec<u8>,
    /// MTU.
    pub mtu: u32,
    /// GSO/GRO size limits.
    pub offload: Offload,
}

/// The kernel's default GSO/GRO size limit (bytes): 64 KiB, what a TCP
/// segment offload could always carry.
pub const LEGACY_GSO_MAX_SIZE: u32 = 65_536;

/// A link's GSO/GRO size limits (bytes). Since Linux 6.3 IPv4 has its own
/// pair; above 64 KiB they are "BIG TCP".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// Largest IPv4 segment the stack builds for this link.
    pub gso_ipv4: u32,
    /// Largest IPv4 packet GRO assembles on this link.
    pub gro_ipv4: u32,
    /// The same for IPv6.
    pub gso: u32,
    /// The same for IPv6.
    pub gro: u32,
}

impl Default for Offload {
    fn default() -> Self {
        Offload {
            gso_ipv4: LEGACY_GSO_MAX_SIZE,
            gro_ipv4: LEGACY_GSO_MAX_SIZE,
            gso: LEGACY_GSO_MAX_SIZE,
            gro: LEGACY_GSO_MAX_SIZE,
        }
    }
}

impl Offload {
    /// Whether any limit is above the kernel's default (worth copying to a
    /// new link).
    pub fn is_big(&self) -> bool {
        [self.gso_ipv4, self.gro_ipv4, self.gso, self.gro]
            .iter()
            .any(|v| *v > LEGACY_GSO_MAX_SIZE)
    }

    fn attributes(&self) -> [LinkAttribute; 4] {
        [
            LinkAttribute::GsoMaxSize(self.gso),
            LinkAttribute::GroMaxSize(self.gro),
            LinkAttribute::GsoIpv4MaxSize(self.gso_ipv4),
            LinkAttribute::GroIpv4MaxSize(self.gro_ipv4),
        ]
    }
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: m.header.index,
        mac: Vec::new(),
        mtu: 0,
        offload: Offload::default(),
    };
    // A kernel before 6.3 reports no IPv4 pair: its IPv4 limits are the
    // shared ones, capped at 64 KiB.
    let mut v4 = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(mac) => info.mac = mac.clone(),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::GsoMaxSize(v) => info.offload.gso = *v,
            LinkAttribute::GroMaxSize(v) => info.offload.gro = *v,
            LinkAttribute::GsoIpv4MaxSize(v) => v4.get_or_insert((0, 0)).0 = *v,
            LinkAttribute::GroIpv4MaxSize(v) => v4.get_or_insert((0, 0)).1 = *v,
            _ => {}
        }
    }
    if let Some((gso, gro)) = v4 {
        (info.offload.gso_ipv4, info.offload.gro_ipv4) = (gso, gro);
    } else {
        info.offload.gso_ipv4 = info.offload.gso.min(LEGACY_GSO_MAX_SIZE);
        info.offload.gro_ipv4 = info.offload.gro.min(LEGACY_GSO_MAX_SIZE);
    }
    info
}

/// Looks a link up by name; `None` when absent.
pub async fn find_link(h: &Handle, name: &str) -> CniResult<Option<LinkInfo>> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(link_info(&m))),
        Ok(None) => Ok(None),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(nl_err(&format!("look up link {name}"), e)),
    }
}

/// Formats a MAC as `aa:bb:..`.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What a pod's veth pair copies from the node's uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uplink {
    /// The uplink's MTU, or [`FALLBACK_MTU`].
    pub mtu: u32,
    /// The uplink's GSO/GRO limits (the kernel defaults without an uplink).
    pub offload: Offload,
}

/// The MTU of the interface carrying the default route, or [`FALLBACK_MTU`].
pub async fn uplink_mtu(h: &Handle) -> CniResult<u32> {
    Ok(uplink(h).await?.mtu)
}

/// The interface carrying the IPv4 default route: its MTU and GSO/GRO
/// limits; [`FALLBACK_MTU`] and the kernel defaults when there is none.
pub async fn uplink(h: &Handle) -> CniResult<Uplink> {
    let none = Uplink {
        mtu: FALLBACK_MTU,
        offload: Offload::default(),
    };
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut oif = None;
    while let Some(r) = routes
        .try_next()
        .await
        .map_err(|e| nl_err("list routes", e))?
    {
        if r.header.destination_prefix_length == 0 && r.header.table == 254 {
            oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if oif.is_some() {
                break;
            }
        }
    }
    let Some(index) = oif else {
        return Ok(none);
    };
    let mut s = h.link().get().match_index(index).execute();
    match s.try_next().await {
        Ok(Some(m)) => {
            let info = link_info(&m);
            Ok(Uplink {
                mtu: Some(info.mtu).filter(|m| *m > 0).unwrap_or(FALLBACK_MTU),
                offload: info.offload,
            })
        }
        _ => Ok(none),
    }
}

/// Tunnel kinds: a segment routed into one is encapsulated whole, so it
/// cannot be larger than the legacy 64 KiB.
fn is_tunnel(kind: &InfoKind) -> bool {
    matches!(
        kind,
        InfoKind::Vxlan
            | InfoKind::Geneve
            | InfoKind::GreTap
            | InfoKind::GreTap6
            | InfoKind::GreTun
            | InfoKind::GreTun6
            | InfoKind::IpIp
            | InfoKind::Ip6Tnl
            | InfoKind::SitTun
            | InfoKind::Vti
            | InfoKind::Vti6
            | InfoKind::Xfrm
            | InfoKind::Wireguard
            | InfoKind::BareUdp
            | InfoKind::Amt
    )
}

/// Sets the GSO/GRO limits of link `name` (an uplink in the benches).
pub async fn set_offload(h: &Handle, name: &str, offload: Offload) -> CniResult<()> {
    let link = find_link(h, name)
        .await?
        .ok_or_else(|| nl_err("find the link", name))?;
    let mut msg = LinkUnspec::new_with_index(link.index).build();
    msg.attributes.extend(offload.attributes());
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_err(&format!("set GSO/GRO limits of {name}"), e))
}

/// Every link of the namespace of `h`.
pub async fn list_links(h: &Handle) -> CniResult<Vec<LinkMessage>> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err("list links", e))
}

/// A link's name.
pub fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The first tunnel device among `links` that is up, as `name (kind)`. Pod
/// traffic may be routed into one (an overlay, a WireGuard mesh, IPIP),
/// where BIG TCP segments would be cut in software: with one present, the
/// agent writes `bigTCP: false` and pods keep the 64 KiB default. The
/// fallback devices every namespace gets (`tunl0`, `sit0`, `gre0`...) are
/// down and do not count.
pub fn up_tunnel(links: &[LinkMessage]) -> Option<String> {
    links.iter().find_map(|m| {
        if !m.header.flags.contains(LinkFlags::Up) {
            return None;
        }
        let kind = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                NlLinkInfo::Kind(k) => Some(k),
                _ => None,
            }),
            _ => None,
        })?;
        if !is_tunnel(kind) {
            return None;
        }
        Some(format!("{} ({kind})", link_name(m)?))
    })
}

/// Sets a sysctl under /proc/sys of the current thread's namespace, writing
/// only when it differs (a write costs more than a read).
pub fn sysctl(path: &str, value: &str) -> CniResult<()> {
    let full = format!("/proc/sys/{path}");
    if fs::read_to_string(&full).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    fs::write(&full, value).map_err(|e| io_err(&format!("set {path}={value}"), e))
}

/// What ADD made.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Host veth name.
    pub host_ifname: String,
    /// Host veth MAC.
    pub host_mac: String,
    /// Pod interface MAC.
    pub pod_mac: String,
    /// MTU applied.
    pub mtu: u32,
}

/// Creates the veth pair and programs both ends. `host` and `pod` are
/// handles whose sockets live in the node's and the pod's namespace. Both
/// ends are born with `offload`'s limits when they are above the kernel's
/// defaults (BIG TCP from the uplink): set at creation, they cost no extra
/// call.
#[allow(clippy::too_many_arguments)]
pub async fn setup(
    host: &Handle,
    pod: &Handle,
    pod_ns: &Netns,
    host_ifname: &str,
    ifname: &str,
    ips: &[IpAddr],
    mtu: u32,
    offload: Offload,
) -> CniResult<Attached> {
    let dual = ips.iter().any(IpAddr::is_ipv6);
    // A leftover of an interrupted earlier ADD for this same attachment.
    if let Some(old) = find_link(host, host_ifname).await? {
        delete_index(host, old.index, host_ifname).await?;
    }
    if find_link(pod, ifname).await?.is_some() {
        return Err(crate::error::CniError::new(
            crate::error::Code::InvalidConfig,
            format!("interface {ifname} already exists in the container's network namespace"),
        ));
    }
    // The peer is born inside the pod namespace under its final name, so no
    // rename and no temporary name ever appear on the host. (Creating it
    // with IFF_UP fails with ENOTCONN: each end is brought up afterwards.)
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(ifname.to_string())
        .mtu(mtu)
        .setns_by_fd(pod_ns.fd())
        .build();
    if offload.is_big() {
        peer.attributes.extend(offload.attributes());
    }
    let mut veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host_ifname.to_string())
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    if offload.is_big() {
        veth.attributes.extend(offload.attributes());
    }
    host.link()
        .add(veth)
        .execute()
        .await
        .map_err(|e| nl_err(&format!("create veth {host_ifname} / {ifname}"), e))?;
    crate::plugin::crash_point("after-veth");

    let hostl = find_link(host, host_ifname)
        .await?
        .ok_or_else(|| nl_err("find the new host veth", host_ifname))?;
    if dual {
        // Before the link comes up, so its link-local address (the source
        // of the host's neighbour solicitations) is never tentative.
        sysctl(&format!("net/ipv6/conf/{host_ifname}/accept_dad"), "0")?;
        sysctl(&format!("net/ipv6/conf/{host_ifname}/disable_ipv6"), "0")?;
        sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    host.link()
        .set(LinkUnspec::new_with_index(hostl.index).up().build())
        .execute()
        .await
        .map_err(|e| nl_err(&format!("set {host_ifname} up"), e))?;
    // Strict reverse-path filtering is the pod's anti-spoofing: a packet
    // whose source the node would not route back out of this veth (any
    // address but the pod's own, whose /32 is added below) is dropped
    // before it is forwarded. Replies of DNATed connections (Service VIPs)
    // pass: their source is rewritten to the VIP only in POSTROUTING, after
    // this check. A host-wide `all.rp_filter=2` wins (the kernel takes the
    // higher value) but stays strict in effect here: the veth has no IPv4
    // address, and loose mode rejects a source not routed via the arrival
    // device of an address-less interface (tests/plugin.rs checks both
    // forged kinds). The check costs one FIB lookup per (GSO-sized)
    // packet: the throughput bench measured no difference against it off.
    sysctl(&format!("net/ipv4/conf/{host_ifname}/rp_filter"), "1")?;
    sysctl("net/ipv4/ip_forward", "1")?;
    for ip in ips {
        let msg = match ip {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(*v4, 32)
                .output_interface(hostl.index)
                .scope(RouteScope::Link)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(*v6, 128)
                .output_interface(hostl.index)
                .build(),
        };
        host.route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                nl_err(
                    &format!("route {ip}/{} dev {host_ifname}", host_prefix(*ip)),
                    e,
                )
            })?;
    }

    let podl = find_link(pod, ifname)
        .await?
        .ok_or_else(|| nl_err("find the new pod interface", ifname))?;
    if dual {
        let _inside = pod_ns.enter()?;
        sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")?;
    }
    pod.link()
        .set(LinkUnspec::new_with_index(podl.index).up().build())
        .execute()
        .await
        .map_err(|e| nl_err(&format!("set {ifname} up in the pod"), e))?;
    for ip in ips {
        let prefix = host_prefix(*ip);
        let mut req = pod.address().add(podl.index, *ip, prefix).replace();
        if ip.is_ipv6() {
            // Usable at once: no duplicate address detection for the /128.
            let m = req.message_mut();
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| nl_err(&format!("address {ip}/{prefix} on {ifname}"), e))?;
        let gw = gateway_for(*ip);
        pod.neighbours()
            .add(podl.index, gw)
            .link_layer_address(&hostl.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(&format!("neighbour {gw} on {ifname}"), e))?;
        let route = match ip {
            IpAddr::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(GATEWAY)
                .output_interface(podl.index)
                .onlink()
                .build(),
            IpAddr::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(GATEWAY6)
                .output_interface(podl.index)
                .build(),
        };
        pod.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(&format!("default route via {gw} on {ifname}"), e))?;
    }
    Ok(Attached {
        host_ifname: host_ifname.to_string(),
        host_mac: mac_string(&hostl.mac),
        pod_mac: mac_string(&podl.mac),
        mtu,
    })
}

async fn delete_index(h: &Handle, index: u32, name: &str) -> CniResult<()> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(nl_err(&format!("delete link {name}"), e)),
    }
}

/// Removes the host veth (and with it the pod end and the host route).
/// Absent is success.
pub async fn teardown(host: &Handle, host_ifname: &str) -> CniResult<bool> {
    match find_link(host, host_ifname).await? {
        Some(l) => {
            delete_index(host, l.index, host_ifname).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Cuts an attachment off without waiting for the kernel to free it: the
/// host veth goes down, which removes its /32 route at once and leaves the
/// pod end without carrier. Returns the link's index for [`delete_link`],
/// `None` when there is no such link.
///
/// Why: unregistering a network device waits for RCU grace periods, 10-30 ms
/// on its own, while the attachment is already inert once the link is down.
pub async fn detach(host: &Handle, host_ifname: &str) -> CniResult<Option<u32>> {
    let Some(l) = find_link(host, host_ifname).await? else {
        return Ok(None);
    };
    match host
        .link()
        .set(LinkUnspec::new_with_index(l.index).down().build())
        .execute()
        .await
    {
        Ok(()) => Ok(Some(l.index)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(nl_err(&format!("set {host_ifname} down"), e)),
    }
}

/// Deletes a link by index (indexes are not reused before the 32-bit counter
/// wraps, so a later ADD's link of the same name is never hit). Absent is success.
pub async fn delete_link(host: &Handle, index: u32) -> CniResult<()> {
    delete_index(host, index, &format!("#{index}")).await
}

/// Compares the live attachment with what ADD made; returns each difference.
pub async fn inspect(
    host: &Handle,
    pod: &Handle,
    host_ifname: &str,
    ifname: &str,
    ips: &[IpAddr],
) -> CniResult<Vec<String>> {
    let mut diffs = Vec::new();
    let hostl = find_link(host, host_ifname).await?;
    match &hostl {
        None => diffs.push(format!("host veth {host_ifname} is missing")),
        Some(l) => {
            let routes = routes(host).await?;
            for ip in ips {
                let has = routes.iter().any(|r| {
                    r.header.destination_prefix_length == host_prefix(*ip)
                        && has_attr(r, |a| route_addr_is(a, true, *ip))
                        && has_attr(r, |a| matches!(a, RouteAttribute::Oif(i) if *i == l.index))
                });
                if !has {
                    diffs.push(format!(
                        "host route {ip}/{} dev {host_ifname} is missing",
                        host_prefix(*ip)
                    ));
                }
            }
        }
    }
    let Some(podl) = find_link(pod, ifname).await? else {
        diffs.push(format!("interface {ifname} is missing in the container"));
        return Ok(diffs);
    };
    let mut addrs = pod
        .address()
        .get()
        .set_link_index_filter(podl.index)
        .execute();
    let mut present = Vec::new();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(|e| nl_err("list addresses", e))?
    {
        for x in &a.attributes {
            if let AddressAttribute::Address(v) = x {
                present.push((*v, a.header.prefix_len));
            }
        }
    }
    let pod_routes = routes(pod).await?;
    let neighs: Vec<_> = pod
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err("list neighbours", e))?;
    for ip in ips {
        let prefix = host_prefix(*ip);
        if !present.contains(&(*ip, prefix)) {
            diffs.push(format!("address {ip}/{prefix} is missing on {ifname}"));
        }
        let gw = gateway_for(*ip);
        let has_default = pod_routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && r.header.table == 254
                && has_attr(r, |a| route_addr_is(a, false, gw))
                && has_attr(
                    r,
                    |a| matches!(a, RouteAttribute::Oif(i) if *i == podl.index),
                )
        });
        if !has_default {
            diffs.push(format!("default route via {gw} dev {ifname} is missing"));
        }
        if let Some(hl) = &hostl {
            let ok = neighs.iter().any(|n| {
                let dst = n.attributes.iter().any(|a| matches!(a, NeighbourAttribute::Destination(d) if neigh_addr(d) == Some(gw)));
                let mac = n
                    .attributes
                    .iter()
                    .any(|a| matches!(a, NeighbourAttribute::LinkLayerAddress(m) if *m == hl.mac));
                n.header.ifindex == podl.index
                    && dst
                    && mac
                    && n.header.state == NeighbourState::Permanent
            });
            if !ok {
                diffs.push(format!(
                    "permanent neighbour {gw} lladdr {} on {ifname} is missing",
                    mac_string(&hl.mac)
                ));
            }
        }
    }
    Ok(diffs)
}

fn neigh_addr(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v) => Some(IpAddr::V4(*v)),
        NeighbourAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// Whether `a` is the route's destination (`dst`) or gateway carrying `ip`.
fn route_addr_is(a: &RouteAttribute, dst: bool, ip: IpAddr) -> bool {
    let addr = match (a, dst) {
        (RouteAttribute::Destination(x), true) | (RouteAttribute::Gateway(x), false) => x,
        _ => return false,
    };
    match (addr, ip) {
        (RouteAddress::Inet(v), IpAddr::V4(w)) => *v == w,
        (RouteAddress::Inet6(v), IpAddr::V6(w)) => *v == w,
        _ => false,
    }
}

fn has_attr(r: &RouteMessage, f: impl Fn(&RouteAttribute) -> bool) -> bool {
    r.attributes.iter().any(f)
}

/// Both families' routes (the main table and the rest; callers filter).
async fn routes(h: &Handle) -> CniResult<Vec<RouteMessage>> {
    let mut all: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err("list routes", e))?;
    let v6: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err("list IPv6 routes", e))?;
    all.extend(v6);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_differ() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
    }

    fn link(attrs: Vec<LinkAttribute>) -> LinkInfo {
        let mut m = LinkMessage::default();
        m.attributes = attrs;
        link_info(&m)
    }

    #[test]
    fn offload_limits_are_read_per_family_and_copied_only_when_big() {
        // Linux >= 6.3 reports the IPv4 pair apart.
        let big = link(vec![
            LinkAttribute::GsoMaxSize(65_536),
            LinkAttribute::GroMaxSize(65_536),
            LinkAttribute::GsoIpv4MaxSize(196_608),
            LinkAttribute::GroIpv4MaxSize(196_608),
        ]);
        assert_eq!(big.offload.gso_ipv4, 196_608);
        assert_eq!(big.offload.gso, 65_536);
        assert!(big.offload.is_big());
        // An older kernel: IPv4 uses the shared limits, capped at 64 KiB.
        let old = link(vec![
            LinkAttribute::GsoMaxSize(196_608),
            LinkAttribute::GroMaxSize(65_536),
        ]);
        assert_eq!(old.offload.gso_ipv4, LEGACY_GSO_MAX_SIZE);
        assert_eq!(old.offload.gso, 196_608);
        assert!(old.offload.is_big(), "IPv6 BIG TCP still copies");
        // Kernel defaults (or nothing reported): nothing to copy.
        assert!(!link(vec![]).offload.is_big());
        let legacy = link(vec![
            LinkAttribute::GsoMaxSize(65_536),
            LinkAttribute::GroMaxSize(65_536),
            LinkAttribute::GsoIpv4MaxSize(65_536),
            LinkAttribute::GroIpv4MaxSize(65_536),
        ]);
        assert_eq!(legacy.offload, Offload::default());
        assert!(!legacy.offload.is_big());
    }
}
