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
        let ns = Netns {
            name: name.to_string(),
        };
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
pub fn run_cni(
    plugin: &Path,
    node: &str,
    command: &str,
    container_id: &str,
    pod_netns: Option<&Path>,
    conf: &str,
) -> anyhow::Result<CniRun> {
    let plugin = plugin.to_path_buf();
    let mut env: Vec<(String, String)> = vec![
        ("CNI_COMMAND".into(), command.into()),
        ("CNI_CONTAINERID".into(), container_id.into()),
        ("CNI_IFNAME".into(), "eth0".into()),
        (
            "CNI_PATH".into(),
            plugin
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
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
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(conf.as_bytes())?;
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
                    [
                        "veth",
                        "bridge",
                        "vxlan",
                        "geneve",
                        "ipip",
                        "gre",
                        "gretap",
                        "sit",
                        "wireguard",
                        "dummy",
                    ]
                    .iter()
                    .find(|k| words.contains(k))
                    .map(|k| k.to_string())
                })
        })
        .collect())
}

/// A client namespace wired to a VPC router namespace by a veth pair, standing
/// in for "the internet": it reaches the EIPs the router answers for.
#[derive(Debug)]
pub struct Client {
    ns: Netns,
    /// The client's address.
    pub addr: Ipv4Addr,
}

impl Client {
    /// Creates `name` and links it to `router_ns` over `100.64.<k>.0/30`
    /// (router side `.1`, client `.2`), with the client's default route via the router.
    pub fn attach(name: &str, router_ns: &str, k: u8) -> anyhow::Result<Client> {
        let ns = Netns::create(name)?;
        let (outer, inner) = (
            format!("cl{k}-{}", std::process::id() % 100_000),
            format!("c{k}-{}", std::process::id() % 100_000),
        );
        // Created inside the router namespace, peer moved straight into the client's.
        ip(&[
            "-n", router_ns, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            "netns", name,
        ])?;
        ip(&[
            "-n",
            router_ns,
            "addr",
            "add",
            &format!("100.64.{k}.1/30"),
            "dev",
            &outer,
        ])?;
        ip(&["-n", router_ns, "link", "set", &outer, "up"])?;
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("100.64.{k}.2/30"),
            "dev",
            &inner,
        ])?;
        ip(&["-n", name, "link", "set", &inner, "up"])?;
        ip(&[
            "-n",
            name,
            "route",
            "add",
            "default",
            "via",
            &format!("100.64.{k}.1"),
        ])?;
        Ok(Client {
            ns,
            addr: Ipv4Addr::new(100, 64, k, 2),
        })
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        self.ns.name()
    }
}

/// A tiny HTTP server inside a namespace answering every request with
/// `body`; stops when dropped.
#[derive(Debug)]
pub struct HttpServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    addr: SocketAddr,
    ns: String,
}

impl HttpServer {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &str, addr: SocketAddr, body: &str) -> anyhow::Result<HttpServer> {
        let listener = in_netns(ns, move || TcpListener::bind(addr))??;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, body) = (stop.clone(), body.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                let body = body.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    // One request per connection: read the head, answer, close.
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&seen);
                    let xff = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("x-forwarded-for:")
                                .map(|v| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    let text = format!("{body} xff={xff}\n");
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                });
            }
        });
        Ok(HttpServer {
            stop,
            addr,
            ns: ns.to_string(),
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so the thread sees the flag.
        let addr = self.addr;
        let _ = in_netns(&self.ns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        });
    }
}

/// An HTTP/1.1 GET from inside `ns` to `addr` with a Host header; returns the body.
pub fn http_get(ns: &str, addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<String> {
    let (host, path) = (host.to_string(), path.to_string());
    in_netns(ns, move || -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        anyhow::ensure!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "GET {host}{path} via {addr}: {}",
            head.lines().next().unwrap_or("")
        );
        Ok(body.to_string())
    })?
}
