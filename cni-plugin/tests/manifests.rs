//! The DaemonSet manifest parses into Kubernetes types, mounts what the
//! agent touches, and its RBAC grants exactly the calls the agent makes.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

fn docs(file: &str) -> Vec<serde_yaml::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/cni")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(all: &[serde_yaml::Value], kind: &str) -> Vec<T> {
    all.iter()
        .filter(|v| v["kind"].as_str() == Some(kind))
        .map(|v| serde_yaml::from_value(v.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
        .collect()
}

#[test]
fn rbac_grants_exactly_what_the_agent_calls() {
    let all = docs("rbac.yaml");
    let roles: Vec<ClusterRole> = of_kind(&all, "ClusterRole");
    assert_eq!(roles.len(), 1);
    let mut granted = BTreeSet::new();
    for rule in roles[0].rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert_ne!(v, "*", "no wildcards");
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let needed: BTreeSet<_> = cni_plugin::agent::API_CALLS
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    assert_eq!(granted, needed);

    let sas: Vec<ServiceAccount> = of_kind(&all, "ServiceAccount");
    let sa = sas[0].metadata.name.clone().unwrap();
    let bindings: Vec<ClusterRoleBinding> = of_kind(&all, "ClusterRoleBinding");
    assert_eq!(bindings.len(), 1);
    let b = &bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), roles[0].metadata.name.as_ref());
    let subjects = b.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), subjects[0].name.as_str()),
        ("ServiceAccount", sa.as_str())
    );

    let ds: Vec<DaemonSet> = of_kind(&docs("daemonset.yaml"), "DaemonSet");
    let spec = ds[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some(sa.as_str()));
}

#[test]
fn daemonset_runs_the_agent_on_the_host_network_with_its_mounts() {
    let ds: Vec<DaemonSet> = of_kind(&docs("daemonset.yaml"), "DaemonSet");
    assert_eq!(ds.len(), 1);
    let spec = ds[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "must run on nodes that are not ready yet"
    );
    let c = &spec.containers[0];
    let env = c.env.as_ref().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    let host_paths: BTreeSet<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    for p in ["/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni"] {
        assert!(host_paths.contains(p), "{p} not mounted: {host_paths:?}");
    }
    let mounts = c.volume_mounts.as_ref().unwrap();
    let args = c.args.clone().unwrap_or_default();
    for (flag, vol) in [("--conf-dir=", "cni-conf"), ("--bin-dir=", "cni-bin")] {
        let dir = args.iter().find_map(|a| a.strip_prefix(flag)).unwrap();
        let m = mounts.iter().find(|m| m.name == vol).unwrap();
        assert_eq!(m.mount_path, dir, "{flag} must point into the {vol} mount");
    }
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    let port = cni_plugin::agent::DEFAULT_METRICS_PORT;
    assert!(args.iter().any(|a| a.ends_with(&format!(":{port}"))));
    for probe in [&c.liveness_probe, &c.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.into())
        );
    }
}
