//! Network namespaces for tests and the walk: RAII guards, running code
//! inside one, executing a CNI plugin the way a runtime does, and TCP checks.
//! Only namespaces this process creates are ever deleted.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where `ip netns` keeps namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A namespace created here, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` (which must be unique to this run) with loopback up.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its handle path (what CNI_NETNS carries).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

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

/// Runs `f` on a fresh thread that has entered namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let path = Path::new(NETNS_DIR).join(ns);
    std::thread::spawn(move || -> anyhow::Result<T> {
        let fd = std::fs::File::open(&path)?;
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// What a CNI plugin run printed.
#[derive(Debug, Clone)]
pub struct CniRun {
    /// Exit success.
    pub ok: bool,
    /// Stdout as JSON (Null when empty or not JSON).
    pub json: serde_json::Value,
}

/// Executes a CNI plugin exactly as a runtime does (environment variables,
/// network configuration on stdin) from inside the node namespace `node`.
pub fn run_cni(plugin: &Path, node: &str, command: &str, container_id: &str, pod_netns: Option<&Path>, conf: &str) -> anyhow::Result<CniRun> {
    let plugin = plugin.to_path_buf();
    let mut env: Vec<(String, String)> = vec![
        ("CNI_COMMAND".into(), command.into()),
        ("CNI_CONTAINERID".into(), container_id.into()),
        ("CNI_IFNAME".into(), "eth0".into()),
        ("CNI_PATH".into(), plugin.parent().map(|p| p.display().to_string()).unwrap_or_default()),
    ];
    if let Some(ns) = pod_netns {
        env.push(("CNI_NETNS".into(), ns.display().to_string()));
    }
    let conf = conf.to_string();
    in_netns(node, move || -> anyhow::Result<CniRun> {
        let mut child = Command::new(&plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("piped stdin").write_all(conf.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok(CniRun {
            ok: out.status.success(),
            json: serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        })
    })?
}

/// The first IPv4 address of an ADD result.
pub fn result_ipv4(run: &CniRun) -> anyhow::Result<Ipv4Addr> {
    let a = run.json["ips"][0]["address"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no address in result {}", run.json))?;
    Ok(a.split('/').next().unwrap_or_default().parse()?)
}

/// Whether a TCP connection from namespace `from` to a listener on `to_addr`
/// in namespace `to` carries a round trip.
pub fn tcp_round_trip(from: &str, to: &str, to_addr: Ipv4Addr) -> anyhow::Result<bool> {
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
        let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(2)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut b = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
    })?;
    if !ok {
        // Unblock the accept so the server thread ends.
        let _ = in_netns(to, move || TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(1)));
    }
    let _ = server.join();
    Ok(ok)
}

/// Kinds of the links in a namespace (`veth`, `bridge`, `vxlan`, ...).
pub fn link_kinds(ns: &str) -> anyhow::Result<Vec<String>> {
    let out = ip(&["-n", ns, "-d", "-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .iter()
                .position(|w| *w == "link/ether" || *w == "link/none" || *w == "link/loopback")
                .and_then(|_| {
                    ["veth", "bridge", "vxlan", "geneve", "ipip", "gre", "gretap", "sit", "wireguard", "dummy"]
                        .iter()
                        .find(|k| words.contains(k))
                        .map(|k| k.to_string())
                })
        })
        .collect())
}
