use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_controller::model::*;
use serde_json::{Value, json};

use super::{cfg, node, ready};
use crate::annotations as ann;
use crate::services::*;

fn svc(annotations: Value, spec: Value) -> Service {
    let mut s = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "uid": "0a1b2c3d-0000-0000-0000-000000000001", "annotations": annotations},
        "spec": {"type": "LoadBalancer", "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080},
        ]},
    });
    for (k, v) in spec.as_object().unwrap() {
        s["spec"][k] = v.clone();
    }
    serde_json::from_value(s).unwrap()
}

fn nodes() -> Vec<Node> {
    let mk = |name: &str, id: &str, extra: Value| {
        let mut n = node(name, ready("True"));
        let e = node(name, extra);
        n.metadata.labels = e.metadata.labels;
        let mut spec = e.spec.unwrap_or_default();
        spec.provider_id = Some(format!("cloudsuite://emu1/{id}"));
        n.spec = Some(spec);
        n
    };
    vec![
        mk("n1", "i-1", json!({})),
        mk("n2", "i-2", json!({})),
        // Not ready: excluded.
        {
            let mut n = mk("n3", "i-3", json!({}));
            n.status = node("n3", ready("False")).status;
            n
        },
        // Excluded by label.
        mk(
            "n4",
            "i-4",
            json!({"metadata": {"labels": {ann::EXCLUDE_NODE_LABEL: ""}}}),
        ),
        // Shutdown-tainted: excluded.
        mk(
            "n5",
            "i-5",
            json!({"spec": {"taints": [{"key": crate::provider::TAINT_SHUTDOWN, "effect": "NoSchedule"}]}}),
        ),
    ]
}

fn slices() -> Vec<EndpointSlice> {
    vec![serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.2.7"], "nodeName": "n2", "conditions": {"ready": true}},
            {"addresses": ["10.244.1.9"], "nodeName": "n1", "conditions": {"ready": false}},
        ],
    }))
    .unwrap()]
}

fn tr(s: &Service) -> Result<DesiredLb, TranslateError> {
    translate(s, &nodes(), &slices(), &BTreeMap::new(), &cfg())
}

fn targets(l: &DesiredListener) -> Vec<String> {
    l.default_backends
        .iter()
        .map(|b| format!("{}:{}", b.target.resource_id(), b.port))
        .collect()
}

#[test]
fn ownership_and_class() {
    let s = svc(json!({}), json!({}));
    assert!(is_ours(&s, "cloudsuite.io/lb"));
    assert!(!is_ours(
        &svc(json!({}), json!({"loadBalancerClass": "other.io/lb"})),
        "cloudsuite.io/lb"
    ));
    assert!(is_ours(
        &svc(json!({}), json!({"loadBalancerClass": "cloudsuite.io/lb"})),
        "cloudsuite.io/lb"
    ));
    assert!(!is_ours(
        &svc(json!({}), json!({"type": "ClusterIP"})),
        "cloudsuite.io/lb"
    ));
    let o = owner(&s, "c1");
    assert_eq!(
        (o.namespace.as_str(), o.name.as_str(), o.kind),
        ("default", "web", OwnerKind::Service)
    );
}

#[test]
fn defaults_node_backends_on_ready_nodes() {
    let d = tr(&svc(json!({}), json!({}))).unwrap();
    assert_eq!(
        d.network,
        LbNetwork::Public {
            eip: EipSource::Allocate { bandwidth: 10 }
        }
    );
    assert_eq!(d.loadbalancer_type, 0);
    assert_eq!(d.reuse_existing, None);
    assert!(d.source_ranges.is_empty());
    let l = &d.listeners[0];
    assert_eq!(
        (l.port, l.protocol, l.balance_mode),
        (80, Protocol::Tcp, BalanceMode::RoundRobin)
    );
    assert_eq!(l.health_check, None);
    assert_eq!(targets(l), vec!["i-1:30080", "i-2:30080"]);
}

#[test]
fn external_traffic_policy_local_uses_nodes_with_ready_endpoints() {
    let d = tr(&svc(json!({}), json!({"externalTrafficPolicy": "Local"}))).unwrap();
    assert_eq!(targets(&d.listeners[0]), vec!["i-2:30080"]);
}

#[test]
fn pod_backends_use_ready_endpoint_addresses() {
    let d = tr(&svc(json!({ann::BACKEND_TYPE: "pod"}), json!({}))).unwrap();
    assert_eq!(targets(&d.listeners[0]), vec!["10.244.2.7:8080"]);
    let e = tr(&svc(json!({ann::BACKEND_TYPE: "ip"}), json!({}))).unwrap_err();
    assert_eq!(e.field, ann::BACKEND_TYPE);
}

#[test]
fn every_annotation_is_honoured() {
    let s = svc(
        json!({
            ann::HEALTH_METHOD: "80:http|/healthz",
            ann::HEALTH_OPTION: "80:6|3|4|2",
            ann::BALANCE_MODE: "leastconn",
            ann::LB_TYPE: "2",
            ann::EIP_BANDWIDTH: "20",
            ann::SOURCE_RANGES: "10.0.0.0/8, 192.168.1.7/24",
        }),
        json!({"sessionAffinity": "ClientIP"}),
    );
    let d = tr(&s).unwrap();
    let l = &d.listeners[0];
    assert_eq!(
        l.balance_mode,
        BalanceMode::LeastConn,
        "the annotation wins over sessionAffinity"
    );
    assert_eq!(
        l.health_check,
        Some(HealthCheck {
            method: HealthCheckMethod::Http {
                path: "/healthz".into()
            },
            timing: HealthCheckTiming {
                interval_secs: 6,
                timeout_secs: 3,
                unhealthy_threshold: 4,
                healthy_threshold: 2
            },
        })
    );
    assert_eq!(d.loadbalancer_type, 2);
    assert_eq!(
        d.network,
        LbNetwork::Public {
            eip: EipSource::Allocate { bandwidth: 20 }
        }
    );
    assert_eq!(
        d.source_ranges,
        vec!["10.0.0.0/8".to_string(), "192.168.1.0/24".to_string()]
    );

    // sessionAffinity ClientIP alone -> source.
    let d = tr(&svc(json!({}), json!({"sessionAffinity": "ClientIP"}))).unwrap();
    assert_eq!(d.listeners[0].balance_mode, BalanceMode::Source);
    // spec.loadBalancerSourceRanges wins over the annotation.
    let d = tr(&svc(
        json!({ann::SOURCE_RANGES: "10.0.0.0/8"}),
        json!({"loadBalancerSourceRanges": ["1.2.3.0/24"]}),
    ))
    .unwrap();
    assert_eq!(d.source_ranges, vec!["1.2.3.0/24".to_string()]);
    // EIPs by id, by address, internal, reuse.
    let d = tr(&svc(
        json!({ann::EIP_IDS: "eip-a,eip-b", ann::EIP_SOURCE: "manual"}),
        json!({}),
    ))
    .unwrap();
    assert_eq!(
        d.network,
        LbNetwork::Public {
            eip: EipSource::Existing(vec!["eip-a".into(), "eip-b".into()])
        }
    );
    let d = tr(&svc(json!({}), json!({"loadBalancerIP": "127.77.0.9"}))).unwrap();
    assert_eq!(
        d.network,
        LbNetwork::Public {
            eip: EipSource::ByAddress("127.77.0.9".parse().unwrap())
        }
    );
    let d = tr(&svc(
        json!({ann::NETWORK_TYPE: "internal"}),
        json!({"loadBalancerIP": "172.30.1.200"}),
    ))
    .unwrap();
    assert_eq!(
        d.network,
        LbNetwork::Internal {
            vxnet: "vxnet-1".into(),
            private_ip: Some("172.30.1.200".parse().unwrap())
        }
    );
    let d = tr(&svc(
        json!({ann::NETWORK_TYPE: "internal", ann::VXNET_ID: "vxnet-9"}),
        json!({}),
    ))
    .unwrap();
    assert_eq!(
        d.network,
        LbNetwork::Internal {
            vxnet: "vxnet-9".into(),
            private_ip: None
        }
    );
    let d = tr(&svc(json!({ann::LB_ID: "lb-abc"}), json!({}))).unwrap();
    assert_eq!(d.reuse_existing.as_deref(), Some("lb-abc"));
}

#[test]
fn listener_protocols_and_certificates() {
    let s = svc(
        json!({ann::LISTENER_PROTOCOL: "80:http,443:https", ann::LISTENER_CERT: "443:web-tls"}),
        json!({"ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
            {"name": "https", "port": 443, "protocol": "TCP", "nodePort": 30443},
            {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
        ]}),
    );
    assert_eq!(cert_secret_names(&s).unwrap(), vec!["web-tls".to_string()]);
    const CHAIN: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("web-tls".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                k8s_openapi::ByteString(CHAIN.as_bytes().to_vec()),
            ),
            (
                "tls.key".to_string(),
                k8s_openapi::ByteString(KEY.as_bytes().to_vec()),
            ),
        ])),
        ..Default::default()
    };
    let cert = cert_from_secret(&secret).unwrap();
    assert_eq!(
        (cert.pem_chain.as_str(), cert.pem_key.as_str()),
        (CHAIN, KEY)
    );
    let mut empty = secret.clone();
    empty.data = None;
    assert_eq!(
        cert_from_secret(&empty).unwrap_err().field,
        ann::LISTENER_CERT
    );
    let certs = BTreeMap::from([("web-tls".to_string(), cert.clone())]);
    let d = translate(&s, &nodes(), &slices(), &certs, &cfg()).unwrap();
    let protos: Vec<Protocol> = d.listeners.iter().map(|l| l.protocol).collect();
    assert_eq!(protos, vec![Protocol::Http, Protocol::Https, Protocol::Udp]);
    assert_eq!(d.listeners[1].certificates, vec![cert]);
    assert!(d.listeners[0].forwardfor);
    assert_eq!(targets(&d.listeners[2]), vec!["i-1:30053", "i-2:30053"]);
    // The Secret is missing.
    let e = translate(&s, &nodes(), &slices(), &BTreeMap::new(), &cfg()).unwrap_err();
    assert!(
        e.field == ann::LISTENER_CERT && e.message.contains("web-tls"),
        "{e}"
    );
}

#[test]
fn errors_name_the_annotation_or_field() {
    let cases: Vec<(Value, Value, &str)> = vec![
        (
            json!({ann::HEALTH_METHOD: "80:icmp"}),
            json!({}),
            ann::HEALTH_METHOD,
        ),
        (
            json!({ann::HEALTH_OPTION: "80:1|2"}),
            json!({}),
            ann::HEALTH_OPTION,
        ),
        (
            json!({ann::HEALTH_OPTION: "81:10|5|2|5"}),
            json!({}),
            ann::HEALTH_OPTION,
        ),
        (
            json!({ann::BALANCE_MODE: "random"}),
            json!({}),
            ann::BALANCE_MODE,
        ),
        (
            json!({ann::LISTENER_PROTOCOL: "80:ftp"}),
            json!({}),
            ann::LISTENER_PROTOCOL,
        ),
        (
            json!({ann::LISTENER_PROTOCOL: "80:https"}),
            json!({}),
            ann::LISTENER_CERT,
        ),
        (
            json!({ann::LISTENER_PROTOCOL: "80:https", ann::LISTENER_CERT: "80:sc-123"}),
            json!({}),
            ann::LISTENER_CERT,
        ),
        (
            json!({ann::LISTENER_CERT: "80:web-tls"}),
            json!({}),
            ann::LISTENER_CERT,
        ),
        (
            json!({ann::NETWORK_TYPE: "private"}),
            json!({}),
            ann::NETWORK_TYPE,
        ),
        (json!({ann::EIP_SOURCE: "manual"}), json!({}), ann::EIP_IDS),
        (
            json!({ann::EIP_SOURCE: "steal"}),
            json!({}),
            ann::EIP_SOURCE,
        ),
        (
            json!({ann::EIP_BANDWIDTH: "0"}),
            json!({}),
            ann::EIP_BANDWIDTH,
        ),
        (json!({ann::LB_ID: "web-lb"}), json!({}), ann::LB_ID),
        (json!({ann::LB_TYPE: "7"}), json!({}), ann::LB_TYPE),
        (
            json!({ann::SOURCE_RANGES: "10.0.0.0/99"}),
            json!({}),
            "spec.loadBalancerSourceRanges",
        ),
        (
            json!({}),
            json!({"loadBalancerIP": "not-an-ip"}),
            "spec.loadBalancerIP",
        ),
        (
            json!({}),
            json!({"ports": [{"port": 80, "protocol": "SCTP", "nodePort": 30080}]}),
            "spec.ports[0].protocol",
        ),
        (
            json!({}),
            json!({"ports": [{"port": 80, "protocol": "TCP"}]}),
            "spec.ports[0].nodePort",
        ),
        (json!({}), json!({"ports": []}), "spec.ports"),
        (
            json!({ann::LISTENER_PROTOCOL: "80:udp"}),
            json!({}),
            ann::LISTENER_PROTOCOL,
        ),
    ];
    for (a, s, field) in cases {
        let e = tr(&svc(a.clone(), s.clone())).unwrap_err();
        assert_eq!(e.field, field, "{a} {s}: {e}");
        assert!(e.to_string().starts_with(field), "{e}");
    }
    // A reused LB cannot enforce source ranges: the model says which field.
    let e = tr(&svc(
        json!({ann::LB_ID: "lb-abc"}),
        json!({"loadBalancerSourceRanges": ["10.0.0.0/8"]}),
    ))
    .unwrap_err();
    assert!(e.field.contains("source_ranges"), "{e}");
    // Internal with no vxnet anywhere.
    let mut c = cfg();
    c.vxnet_id = None;
    let e = translate(
        &svc(json!({ann::NETWORK_TYPE: "internal"}), json!({})),
        &nodes(),
        &slices(),
        &BTreeMap::new(),
        &c,
    )
    .unwrap_err();
    assert_eq!(e.field, ann::VXNET_ID);
}

#[test]
fn per_port_parsing() {
    let p = PerPort::parse("a", "80:x, 443:y").unwrap();
    assert_eq!(
        (p.get(80), p.get(443), p.get(8080)),
        (Some("x"), Some("y"), None)
    );
    let p = PerPort::parse("a", "http|/h").unwrap();
    assert_eq!(p.get(1), Some("http|/h"));
    assert!(PerPort::parse("a", "80:x,80:y").is_err());
    assert!(
        PerPort::parse("a", "x,y")
            .unwrap_err()
            .to_string()
            .starts_with("a:")
    );
    assert!(PerPort::parse("a", "0:x").is_err());
}

#[test]
fn ensured_cache_matches_only_the_same_uid_desired_lb_and_addresses() {
    let s = svc(json!({}), json!({}));
    let d = tr(&s).unwrap();
    let entry = EnsuredEntry {
        uid: "u1".into(),
        digest: desired_digest(&d),
        addresses: vec!["1.2.3.4".into()],
    };
    let cache = Ensured::default();
    assert!(!cache.is_current("service/default/web", &entry));
    cache.record("service/default/web", entry.clone());
    assert!(cache.is_current("service/default/web", &entry));
    // A changed annotation, a re-created Service, an edited status: all miss.
    let changed = svc(json!({ann::BALANCE_MODE: "leastconn"}), json!({}));
    let other = EnsuredEntry {
        digest: desired_digest(&tr(&changed).unwrap()),
        ..entry.clone()
    };
    assert_ne!(other.digest, entry.digest);
    assert!(!cache.is_current("service/default/web", &other));
    let recreated = EnsuredEntry {
        uid: "u2".into(),
        ..entry.clone()
    };
    assert!(!cache.is_current("service/default/web", &recreated));
    let edited = EnsuredEntry {
        addresses: vec![],
        ..entry.clone()
    };
    assert!(!cache.is_current("service/default/web", &edited));
    // Same input, same digest (within the process).
    assert_eq!(desired_digest(&tr(&s).unwrap()), entry.digest);
    cache.forget("service/default/web");
    assert!(cache.is_empty());
}
