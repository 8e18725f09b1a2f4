//! Network namespaces for tests and the walk: RAII guards, running code
//! inside one, executing a CNI plugin the way a runtime does, and TCP checks.
//! Only namespaces this process creates are ever deleted.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

// The namespace primitives are shared with cni-plugin's tests.
pub use netns_testkit::{CniRun, NETNS_DIR, Netns, in_netns, ip, link_kinds, links};

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
    let cni_path = plugin
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let netns = pod_netns.map(|p| p.display().to_string());
    let mut env = vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", cni_path.as_str()),
    ];
    if let Some(ns) = &netns {
        env.push(("CNI_NETNS", ns.as_str()));
    }
    netns_testkit::exec_cni(plugin, node, &env, conf)
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
    netns_testkit::tcp_round_trip(from, to, to_addr.into())
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
