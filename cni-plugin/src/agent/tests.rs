//! The agent's decisions as pure functions, and its Kubernetes I/O against
//! a scripted mock API server.

use std::os::unix::fs::PermissionsExt;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::config::NetConf;

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).unwrap()
}

fn node(spec: Value, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "resourceVersion": rv},
        "spec": spec,
    })
}

fn node_obj(spec: Value) -> Node {
    serde_json::from_value(node(spec, "1")).unwrap()
}

fn cfg(dir: &Path) -> AgentConfig {
    AgentConfig {
        node_name: "n1".into(),
        network_name: "cloudsuite".into(),
        conf_dir: dir.join("net.d"),
        bin_dir: dir.join("bin"),
        plugin_source: dir.join("src-plugin"),
        data_dir: dir.join("data"),
        mtu: None,
        big_tcp: true,
        ip_masq: false,
        non_masquerade: Vec::new(),
        resync: Duration::from_secs(60),
        gc_grace: Duration::from_secs(120),
    }
}

#[test]
fn pod_cidr_selection_prefers_the_list_and_orders_families() {
    assert_eq!(select_pod_cidrs(&node_obj(json!({}))).unwrap(), None);
    assert_eq!(
        select_pod_cidrs(&node_obj(json!({"podCIDR": "10.244.1.0/24"}))).unwrap(),
        Some(vec![cidr("10.244.1.0/24")])
    );
    // Dual-stack: IPv4 first whatever the order on the Node.
    assert_eq!(
        select_pod_cidrs(&node_obj(json!({
            "podCIDR": "fd00:1::/64",
            "podCIDRs": ["fd00:1::/64", "10.244.1.0/24"],
        })))
        .unwrap(),
        Some(vec![cidr("10.244.1.0/24"), cidr("fd00:1::/64")])
    );
    for (spec, field) in [
        (
            json!({"podCIDRs": ["10.244.1.0/24", "10.245.1.0/24"]}),
            "spec.podCIDRs[1]",
        ),
        (json!({"podCIDRs": ["10.244.1.1/24"]}), "spec.podCIDRs[0]"),
        (json!({"podCIDR": "10.244.1.0/31"}), "spec.podCIDR"),
        (json!({"podCIDR": "banana"}), "spec.podCIDR"),
    ] {
        let e = select_pod_cidrs(&node_obj(spec)).unwrap_err().to_string();
        assert!(
            e.contains(field) && e.contains("n1"),
            "{e} should name {field}"
        );
    }
}

#[test]
fn the_conflist_is_what_the_plugin_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path());
    let cidrs = [cidr("10.244.1.0/24"), cidr("fd00:1::/64")];
    let text = render_conflist(&c, &cidrs, 1450);
    assert!(text.ends_with('\n'));
    assert_eq!(text, render_conflist(&c, &cidrs, 1450), "stable bytes");
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["cniVersion"], CNI_VERSION);
    assert_eq!(list["name"], "cloudsuite");
    // What the runtime hands the plugin: the entry plus name and version.
    let mut entry = list["plugins"][0].clone();
    assert_eq!(entry["type"], PLUGIN_TYPE);
    entry["name"] = list["name"].clone();
    entry["cniVersion"] = list["cniVersion"].clone();
    let conf = NetConf::parse(entry.to_string().as_bytes()).unwrap();
    assert_eq!(conf.pools.len(), 2);
    assert_eq!(conf.mtu, Some(1450));
    assert!(conf.big_tcp, "BIG TCP from the uplink unless turned off");
    assert!(entry.get("bigTCP").is_none(), "the default is not written");
    assert_eq!(conf.lease_dir, c.lease_dir());
    assert!(!conf.ip_masq);
    assert!(entry.get("nonMasqueradeCIDRs").is_none());

    c.ip_masq = true;
    c.non_masquerade = vec![cidr("172.31.0.0/16"), cidr("10.244.0.0/16")];
    let masq: Value = serde_json::from_str(&render_conflist(&c, &cidrs, 1450)).unwrap();
    assert_eq!(masq["plugins"][0]["ipMasq"], true);
    assert_eq!(
        masq["plugins"][0]["nonMasqueradeCIDRs"],
        json!(["172.31.0.0/16", "10.244.0.0/16"])
    );
    assert_ne!(
        render_conflist(&c, &cidrs, 1450),
        text,
        "a config change is a content change"
    );
    c.big_tcp = false;
    let off: Value = serde_json::from_str(&render_conflist(&c, &cidrs, 1450)).unwrap();
    assert_eq!(off["plugins"][0]["bigTCP"], false);
}

#[test]
fn writes_happen_only_on_change_and_atomically() {
    assert!(needs_write(None, b"a"));
    assert!(needs_write(Some(b"a"), b"b"));
    assert!(!needs_write(Some(b"a"), b"a"));

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("d").join("x.conflist");
    assert!(write_atomic(&path, b"one", 0o644).unwrap());
    assert!(!write_atomic(&path, b"one", 0o644).unwrap());
    assert!(write_atomic(&path, b"two", 0o644).unwrap());
    assert_eq!(fs::read(&path).unwrap(), b"two");
    let names: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["x.conflist"], "no temp file left behind");

    let src = tmp.path().join("plugin");
    fs::write(&src, b"\x7fELF v1").unwrap();
    let dest = tmp.path().join("bin").join(PLUGIN_TYPE);
    assert!(install_plugin(&src, &dest).unwrap());
    assert_eq!(
        fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(
        !install_plugin(&src, &dest).unwrap(),
        "same content: untouched"
    );
    fs::write(&src, b"\x7fELF v2").unwrap();
    assert!(install_plugin(&src, &dest).unwrap());
    assert_eq!(fs::read(&dest).unwrap(), b"\x7fELF v2");
    let err = install_plugin(&tmp.path().join("missing"), &dest).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn gc_rule_needs_age_no_veth_and_no_netns() {
    let now = SystemTime::now();
    let old = Some(now - Duration::from_secs(600));
    let lease = |cid: &str, netns: &str, modified| Lease {
        ip: "10.244.1.5".parse().unwrap(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        netns: netns.into(),
        modified,
    };
    let grace = Duration::from_secs(120);
    let veth = net::host_veth_name("c1", "eth0");
    let has_veth = |v: &str| v == veth;
    let no_veth = |_: &str| false;
    let ns_there = |_: &str| true;
    let ns_gone = |_: &str| false;
    // Dead: old, no veth, netns gone (or never recorded, or a torn file).
    assert!(lease_is_stale(
        &lease("c1", "/run/netns/x", old),
        now,
        grace,
        no_veth,
        ns_gone
    ));
    assert!(lease_is_stale(
        &lease("c1", "", old),
        now,
        grace,
        no_veth,
        ns_there
    ));
    assert!(lease_is_stale(
        &lease("", "", old),
        now,
        grace,
        no_veth,
        ns_there
    ));
    // Alive: young (an ADD in flight), its veth exists, or its netns does.
    let young = Some(now - Duration::from_secs(5));
    assert!(!lease_is_stale(
        &lease("c1", "", young),
        now,
        grace,
        no_veth,
        ns_gone
    ));
    assert!(!lease_is_stale(
        &lease("c1", "", None),
        now,
        grace,
        no_veth,
        ns_gone
    ));
    assert!(!lease_is_stale(
        &lease("c1", "/run/netns/x", old),
        now,
        grace,
        has_veth,
        ns_gone
    ));
    assert!(!lease_is_stale(
        &lease("c1", "/run/netns/x", old),
        now,
        grace,
        no_veth,
        ns_there
    ));
}

#[test]
fn gc_reclaims_only_dead_leases_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LeaseStore::open(tmp.path()).unwrap();
    let pools = [crate::config::Pool::parse("podCIDR", "10.9.0.0/29", None, None).unwrap()];
    let alive_ns = tmp.path().join("alive-ns");
    fs::write(&alive_ns, b"").unwrap();
    let alive = alive_ns.display().to_string();
    for (cid, ns) in [
        ("dead", "/nonexistent/ns"),
        ("alive", alive.as_str()),
        ("wired", "/nonexistent/ns"),
    ] {
        store
            .allocate(
                &pools,
                &crate::ipam::Owner {
                    container_id: cid,
                    ifname: "eth0",
                    netns: ns,
                },
            )
            .unwrap();
    }
    let links: HashSet<String> = [net::host_veth_name("wired", "eth0")].into();
    // Fresh leases are never touched.
    assert!(
        gc_leases(&store, &links, Duration::from_secs(3600))
            .unwrap()
            .is_empty()
    );
    let freed = gc_leases(&store, &links, Duration::ZERO).unwrap();
    assert_eq!(freed.len(), 1);
    assert_eq!(freed[0].container_id, "dead");
    assert_eq!(store.leases().unwrap().len(), 2);
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

async fn expect(handle: &mut Handle, check: impl FnOnce(&Request<Body>), body: Vec<u8>) {
    let (req, send) = handle.next_request().await.expect("another request");
    check(&req);
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(body))
            .unwrap(),
    );
}

#[tokio::test]
async fn waits_on_a_watch_then_writes_the_conflist() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        // 1. GET the node: no pod CIDR yet.
        expect(
            &mut handle,
            |r| {
                assert_eq!(r.method(), Method::GET);
                assert_eq!(r.uri().path(), "/api/v1/nodes/n1");
            },
            serde_json::to_vec(&node(json!({}), "7")).unwrap(),
        )
        .await;
        // 2. WATCH that node from the GET's resourceVersion: an unrelated
        //    change, then the allocation (dual-stack).
        let events = [
            json!({"type": "MODIFIED", "object": node(json!({"taints": []}), "8")}),
            json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}}}),
            json!({"type": "MODIFIED", "object": node(json!({"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24", "fd00:10:244:3::/64"]}), "10")}),
        ];
        let mut body = Vec::new();
        for e in events {
            body.extend(serde_json::to_vec(&e).unwrap());
            body.push(b'\n');
        }
        expect(
            &mut handle,
            |r| {
                assert_eq!(r.method(), Method::GET);
                assert_eq!(r.uri().path(), "/api/v1/nodes");
                let q = r.uri().query().unwrap_or_default();
                for part in [
                    "watch=true",
                    "resourceVersion=7",
                    "fieldSelector=metadata.name%3Dn1",
                ] {
                    assert!(q.contains(part), "{q} lacks {part}");
                }
            },
            body,
        )
        .await;
        handle
    });
    let cidrs = wait_for_pod_cidrs(client, "n1").await.unwrap();
    assert_eq!(
        cidrs,
        vec![cidr("10.244.3.0/24"), cidr("fd00:10:244:3::/64")]
    );
    let mut handle = server.await.unwrap();
    // No further API call was made before the client went away.
    assert!(handle.next_request().await.is_none());

    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    fs::write(&c.plugin_source, b"plugin").unwrap();
    let metrics = Metrics::register(&mut Registry::default());
    sync_once(&c, &cidrs, 1500, None, &metrics).await.unwrap();
    let list: Value = serde_json::from_slice(&fs::read(c.conflist_path()).unwrap()).unwrap();
    assert_eq!(
        list["plugins"][0]["podCIDRs"],
        json!(["10.244.3.0/24", "fd00:10:244:3::/64"])
    );
    assert_eq!(fs::read(c.bin_dir.join(PLUGIN_TYPE)).unwrap(), b"plugin");
    sync_once(&c, &cidrs, 1500, None, &metrics).await.unwrap();
    assert_eq!(metrics.conflist_writes.get(), 1, "unchanged: not rewritten");
    assert_eq!(metrics.plugin_installs.get(), 1);
}

#[tokio::test]
async fn an_expired_watch_starts_over_and_errors_are_reported() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            |r| assert_eq!(r.uri().path(), "/api/v1/nodes/n1"),
            serde_json::to_vec(&node(json!({}), "3")).unwrap(),
        )
        .await;
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
        let mut body = serde_json::to_vec(&gone).unwrap();
        body.push(b'\n');
        expect(
            &mut handle,
            |r| assert!(r.uri().query().unwrap().contains("resourceVersion=3")),
            body,
        )
        .await;
        // Starts over with a fresh GET, which now has the CIDR.
        expect(
            &mut handle,
            |r| assert_eq!(r.uri().path(), "/api/v1/nodes/n1"),
            serde_json::to_vec(&node(json!({"podCIDR": "10.244.4.0/24"}), "20")).unwrap(),
        )
        .await;
    });
    let cidrs = wait_for_pod_cidrs(client, "n1").await.unwrap();
    assert_eq!(cidrs, vec![cidr("10.244.4.0/24")]);
    server.await.unwrap();

    // A malformed allocation is an error naming the field, not a hang.
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            |_| {},
            serde_json::to_vec(&node(json!({"podCIDR": "10.244.4.7/24"}), "1")).unwrap(),
        )
        .await;
    });
    let e = wait_for_pod_cidrs(client, "n1").await.unwrap_err();
    assert!(e.to_string().contains("spec.podCIDR"), "{e}");
    server.await.unwrap();
}
