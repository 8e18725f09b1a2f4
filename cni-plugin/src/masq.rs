//! Optional masquerade (`ipMasq: true`): pod traffic to destinations outside
//! the pod ranges and `nonMasqueradeCIDRs` leaves with the node's address.
//!
//! Pods are VPC-routable, so this is only for destinations the VPC does not
//! route back to pods (the internet through a NAT gateway, peered networks).
//!
//! One nftables table per network in the node's namespace,
//! `inet cloudsuite_masq_<name>`: a `postrouting` NAT chain with
//! `ip saddr @pods4 ip daddr != @direct4 masquerade` (and the IPv6 twin).
//! It is a per-node rule set: every ADD with `ipMasq` re-applies it in one
//! atomic `nft -f` transaction (create, delete, create), which is idempotent
//! and self-healing, and DEL leaves it (other pods share it; removing it on
//! the "last" DEL would race a concurrent ADD). The node agent removes it
//! when masquerade is off in its configuration ([`remove`]).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::config::{Cidr, NetConf, ip_bits};
use crate::error::{CniError, CniResult, Code};

/// The `nft` binary (Debian's nftables package).
pub const NFT: &str = "nft";

/// The table of network `name` (nft identifiers: letters, digits, `_`).
pub fn table_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("cloudsuite_masq_{clean}")
}

/// Drops every CIDR contained in another one (nft interval sets reject
/// overlapping elements; two CIDRs either nest or are disjoint).
pub fn minimal_cover(cidrs: &[Cidr]) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = Vec::new();
    for c in cidrs {
        let covered = cidrs.iter().any(|o| {
            o != c
                && o.prefix <= c.prefix
                && o.contains(c.addr)
                && (o.prefix < c.prefix || ip_bits(o.addr) < ip_bits(c.addr))
        });
        if !covered && !out.contains(c) {
            out.push(*c);
        }
    }
    out
}

/// The nft script that (re)creates the table for `conf` atomically.
pub fn render(conf: &NetConf) -> String {
    let table = table_name(&conf.name);
    let pods: Vec<Cidr> = conf
        .pools
        .iter()
        .map(|p| Cidr {
            addr: p.network,
            prefix: p.prefix,
        })
        .collect();
    let mut direct = pods.clone();
    direct.extend(conf.non_masquerade.iter().copied());
    let mut script =
        format!("table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{\n");
    let mut rules = String::new();
    for (v6, fam, ty) in [(false, "ip", "ipv4_addr"), (true, "ip6", "ipv6_addr")] {
        let of = |set: &[Cidr]| -> Vec<String> {
            minimal_cover(
                &set.iter()
                    .filter(|c| c.addr.is_ipv6() == v6)
                    .copied()
                    .collect::<Vec<_>>(),
            )
            .iter()
            .map(ToString::to_string)
            .collect()
        };
        let (p, d) = (of(&pods), of(&direct));
        if p.is_empty() {
            continue;
        }
        let n = if v6 { 6 } else { 4 };
        script.push_str(&format!(
            "  set pods{n} {{ type {ty}; flags interval; elements = {{ {} }} }}\n",
            p.join(", ")
        ));
        // `direct` always holds the pod ranges, so it is never empty.
        script.push_str(&format!(
            "  set direct{n} {{ type {ty}; flags interval; elements = {{ {} }} }}\n",
            d.join(", ")
        ));
        rules.push_str(&format!(
            "    {fam} saddr @pods{n} {fam} daddr != @direct{n} masquerade\n"
        ));
    }
    script.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    script.push_str(&rules);
    script.push_str("  }\n}\n");
    script
}

fn nft(script: &str, what: &str) -> CniResult<()> {
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::new(
                Code::Io,
                format!("{what}: cannot run {NFT} (install nftables)"),
            )
            .with_details(e.to_string())
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| {
            CniError::new(Code::Io, format!("{what}: write to {NFT}")).with_details(e.to_string())
        })?;
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(Code::Io, format!("{what}: wait for {NFT}")).with_details(e.to_string())
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CniError::new(Code::Io, format!("{what}: {NFT} failed"))
            .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Applies the masquerade table of `conf` in the current network namespace.
pub fn ensure(conf: &NetConf) -> CniResult<()> {
    nft(&render(conf), "apply the masquerade rules")
}

/// Removes the masquerade table of network `name`; absent is success.
pub fn remove(name: &str) -> CniResult<()> {
    let t = table_name(name);
    nft(
        &format!("table inet {t} {{}}\ndelete table inet {t}\n"),
        "remove the masquerade rules",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn nested_cidrs_collapse_to_the_outer_one() {
        let got = minimal_cover(&[
            c("10.244.1.0/24"),
            c("10.244.0.0/16"),
            c("172.31.0.0/16"),
            c("10.244.0.0/16"),
        ]);
        assert_eq!(got, vec![c("10.244.0.0/16"), c("172.31.0.0/16")]);
    }

    #[test]
    fn renders_one_atomic_transaction_per_family_present() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"k8s-pods","podCIDRs":["10.244.1.0/24","fd00:1::/64"],
                 "ipMasq":true,"nonMasqueradeCIDRs":["10.244.0.0/16","172.31.0.0/16"]}"#,
        )
        .unwrap();
        let s = render(&conf);
        assert!(s.starts_with(
            "table inet cloudsuite_masq_k8s_pods {}\ndelete table inet cloudsuite_masq_k8s_pods\n"
        ));
        assert!(
            s.contains(
                "set pods4 { type ipv4_addr; flags interval; elements = { 10.244.1.0/24 } }"
            ),
            "{s}"
        );
        assert!(
            s.contains("elements = { 10.244.0.0/16, 172.31.0.0/16 }"),
            "{s}"
        );
        assert!(s.contains("ip saddr @pods4 ip daddr != @direct4 masquerade"));
        assert!(s.contains("ip6 saddr @pods6 ip6 daddr != @direct6 masquerade"));
        let v4only = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","podCIDR":"10.1.0.0/24","ipMasq":true}"#,
        )
        .unwrap();
        assert!(!render(&v4only).contains("ip6"));
    }
}
