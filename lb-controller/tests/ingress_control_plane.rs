//! The Ingress controller against a REAL kube-apiserver + etcd (skipped
//! with one loud line without KUBE_APISERVER/ETCD; see docs/TESTING.md),
//! with the in-process emulator as the cloud. Its data plane is off: the
//! apiserver refuses loopback endpoint addresses, so the "pods" are
//! documentation addresses (192.0.2.0/24) nothing listens on, and routing
//! is read back from the cloud's listeners, policies and backends (the
//! proxy's real HTTP routing of the same rules is tested in ingress_e2e.rs).
//!
//! One scenario, in order: a default IngressClass of ours; an Ingress
//! without a class naming two hosts with Prefix and Exact paths and a TLS
//! Secret gets our finalizer, an LB and `status.loadBalancer.ingress`, and
//! routes; rotating the Secret replaces the cloud certificate and deletes
//! the old one; a second Ingress joins the LB through the group annotation
//! and its conflicting rule is reported as an Event; deleting both lets
//! the finalizers go and leaves no cloud resource.

mod ingress_common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use iaas_client::actions::{DescribeLoadBalancerPolicies, DescribeLoadBalancers};
use ingress_common::*;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use lb_controller::ingress::annotations as ann;
use lb_controller::ingress::{self, Settings};
use serde_json::json;
use suite_runtime::Shutdown;
use suite_runtime::metrics::ReconcileMetrics;
use suite_tests::control_plane::ControlPlane;
use suite_tests::wait::eventually;

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(60);

/// Stops the controller when the test ends, also on panic.
struct Running(Shutdown, tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.trigger();
        self.1.abort();
    }
}

fn tls_secret(name: &str, crt: &str, key: &str) -> Secret {
    use base64::Engine as _;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b(crt), "tls.key": b(key)},
    }))
    .unwrap()
}

/// A selector-less Service whose EndpointSlice lists `pod` (no
/// kube-controller-manager runs, so the slice is ours to write).
async fn pod_service(kube: &kube::Client, name: &str, pod: SocketAddr) -> anyhow::Result<()> {
    let svcs: Api<Service> = Api::namespaced(kube.clone(), NS);
    svcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        }))?,
    )
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(kube.clone(), NS);
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": pod.port(), "protocol": "TCP"}],
                "endpoints": [{"addresses": [pod.ip().to_string()], "conditions": {"ready": true}}],
            }))?,
        )
        .await?;
    Ok(())
}

fn lb_ip(ing: &Ingress) -> Option<String> {
    ing.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .clone()
}

/// The cloud's routing table of listener `port` of the only LB:
/// `(host, url rule, backend ip:port)`, read from listeners, backends and
/// policy rules; and the listener's certificates.
async fn routes(env: &Env, port: u16) -> (BTreeSet<(String, String, String)>, Vec<String>) {
    let lbs = env
        .client
        .describe_load_balancers_all(&DescribeLoadBalancers {
            verbose: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(lbs.len(), 1, "{lbs:?}");
    let policies: BTreeMap<String, Vec<(String, String)>> = env
        .client
        .describe_load_balancer_policies_all(&DescribeLoadBalancerPolicies {
            verbose: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|p| {
            let rules = p.rules.into_iter().map(|r| (r.rule_type, r.val)).collect();
            (p.loadbalancer_policy_id, rules)
        })
        .collect();
    let Some(l) = lbs[0].listeners.iter().find(|l| l.listener_port == port) else {
        return Default::default();
    };
    let mut out = BTreeSet::new();
    for b in &l.backends {
        let rules = policies
            .get(&b.loadbalancer_policy_id)
            .cloned()
            .unwrap_or_default();
        let of = |t: &str| {
            rules
                .iter()
                .find(|(ty, _)| ty == t)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        out.insert((
            of("domain"),
            of("url"),
            format!("{}:{}", b.resource_id, b.port),
        ));
    }
    (out, l.server_certificate_id.clone())
}

fn table(rows: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    rows.iter()
        .map(|(h, u, b)| (h.to_string(), u.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_lifecycle_against_a_real_apiserver() -> anyhow::Result<()> {
    let Some(plane) = ControlPlane::start().await? else {
        return Ok(());
    };
    let kube = plane.client();
    let env = Env::start_control_plane_only().await;
    let (pod_a, pod_b) = ("192.0.2.1:8080", "192.0.2.2:8080");
    pod_service(&kube, "svc-a", pod_a.parse()?).await?;
    pod_service(&kube, "svc-b", pod_b.parse()?).await?;
    let ca = Ca::new();
    let (crt, key) = ca.leaf(&["a.example.com"]);
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), NS);
    secrets
        .create(&PostParams::default(), &tls_secret("tls-a", &crt, &key))
        .await?;
    let classes: Api<IngressClass> = Api::all(kube.clone());
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "cloudsuite", "annotations": {ann::DEFAULT_CLASS: "true"}},
                "spec": {"controller": ann::CONTROLLER_NAME},
            }))?,
        )
        .await?;

    let shutdown = Shutdown::new();
    let task = tokio::spawn(ingress::run(
        kube.clone(),
        env.reconciler(),
        Settings::new(CLUSTER),
        ReconcileMetrics::default(),
        Some("test".into()),
        // Short, so the batched resync runs against the real API too.
        Duration::from_secs(3),
        shutdown.clone(),
    ));
    let _running = Running(shutdown, task);

    // 1. An Ingress with no class (the default class is ours), two hosts,
    //    Prefix and Exact paths, TLS for one host.
    let ings: Api<Ingress> = Api::namespaced(kube.clone(), NS);
    let backend = |svc: &str| json!({"service": {"name": svc, "port": {"number": 80}}});
    ings.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "first", "annotations": {
                ann::BACKEND_TYPE: "pod", ann::GROUP_NAME: "shop"}},
            "spec": {
                "tls": [{"hosts": ["a.example.com"], "secretName": "tls-a"}],
                "rules": [
                    {"host": "a.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": backend("svc-a")},
                        {"path": "/exact", "pathType": "Exact", "backend": backend("svc-b")}]}},
                    {"host": "b.example.com", "http": {"paths": [
                        {"path": "/api", "pathType": "Prefix", "backend": backend("svc-b")}]}},
                ],
            },
        }))?,
    )
    .await?;
    let first = eventually("first's status", WAIT, || {
        let ings = ings.clone();
        async move {
            let i = ings.get("first").await.ok()?;
            lb_ip(&i).is_some().then_some(i)
        }
    })
    .await;
    assert!(
        first
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == ann::FINALIZER),
        "finalizer: {:?}",
        first.metadata
    );
    assert_eq!(
        first
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ann::APPLIED_LB))
            .map(String::as_str),
        Some("group:shop")
    );
    let ip = lb_ip(&first).unwrap();
    assert_eq!(env.lb_count().await, 1);
    // Prefix -> `~/p`, Exact -> `=/p`, per host, on HTTP and HTTPS alike.
    let want = table(&[
        ("a.example.com", "~/", pod_a),
        ("a.example.com", "=/exact", pod_b),
        ("b.example.com", "~/api", pod_b),
    ]);
    let (http, _) = routes(&env, 80).await;
    assert_eq!(http, want, "HTTP routes");
    let (https, certs) = routes(&env, 443).await;
    assert_eq!(https, want, "HTTPS routes");
    assert_eq!(certs.len(), 1, "{certs:?}");

    // 2. Secret rotation: the new certificate replaces the old one in the cloud.
    let before = env.certificates().await;
    assert_eq!(before.len(), 1, "{before:?}");
    let (crt2, key2) = ca.leaf(&["a.example.com", "rotated.example.org"]);
    secrets
        .patch(
            "tls-a",
            &PatchParams::default(),
            &Patch::Merge(tls_secret("tls-a", &crt2, &key2)),
        )
        .await?;
    let after = eventually("certificate rotated", WAIT, || {
        let env = &env;
        let before = before.clone();
        async move {
            let now = env.certificates().await;
            (now.len() == 1 && now != before).then_some(now)
        }
    })
    .await;
    assert_ne!(after, before, "old certificate deleted");
    assert_eq!(
        routes(&env, 443).await.1,
        after,
        "the listener serves the new one"
    );

    // 3. A second Ingress joins the group's LB; its rule for a.example.com/
    //    conflicts with first's (which has precedence) and is reported.
    ings.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "second", "annotations": {
                ann::BACKEND_TYPE: "pod", ann::GROUP_NAME: "shop"}},
            "spec": {
                "ingressClassName": "cloudsuite",
                "rules": [
                    {"host": "a.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": backend("svc-b")}]}},
                    {"host": "c.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": backend("svc-b")}]}},
                ],
            },
        }))?,
    )
    .await?;
    let second_ip = eventually("second's status", WAIT, || {
        let ings = ings.clone();
        async move { lb_ip(&ings.get("second").await.ok()?) }
    })
    .await;
    assert_eq!(second_ip, ip, "the group shares one LB");
    assert_eq!(env.lb_count().await, 1);
    // second's c.example.com joins; its a.example.com `/` loses to first's.
    let want = table(&[
        ("a.example.com", "~/", pod_a),
        ("a.example.com", "=/exact", pod_b),
        ("b.example.com", "~/api", pod_b),
        ("c.example.com", "~/", pod_b),
    ]);
    eventually("second's rules on the LB", WAIT, || {
        let (env, want) = (&env, &want);
        async move { (routes(env, 80).await.0 == *want).then_some(()) }
    })
    .await;
    let events: Api<Event> = Api::namespaced(kube.clone(), NS);
    let conflict = eventually("RuleConflict event", WAIT, || {
        let events = events.clone();
        async move {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("RuleConflict")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("second")
                })
        }
    })
    .await;
    assert_eq!(conflict.type_.as_deref(), Some("Warning"));
    let note = conflict.note.unwrap_or_default();
    assert!(note.contains("default/first"), "{note}");

    // 4. Deleting both: the finalizers go only after cleanup, and nothing
    //    remains in the cloud.
    for name in ["first", "second"] {
        ings.delete(name, &DeleteParams::default()).await?;
    }
    eventually("ingresses gone", WAIT, || {
        let ings = ings.clone();
        async move {
            let left: BTreeMap<String, ()> = ings
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .map(|i| (i.metadata.name.unwrap_or_default(), ()))
                .collect();
            left.is_empty().then_some(())
        }
    })
    .await;
    env.assert_clean().await;
    Ok(())
}
