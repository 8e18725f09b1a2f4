//! manifests/ingress/ parses into typed objects, and the ClusterRole grants
//! exactly the verbs the controller uses.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use serde::Deserialize;

fn docs(file: &str) -> Vec<serde_yaml::Value> {
    let path = format!("{}/../manifests/ingress/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect()
}

fn of_kind(file: &str, kind: &str) -> Vec<serde_yaml::Value> {
    docs(file)
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

#[test]
fn manifest_parses_and_rbac_is_least_privilege() {
    let dep: Deployment =
        serde_yaml::from_value(of_kind("deployment.yaml", "Deployment").remove(0)).unwrap();
    let spec = dep.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    assert!(
        c.args
            .as_ref()
            .unwrap()
            .iter()
            .any(|a| a == "--leader-elect=true")
    );
    assert_eq!(
        spec.template
            .spec
            .as_ref()
            .unwrap()
            .service_account_name
            .as_deref(),
        Some("cloudsuite-ingress-controller")
    );

    let class: IngressClass =
        serde_yaml::from_value(of_kind("ingressclass.yaml", "IngressClass").remove(0)).unwrap();
    assert_eq!(
        class.spec.unwrap().controller.as_deref(),
        Some(lb_controller::ingress::CONTROLLER_NAME)
    );

    let role: ClusterRole =
        serde_yaml::from_value(of_kind("rbac.yaml", "ClusterRole").remove(0)).unwrap();
    let mut granted = BTreeSet::new();
    for r in role.rules.unwrap() {
        for g in r.api_groups.unwrap() {
            for res in r.resources.as_ref().unwrap() {
                for v in &r.verbs {
                    granted.insert(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    let want: BTreeSet<String> = [
        "networking.k8s.io/ingresses:get",
        "networking.k8s.io/ingresses:list",
        "networking.k8s.io/ingresses:watch",
        "networking.k8s.io/ingresses:patch",
        "networking.k8s.io/ingresses/status:patch",
        "networking.k8s.io/ingressclasses:list",
        "networking.k8s.io/ingressclasses:watch",
        "/services:list",
        "/services:watch",
        "/nodes:list",
        "/nodes:watch",
        "/secrets:list",
        "/secrets:watch",
        "discovery.k8s.io/endpointslices:list",
        "discovery.k8s.io/endpointslices:watch",
        "events.k8s.io/events:create",
        "events.k8s.io/events:patch",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(granted, want);
    let lease: Role = serde_yaml::from_value(of_kind("rbac.yaml", "Role").remove(0)).unwrap();
    let r = &lease.rules.unwrap()[0];
    assert_eq!(r.verbs, vec!["get", "create", "patch"]);
    assert_eq!(of_kind("rbac.yaml", "ServiceAccount").len(), 1);
    assert_eq!(of_kind("rbac.yaml", "ClusterRoleBinding").len(), 1);
    assert_eq!(of_kind("rbac.yaml", "RoleBinding").len(), 1);
}
