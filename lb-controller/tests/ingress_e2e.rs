//! The Ingress controller end to end against the in-process emulator WITH
//! its L7 proxy data plane: real HTTP/HTTPS requests through the LB's EIP
//! (127.77.0.0/24) to backend servers on 127.0.0.x standing in for pods.
//! The Kubernetes side is a recording mock API (see `ingress_common`), and
//! the controller's real `reconcile` runs against it.

mod ingress_common;

use std::sync::Arc;

use ingress_common::*;
use lb_controller::ingress::annotations as ann;
use lb_controller::ingress::reconcile;
use serde_json::json;

async fn run(env: &Env, w: &World, ing: &k8s_openapi::api::networking::v1::Ingress) {
    reconcile(Arc::new(ing.clone()), env.ctx(w)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_matrix_tls_rotation_and_cleanup() {
    let env = Env::start().await;
    let exact = backend("127.0.0.21", "exact").await;
    let prefix = backend("127.0.0.22", "prefix").await;
    let string = backend("127.0.0.23", "string").await;
    let wild = backend("127.0.0.24", "wild").await;
    let default = backend("127.0.0.25", "default").await;
    let root = backend("127.0.0.26", "root").await;
    let mut w = World::new();
    for b in [&exact, &prefix, &string, &wild, &default, &root] {
        w.add_pod_service(&b.name, &[b.addr]);
    }
    let ca = Ca::new();
    let (crt, key) = ca.leaf(&["a.example.com"]);
    w.set_secret("tls-a", &crt, &key);
    let (wcrt, wkey) = ca.leaf(&["*.example.com"]);
    w.set_secret("tls-wild", &wcrt, &wkey);

    let ing = ingress(
        "web",
        json!({
            "defaultBackend": {"service": {"name": "default", "port": {"number": 80}}},
            "tls": [{"hosts": ["a.example.com"], "secretName": "tls-a"},
                    {"hosts": ["*.example.com"], "secretName": "tls-wild"}],
            "rules": [
                {"host": "a.example.com", "http": {"paths": [
                    path("/foo", "Exact", "exact"),
                    path("/foo", "Prefix", "prefix"),
                    path("/str", "ImplementationSpecific", "string"),
                    path("/", "Prefix", "root"),
                ]}},
                {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
            ],
        }),
        json!({}),
    );
    // First pass: only the finalizer, nothing in the cloud.
    run(&env, &w, &ing).await;
    let seen = env.take_seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].method.as_str(), seen[0].cloud_calls), ("PATCH", 0));
    assert_eq!(
        seen[0].body["metadata"]["finalizers"],
        json!([ann::FINALIZER])
    );
    assert_eq!(env.total_calls(), 0);

    let ing = finalized(&ing, "ingress");
    w.put(&ing);
    run(&env, &w, &ing).await;
    let seen = env.take_seen();
    let ip = status_ip(&seen, "web").expect("status written");
    let http = format!("{ip}:80").parse().unwrap();
    let https = format!("{ip}:443").parse().unwrap();

    // (host, path, expected backend): Kubernetes pathType semantics.
    let matrix = [
        ("a.example.com", "/foo", "exact"), // Exact beats Prefix of the same path
        ("a.example.com", "/foo/", "prefix"), // Exact /foo does not match /foo/
        ("a.example.com", "/foo/bar", "prefix"), // Prefix is element-wise
        ("a.example.com", "/foobar", "root"), // ... so /foo does not match /foobar
        ("a.example.com", "/str", "string"),
        ("a.example.com", "/strange", "string"), // ImplementationSpecific: string prefix
        ("a.example.com", "/", "root"),
        ("b.example.com", "/anything", "wild"), // wildcard host
        ("x.b.example.com", "/", "default"),    // a wildcard covers one label only
        ("other.test", "/foo", "default"),      // no host rule: defaultBackend
    ];
    eventually("proxy serving", || async {
        tokio::net::TcpStream::connect(http).await.is_ok()
    })
    .await;
    for (host, p, want) in matrix {
        let (status, body) = http_get(http, host, p).await;
        assert_eq!(status, 200, "{host}{p}: {body}");
        assert_eq!(field(&body, "name"), want, "http {host}{p}");
        assert_eq!(field(&body, "path"), p);
        assert_eq!(field(&body, "xff"), "127.0.0.1", "X-Forwarded-For");
        let (status, body) = https_get(https, host, p, &ca.der)
            .await
            .unwrap_or_else(|e| {
                if host == "other.test" || host == "x.b.example.com" {
                    (0, e)
                } else {
                    panic!("{host}: {e}")
                }
            });
        if status != 0 {
            assert_eq!(field(&body, "name"), want, "https {host}{p}");
        } else {
            // No certificate names these hosts: the client refuses the default one.
            assert!(body.to_lowercase().contains("certificate"), "{body}");
        }
    }

    // An idle resync writes nothing to the cloud.
    let writes = env.write_calls();
    run(&env, &w, &ing).await;
    assert_eq!(env.write_calls(), writes, "idle resync must not write");

    // Rotation: the Secret changes, the new certificate is served and the old one deleted.
    let before = env.certificates().await;
    assert_eq!(before.len(), 2);
    let (crt2, key2) = ca.leaf(&["a.example.com", "rotated.example.org"]);
    w.set_secret("tls-a", &crt2, &key2);
    run(&env, &w, &ing).await;
    let after = env.certificates().await;
    assert_eq!(after.len(), 2, "old certificate deleted: {after:?}");
    assert_eq!(
        after.iter().filter(|c| before.contains(c)).count(),
        1,
        "only tls-a rotated"
    );
    eventually("rotated certificate served", || async {
        // The new leaf also names rotated.example.org: only it verifies for that name.
        https_get(https, "rotated.example.org", "/", &ca.der)
            .await
            .is_ok()
    })
    .await;

    // Deletion: the Secret and a Service are already gone; nothing is left.
    w.secrets.clear();
    w.services
        .retain(|s| s.metadata.name.as_deref() != Some("exact"));
    let gone = deleting(&ing);
    w.put(&gone);
    run(&env, &w, &gone).await;
    let seen = env.take_seen();
    let last = seen.iter().rfind(|s| s.method == "PATCH").unwrap();
    assert_eq!(
        last.body["metadata"]["finalizers"],
        serde_json::Value::Null,
        "finalizer removed last"
    );
    assert_eq!(
        last.cloud_calls,
        env.total_calls(),
        "after every cloud call"
    );
    env.assert_clean().await;
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "proxy stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingresses_share_one_lb_with_precedence() {
    let env = Env::start().await;
    let a = backend("127.0.0.31", "team-a").await;
    let b = backend("127.0.0.32", "team-b").await;
    let mut w = World::new();
    w.add_pod_service("team-a", &[a.addr]);
    w.add_pod_service("team-b", &[b.addr]);
    let group = json!({ann::GROUP_NAME: "shared"});
    let ia = finalized(
        &ingress(
            "a",
            json!({"rules": [{"host": "shop.example.com", "http": {"paths": [path("/a", "Prefix", "team-a"), path("/same", "Prefix", "team-a")]}}]}),
            group.clone(),
        ),
        "group:shared",
    );
    let mut ib = finalized(
        &ingress(
            "b",
            json!({"rules": [{"host": "shop.example.com", "http": {"paths": [path("/b", "Prefix", "team-b"), path("/same", "Prefix", "team-b")]}}]}),
            group,
        ),
        "group:shared",
    );
    ib.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2024-05-01T00:00:00Z".parse().unwrap(),
    ));
    w.put(&ia);
    w.put(&ib);
    run(&env, &w, &ib).await;
    let seen = env.take_seen();
    let ip_a = status_ip(&seen, "a").expect("a's status");
    assert_eq!(
        status_ip(&seen, "b"),
        Some(ip_a.clone()),
        "one address for both"
    );
    assert_eq!(env.lb_count().await, 1);
    // The conflict is an Event on the younger Ingress.
    let conflict = seen
        .iter()
        .find(|s| s.method == "POST" && s.body["reason"] == "RuleConflict")
        .expect("RuleConflict event");
    assert_eq!(conflict.body["regarding"]["name"], "b");
    let http = format!("{ip_a}:80").parse().unwrap();
    eventually("proxy serving", || async {
        tokio::net::TcpStream::connect(http).await.is_ok()
    })
    .await;
    for (p, want) in [("/a", "team-a"), ("/b", "team-b"), ("/same", "team-a")] {
        let (status, body) = http_get(http, "shop.example.com", p).await;
        assert_eq!((status, field(&body, "name").as_str()), (200, want), "{p}");
    }
    // b leaves: its rules go, a's stay, the LB stays.
    let gone = deleting(&ib);
    w.put(&gone);
    run(&env, &w, &gone).await;
    w.ingresses
        .retain(|i| i.metadata.name.as_deref() != Some("b"));
    assert_eq!(env.lb_count().await, 1);
    eventually("b's rules removed", || async {
        http_get(http, "shop.example.com", "/b").await.0 == 503
    })
    .await;
    assert_eq!(
        field(&http_get(http, "shop.example.com", "/a").await.1, "name"),
        "team-a"
    );
    // a leaves last: the LB goes.
    let gone = deleting(&ia);
    w.put(&gone);
    run(&env, &w, &gone).await;
    env.assert_clean().await;
}
