//! Harness: namespaces with RAII cleanup, and the plugin run as a runtime does.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether privileged tests can run (root with `ip`).
pub fn privileged() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|r| r.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("skipping: needs root");
    }
    root
}

/// A unique short name for this test run.
pub fn unique(tag: &str) -> String {
    format!(
        "cnit{}{tag}{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip` and panics with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace deleted on drop.
#[derive(Debug)]
pub struct Ns {
    /// Name under /var/run/netns.
    pub name: String,
    owned: bool,
}

impl Ns {
    /// Creates a fresh namespace with loopback up.
    pub fn new(tag: &str) -> Ns {
        let name = unique(tag);
        ip(&["netns", "add", &name]);
        let ns = Ns { name, owned: true };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Wraps a namespace someone else owns (not deleted on drop).
    pub fn borrowed(name: &str) -> Ns {
        Ns {
            name: name.to_string(),
            owned: false,
        }
    }

    /// Its path.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Deletes it now.
    pub fn delete(&mut self) {
        if self.owned {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
            self.owned = false;
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Runs `f` on a fresh thread inside namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/var/run/netns").join(ns);
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// What one plugin run returned.
#[derive(Debug, Clone)]
pub struct Run {
    /// Exit success.
    pub ok: bool,
    /// Stdout parsed as JSON (Null when empty).
    pub json: serde_json::Value,
    /// Raw stdout.
    pub stdout: String,
}

impl Run {
    /// The CNI error code, when it failed.
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
}

/// The plugin binary.
pub fn plugin_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cloudsuite-cni")
}

/// Executes `bin` exactly as a runtime does (env vars, config on stdin),
/// from inside the node namespace `node`.
pub fn exec(bin: &str, node: &str, env: &[(&str, &str)], stdin: &str) -> Run {
    let bin = bin.to_string();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stdin = stdin.to_string();
    in_netns(node, move || {
        let mut child = Command::new(&bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Run {
            ok: out.status.success(),
            json: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
            stdout,
        }
    })
}

/// Runs our plugin for one command and attachment.
pub fn cni(node: &str, cmd: &str, cid: &str, netns: Option<&Path>, conf: &str) -> Run {
    let ns = netns.map(|p| p.display().to_string()).unwrap_or_default();
    let mut env = vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    if netns.is_some() {
        env.push(("CNI_NETNS", &ns));
    }
    exec(plugin_bin(), node, &env, conf)
}

/// A network configuration for `cidr` keeping leases in `dir`.
pub fn conf(cidr: &str, dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0", "name": "podnet", "type": "cloudsuite-cni",
        "podCIDR": cidr, "dataDir": dir.display().to_string(),
    })
    .to_string()
}

/// The source address a listener at `to_addr` in `to` sees for a TCP
/// connection from namespace `from` (`None`: no connection).
pub fn seen_source(from: &str, to: &str, to_addr: Ipv4Addr) -> Option<IpAddr> {
    let listener = in_netns(to, move || TcpListener::bind((to_addr, 0)).unwrap());
    listener.set_nonblocking(false).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || listener.accept().ok().map(|(_, peer)| peer.ip()));
    let ok = in_netns(from, move || {
        TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(2))
            .is_ok()
    });
    if !ok {
        // Unblock the accept.
        in_netns(to, move || {
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from((to_addr, port)),
                Duration::from_secs(1),
            );
        });
        let _ = server.join();
        return None;
    }
    server.join().unwrap()
}

/// Every address of an ADD result, in order.
pub fn result_ips(run: &Run) -> Vec<IpAddr> {
    run.json["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips in {}", run.stdout))
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// The IPv4 address of an ADD result.
pub fn result_ip(run: &Run) -> Ipv4Addr {
    let a = run.json["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {}", run.stdout));
    a.split('/').next().unwrap().parse().unwrap()
}

/// Whether TCP from namespace `from` reaches a listener at `to_addr` in `to`.
pub fn tcp_reaches(from: &str, to: &str, to_addr: Ipv4Addr) -> bool {
    tcp_reaches_ip(from, to, to_addr.into())
}

/// [`tcp_reaches`] for either family.
pub fn tcp_reaches_ip(from: &str, to: &str, to_addr: IpAddr) -> bool {
    let listener = in_netns(to, move || TcpListener::bind((to_addr, 0)).unwrap());
    let port = listener.local_addr().unwrap().port();
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
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
    });
    if !ok {
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

/// Names of links in a namespace.
pub fn links(ns: &str) -> Vec<String> {
    let out = ip(&["-n", ns, "-j", "link", "show"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// Link kinds (`veth`, `bridge`, `vxlan`, ...) in a namespace.
pub fn link_kinds(ns: &str) -> Vec<String> {
    let out = ip(&["-n", ns, "-d", "-j", "link", "show"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["linkinfo"]["info_kind"].as_str().map(str::to_string))
        .collect()
}

/// Waits (up to 5 s) until no link of `ns` satisfies `pred`; DEL leaves the
/// final unregister of a downed veth to a detached helper.
pub fn wait_links_gone(ns: &str, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if !links(ns).iter().any(|l| pred(l)) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
