//! Kubernetes I/O of the Ingress controller over a mock transport
//! (`tower_test::mock::pair` -> `kube::Client`), every request recorded with
//! the number of IaaS calls made before it: the finalizer is stored before
//! the cloud is touched and removed only after cleanup, and deletion never
//! deadlocks (LB already gone, Secret already gone, class changed).

mod ingress_common;

use std::sync::Arc;

use ingress_common::*;
use lb_controller::ingress::annotations as ann;
use lb_controller::ingress::reconcile;
use serde_json::{Value, json};

fn simple(name: &str) -> k8s_openapi::api::networking::v1::Ingress {
    ingress(
        name,
        json!({"rules": [{"host": "a.example.com", "http": {"paths": [path("/", "Prefix", "svc")]}}]}),
        json!({}),
    )
}

#[tokio::test]
async fn finalizer_then_ensure_then_status_then_delete() {
    let env = Env::start().await;
    let mut w = World::new();
    w.add_pod_service("svc", &["127.0.0.41:8080".parse().unwrap()]);
    let ing = simple("web");
    reconcile(Arc::new(ing.clone()), env.ctx(&w)).await.unwrap();
    let ing = finalized(&ing, "ingress");
    w.put(&ing);
    reconcile(Arc::new(ing.clone()), env.ctx(&w)).await.unwrap();
    let seen = env.take_seen();
    let kinds: Vec<(String, String, u64)> = seen
        .iter()
        .map(|s| {
            let what = if s.method == "POST" {
                s.body["reason"].as_str().unwrap_or("").to_string()
            } else {
                s.path.clone()
            };
            (s.method.clone(), what, s.cloud_calls)
        })
        .collect();
    // 1. finalizer (and applied-LB record) with no cloud call yet.
    assert_eq!(kinds[0].0, "PATCH");
    assert_eq!(
        kinds[0].1,
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses/web"
    );
    assert_eq!(kinds[0].2, 0);
    assert_eq!(
        seen[0].body["metadata"]["resourceVersion"], "1",
        "guarded by resourceVersion"
    );
    assert_eq!(
        seen[0].body["metadata"]["annotations"][ann::APPLIED_LB],
        "ingress"
    );
    // 2. the LB is ensured, then the Event and the status follow.
    let ensured = kinds
        .iter()
        .position(|k| k.1 == "EnsuredLoadBalancer")
        .expect("event");
    let status = kinds
        .iter()
        .position(|k| k.1.ends_with("/web/status"))
        .expect("status");
    assert!(kinds[ensured].2 > 0 && kinds[status].2 == kinds[ensured].2);
    assert_eq!(seen.len(), 3, "{kinds:?}");
    let ip = status_ip(&seen, "web").unwrap();
    assert!(ip.starts_with("127.79."), "{ip}");

    // 3. deletion: events, cloud cleanup, then the finalizer goes last.
    let gone = deleting(&ing);
    w.put(&gone);
    let calls_before = env.total_calls();
    reconcile(Arc::new(gone), env.ctx(&w)).await.unwrap();
    let seen = env.take_seen();
    let last = seen.last().unwrap();
    assert_eq!(last.method, "PATCH");
    assert_eq!(last.body["metadata"]["finalizers"], Value::Null);
    assert_eq!(
        last.body["metadata"]["annotations"][ann::APPLIED_LB],
        Value::Null
    );
    assert!(last.cloud_calls > calls_before);
    assert_eq!(last.cloud_calls, env.total_calls());
    assert!(
        seen.iter()
            .any(|s| s.body["reason"] == "DeletedLoadBalancer")
    );
    env.assert_clean().await;
}

#[tokio::test]
async fn deletion_with_lb_already_gone_releases_the_finalizer() {
    let env = Env::start().await;
    let w = World::new();
    let gone = deleting(&finalized(&simple("web"), "ingress"));
    reconcile(Arc::new(gone), env.ctx(&w)).await.unwrap();
    let seen = env.take_seen();
    let last = seen.last().unwrap();
    assert_eq!(last.method, "PATCH");
    assert_eq!(last.body["metadata"]["finalizers"], Value::Null);
    assert_eq!(env.write_calls(), 0, "nothing to delete");
}

#[tokio::test]
async fn deletion_with_secret_and_service_gone_cleans_up() {
    let env = Env::start().await;
    let mut w = World::new();
    w.add_pod_service("svc", &["127.0.0.42:8080".parse().unwrap()]);
    let ca = Ca::new();
    let (crt, key) = ca.leaf(&["a.example.com"]);
    w.set_secret("tls", &crt, &key);
    let mut ing = simple("web");
    ing.spec.as_mut().unwrap().tls = Some(vec![
        serde_json::from_value(json!({"hosts": ["a.example.com"], "secretName": "tls"})).unwrap(),
    ]);
    let ing = finalized(&ing, "ingress");
    w.put(&ing);
    reconcile(Arc::new(ing.clone()), env.ctx(&w)).await.unwrap();
    assert_eq!(env.certificates().await.len(), 1);
    w.secrets.clear();
    w.services.clear();
    w.slices.clear();
    let gone = deleting(&ing);
    w.put(&gone);
    reconcile(Arc::new(gone), env.ctx(&w)).await.unwrap();
    let seen = env.take_seen();
    assert_eq!(
        seen.last().unwrap().body["metadata"]["finalizers"],
        Value::Null
    );
    env.assert_clean().await;
}

#[tokio::test]
async fn class_change_cleans_up_clears_status_and_releases() {
    let env = Env::start().await;
    let mut w = World::new();
    w.add_pod_service("svc", &["127.0.0.43:8080".parse().unwrap()]);
    let ing = finalized(&simple("web"), "ingress");
    w.put(&ing);
    reconcile(Arc::new(ing.clone()), env.ctx(&w)).await.unwrap();
    let ip = status_ip(&env.take_seen(), "web").unwrap();
    let mut moved = ing.clone();
    moved.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
    moved.status =
        Some(serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": ip}]}})).unwrap());
    w.put(&moved);
    reconcile(Arc::new(moved), env.ctx(&w)).await.unwrap();
    let seen = env.take_seen();
    let status = seen
        .iter()
        .find(|s| s.path.ends_with("/status"))
        .expect("status cleared");
    assert_eq!(
        status.body["status"]["loadBalancer"]["ingress"],
        Value::Null
    );
    let last = seen.last().unwrap();
    assert_eq!(last.body["metadata"]["finalizers"], Value::Null);
    env.assert_clean().await;
}

#[tokio::test]
async fn invalid_annotation_is_an_event_and_touches_nothing() {
    let env = Env::start().await;
    let mut w = World::new();
    w.add_pod_service("svc", &["127.0.0.44:8080".parse().unwrap()]);
    let mut ing = finalized(&simple("web"), "ingress");
    ing.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ann::SOURCE_RANGES.into(), "10.0.0.0/8,nope".into());
    w.put(&ing);
    let err = reconcile(Arc::new(ing), env.ctx(&w)).await.unwrap_err();
    assert!(err.to_string().contains(ann::SOURCE_RANGES), "{err}");
    assert_eq!(err.metric_label(), "invalid_ingress");
    let seen = env.take_seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["reason"], "InvalidIngress");
    assert_eq!(seen[0].body["type"], "Warning");
    assert!(
        seen[0].body["note"]
            .as_str()
            .unwrap()
            .contains(ann::SOURCE_RANGES)
    );
    assert_eq!(env.total_calls(), 0);
}

#[tokio::test]
async fn moving_into_a_group_removes_the_old_lb() {
    let env = Env::start().await;
    let mut w = World::new();
    w.add_pod_service("svc", &["127.0.0.45:8080".parse().unwrap()]);
    let ing = finalized(&simple("web"), "ingress");
    w.put(&ing);
    reconcile(Arc::new(ing.clone()), env.ctx(&w)).await.unwrap();
    let first = status_ip(&env.take_seen(), "web").unwrap();
    let mut grouped = ing.clone();
    grouped
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ann::GROUP_NAME.into(), "shared".into());
    w.put(&grouped);
    // The re-read after cleanup returns the object with the old record.
    env.gets.lock().unwrap().insert(
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses/web".into(),
        serde_json::to_value(&grouped).unwrap(),
    );
    reconcile(Arc::new(grouped.clone()), env.ctx(&w))
        .await
        .unwrap();
    let seen = env.take_seen();
    let second = status_ip(&seen, "web").unwrap();
    assert_ne!(first, second, "a new LB for the group");
    assert_eq!(env.lb_count().await, 1, "the Ingress's own LB was deleted");
    let last = seen.last().unwrap();
    assert_eq!(
        last.body["metadata"]["annotations"][ann::APPLIED_LB],
        "group:shared"
    );
    let mut done = finalized(&grouped, "group:shared");
    done = deleting(&done);
    w.put(&done);
    reconcile(Arc::new(done), env.ctx(&w)).await.unwrap();
    env.assert_clean().await;
}
