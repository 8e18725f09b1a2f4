//! Entering a network namespace on the current thread, and leaving it.
//!
//! Namespaces are per thread: the plugin runs a single-threaded runtime, so
//! entering on the main thread, opening a netlink socket there and returning
//! leaves a socket that keeps talking to the namespace it was opened in.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::error::{CniError, CniResult, Code, io_err};

/// An open namespace handle (a file under /var/run/netns or /proc/<pid>/ns).
#[derive(Debug)]
pub struct Netns {
    file: File,
}

impl Netns {
    /// Opens a namespace path; a missing one is "container unknown" (code 3).
    pub fn open(path: &Path) -> CniResult<Self> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CniError::new(
                    Code::UnknownContainer,
                    format!("network namespace {} does not exist", path.display()),
                )
            } else {
                io_err(&format!("open network namespace {}", path.display()), e)
            }
        })?;
        Ok(Netns { file })
    }

    /// The current thread's namespace.
    pub fn current() -> CniResult<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// The raw descriptor (for `IFLA_NET_NS_FD`).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Moves the current thread into this namespace until the guard drops.
    pub fn enter(&self) -> CniResult<NetnsGuard> {
        let back = Netns::current()?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| {
            CniError::new(Code::Io, "enter the container's network namespace")
                .with_details(format!("{e} (is it a network namespace?)"))
        })?;
        Ok(NetnsGuard { back })
    }
}

/// Returns the thread to its previous namespace when dropped.
#[derive(Debug)]
pub struct NetnsGuard {
    back: Netns,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Failing to return would leave every later step in the wrong
        // namespace: there is no safe way to go on.
        if let Err(e) = setns(&self.back.file, CloneFlags::CLONE_NEWNET) {
            panic!("cannot return to the original network namespace: {e}");
        }
    }
}
