use serde_json::json;

use super::{cfg, instance, node, uninit_taint, with_eip};
use crate::provider::*;

#[test]
fn provider_id_round_trip() {
    let p = provider_id("cloudsuite", "emu1", "i-abc");
    assert_eq!(p, "cloudsuite://emu1/i-abc");
    assert_eq!(
        parse_provider_id("cloudsuite", &p),
        Some(("emu1".into(), "i-abc".into()))
    );
    assert_eq!(
        parse_provider_id("cloudsuite", "cloudsuite:///emu1/i-abc"),
        Some(("emu1".into(), "i-abc".into()))
    );
    assert_eq!(parse_provider_id("cloudsuite", "aws:///emu1/i-abc"), None);
    assert_eq!(parse_provider_id("cloudsuite", "cloudsuite://emu1"), None);
    assert_eq!(
        parse_provider_id("cloudsuite", "cloudsuite://emu1/a/b"),
        None
    );
    assert_eq!(
        parse_provider_id("cloudsuite", "cloudsuitex://emu1/i-1"),
        None
    );
}

#[test]
fn match_key_parsing() {
    assert_eq!("provider-id".parse::<MatchKey>(), Ok(MatchKey::ProviderId));
    assert_eq!("Internal_IP".parse::<MatchKey>(), Ok(MatchKey::InternalIp));
    assert_eq!("name".parse::<MatchKey>(), Ok(MatchKey::NodeName));
    assert!("mac".parse::<MatchKey>().unwrap_err().contains("mac"));
}

#[test]
fn matches_in_order_and_by_every_key() {
    let insts = vec![
        instance("i-1", "node-1", "172.30.1.11", "running"),
        instance("i-2", "node-2", "172.30.1.12", "running"),
        instance("i-3", "web-3", "172.30.1.13", "running"),
    ];
    let order = MatchKey::DEFAULT_ORDER;
    // providerID wins over a misleading name.
    let n = node(
        "node-1",
        json!({"spec": {"providerID": "cloudsuite://emu1/i-2"}}),
    );
    let (i, k) = find_instance(&n, &insts, &order, "cloudsuite").unwrap();
    assert_eq!((i.instance_id.as_str(), k), ("i-2", MatchKey::ProviderId));
    // Node named after the instance id.
    let n = node("i-3", json!({}));
    assert_eq!(
        find_instance(&n, &insts, &order, "cloudsuite").unwrap().1,
        MatchKey::InstanceId
    );
    // Instance id from the label.
    let n = node(
        "whatever",
        json!({"metadata": {"labels": {LABEL_INSTANCE_ID: "i-1"}}}),
    );
    assert_eq!(
        find_instance(&n, &insts, &order, "cloudsuite")
            .unwrap()
            .0
            .instance_id,
        "i-1"
    );
    // Node name = instance name.
    let n = node("node-2", json!({}));
    assert_eq!(
        find_instance(&n, &insts, &order, "cloudsuite").unwrap().1,
        MatchKey::NodeName
    );
    // Hostname (FQDN's first label) when the node name differs (openstack #540).
    let n = node(
        "k8s-worker-a",
        json!({"status": {"addresses": [{"type": "Hostname", "address": "web-3.example.internal"}]}}),
    );
    let (i, k) = find_instance(&n, &insts, &order, "cloudsuite").unwrap();
    assert_eq!((i.instance_id.as_str(), k), ("i-3", MatchKey::Hostname));
    // Private IP through kubelet's provided-node-ip annotation.
    let n = node(
        "k8s-worker-b",
        json!({"metadata": {"annotations": {ANNOTATION_PROVIDED_IP: "172.30.1.12"}}}),
    );
    let (i, k) = find_instance(&n, &insts, &order, "cloudsuite").unwrap();
    assert_eq!((i.instance_id.as_str(), k), ("i-2", MatchKey::InternalIp));
    // Configured order restricts the keys tried.
    let n = node("node-2", json!({}));
    let e = find_instance(&n, &insts, &[MatchKey::InternalIp], "cloudsuite").unwrap_err();
    assert_eq!(e.tried.len(), 1);
}

#[test]
fn no_match_names_every_key_tried_and_ambiguity_is_not_guessed() {
    let insts = vec![
        instance("i-1", "dup", "172.30.1.11", "running"),
        instance("i-2", "dup", "172.30.1.12", "running"),
        instance("i-9", "gone", "172.30.1.19", "terminated"),
    ];
    let n = node(
        "dup",
        json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.9.9.9"}]}}),
    );
    let e = find_instance(&n, &insts, &MatchKey::DEFAULT_ORDER, "cloudsuite").unwrap_err();
    let msg = e.to_string();
    for k in [
        "provider-id (node has no value)",
        "instance-id (dup matched nothing)",
        "node-name (dup is ambiguous: i-1, i-2)",
        "internal-ip (10.9.9.9 matched nothing)",
    ] {
        assert!(msg.contains(k), "{msg}");
    }
    // A terminated instance's reused name does not match.
    let n = node("gone", json!({}));
    assert!(find_instance(&n, &insts, &[MatchKey::NodeName], "cloudsuite").is_err());
    // ...but its id still does (the lifecycle controller needs that).
    let n = node(
        "x",
        json!({"spec": {"providerID": "cloudsuite://emu1/i-9"}}),
    );
    assert!(find_instance(&n, &insts, &[MatchKey::ProviderId], "cloudsuite").is_ok());
}

#[test]
fn addresses_and_labels() {
    let inst = with_eip(
        instance("i-1", "node-1", "172.30.1.11", "running"),
        "127.77.0.5",
    );
    let n = node("node-1", json!({}));
    let a = node_addresses(&n, &inst, Some("vxnet-1"));
    let pairs: Vec<(&str, &str)> = a
        .iter()
        .map(|a| (a.type_.as_str(), a.address.as_str()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("InternalIP", "172.30.1.11"),
            ("ExternalIP", "127.77.0.5"),
            ("Hostname", "node-1")
        ]
    );
    // kubelet's Hostname is kept.
    let n = node(
        "node-1",
        json!({"status": {"addresses": [{"type": "Hostname", "address": "h1"}]}}),
    );
    let a = node_addresses(
        &n,
        &instance("i-1", "node-1", "172.30.1.11", "running"),
        None,
    );
    assert_eq!(a.last().unwrap().address, "h1");
    assert_eq!(a.len(), 2);
    let l = node_labels(&inst, "emu1", "emu");
    assert_eq!(l[LABEL_INSTANCE_TYPE], "c1m2");
    assert_eq!(l[LABEL_ZONE], "emu1");
    assert_eq!(l[LABEL_REGION], "emu");
}

#[test]
fn init_plan_sets_everything_then_drops_only_the_taint() {
    let other = json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"});
    let n = node(
        "node-1",
        json!({"spec": {"taints": [uninit_taint(), other.clone()]}}),
    );
    let insts = vec![instance("i-1", "node-1", "172.30.1.11", "running")];
    let p = plan_node_init(&n, &insts, &cfg()).unwrap();
    assert_eq!(p.provider_id.as_deref(), Some("cloudsuite://emu1/i-1"));
    assert_eq!(p.matched_by, MatchKey::NodeName);
    assert_eq!(p.addresses.as_ref().unwrap().len(), 2);
    assert_eq!(p.labels.len(), 3);
    let t = p.taints.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].key, "dedicated");
    // Already initialised: nothing to write.
    let n = node(
        "node-1",
        json!({
            "metadata": {"labels": {LABEL_INSTANCE_TYPE: "c1m2", LABEL_ZONE: "emu1", LABEL_REGION: "emu"}},
            "spec": {"providerID": "cloudsuite://emu1/i-1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.30.1.11"}, {"type": "Hostname", "address": "node-1"}]},
        }),
    );
    let p = plan_node_init(&n, &insts, &cfg()).unwrap();
    assert_eq!(
        (p.provider_id, p.addresses, p.labels.len(), p.taints),
        (None, None, 0, None)
    );
}
