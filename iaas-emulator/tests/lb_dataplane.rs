//! The LB proxies driven directly through `ProxyLbDriver` (no HTTP API):
//! real sockets on 127.88.x.y addresses, real backends, real clients.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iaas_client::model::{
    LoadBalancer, LoadBalancerListener, LoadBalancerPolicy, LoadBalancerPolicyRule,
};
use iaas_emulator::dataplane::lb::{ProxyLbDriver, ProxyOptions};
use iaas_emulator::dataplane::{LbDriver, LbSpec, ResolvedBackend};

const TIMEOUT: Duration = Duration::from_secs(3);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn driver() -> ProxyLbDriver {
    ProxyLbDriver::new(ProxyOptions {
        connect_timeout: Duration::from_secs(1),
        udp_idle_timeout: Duration::from_secs(2),
        ..ProxyOptions::default()
    })
    .unwrap()
}

fn listener(id: &str, port: u16, proto: &str, mode: &str) -> LoadBalancerListener {
    LoadBalancerListener {
        loadbalancer_listener_id: id.into(),
        listener_port: port,
        listener_protocol: proto.into(),
        backend_protocol: if proto == "https" { "http" } else { proto }.into(),
        balance_mode: mode.into(),
        ..Default::default()
    }
}

fn backend(id: &str, addr: SocketAddr, policy: &str) -> ResolvedBackend {
    ResolvedBackend {
        backend_id: id.into(),
        address: addr.ip().to_string(),
        port: addr.port(),
        weight: 1,
        policy_id: policy.into(),
    }
}

fn spec(
    lb_id: &str,
    bind: &str,
    listeners: Vec<LoadBalancerListener>,
    backends: Vec<(&str, Vec<ResolvedBackend>)>,
) -> LbSpec {
    LbSpec {
        lb: LoadBalancer {
            loadbalancer_id: lb_id.into(),
            status: "active".into(),
            listeners,
            ..Default::default()
        },
        bind_addresses: vec![bind.into()],
        backends: backends
            .into_iter()
            .map(|(l, b)| (l.to_string(), b))
            .collect(),
        policies: Vec::new(),
        certificates: Vec::new(),
        source_cidrs: Vec::new(),
        router_id: String::new(),
    }
}

/// A TCP backend that greets with its name and then echoes lines.
struct TcpBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpBackend {
    fn start(addr: SocketAddr, name: &str) -> Self {
        Self::from_listener(TcpListener::bind(addr).unwrap(), name)
    }

    fn from_listener(l: TcpListener, name: &str) -> Self {
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, name) = (stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || {
                            c.set_nonblocking(false).unwrap();
                            let _ = writeln!(c, "{name}");
                            let mut r = BufReader::new(c.try_clone().unwrap());
                            let mut line = String::new();
                            while r.read_line(&mut line).unwrap_or(0) > 0 {
                                let _ = write!(c, "{name}:{line}");
                                line.clear();
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TcpBackend {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects through the LB and returns the greeting backend's name.
fn hello(lb: SocketAddr) -> Option<(String, BufReader<TcpStream>)> {
    let c = TcpStream::connect_timeout(&lb, TIMEOUT).ok()?;
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(n) if n > 0 => Some((line.trim().to_string(), r)),
        _ => None,
    }
}

fn name_of(lb: SocketAddr) -> Option<String> {
    hello(lb).map(|(n, _)| n)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn health_of(d: &ProxyLbDriver, lb: &str, backend: &str) -> String {
    d.backend_health(lb)
        .into_iter()
        .find(|(b, _)| b == backend)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

#[test]
fn tcp_balance_modes() {
    let d = driver();
    let addrs = [
        sa("127.88.1.11:9000"),
        sa("127.88.1.12:9000"),
        sa("127.88.1.13:9000"),
    ];
    let _servers: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| TcpBackend::start(*a, &format!("b{i}")))
        .collect();
    let bes: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| backend(&format!("lbb-{i}"), *a, ""))
        .collect();
    let lb = sa("127.88.1.1:8000");

    // roundrobin: consecutive connections visit every backend.
    d.apply(&spec(
        "lb-rr",
        "127.88.1.1",
        vec![listener("lbl-1", 8000, "tcp", "roundrobin")],
        vec![("lbl-1", bes.clone())],
    ))
    .unwrap();
    let seen: HashSet<String> = (0..6).filter_map(|_| name_of(lb)).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    d.delete("lb-rr").unwrap();
    d.delete("lb-rr").unwrap();
    assert!(name_of(lb).is_none(), "deleted LB still answers");

    // source: one client IP always lands on the same backend.
    d.apply(&spec(
        "lb-src",
        "127.88.1.1",
        vec![listener("lbl-1", 8000, "tcp", "source")],
        vec![("lbl-1", bes.clone())],
    ))
    .unwrap();
    let first = name_of(lb).unwrap();
    for _ in 0..8 {
        assert_eq!(name_of(lb).unwrap(), first);
    }
    d.delete("lb-src").unwrap();

    // leastconn: with one connection held open, the next goes elsewhere.
    d.apply(&spec(
        "lb-lc",
        "127.88.1.1",
        vec![listener("lbl-1", 8000, "tcp", "leastconn")],
        vec![("lbl-1", bes.clone())],
    ))
    .unwrap();
    // With connections held open on two backends, the next goes to the idle third.
    let (first, _c1) = hello(lb).unwrap();
    let (second, _c2) = hello(lb).unwrap();
    assert_ne!(first, second);
    let third = name_of(lb).unwrap();
    assert!(
        third != first && third != second,
        "{first} {second} {third}"
    );
}

#[test]
fn health_checks_take_a_backend_out_and_back() {
    let d = driver();
    let (a, b) = (sa("127.88.2.11:9000"), sa("127.88.2.12:9000"));
    let _sa = TcpBackend::start(a, "a");
    let sb = TcpBackend::start(b, "b");
    let mut l = listener("lbl-1", 8000, "tcp", "roundrobin");
    l.healthy_check_method = "tcp".into();
    l.healthy_check_option = "100ms|200ms|2|2".into();
    let s = spec(
        "lb-hc",
        "127.88.2.1",
        vec![l],
        vec![(
            "lbl-1",
            vec![backend("lbb-a", a, ""), backend("lbb-b", b, "")],
        )],
    );
    d.apply(&s).unwrap();
    let lb = sa("127.88.2.1:8000");
    assert_eq!(health_of(&d, "lb-hc", "lbb-b"), "up");
    drop(sb);
    wait_until("b down", || health_of(&d, "lb-hc", "lbb-b") == "down");
    for _ in 0..6 {
        assert_eq!(name_of(lb).unwrap(), "a");
    }
    // Re-applying the same spec keeps the verdict.
    d.apply(&s).unwrap();
    assert_eq!(health_of(&d, "lb-hc", "lbb-b"), "down");
    let _sb = TcpBackend::start(b, "b");
    wait_until("b up", || health_of(&d, "lb-hc", "lbb-b") == "up");
    let seen: HashSet<String> = (0..4).filter_map(|_| name_of(lb)).collect();
    assert!(seen.contains("b"), "{seen:?}");
}

#[test]
fn no_backend_up_closes_the_client() {
    let d = driver();
    let mut l = listener("lbl-1", 8000, "tcp", "roundrobin");
    l.healthy_check_option = "100ms|100ms|1|1".into();
    d.apply(&spec(
        "lb-none",
        "127.88.3.1",
        vec![l],
        vec![("lbl-1", vec![backend("lbb-x", sa("127.88.3.11:9000"), "")])],
    ))
    .unwrap();
    assert!(name_of(sa("127.88.3.1:8000")).is_none());
    wait_until("x down", || health_of(&d, "lb-none", "lbb-x") == "down");
    assert!(name_of(sa("127.88.3.1:8000")).is_none());
}

fn connect_from(local: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(sa(&format!("{local}:0")))?;
        s.connect(to).await?.into_std()
    })
}

#[test]
fn source_cidrs_refuse_other_clients() {
    let d = driver();
    let be = sa("127.88.4.11:9000");
    let _s = TcpBackend::start(be, "ok");
    let mut s = spec(
        "lb-sg",
        "127.88.4.1",
        vec![listener("lbl-1", 8000, "tcp", "")],
        vec![("lbl-1", vec![backend("lbb-1", be, "")])],
    );
    s.source_cidrs = vec!["127.88.4.100/32".into()];
    d.apply(&s).unwrap();
    let lb = sa("127.88.4.1:8000");
    let read_greeting = |c: TcpStream| {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut line = String::new();
        let _ = BufReader::new(c).read_line(&mut line);
        line.trim().to_string()
    };
    assert_eq!(
        read_greeting(connect_from("127.88.4.100", lb).unwrap()),
        "ok"
    );
    // Outside the range: accepted by the kernel, then closed with no data.
    if let Ok(c) = connect_from("127.88.4.101", lb) {
        assert_eq!(read_greeting(c), "");
    }
}

#[test]
fn apply_keeps_established_connections() {
    let d = driver();
    let (a, b) = (sa("127.88.5.11:9000"), sa("127.88.5.12:9000"));
    let (_sa, _sb) = (TcpBackend::start(a, "a"), TcpBackend::start(b, "b"));
    let lb = sa("127.88.5.1:8000");
    let lb2 = sa("127.88.5.1:8001");
    let with = |bes: Vec<ResolvedBackend>, second: bool| {
        let mut ls = vec![listener("lbl-1", 8000, "tcp", "")];
        let mut bs = vec![("lbl-1", bes.clone())];
        if second {
            ls.push(listener("lbl-2", 8001, "tcp", ""));
            bs.push(("lbl-2", bes));
        }
        spec("lb-upd", "127.88.5.1", ls, bs)
    };
    d.apply(&with(vec![backend("lbb-a", a, "")], true)).unwrap();
    let (name, mut conn) = hello(lb).unwrap();
    assert_eq!(name, "a");
    let (_, mut conn2) = hello(lb2).unwrap();
    let echo = |c: &mut BufReader<TcpStream>, msg: &str| {
        writeln!(c.get_mut(), "{msg}").unwrap();
        let mut line = String::new();
        c.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(echo(&mut conn, "one"), "a:one");

    // Backends swapped and listener 2 removed.
    d.apply(&with(vec![backend("lbb-b", b, "")], false))
        .unwrap();
    assert_eq!(echo(&mut conn, "two"), "a:two");
    assert_eq!(name_of(lb).unwrap(), "b");
    assert!(TcpStream::connect_timeout(&lb2, TIMEOUT).is_err());
    // The removed listener's established connection may finish.
    assert_eq!(echo(&mut conn2, "still"), "a:still");
    assert_eq!(
        d.listening("lb-upd"),
        vec![(lb, false)],
        "only listener 1 remains bound"
    );

    // Delete closes established connections too.
    d.delete("lb-upd").unwrap();
    writeln!(conn.get_mut(), "three").ok();
    let mut line = String::new();
    let n = conn.read_line(&mut line).unwrap_or(0);
    assert_eq!(n, 0, "connection survived delete: {line}");
}

#[test]
fn bad_specs_name_the_field_and_change_nothing() {
    let d = driver();
    let be = sa("127.88.6.11:9000");
    let _s = TcpBackend::start(be, "a");
    let good = spec(
        "lb-bad",
        "127.88.6.1",
        vec![listener("lbl-1", 8000, "tcp", "")],
        vec![("lbl-1", vec![backend("lbb-1", be, "")])],
    );
    d.apply(&good).unwrap();
    let mut bad = good.clone();
    bad.lb.listeners[0].balance_mode = "random".into();
    let e = d.apply(&bad).unwrap_err();
    assert!(e.0.contains("balance_mode"), "{e}");
    let mut bad = good.clone();
    bad.lb.listeners.push(listener("lbl-2", 8000, "tcp", ""));
    assert!(d.apply(&bad).unwrap_err().0.contains("both use"));
    let mut bad = good.clone();
    bad.lb.listeners.push(listener("lbl-3", 8443, "https", ""));
    assert!(
        d.apply(&bad)
            .unwrap_err()
            .0
            .contains("server_certificate_id")
    );
    assert_eq!(name_of(sa("127.88.6.1:8000")).unwrap(), "a");
    // Port taken by someone else: the error says which address.
    let _squatter = TcpListener::bind("127.88.6.1:8002").unwrap();
    let mut bad = good.clone();
    bad.lb.listeners.push(listener("lbl-4", 8002, "tcp", ""));
    let e = d.apply(&bad).unwrap_err();
    assert!(e.0.contains("127.88.6.1:8002"), "{e}");
    assert_eq!(d.listening("lb-bad"), vec![(sa("127.88.6.1:8000"), false)]);
}

#[test]
fn udp_echo_through_the_proxy() {
    let d = driver();
    let be = sa("127.88.7.11:9000");
    let server = UdpSocket::bind(be).unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !s2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = server.recv_from(&mut buf) {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = server.send_to(&reply, from);
            }
        }
    });
    d.apply(&spec(
        "lb-udp",
        "127.88.7.1",
        vec![listener("lbl-1", 5353, "udp", "")],
        vec![("lbl-1", vec![backend("lbb-1", be, "")])],
    ))
    .unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    for msg in ["ping", "pong"] {
        c.send_to(msg.as_bytes(), "127.88.7.1:5353").unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(from, sa("127.88.7.1:5353"));
        assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
    }
    assert_eq!(health_of(&d, "lb-udp", "lbb-1"), "up");
    d.delete("lb-udp").unwrap();
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
}

/// An HTTP/1.1 backend (keep-alive) that answers with its name and what it saw.
fn http_backend(addr: SocketAddr, name: &str) -> TcpBackend {
    let l = TcpListener::bind(addr).unwrap();
    l.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (s, name) = (stop.clone(), name.to_string());
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let Ok((c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let name = name.clone();
            std::thread::spawn(move || {
                c.set_nonblocking(false).unwrap();
                let mut w = c.try_clone().unwrap();
                let mut r = BufReader::new(c);
                loop {
                    let mut request_line = String::new();
                    if r.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    let (mut host, mut xff, mut proto, mut close) =
                        (String::new(), String::new(), String::new(), false);
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap_or((h, ""));
                        let v = v.trim().to_string();
                        match k.to_ascii_lowercase().as_str() {
                            "host" => host = v,
                            "x-forwarded-for" => xff = v,
                            "x-forwarded-proto" => proto = v,
                            "connection" => close = v.eq_ignore_ascii_case("close"),
                            _ => {}
                        }
                    }
                    let body = format!(
                        "name={name}\nhost={host}\npath={path}\nxff={xff}\nproto={proto}\n"
                    );
                    let _ = write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if close {
                        return;
                    }
                }
            });
        }
    });
    TcpBackend {
        stop,
        thread: Some(thread),
    }
}

/// Status and body of `GET path` with `Host: host` over any stream.
fn get_over(mut s: impl Read + Write, host: &str, path: &str) -> (u16, String) {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // TLS peers may end without close_notify; what arrived is enough.
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(lb: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let s = TcpStream::connect_timeout(&lb, TIMEOUT).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    get_over(s, host, path)
}

fn field(body: &str, key: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

fn policy(id: &str, operator: &str, rules: &[(&str, &str)]) -> LoadBalancerPolicy {
    LoadBalancerPolicy {
        loadbalancer_policy_id: id.into(),
        operator: operator.into(),
        rules: rules
            .iter()
            .map(|(t, v)| LoadBalancerPolicyRule {
                rule_type: (*t).into(),
                val: (*v).into(),
                loadbalancer_policy_id: id.into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn http_routing_matrix() {
    let d = driver();
    let routes = [
        ("lbp-exact", "or", vec![("domain", "a.example.com")]),
        ("lbp-wild", "or", vec![("domain", "*.example.com")]),
        (
            "lbp-a-api",
            "and",
            vec![("domain", "a.example.com"), ("url", "/api")],
        ),
        ("lbp-static", "or", vec![("url", "/static")]),
        ("lbp-static-img", "or", vec![("url", "/static/img")]),
        ("lbp-exact-path", "or", vec![("url", "=/exact")]),
        ("lbp-elem", "or", vec![("url", "~/elem")]),
    ];
    let mut servers = Vec::new();
    let mut bes = Vec::new();
    let mut policies = Vec::new();
    for (i, (id, op, rules)) in routes.iter().enumerate() {
        let addr = sa(&format!("127.88.8.{}:9000", 10 + i));
        servers.push(http_backend(addr, id.trim_start_matches("lbp-")));
        bes.push(backend(&format!("lbb-{i}"), addr, id));
        policies.push(policy(id, op, rules));
    }
    let default_addr = sa("127.88.8.99:9000");
    servers.push(http_backend(default_addr, "default"));
    let mut with_default = bes.clone();
    with_default.push(backend("lbb-default", default_addr, ""));

    let mut l1 = listener("lbl-1", 8080, "http", "");
    l1.forwardfor = 1;
    let l2 = listener("lbl-2", 8081, "http", "");
    let mut s = spec(
        "lb-http",
        "127.88.8.1",
        vec![l1, l2],
        vec![("lbl-1", with_default), ("lbl-2", bes)],
    );
    s.policies = policies;
    d.apply(&s).unwrap();

    let lb = sa("127.88.8.1:8080");
    let cases = [
        ("a.example.com", "/", "exact"),
        ("A.Example.com:8080", "/x", "exact"),
        ("a.example.com", "/api/v1", "a-api"),
        ("b.example.com", "/", "wild"),
        ("b.example.com", "/static/x", "wild"),
        ("x.y.example.com", "/", "default"),
        ("example.com", "/", "default"),
        ("other.test", "/static/x", "static"),
        ("other.test", "/static/img/1.png", "static-img"),
        ("other.test", "/exact", "exact-path"),
        ("other.test", "/exact/", "default"),
        ("other.test", "/elem", "elem"),
        ("other.test", "/elem/x", "elem"),
        ("other.test", "/element", "default"),
        ("other.test", "/", "default"),
    ];
    for (host, path, want) in cases {
        let (status, body) = get(lb, host, path);
        assert_eq!(status, 200, "{host}{path}: {body}");
        assert_eq!(field(&body, "name"), want, "{host}{path}");
        assert_eq!(field(&body, "path"), path);
        assert_eq!(field(&body, "host"), host, "backend sees the client's Host");
        assert_eq!(field(&body, "xff"), "127.0.0.1");
        assert_eq!(field(&body, "proto"), "http");
    }
    // No default backend on listener 2: unmatched requests get 503, and no
    // X-Forwarded-For without forwardfor.
    let lb2 = sa("127.88.8.1:8081");
    assert_eq!(get(lb2, "other.test", "/").0, 503);
    let (status, body) = get(lb2, "b.example.com", "/");
    assert_eq!((status, field(&body, "name").as_str()), (200, "wild"));
    assert_eq!(field(&body, "xff"), "");
    drop(servers);
}

#[test]
fn https_terminates_tls_with_sni() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (a_pem, a_key) = leaf(&["a.example.com"]);
    let (w_pem, w_key) = leaf(&["*.wild.test"]);

    let be = sa("127.88.9.11:9000");
    let _server = http_backend(be, "tls-backend");
    let mut l = listener("lbl-1", 8443, "https", "");
    l.forwardfor = 1;
    l.server_certificate_id = vec!["sc-a,sc-w".into()];
    let mut s = spec(
        "lb-tls",
        "127.88.9.1",
        vec![l],
        vec![("lbl-1", vec![backend("lbb-1", be, "")])],
    );
    s.certificates = vec![("sc-a".into(), a_pem, a_key), ("sc-w".into(), w_pem, w_key)];
    d_apply_https(&s, ca_cert.der().clone());
}

fn d_apply_https(s: &LbSpec, ca: rustls::pki_types::CertificateDer<'static>) {
    let d = driver();
    d.apply(s).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let cfg = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let lb = sa("127.88.9.1:8443");
    let https_get = |sni: &str| -> Result<(u16, String), String> {
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
        let mut tcp = TcpStream::connect_timeout(&lb, TIMEOUT).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
        }
        Ok(get_over(rustls::StreamOwned::new(conn, tcp), sni, "/"))
    };
    // Each name gets a certificate the client verifies for that name.
    for sni in ["a.example.com", "x.wild.test"] {
        let (status, body) = https_get(sni).unwrap();
        assert_eq!(status, 200, "{sni}: {body}");
        assert_eq!(field(&body, "name"), "tls-backend");
        assert_eq!(field(&body, "host"), sni);
        assert_eq!(field(&body, "proto"), "https");
        assert_eq!(field(&body, "xff"), "127.0.0.1");
    }
    // An unknown name gets the default (a.example.com): verification fails.
    let e = https_get("other.test").unwrap_err();
    assert!(
        e.contains("certificate") || e.contains("Certificate"),
        "{e}"
    );
    // Two labels under the wildcard do not match it either.
    assert!(https_get("a.b.wild.test").is_err());
}

/// A network namespace for one test, removed on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn create(name: &str) -> Self {
        let ns = TestNetns {
            name: name.to_string(),
        };
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name]).unwrap();
        for args in [
            vec!["link", "set", "lo", "up"],
            // An address that exists only in this namespace (on its own loopback).
            vec!["addr", "add", "10.250.77.1/32", "dev", "lo"],
        ] {
            let mut full = vec!["-n", name];
            full.extend(args);
            run("ip", &full).unwrap();
        }
        ns
    }

    fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a thread inside the namespace.
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[test]
fn listeners_and_backends_live_in_the_given_namespace() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP listeners_and_backends_live_in_the_given_namespace: needs root");
        return;
    }
    let ns = TestNetns::create(&format!("lbt-{}", std::process::id()));
    let be = sa("10.250.77.1:9000");
    let lb = sa("10.250.77.1:8000");
    // The backend exists only inside the namespace.
    let listener = ns.run_in(move || TcpListener::bind(be).unwrap());
    let _server = TcpBackend::from_listener(listener, "in-ns");
    let d = ProxyLbDriver::new(ProxyOptions {
        netns: Some(ns.path()),
        ..ProxyOptions::default()
    })
    .unwrap();
    d.apply(&spec(
        "lb-ns",
        "10.250.77.1",
        vec![listener_with_hc("lbl-1", 8000)],
        vec![("lbl-1", vec![backend("lbb-1", be, "")])],
    ))
    .unwrap();
    assert_eq!(ns.run_in(move || name_of(lb)), Some("in-ns".to_string()));
    assert_eq!(health_of(&d, "lb-ns", "lbb-1"), "up");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        health_of(&d, "lb-ns", "lbb-1"),
        "up",
        "probes run in the namespace"
    );
    // The address does not exist in the root namespace, so the bind above
    // happened in the test's namespace (and a root-namespace driver fails).
    assert!(TcpListener::bind("10.250.77.1:0").is_err());
    let root = driver();
    let e = root
        .apply(&spec(
            "lb-ns",
            "10.250.77.1",
            vec![listener_with_hc("lbl-1", 8000)],
            vec![],
        ))
        .unwrap_err();
    assert!(e.0.contains("10.250.77.1:8000"), "{e}");
    d.delete("lb-ns").unwrap();
    assert_eq!(ns.run_in(move || name_of(lb)), None);
}

fn listener_with_hc(id: &str, port: u16) -> LoadBalancerListener {
    let mut l = listener(id, port, "tcp", "");
    l.healthy_check_option = "100ms|100ms|1|1".into();
    l
}

#[test]
fn unassigned_addresses_are_skipped_when_asked() {
    let be = sa("127.88.10.11:9000");
    let _s = TcpBackend::start(be, "a");
    let mut s = spec(
        "lb-skip",
        "127.88.10.1",
        vec![listener("lbl-1", 8000, "tcp", "")],
        vec![("lbl-1", vec![backend("lbb-1", be, "")])],
    );
    // 192.0.2.0/24 is TEST-NET-1: never assigned here; only bound, never dialled.
    s.bind_addresses.push("192.0.2.55".into());
    let strict = driver();
    let e = strict.apply(&s).unwrap_err();
    assert!(e.0.contains("192.0.2.55:8000"), "{e}");
    assert!(strict.listening("lb-skip").is_empty());
    drop(strict);
    let lenient = ProxyLbDriver::new(ProxyOptions {
        skip_unassigned_addresses: true,
        ..ProxyOptions::default()
    })
    .unwrap();
    lenient.apply(&s).unwrap();
    assert_eq!(
        lenient.listening("lb-skip"),
        vec![(sa("127.88.10.1:8000"), false)]
    );
    assert_eq!(name_of(sa("127.88.10.1:8000")).unwrap(), "a");
}

#[test]
fn http_health_checks_probe_over_http() {
    let d = driver();
    let (good, bad) = (sa("127.88.11.11:9000"), sa("127.88.11.12:9000"));
    let _g = http_backend(good, "good");
    // Accepts TCP but does not speak HTTP: a tcp check passes, an http one fails.
    let _b = TcpBackend::start(bad, "not-http");
    let mut l = listener("lbl-1", 8080, "http", "roundrobin");
    l.healthy_check_method = "http|/healthz".into();
    l.healthy_check_option = "100ms|300ms|1|1".into();
    d.apply(&spec(
        "lb-hhc",
        "127.88.11.1",
        vec![l],
        vec![(
            "lbl-1",
            vec![backend("lbb-good", good, ""), backend("lbb-bad", bad, "")],
        )],
    ))
    .unwrap();
    wait_until("bad down", || health_of(&d, "lb-hhc", "lbb-bad") == "down");
    assert_eq!(health_of(&d, "lb-hhc", "lbb-good"), "up");
    for _ in 0..4 {
        let (status, body) = get(sa("127.88.11.1:8080"), "svc.test", "/");
        assert_eq!((status, field(&body, "name").as_str()), (200, "good"));
    }
}
