//! Unit tests of the pure translation: the host/path/pathType matrix,
//! classes, group precedence and conflicts, backends, TLS, ssl-redirect and
//! annotation errors naming the annotation.

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::{Value, json};

use std::sync::Arc;

use super::annotations as ann;
use super::translate::*;
use crate::model::{BackendTarget, EipSource, LbNetwork, OwnerKind, PathMatch, Protocol};

fn ingress(name: &str, spec: Value, annotations: Value) -> Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2024-01-01T00:00:00Z", "annotations": annotations},
        "spec": spec,
    }))
    .unwrap()
}

fn class(name: &str, controller: &str, default: bool) -> IngressClass {
    let ann = if default {
        json!({ann::DEFAULT_CLASS: "true"})
    } else {
        json!({})
    };
    serde_json::from_value(
        json!({"metadata": {"name": name, "annotations": ann}, "spec": {"controller": controller}}),
    )
    .unwrap()
}

fn service(name: &str, node_port: i32) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": node_port, "protocol": "TCP"}]},
    }))
    .unwrap()
}

fn node(name: &str, instance: &str, ready: bool) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"providerID": format!("cloudsuite://emu1/{instance}")},
        "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
    }))
    .unwrap()
}

fn slice(svc: &str, ips: &[&str], port: i32) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{svc}-abc"), "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

const CRT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

fn tls_secret(name: &str, crt: &str) -> Secret {
    use base64::Engine as _;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b(crt), "tls.key": b(KEY)},
    }))
    .unwrap()
}

fn backend(svc: &str) -> Value {
    json!({"service": {"name": svc, "port": {"number": 80}}})
}

fn path(p: &str, ty: &str, svc: &str) -> Value {
    json!({"path": p, "pathType": ty, "backend": backend(svc)})
}

struct World {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    nodes: Vec<Node>,
    secrets: Vec<Secret>,
}

impl World {
    fn new() -> World {
        World {
            services: vec![service("a", 30001), service("b", 30002)],
            slices: vec![slice("a", &["10.0.0.1", "10.0.0.2"], 8080)],
            nodes: vec![
                node("n1", "i-1", true),
                node("n2", "i-2", false),
                node("n3", "i-3", true),
            ],
            secrets: vec![tls_secret("s1", CRT)],
        }
    }
    /// The world as the controller's stores hand it out (shared pointers).
    fn arcs(&self) -> Arcs {
        fn arcs<T: Clone>(v: &[T]) -> Vec<Arc<T>> {
            v.iter().cloned().map(Arc::new).collect()
        }
        Arcs {
            services: arcs(&self.services),
            slices: arcs(&self.slices),
            nodes: arcs(&self.nodes),
            secrets: arcs(&self.secrets),
        }
    }
}

struct Arcs {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    nodes: Vec<Arc<Node>>,
    secrets: Vec<Arc<Secret>>,
}

impl Arcs {
    fn snap(&self) -> Snapshot<'_> {
        Snapshot {
            services: &self.services,
            slices: &self.slices,
            nodes: &self.nodes,
            secrets: &self.secrets,
        }
    }
}

fn settings() -> Settings {
    Settings::new("c1")
}

fn one(ing: &Ingress, w: &World) -> Result<Translation, TranslateError> {
    translate(
        &lb_key(ing).unwrap(),
        std::slice::from_ref(ing),
        &w.arcs().snap(),
        &settings(),
    )
}

#[test]
fn path_type_matrix_maps_to_rule_forms() {
    let i = ingress("x", json!({}), json!({}));
    let f = "spec.rules[0].http.paths[0]";
    let cases = [
        (Some("/foo"), "Exact", Ok(("/foo", PathMatch::Exact))),
        (Some("/foo/"), "Exact", Ok(("/foo/", PathMatch::Exact))),
        (Some("/foo"), "Prefix", Ok(("/foo", PathMatch::Prefix))),
        // A trailing slash of a Prefix path is ignored by Kubernetes.
        (Some("/foo/"), "Prefix", Ok(("/foo", PathMatch::Prefix))),
        (Some("/"), "Prefix", Ok(("/", PathMatch::Prefix))),
        (
            Some("/foo"),
            "ImplementationSpecific",
            Ok(("/foo", PathMatch::StringPrefix)),
        ),
        (
            None,
            "ImplementationSpecific",
            Ok(("/", PathMatch::StringPrefix)),
        ),
        (
            Some("foo"),
            "Prefix",
            Err("spec.rules[0].http.paths[0].path"),
        ),
        (None, "Exact", Err("spec.rules[0].http.paths[0].path")),
        (
            Some("/a b"),
            "Exact",
            Err("spec.rules[0].http.paths[0].path"),
        ),
        (
            Some("/foo"),
            "Regex",
            Err("spec.rules[0].http.paths[0].pathType"),
        ),
    ];
    for (p, ty, want) in cases {
        let got = path_rule(&i, f, p, ty);
        match want {
            Ok((wp, wm)) => assert_eq!(got.unwrap(), (wp.to_string(), wm), "{p:?} {ty}"),
            Err(field) => assert_eq!(got.unwrap_err().field, field, "{p:?} {ty}"),
        }
    }
    assert_eq!(PathMatch::Exact.url_value("/foo"), "=/foo");
    assert_eq!(PathMatch::Prefix.url_value("/foo"), "~/foo");
    assert_eq!(PathMatch::StringPrefix.url_value("/foo"), "/foo");
}

#[test]
fn hosts_paths_and_backends_translate() {
    let w = World::new();
    let i = ingress(
        "web",
        json!({"rules": [
            {"host": "a.example.com", "http": {"paths": [path("/foo", "Prefix", "a"), path("/foo", "Exact", "b")]}},
            {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "b")]}},
            {"http": {"paths": [path("/x", "ImplementationSpecific", "a")]}},
        ]}),
        json!({}),
    );
    let t = one(&i, &w).unwrap();
    let d = &t.desired;
    assert_eq!(d.owner.kind, OwnerKind::Ingress);
    assert_eq!(d.owner.uid, "uid-web");
    assert_eq!(d.listeners.len(), 1, "no TLS: HTTP only");
    let l = &d.listeners[0];
    assert_eq!((l.port, l.protocol), (80, Protocol::Http));
    assert!(l.forwardfor);
    assert!(l.default_backends.is_empty());
    let forms: Vec<(Option<&str>, String)> = l
        .rules
        .iter()
        .map(|r| (r.host.as_deref(), r.url_rule().unwrap()))
        .collect();
    assert_eq!(
        forms,
        vec![
            (Some("*.example.com"), "~/".to_string()),
            (Some("a.example.com"), "=/foo".to_string()),
            (Some("a.example.com"), "~/foo".to_string()),
            (None, "/x".to_string()),
        ]
    );
    // Node backends: only Ready nodes, on the Service's node port.
    let prefix = l
        .rules
        .iter()
        .find(|r| r.url_rule().as_deref() == Some("~/foo"))
        .unwrap();
    let targets: Vec<_> = prefix
        .backends
        .iter()
        .map(|b| (b.target.resource_id(), b.port))
        .collect();
    assert_eq!(
        targets,
        vec![("i-1".to_string(), 30001), ("i-3".to_string(), 30001)]
    );
    assert!(t.notices.is_empty(), "{:?}", t.notices);
}

#[test]
fn pod_backends_use_endpoint_slices() {
    let w = World::new();
    let i = ingress(
        "web",
        json!({"defaultBackend": backend("a")}),
        json!({ann::BACKEND_TYPE: "pod"}),
    );
    let d = one(&i, &w).unwrap().desired;
    let b: Vec<_> = d.listeners[0]
        .default_backends
        .iter()
        .map(|b| (b.target.clone(), b.port))
        .collect();
    assert_eq!(
        b,
        vec![
            (BackendTarget::Ip("10.0.0.1".parse().unwrap()), 8080),
            (BackendTarget::Ip("10.0.0.2".parse().unwrap()), 8080)
        ]
    );
    let bad = ingress(
        "web",
        json!({"defaultBackend": backend("a")}),
        json!({ann::BACKEND_TYPE: "pods"}),
    );
    assert_eq!(one(&bad, &w).unwrap_err().field, ann::BACKEND_TYPE);
}

#[test]
fn missing_service_is_a_notice_not_an_error() {
    let w = World::new();
    let i = ingress(
        "web",
        json!({"rules": [{"host": "a.example.com", "http": {"paths": [path("/", "Prefix", "gone")]}}]}),
        json!({}),
    );
    let t = one(&i, &w).unwrap();
    assert!(t.desired.listeners[0].rules[0].backends.is_empty());
    assert_eq!(t.notices[0].reason, "BackendNotFound");
    assert!(
        t.notices[0]
            .message
            .contains("spec.rules[0].http.paths[0].backend"),
        "{}",
        t.notices[0].message
    );
    // A ClusterIP Service has no node port: same treatment, with the reason.
    let mut w2 = World::new();
    w2.services[0].spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    w2.services[0]
        .spec
        .as_mut()
        .unwrap()
        .ports
        .as_mut()
        .unwrap()[0]
        .node_port = None;
    let i = ingress("web", json!({"defaultBackend": backend("a")}), json!({}));
    let t = one(&i, &w2).unwrap();
    assert!(
        t.notices[0].message.contains("ClusterIP"),
        "{}",
        t.notices[0].message
    );
}

#[test]
fn tls_binds_certificates_and_missing_secret_is_a_notice() {
    let mut w = World::new();
    w.secrets
        .push(tls_secret("s2", &CRT.replace("MIIB", "MIIC")));
    let i = ingress(
        "web",
        json!({
            "tls": [{"hosts": ["a.example.com"], "secretName": "s1"},
                    {"hosts": ["b.example.com"], "secretName": "s2"},
                    {"hosts": ["c.example.com"], "secretName": "s1"},
                    {"hosts": ["d.example.com"], "secretName": "gone"}],
            "rules": [{"host": "a.example.com", "http": {"paths": [path("/", "Prefix", "a")]}}],
        }),
        json!({}),
    );
    let t = one(&i, &w).unwrap();
    let d = &t.desired;
    assert_eq!(d.listeners.len(), 2);
    let https = &d.listeners[1];
    assert_eq!((https.port, https.protocol), (443, Protocol::Https));
    assert_eq!(https.certificates.len(), 2, "s1 twice is uploaded once");
    assert_eq!(https.certificates[0].name, "default/s1");
    assert_eq!(
        https.rules, d.listeners[0].rules,
        "same routes on both listeners"
    );
    assert_eq!(t.notices.len(), 1);
    assert_eq!(t.notices[0].reason, "SecretNotFound");
    assert!(t.notices[0].message.contains("spec.tls[3].secretName"));
    // Only missing Secrets: no HTTPS listener at all, HTTP still served.
    let i = ingress(
        "web",
        json!({"tls": [{"secretName": "gone"}], "defaultBackend": backend("a")}),
        json!({}),
    );
    assert_eq!(one(&i, &w).unwrap().desired.listeners.len(), 1);
    // A Secret of the wrong type names the field.
    let mut w3 = World::new();
    w3.secrets[0].type_ = Some("Opaque".into());
    let i = ingress("web", json!({"tls": [{"secretName": "s1"}]}), json!({}));
    assert_eq!(one(&i, &w3).unwrap_err().field, "spec.tls[0].secretName");
}

#[test]
fn rotation_changes_the_certificate_fingerprint() {
    let w = World::new();
    let i = ingress(
        "web",
        json!({"tls": [{"secretName": "s1"}], "defaultBackend": backend("a")}),
        json!({}),
    );
    let before = one(&i, &w).unwrap().desired.listeners[1].certificates[0].fingerprint();
    let mut w2 = World::new();
    w2.secrets = vec![tls_secret("s1", &CRT.replace("MIIB", "MIID"))];
    let after = one(&i, &w2).unwrap().desired.listeners[1].certificates[0].fingerprint();
    assert_ne!(before, after);
}

#[test]
fn ssl_redirect_keeps_tls_hosts_off_plain_http() {
    let w = World::new();
    let spec = json!({
        "tls": [{"hosts": ["a.example.com"], "secretName": "s1"}],
        "rules": [{"host": "a.example.com", "http": {"paths": [path("/", "Prefix", "a")]}},
                  {"host": "b.example.com", "http": {"paths": [path("/", "Prefix", "b")]}}],
    });
    let i = ingress("web", spec.clone(), json!({ann::SSL_REDIRECT: "true"}));
    let d = one(&i, &w).unwrap().desired;
    let hosts = |l: usize| {
        d.listeners[l]
            .rules
            .iter()
            .map(|r| r.host.clone().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(hosts(0), vec!["b.example.com"]);
    assert_eq!(hosts(1), vec!["a.example.com", "b.example.com"]);
    let i = ingress("web", spec.clone(), json!({ann::SSL_REDIRECT: "false"}));
    assert_eq!(one(&i, &w).unwrap().desired.listeners[0].rules.len(), 2);
    let i = ingress("web", spec, json!({ann::SSL_REDIRECT: "yes"}));
    assert_eq!(one(&i, &w).unwrap_err().field, ann::SSL_REDIRECT);
}

/// The documented fall-through (docs/ANNOTATIONS.md, "ssl-redirect"): with
/// no redirect in the API, plain HTTP for an enforced host reaches the
/// defaultBackend; a host whose Secret is missing stays on plain HTTP.
#[test]
fn ssl_redirect_falls_through_to_the_default_backend_and_needs_the_secret() {
    let w = World::new();
    let spec = json!({
        "defaultBackend": backend("b"),
        "tls": [{"hosts": ["a.example.com"], "secretName": "s1"},
                {"hosts": ["b.example.com"], "secretName": "missing"}],
        "rules": [{"host": "a.example.com", "http": {"paths": [path("/", "Prefix", "a")]}},
                  {"host": "b.example.com", "http": {"paths": [path("/", "Prefix", "b")]}}],
    });
    let i = ingress("web", spec, json!({ann::SSL_REDIRECT: "true"}));
    let t = one(&i, &w).unwrap();
    let http = &t.desired.listeners[0];
    assert_eq!(http.port, HTTP_PORT);
    let hosts: Vec<_> = http.rules.iter().map(|r| r.host.clone().unwrap()).collect();
    assert_eq!(hosts, vec!["b.example.com"], "a.example.com is HTTPS-only");
    assert!(
        !http.default_backends.is_empty(),
        "the defaultBackend still serves plain HTTP for unmatched hosts"
    );
    assert!(t.notices.iter().any(|n| n.reason == "SecretNotFound"));
}

#[test]
fn annotation_errors_name_the_annotation() {
    let w = World::new();
    let base = json!({"defaultBackend": backend("a")});
    let cases = [
        (json!({ann::NETWORK_TYPE: "dmz"}), ann::NETWORK_TYPE),
        (json!({ann::NETWORK_TYPE: "internal"}), ann::VXNET_ID),
        (
            json!({ann::NETWORK_TYPE: "internal", ann::VXNET_ID: "vxnet-1", ann::PRIVATE_IP: "x"}),
            ann::PRIVATE_IP,
        ),
        (
            json!({ann::NETWORK_TYPE: "internal", ann::VXNET_ID: "vxnet-1", ann::EIP_IDS: "eip-1"}),
            ann::EIP_IDS,
        ),
        (json!({ann::EIP_IDS: "lb-1"}), ann::EIP_IDS),
        (
            json!({ann::EIP_IDS: "eip-1", ann::EIP_BANDWIDTH: "5"}),
            ann::EIP_BANDWIDTH,
        ),
        (json!({ann::EIP_BANDWIDTH: "0"}), ann::EIP_BANDWIDTH),
        (
            json!({ann::SOURCE_RANGES: "10.0.0.0/8,banana"}),
            ann::SOURCE_RANGES,
        ),
        (json!({ann::LB_TYPE: "7"}), ann::LB_TYPE),
        (json!({ann::GROUP_ORDER: "1e3"}), ann::GROUP_ORDER),
    ];
    for (a, field) in cases {
        let i = ingress("web", base.clone(), a.clone());
        let e = one(&i, &w).unwrap_err();
        assert_eq!(e.field, field, "{a}: {e}");
        assert!(e.to_string().starts_with("default/web: "), "{e}");
    }
    let bad_group = ingress("web", base.clone(), json!({ann::GROUP_NAME: "Not_OK"}));
    assert_eq!(lb_key(&bad_group).unwrap_err().field, ann::GROUP_NAME);
    let bad_host = ingress(
        "web",
        json!({"rules": [{"host": "A.example.com", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
        json!({}),
    );
    assert_eq!(one(&bad_host, &w).unwrap_err().field, "spec.rules[0].host");
}

#[test]
fn network_annotations_translate() {
    let w = World::new();
    let base = json!({"defaultBackend": backend("a")});
    let i = ingress(
        "web",
        base.clone(),
        json!({ann::EIP_IDS: "eip-1, eip-2", ann::SOURCE_RANGES: "10.1.2.3/8,0.0.0.0/0,1.2.3.4"}),
    );
    let d = one(&i, &w).unwrap().desired;
    assert_eq!(
        d.network,
        LbNetwork::Public {
            eip: EipSource::Existing(vec!["eip-1".into(), "eip-2".into()])
        }
    );
    assert_eq!(
        d.source_ranges,
        vec!["1.2.3.4/32".to_string(), "10.0.0.0/8".to_string()]
    );
    let i = ingress("web", base.clone(), json!({ann::EIP_BANDWIDTH: "20"}));
    assert_eq!(
        one(&i, &w).unwrap().desired.network,
        LbNetwork::Public {
            eip: EipSource::Allocate { bandwidth: 20 }
        }
    );
    let i = ingress(
        "web",
        base,
        json!({ann::NETWORK_TYPE: "internal", ann::VXNET_ID: "vxnet-9", ann::PRIVATE_IP: "172.30.1.9"}),
    );
    assert_eq!(
        one(&i, &w).unwrap().desired.network,
        LbNetwork::Internal {
            vxnet: "vxnet-9".into(),
            private_ip: Some("172.30.1.9".parse().unwrap())
        }
    );
}

#[test]
fn classes_select_ingresses() {
    let ours = class("cs", ann::CONTROLLER_NAME, false);
    let ours_default = class("cs", ann::CONTROLLER_NAME, true);
    let nginx = class("nginx", "k8s.io/ingress-nginx", false);
    let nginx_default = class("nginx", "k8s.io/ingress-nginx", true);
    let c = ann::CONTROLLER_NAME;
    let by_name = ingress("a", json!({"ingressClassName": "cs"}), json!({}));
    let by_other = ingress("a", json!({"ingressClassName": "nginx"}), json!({}));
    let legacy = ingress("a", json!({}), json!({ann::LEGACY_CLASS: "cs"}));
    let legacy_ctl = ingress(
        "a",
        json!({}),
        json!({ann::LEGACY_CLASS: ann::CONTROLLER_NAME}),
    );
    let legacy_other = ingress("a", json!({}), json!({ann::LEGACY_CLASS: "nginx"}));
    let none = ingress("a", json!({}), json!({}));
    let classes = vec![ours.clone(), nginx.clone()];
    assert!(is_ours(&by_name, &classes, c));
    assert!(!is_ours(&by_other, &classes, c));
    assert!(is_ours(&legacy, &classes, c));
    assert!(is_ours(&legacy_ctl, &[], c));
    assert!(!is_ours(&legacy_other, &classes, c));
    assert!(!is_ours(&none, &classes, c), "no default class");
    assert!(is_ours(&none, &[ours_default.clone(), nginx.clone()], c));
    assert!(!is_ours(&none, &[ours.clone(), nginx_default.clone()], c));
    assert!(
        !is_ours(&none, &[ours_default, nginx_default], c),
        "two defaults: ambiguous"
    );
    // An ingressClassName naming a class that does not exist is nobody's.
    assert!(!is_ours(
        &ingress("a", json!({"ingressClassName": "gone"}), json!({})),
        &classes,
        c
    ));
}

fn member(name: &str, order: Option<&str>, created: &str, rules: Value) -> Ingress {
    let mut a = json!({ann::GROUP_NAME: "shared"});
    if let Some(o) = order {
        a[ann::GROUP_ORDER] = json!(o);
    }
    let mut i = ingress(name, json!({"rules": rules}), a);
    i.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        created.parse().unwrap(),
    ));
    i
}

#[test]
fn group_precedence_and_conflicts() {
    let w = World::new();
    let r = |svc: &str| json!([{"host": "a.example.com", "http": {"paths": [path("/api", "Prefix", svc), path(&format!("/{svc}"), "Exact", svc)]}}]);
    let old = member("old", None, "2024-01-01T00:00:00Z", r("a"));
    let new = member("new", None, "2024-02-01T00:00:00Z", r("b"));
    let first = member("zfirst", Some("-5"), "2024-03-01T00:00:00Z", json!([]));
    let same_time = member("aaa", None, "2024-02-01T00:00:00Z", json!([]));
    let mut ms = vec![new.clone(), same_time.clone(), old.clone(), first.clone()];
    sort_by_precedence(&mut ms).unwrap();
    let names: Vec<String> = ms.iter().map(key_of).collect();
    assert_eq!(
        names,
        vec![
            "default/zfirst",
            "default/old",
            "default/aaa",
            "default/new"
        ]
    );

    let key = lb_key(&old).unwrap();
    assert_eq!(key, LbKey::Group("shared".into()));
    let mut ms = vec![new.clone(), old.clone()];
    sort_by_precedence(&mut ms).unwrap();
    let t = translate(&key, &ms, &w.arcs().snap(), &settings()).unwrap();
    assert_eq!(t.desired.owner.kind, OwnerKind::IngressGroup);
    assert_eq!(t.desired.owner.namespace, "");
    let rules = &t.desired.listeners[0].rules;
    // /api from the older Ingress wins; each keeps its own Exact path.
    let api = rules
        .iter()
        .find(|r| r.url_rule().as_deref() == Some("~/api"))
        .unwrap();
    assert_eq!(api.backends[0].port, 30001);
    assert_eq!(rules.len(), 3);
    assert_eq!(t.notices.len(), 1);
    assert_eq!(t.notices[0].object, "default/new");
    assert_eq!(t.notices[0].reason, "RuleConflict");
    assert!(
        t.notices[0].message.contains("default/old"),
        "{}",
        t.notices[0].message
    );
    // The group owner is stable whatever the members.
    assert_eq!(key.owner("c1"), LbKey::Group("shared".into()).owner("c1"));
    assert!(key.owner("c1").validate().is_ok());
}

#[test]
fn group_default_backend_and_settings_from_first_member() {
    let w = World::new();
    let mut a = member("a", Some("1"), "2024-01-01T00:00:00Z", json!([]));
    a.spec.as_mut().unwrap().default_backend = Some(serde_json::from_value(backend("a")).unwrap());
    let mut b = member("b", Some("0"), "2024-01-01T00:00:00Z", json!([]));
    b.spec.as_mut().unwrap().default_backend = Some(serde_json::from_value(backend("b")).unwrap());
    b.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ann::SOURCE_RANGES.into(), "10.0.0.0/8".into());
    let mut ms = vec![a, b];
    sort_by_precedence(&mut ms).unwrap();
    let t = translate(
        &LbKey::Group("shared".into()),
        &ms,
        &w.arcs().snap(),
        &settings(),
    )
    .unwrap();
    assert_eq!(
        t.desired.listeners[0].default_backends[0].port, 30002,
        "b has the lower order"
    );
    assert_eq!(t.desired.source_ranges, vec!["10.0.0.0/8".to_string()]);
    let reasons: Vec<_> = t
        .notices
        .iter()
        .map(|n| (n.object.as_str(), n.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("default/a", "GroupSettingIgnored"),
            ("default/a", "RuleConflict")
        ]
    );
}

#[test]
fn duplicate_rule_in_one_ingress_is_reported() {
    let w = World::new();
    let i = ingress(
        "web",
        json!({"rules": [{"host": "a.example.com", "http": {"paths": [path("/foo", "Prefix", "a"), path("/foo/", "Prefix", "b")]}}]}),
        json!({}),
    );
    let t = one(&i, &w).unwrap();
    assert_eq!(t.desired.listeners[0].rules.len(), 1);
    assert_eq!(t.notices[0].reason, "RuleConflict");
    assert!(
        t.notices[0]
            .message
            .starts_with("spec.rules[0].http.paths[1]")
    );
}

#[test]
fn applied_key_round_trips() {
    let i = ingress("web", json!({}), json!({}));
    let k = lb_key(&i).unwrap();
    assert_eq!(LbKey::from_applied(&i, &k.applied_value()), Some(k));
    let g = LbKey::Group("shared".into());
    assert_eq!(LbKey::from_applied(&i, &g.applied_value()), Some(g));
    assert_eq!(LbKey::from_applied(&i, "group:Bad_Name"), None);
}

#[test]
fn eligible_nodes_need_ready_and_our_provider_id() {
    let mut tainted = node("t", "i-9", true);
    tainted.spec.as_mut().unwrap().taints = Some(vec![
        serde_json::from_value(
            json!({"key": "node.cloudprovider.kubernetes.io/shutdown", "effect": "NoSchedule"}),
        )
        .unwrap(),
    ]);
    let mut foreign = node("f", "i-8", true);
    foreign.spec.as_mut().unwrap().provider_id = Some("aws:///us-east-1a/i-8".into());
    let nodes = vec![
        node("n1", "i-1", true),
        node("n2", "i-2", false),
        tainted,
        foreign,
    ];
    let e = eligible_nodes(&nodes, "cloudsuite");
    assert_eq!(
        e.into_iter().collect::<Vec<_>>(),
        vec![("n1".to_string(), "i-1".to_string())]
    );
}
