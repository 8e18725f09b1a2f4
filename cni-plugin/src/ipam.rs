//! Address management: one lease file per address under the network's data
//! dir, every change made under an exclusive `flock` on `<dir>/lock`.
//!
//! A lease file is named by its address and holds `<container id>\n<ifname>\n`.
//! It is created with `O_EXCL` before any interface exists, so a crash after
//! allocation leaves a lease whose owner GC can match against the runtime's
//! valid attachments (a torn, empty file matches none and is reclaimed).
//! `last_reserved_ip` remembers where the previous search ended, so a freed
//! address is not handed to the next pod at once (conntrack, ARP caches).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::config::{Attachment, Pool};
use crate::error::{CniError, CniResult, Code, io_err};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED: &str = "last_reserved_ip";

/// One allocated address and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub ip: Ipv4Addr,
    /// Owning container id (empty when the file was torn by a crash).
    pub container_id: String,
    /// Owning interface name.
    pub ifname: String,
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
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let text = match fs::read_to_string(entry.path()) {
                Ok(t) => t,
                // Released by a concurrent reader of an unlocked view.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&format!("read lease {ip}"), e)),
            };
            let mut lines = text.lines().map(str::trim);
            out.push(Lease {
                ip,
                container_id: lines.next().unwrap_or_default().to_string(),
                ifname: lines.next().unwrap_or_default().to_string(),
            });
        }
        out.sort_by_key(|l| l.ip);
        Ok(out)
    }

    /// The address leased to `(container_id, ifname)`, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> CniResult<Option<Ipv4Addr>> {
        Ok(self
            .leases()?
            .into_iter()
            .find(|l| l.container_id == container_id && l.ifname == ifname)
            .map(|l| l.ip))
    }

    /// Leases an address from the first pool with room. An existing lease of
    /// the same owner is returned as is (a retried ADD).
    pub fn allocate(
        &self,
        pools: &[Pool],
        container_id: &str,
        ifname: &str,
    ) -> CniResult<Ipv4Addr> {
        if pools.is_empty() {
            return Err(CniError::new(
                Code::TryAgain,
                "no pod CIDR is configured for this node yet (podCIDR / ranges)",
            ));
        }
        let _g = self.lock()?;
        let leases = self.leases()?;
        if let Some(l) = leases
            .iter()
            .find(|l| l.container_id == container_id && l.ifname == ifname)
        {
            return Ok(l.ip);
        }
        let used: HashSet<Ipv4Addr> = leases.iter().map(|l| l.ip).collect();
        let last = fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        for pool in pools {
            let first = u32::from(pool.first);
            let size = pool.size();
            // Start right after the last address handed out, when it is in this pool.
            let start = match last {
                Some(ip) if pool.contains(ip) => (u32::from(ip) - first + 1) % size,
                _ => 0,
            };
            for step in 0..size {
                let ip = Ipv4Addr::from(first + (start + step) % size);
                if used.contains(&ip) {
                    continue;
                }
                match self.write_lease(ip, container_id, ifname) {
                    Ok(()) => {
                        // Only a hint for the next search: losing it is harmless.
                        let _ = fs::write(self.dir.join(LAST_RESERVED), ip.to_string());
                        return Ok(ip);
                    }
                    // A file we could not parse as ours (should not happen under the lock).
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_err(&format!("write lease {ip}"), e)),
                }
            }
        }
        let total: u64 = pools.iter().map(|p| u64::from(p.size())).sum();
        Err(CniError::new(
            Code::RangeExhausted,
            format!(
                "no free address in the pod range ({}): all {total} addresses are leased",
                pools
                    .iter()
                    .map(|p| format!("{}/{}", p.network, p.prefix))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    fn write_lease(&self, ip: Ipv4Addr, container_id: &str, ifname: &str) -> std::io::Result<()> {
        let path = self.dir.join(ip.to_string());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(e) = f.write_all(format!("{container_id}\n{ifname}\n").as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(())
    }

    /// Releases every lease of `(container_id, ifname)`; returns the addresses.
    pub fn release(&self, container_id: &str, ifname: &str) -> CniResult<Vec<Ipv4Addr>> {
        let _g = self.lock()?;
        let mut freed = Vec::new();
        for l in self.leases()? {
            if l.container_id == container_id && l.ifname == ifname {
                self.remove(l.ip)?;
                freed.push(l.ip);
            }
        }
        Ok(freed)
    }

    /// Releases every lease whose owner is not in `valid`; returns them.
    pub fn gc(&self, valid: &[Attachment]) -> CniResult<Vec<Lease>> {
        let _g = self.lock()?;
        let keep: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let mut freed = Vec::new();
        for l in self.leases()? {
            if !keep.contains(&(l.container_id.as_str(), l.ifname.as_str())) {
                self.remove(l.ip)?;
                freed.push(l);
            }
        }
        Ok(freed)
    }

    /// How many addresses of `pools` are free.
    pub fn free_count(&self, pools: &[Pool]) -> CniResult<u64> {
        let leases = self.leases()?;
        Ok(pools
            .iter()
            .map(|p| {
                let used = leases.iter().filter(|l| p.contains(l.ip)).count() as u64;
                u64::from(p.size()).saturating_sub(used)
            })
            .sum())
    }

    fn remove(&self, ip: Ipv4Addr) -> CniResult<()> {
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

    #[test]
    fn allocates_round_robin_releases_and_exhausts() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LeaseStore::open(tmp.path()).unwrap();
        let pools = [pool("10.0.0.0/30")];
        let a = store.allocate(&pools, "c1", "eth0").unwrap();
        assert_eq!(a, "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            store.allocate(&pools, "c1", "eth0").unwrap(),
            a,
            "retried ADD keeps its address"
        );
        let b = store.allocate(&pools, "c2", "eth0").unwrap();
        assert_eq!(b, "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        let err = store.allocate(&pools, "c3", "eth0").unwrap_err();
        assert_eq!(err.code, Code::RangeExhausted);
        assert!(err.msg.contains("10.0.0.0/30"), "{err}");
        assert_eq!(store.release("c1", "eth0").unwrap(), vec![a]);
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
            store.allocate(&[], "c", "eth0").unwrap_err().code,
            Code::TryAgain
        );
    }
}
