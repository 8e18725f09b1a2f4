//! The real control plane harness itself: a Node and a Service go through
//! create, status patch, list and delete against etcd + kube-apiserver.
//! Skips (one `SKIP:` line) when KUBE_APISERVER / ETCD are not given.

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec,
};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use suite_tests::control_plane::ControlPlane;

#[tokio::test]
async fn node_and_service_round_trip() -> anyhow::Result<()> {
    let Some(plane) = ControlPlane::start().await? else {
        return Ok(());
    };
    assert!(
        plane.kubeconfig_path().is_file(),
        "kubeconfig for binaries under test is written"
    );
    let client = plane.client();

    // Node: create, patch status (as a cloud controller would), list, delete.
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some("cp-test-node".into()),
            labels: Some([("suite-test".to_string(), "control-plane".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    nodes.create(&PostParams::default(), &node).await?;

    let status = serde_json::json!({
        "status": NodeStatus {
            addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: "192.168.0.10".into() }]),
            ..Default::default()
        }
    });
    let patched = nodes
        .patch_status(
            "cp-test-node",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
    let addresses = patched.status.and_then(|s| s.addresses).unwrap_or_default();
    assert_eq!(addresses.len(), 1, "status patch stored: {addresses:?}");
    assert_eq!(addresses[0].address, "192.168.0.10");

    let listed = nodes
        .list(&ListParams::default().labels("suite-test=control-plane"))
        .await?;
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    assert_eq!(names, ["cp-test-node"]);

    // Service: create in `default` (the apiserver bootstraps it) and check a
    // cluster IP came from the configured range.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service = Service {
        metadata: ObjectMeta {
            name: Some("cp-test-svc".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = services.create(&PostParams::default(), &service).await?;
    let spec = created.spec.unwrap_or_default();
    let cluster_ip = spec.cluster_ip.unwrap_or_default();
    assert!(
        cluster_ip.starts_with("10.96."),
        "cluster IP {cluster_ip:?} from the service CIDR"
    );
    let node_port = spec.ports.unwrap_or_default()[0].node_port;
    assert!(
        node_port.is_some(),
        "a LoadBalancer Service gets a node port"
    );

    services
        .delete("cp-test-svc", &DeleteParams::default())
        .await?;
    nodes
        .delete("cp-test-node", &DeleteParams::default())
        .await?;

    // Both are gone (no finalizers are set, so deletion is immediate).
    assert!(services.get_opt("cp-test-svc").await?.is_none());
    assert!(nodes.get_opt("cp-test-node").await?.is_none());

    // Other identities authenticate by certificate and get only what RBAC
    // grants: a user in no group may not list nodes.
    let nobody: Api<Node> = Api::all(plane.client_for("nobody", None).await?);
    match nobody.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 for an unprivileged user, got {other:?}"),
    }
    Ok(())
}
