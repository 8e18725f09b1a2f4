//! Network namespaces for tests: RAII guards, running code inside one,
//! executing a CNI plugin exactly as a container runtime does, and TCP and
//! link checks. Shared by `cni-plugin`'s integration tests and `suite-tests`
//! (the walk), which is why it depends on no crate of the workspace.
//!
//! Only namespaces this process creates are ever deleted. Errors are
//! `anyhow` errors naming the command and its stderr; tests unwrap them.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where `ip netns` keeps namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Runs `ip` with `args`; an error carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace; one this process created is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates `name` (which must be unique to this run) with loopback up.
    /// If bringing loopback up fails the namespace is deleted again.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            owned: true,
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Refers to a namespace someone else owns: never deleted here.
    pub fn borrowed(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            owned: false,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its handle path (what `CNI_NETNS` carries).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Deletes it now (if this process created it); later calls do nothing.
    pub fn delete(&mut self) {
        if self.owned {
            let _ = ip(&["netns", "del", &self.name]);
            self.owned = false;
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Runs `f` on a fresh thread that has entered namespace `ns` (the calling
/// thread's namespace never changes). A panic in `f` is an error.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = Path::new(NETNS_DIR).join(ns);
    std::thread::spawn(move || -> anyhow::Result<T> {
        let fd = std::fs::File::open(&path)?;
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// What one CNI plugin run printed.
#[derive(Debug, Clone)]
pub struct CniRun {
    /// Exit success.
    pub ok: bool,
    /// Stdout parsed as JSON (`Null` when empty or not JSON).
    pub json: serde_json::Value,
    /// Raw stdout.
    pub stdout: String,
}

impl CniRun {
    /// The CNI error code of a failed run (0 when there is none).
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
}

/// Executes the plugin `bin` exactly as a runtime does: a clean environment
/// (`PATH` plus `env`, the `CNI_*` variables), the network configuration on
/// stdin, from inside the node namespace `node`.
pub fn exec_cni(
    bin: &Path,
    node: &str,
    env: &[(&str, &str)],
    stdin: &str,
) -> anyhow::Result<CniRun> {
    let bin = bin.to_path_buf();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stdin = stdin.to_string();
    in_netns(node, move || -> anyhow::Result<CniRun> {
        let mut child = Command::new(&bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawn {}: {e}", bin.display()))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(CniRun {
            ok: out.status.success(),
            json: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
            stdout,
        })
    })?
}

/// Whether a TCP connection from namespace `from` to a listener on
/// `to_addr` in namespace `to` carries a round trip (2 s timeouts).
pub fn tcp_round_trip(from: &str, to: &str, to_addr: IpAddr) -> anyhow::Result<bool> {
    let listener = in_netns(to, move || TcpListener::bind((to_addr, 0)))??;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(false)?;
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut b = [0u8; 4];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    let ok = in_netns(from, move || {
        let Ok(mut s) =
            TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(2))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut b = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
    })?;
    if !ok {
        // Unblock the accept so the server thread ends.
        let _ = in_netns(to, move || {
            TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(1))
        });
    }
    let _ = server.join();
    Ok(ok)
}

/// `ip -d -j link show` of a namespace, as JSON objects.
fn link_objects(ns: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = ip(&["-n", ns, "-d", "-j", "link", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Names of the links in a namespace.
pub fn links(ns: &str) -> anyhow::Result<Vec<String>> {
    Ok(link_objects(ns)?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect())
}

/// The devices the kernel puts into every new namespace once a tunnel
/// module is loaded (`net.core.fb_tunnels_only_for_init_net=0`): nobody
/// created them, so they say nothing about what a test set up.
const FALLBACK_TUNNELS: &[&str] = &[
    "tunl0",
    "sit0",
    "gre0",
    "gretap0",
    "erspan0",
    "ip_vti0",
    "ip6_vti0",
    "ip6tnl0",
    "ip6gre0",
    "ip6erspan0",
];

/// Kinds of the links in a namespace (`veth`, `bridge`, `vxlan`, ...);
/// links without a kind (loopback, physical) and the kernel's fallback
/// tunnel devices are left out.
pub fn link_kinds(ns: &str) -> anyhow::Result<Vec<String>> {
    Ok(link_objects(ns)?
        .iter()
        .filter(|l| !FALLBACK_TUNNELS.contains(&l["ifname"].as_str().unwrap_or("")))
        .filter_map(|l| l["linkinfo"]["info_kind"].as_str().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn namespace_lifecycle_exec_and_tcp() {
        if !root() {
            eprintln!("SKIP: needs root");
            return;
        }
        let name = format!("nskit{}", std::process::id());
        let mut ns = Netns::create(&name).unwrap();
        assert!(ns.path().exists());
        assert_eq!(links(ns.name()).unwrap(), vec!["lo".to_string()]);
        assert!(link_kinds(ns.name()).unwrap().is_empty());
        // Loopback is up: a round trip inside the namespace works.
        assert!(tcp_round_trip(ns.name(), ns.name(), "127.0.0.1".parse().unwrap()).unwrap());
        // A "plugin" sees the clean environment and the stdin.
        let run = exec_cni(
            Path::new("/bin/sh"),
            ns.name(),
            &[("CNI_COMMAND", "VERSION")],
            "",
        )
        .unwrap();
        assert!(run.ok);
        let borrowed = Netns::borrowed(&name);
        drop(borrowed);
        assert!(
            ns.path().exists(),
            "a borrowed handle deleted the namespace"
        );
        ns.delete();
        assert!(!Path::new(NETNS_DIR).join(&name).exists());
        assert!(in_netns(&name, || ()).is_err());
    }
}
