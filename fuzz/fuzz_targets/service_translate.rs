//! Service annotations and ports -> DesiredLb (`services::translate`): a
//! hostile Service yields a TranslateError naming the field, never a panic.
//!
//! Layout: the first byte picks the port count (0..8), then 3 bytes per port
//! (port u16, protocol selector); the rest is lines `<n>=<value>` where `n`
//! indexes the known annotations (so the fuzzer reaches their parsers
//! quickly) or `<name>:<value>` for an arbitrary key.
#![no_main]

use std::collections::BTreeMap;

use cloud_provider::annotations as ann;
use cloud_provider::config::{CloudConfig, DEFAULT_LB_CLASS};
use cloud_provider::provider::MatchKey;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use libfuzzer_sys::fuzz_target;

fn cfg() -> CloudConfig {
    CloudConfig {
        zone: "emu1".into(),
        region: "emu".into(),
        router_id: Some("rtr-1".into()),
        vxnet_id: Some("vxnet-1".into()),
        cluster_id: "c1".into(),
        cluster_cidr: Some("10.244.0.0/16".parse().expect("static CIDR")),
        provider_name: "cloudsuite".into(),
        node_match_order: MatchKey::DEFAULT_ORDER.to_vec(),
        load_balancer_class: DEFAULT_LB_CLASS.into(),
        default_eip_bandwidth: 10,
        default_lb_type: 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8);
    if rest.len() < n * 3 {
        return;
    }
    let (port_bytes, text) = rest.split_at(n * 3);
    let ports: Vec<ServicePort> = port_bytes
        .chunks(3)
        .enumerate()
        .map(|(i, c)| ServicePort {
            name: Some(format!("p{i}")),
            port: i32::from(u16::from_be_bytes([c[0], c[1]])) - i32::from(c[2] & 1),
            protocol: Some(["TCP", "UDP", "SCTP", ""][usize::from(c[2] >> 1) % 4].into()),
            node_port: Some(30000 + i as i32),
            ..Default::default()
        })
        .collect();
    let text = String::from_utf8_lossy(text);
    let mut annotations = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=')
            && let Ok(i) = k.parse::<usize>()
        {
            annotations.insert(ann::ALL[i % ann::ALL.len()].to_string(), v.to_string());
        } else if let Some((k, v)) = line.split_once(':') {
            annotations.insert(k.to_string(), v.to_string());
        }
    }
    let mut svc = Service::default();
    svc.metadata.name = Some("svc".into());
    svc.metadata.namespace = Some("default".into());
    svc.metadata.uid = Some("0000-uid".into());
    svc.metadata.annotations = Some(annotations);
    svc.spec = Some(ServiceSpec {
        type_: Some("LoadBalancer".into()),
        ports: Some(ports),
        ..Default::default()
    });
    let _ = cloud_provider::services::cert_secret_names(&svc);
    if let Err(e) = cloud_provider::services::translate_with(
        &svc,
        &BTreeMap::new(),
        &[] as &[k8s_openapi::api::discovery::v1::EndpointSlice],
        &BTreeMap::new(),
        &cfg(),
    ) {
        assert!(!e.to_string().is_empty());
    }
});
