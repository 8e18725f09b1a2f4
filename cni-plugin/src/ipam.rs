//! Address management: one lease file per address under the network's data
//! dir, every change made under an exclusive `flock` on `<dir>/lock`.
//!
//! A lease file is named by its address (IPv4 or IPv6) and holds
//! `<container id>\n<ifname>\n<netns path>\n` (the third line is absent in
//! leases written by older builds). It is created with `O_EXCL` before any
//! interface exists, so a crash after allocation leaves a lease whose owner
//! GC can match against the runtime's valid attachments (a torn, empty file
//! matches none and is reclaimed), and the node agent can match against the
//! machine (see [`crate::agent::lease_is_stale`]).
//! `last_reserved_ip.<family>` remembers where the previous search ended, so a
//! freed address is not handed to the next pod at once (conntrack, neighbour caches).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};

use crate::config::{Attachment, Pool, ip_bits, ip_from_bits};
use crate::error::{CniError, CniResult, Code, io_err};

const LOCK_FILE: &str = "lock";

fn last_reserved_file(v6: bool) -> &'static str {
    // The IPv4 name is the one host-local uses, kept for continuity.
    if v6 {
        "last_reserved_ip.1"
    } else {
        "last_reserved_ip.0"
    }
}

/// Who an address is leased to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    /// Container id.
    pub container_id: &'a str,
    /// Interface name in the container.
    pub ifname: &'a str,
    /// The container's netns path (recorded for the agent's GC; may be empty).
    pub netns: &'a str,
}

/// One allocated address and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub ip: IpAddr,
    /// Owning container id (empty when the file was torn by a crash).
    pub container_id: String,
    /// Owning interface name.
    pub ifname: String,
    /// The container's netns path at ADD (empty when not recorded).
    pub netns: String,
    /// When the lease file was last written (`None` if unknown).
    pub modified: Option<SystemTime>,
}

/// The lease directory of one network.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    dir: PathBuf,
}

/// Holds the store's lock until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
}

impl LeaseStore {
    /// Opens (creating) the lease directory.
    pub fn open(dir: &Path) -> CniResult<Self> {
        fs::create_dir_all(dir)
            .map_err(|e| io_err(&format!("create lease dir {}", dir.display()), e))?;
        Ok(LeaseStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive lock (blocking until other invocations finish).
    pub fn lock(&self) -> CniResult<LockGuard> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&format!("open {}", path.display()), e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(&format!("lock {}", path.display()), e))?;
        Ok(LockGuard { _lock: lock })
    }

    /// Every lease on disk. Call with the lock held for a consistent view.
    pub fn leases(&self) -> CniResult<Vec<Lease>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| io_err(&format!("list {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&format!("list {}", self.dir.display()), e))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let text = match fs::read_to_string(entry.path()) {
                Ok(t) => t,
                // Released by a concurrent reader of an unlocked view.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&format!("read lease {ip}"), e)),
            };
            let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
            let mut lines = text.lines().map(str::trim);
            let mut next = || lines.next().unwrap_or_default().to_string();
            out.push(Lease {
                ip,
                container_id: next(),
                ifname: next(),
                netns: next(),
                modified,
            });
        }
        out.sort_by_key(|l| (l.ip.is_ipv6(), l.ip));
        Ok(out)
    }

    /// The addresses leased to `(container_id, ifname)`, IPv4 first.
    pub fn find(&self, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
        Ok(self
            .leases()?
            .into_iter()
            .filter(|l| l.container_id == container_id && l.ifname == ifname)
            .map(|l| l.ip)
            .collect())
    }

    /// Leases one address per family present in `pools` (dual-stack), each
    /// from the first pool of its family with room; IPv4 first in the
    /// result. Addresses the owner already holds are kept (a retried ADD).
    /// All or nothing: when one family is exhausted, nothing new stays leased.
    pub fn allocate(&self, pools: &[Pool], owner: &Owner<'_>) -> CniResult<Vec<IpAddr>> {
        if pools.is_empty() {
            return Err(CniError::new(
                Code::TryAgain,
                "no pod CIDR is configured for this node yet (podCIDR / podCIDRs / ranges)",
            ));
        }
        let _g = self.lock()?;
        let leases = self.leases()?;
        let mine: Vec<IpAddr> = leases
            .iter()
            .filter(|l| l.container_id == owner.container_id && l.ifname == owner.ifname)
            .map(|l| l.ip)
            .collect();
        let used: HashSet<IpAddr> = leases.iter().map(|l| l.ip).collect();
        let mut out = Vec::new();
        let mut fresh = Vec::new();
        for v6 in [false, true] {
            let family: Vec<&Pool> = pools.iter().filter(|p| p.is_v6() == v6).collect();
            if family.is_empty() {
                continue;
            }
            if let Some(ip) = mine
                .iter()
                .find(|ip| ip.is_ipv6() == v6 && family.iter().any(|p| p.contains(**ip)))
            {
                out.push(*ip);
                continue;
            }
            match self.allocate_family(&family, &used, owner, v6) {
                Ok(ip) => {
                    fresh.push(ip);
                    out.push(ip);
                }
                Err(e) => {
                    for ip in fresh {
                        let _ = self.remove(ip);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn allocate_family(
        &self,
        family: &[&Pool],
        used: &HashSet<IpAddr>,
        owner: &Owner<'_>,
        v6: bool,
    ) -> CniResult<IpAddr> {
        let hint = self.dir.join(last_reserved_file(v6));
        let last = fs::read_to_string(&hint)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        for pool in family {
            let first = ip_bits(pool.first);
            let size = pool.size();
            // Start right after the last address handed out, when it is in this pool.
            let start = match last {
                Some(ip) if pool.contains(ip) => (ip_bits(ip) - first + 1) % size,
                _ => 0,
            };
            // Only leased addresses are skipped, so a free one turns up
            // within used + 1 steps (an IPv6 /64 is never walked in full).
            let steps = size.min(used.len() as u128 + 1);
            for step in 0..steps {
                let ip = ip_from_bits(first + (start + step) % size, pool.first);
                if used.contains(&ip) {
                    continue;
                }
                match self.write_lease(ip, owner) {
                    Ok(()) => {
                        // Only a hint for the next search: losing it is harmless.
                        let _ = fs::write(&hint, ip.to_string());
                        return Ok(ip);
                    }
                    // A file we could not parse as ours (should not happen under the lock).
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_err(&format!("write lease {ip}"), e)),
                }
            }
        }
        let total: u128 = family.iter().map(|p| p.size()).sum();
        Err(CniError::new(
            Code::RangeExhausted,
            format!(
                "no free address in the pod range ({}): all {total} addresses are leased",
                family
                    .iter()
                    .map(|p| p.cidr())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    fn write_lease(&self, ip: IpAddr, owner: &Owner<'_>) -> std::io::Result<()> {
        let path = self.dir.join(ip.to_string());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let body = format!(
            "{}\n{}\n{}\n",
            owner.container_id, owner.ifname, owner.netns
        );
        if let Err(e) = f.write_all(body.as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(())
    }

    /// Releases every lease of `(container_id, ifname)`; returns the addresses.
    pub fn release(&self, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
        Ok(self
            .reclaim(|l| l.container_id == container_id && l.ifname == ifname)?
            .into_iter()
            .map(|l| l.ip)
            .collect())
    }

    /// Releases every lease whose owner is not in `valid`; returns them.
    pub fn gc(&self, valid: &[Attachment]) -> CniResult<Vec<Lease>> {
        let keep: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        self.reclaim(|l| !keep.contains(&(l.container_id.as_str(), l.ifname.as_str())))
    }

    /// Releases, under the lock, every lease `stale` selects; returns them.
    pub fn reclaim(&self, stale: impl Fn(&Lease) -> bool) -> CniResult<Vec<Lease>> {
        let _g = self.lock()?;
        let mut freed = Vec::new();
        for l in self.leases()? {
            if stale(&l) {
                self.remove(l.ip)?;
                freed.push(l);
            }
        }
        Ok(freed)
    }

    /// How many addresses of `pools` are free (saturating at `u128::MAX`).
    pub fn free_count(&self, pools: &[Pool]) -> CniResult<u128> {
        let leases = self.leases()?;
        Ok(pools
            .iter()
            .map(|p| {
                let used = leases.iter().filter(|l| p.contains(l.ip)).count() as u128;
                p.size().saturating_sub(used)
            })
            .fold(0u128, u128::saturating_add))
    }

    /// Whether every family of `pools` still has a free address (what ADD needs).
    pub fn can_allocate(&self, pools: &[Pool]) -> CniResult<bool> {
        for v6 in [false, true] {
            let family: Vec<Pool> = pools.iter().filter(|p| p.is_v6() == v6).copied().collect();
            if !family.is_empty() && self.free_count(&family)? == 0 {
                return Ok(false);
            }
        }
        Ok(!pools.is_empty())
    }

    fn remove(&self, ip: IpAddr) -> CniResult<()> {
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&format!("remove lease {ip}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::parse("podCIDR", s, None, None).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn owner(id: &str) -> Owner<'_> {
        Owner {
            container_id: id,
            ifname: "eth0",
            netns: "/var/run/netns/x",
        }
    }

    #[test]
    fn dual_stack_leases_one_address_per_family_all_or_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LeaseStore::open(tmp.path()).unwrap();
        let pools = [pool("10.0.0.0/30"), pool("fd00::/126")];
        let a = store.allocate(&pools, &owner("c1")).unwrap();
        assert_eq!(a, vec![ip("10.0.0.1"), ip("fd00::1")]);
        let leases = store.leases().unwrap();
        assert_eq!(leases[1].netns, "/var/run/netns/x");
        assert!(leases[1].modified.is_some());
        assert_eq!(store.find("c1", "eth0").unwrap(), a);
        let b = store.allocate(&pools, &owner("c2")).unwrap();
        assert_eq!(b, vec![ip("10.0.0.2"), ip("fd00::2")]);
        // IPv4 is exhausted: the IPv6 lease it would have taken is not kept.
        let err = store.allocate(&pools, &owner("c3")).unwrap_err();
        assert_eq!(err.code, Code::RangeExhausted);
        assert_eq!(store.leases().unwrap().len(), 4);
        assert!(!store.can_allocate(&pools).unwrap());
        assert_eq!(store.release("c1", "eth0").unwrap(), a);
        assert!(store.can_allocate(&pools).unwrap());
        // A /64 is not walked address by address.
        let big = [pool("fd01::/64")];
        let c = store.allocate(&big, &owner("c4")).unwrap();
        assert_eq!(c, vec![ip("fd01::1")]);
    }

    #[test]
    fn allocates_round_robin_releases_and_exhausts() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LeaseStore::open(tmp.path()).unwrap();
        let pools = [pool("10.0.0.0/30")];
        let a = store.allocate(&pools, &owner("c1")).unwrap();
        assert_eq!(a, vec![ip("10.0.0.1")]);
        assert_eq!(
            store.allocate(&pools, &owner("c1")).unwrap(),
            a,
            "retried ADD keeps its address"
        );
        let b = store.allocate(&pools, &owner("c2")).unwrap();
        assert_eq!(b, vec![ip("10.0.0.2")]);
        let err = store.allocate(&pools, &owner("c3")).unwrap_err();
        assert_eq!(err.code, Code::RangeExhausted);
        assert!(err.msg.contains("10.0.0.0/30"), "{err}");
        assert_eq!(store.release("c1", "eth0").unwrap(), a);
        assert!(store.release("c1", "eth0").unwrap().is_empty());
        assert_eq!(store.free_count(&pools).unwrap(), 1);
        // GC keeps valid owners and reclaims the rest, torn files included.
        fs::write(tmp.path().join("10.0.0.1"), "").unwrap();
        let freed = store
            .gc(&[Attachment {
                container_id: "c2".into(),
                ifname: "eth0".into(),
            }])
            .unwrap();
        assert_eq!(freed.len(), 1);
        assert_eq!(store.leases().unwrap().len(), 1);
    }

    #[test]
    fn no_pool_means_try_again() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LeaseStore::open(tmp.path()).unwrap();
        assert_eq!(
            store.allocate(&[], &owner("c")).unwrap_err().code,
            Code::TryAgain
        );
    }
}
