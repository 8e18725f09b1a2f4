//! Kubernetes I/O as scripted scenarios over a mock transport (every
//! request the controllers send is asserted, in order, and answered with a
//! canned response), with the cloud side served by the in-process emulator.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cloud_provider::services::{self, FINALIZER, ServiceCtx, ServiceInputs};
use cloud_provider::{lifecycle, nodes, routes};
use common::*;
use iaas_client::actions::{
    AddRouterStatics, DescribeEips, DescribeLoadBalancers, DescribeRouterStatics, DescribeRouters,
    DescribeSecurityGroups, RouterStaticSpec, StopInstances, TerminateInstances, UpdateRouters,
};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};

#[tokio::test]
async fn node_init_sends_exactly_the_right_patches() {
    let cloud = Cloud::start().await;
    let inst = cloud.instance_named("node-1").await;
    let ip = inst.vxnets[0].private_ip.clone();
    let pid = format!("cloudsuite://emu1/{}", inst.instance_id);
    let other_taint = json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"});
    let n = node_json(
        "node-1",
        json!({
            "spec": {"taints": [{"key": UNINIT, "value": "true", "effect": "NoSchedule"}, other_taint.clone()]},
            "status": {"addresses": [{"type": "Hostname", "address": "node-1"}]},
        }),
    );
    let node_before = n.clone();
    let (ip2, pid2, n2) = (ip.clone(), pid.clone(), n.clone());
    let (kube, api) = script(vec![
        step(
            "PATCH",
            "/api/v1/nodes/node-1/status",
            move |b| {
                assert_eq!(
                    b,
                    &json!({"status": {"addresses": [
                        {"type": "InternalIP", "address": ip2},
                        {"type": "Hostname", "address": "node-1"},
                    ]}})
                )
            },
            move |_| {
                let mut v = n2.clone();
                v["metadata"]["resourceVersion"] = json!("11");
                (200, v)
            },
        ),
        step(
            "PATCH",
            "/api/v1/nodes/node-1",
            move |b| {
                assert_eq!(
                    b,
                    &json!({
                        "metadata": {
                            "resourceVersion": "11",
                            "labels": {
                                "node.kubernetes.io/instance-type": "c1m2",
                                "topology.kubernetes.io/zone": "emu1",
                                "topology.kubernetes.io/region": "emu",
                            },
                        },
                        "spec": {"providerID": pid2, "taints": [other_taint]},
                    })
                )
            },
            move |_| (200, n.clone()),
        ),
    ]);
    let ctx = cloud.context(kube, cloud.config().await);
    let node: Node = serde_json::from_value(node_before).unwrap();
    nodes::reconcile(Arc::new(node), ctx.clone()).await.unwrap();
    drop(ctx);
    let seen = api.await.unwrap();
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn unmatched_node_gets_an_event_naming_the_keys_and_an_error() {
    let cloud = Cloud::start().await;
    let (kube, api) = script(vec![event(
        "default",
        "InstanceNotFound",
        "tried provider-id",
    )]);
    let ctx = cloud.context(kube, cloud.config().await);
    let n = common::node(
        "ghost",
        json!({"spec": {"taints": [{"key": UNINIT, "effect": "NoSchedule"}]},
               "status": {"addresses": [{"type": "InternalIP", "address": "10.9.9.9"}]}}),
    );
    let err = nodes::reconcile(Arc::new(n.clone()), ctx.clone())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("node-name (ghost matched nothing)") && msg.contains("internal-ip (10.9.9.9"),
        "{msg}"
    );
    // The work queue backs off exponentially per node.
    let a = nodes::error_policy(Arc::new(n.clone()), &err, ctx.clone());
    let b = nodes::error_policy(Arc::new(n), &err, ctx.clone());
    assert_ne!(a, b);
    drop(ctx);
    api.await.unwrap();
}

#[tokio::test]
async fn lifecycle_deletes_gone_nodes_and_taints_stopped_ones_with_one_describe() {
    let cloud = Cloud::start().await;
    let i1 = cloud.instance_named("node-1").await;
    let i2 = cloud.instance_named("node-2").await;
    let i3 = cloud.instance_named("node-3").await;
    let job = cloud
        .client
        .terminate_instances(&TerminateInstances::new([i1.instance_id.clone()]))
        .await
        .unwrap();
    cloud.client.wait_job(&job.job_id, None).await.unwrap();
    let job = cloud
        .client
        .stop_instances(&StopInstances::new([i2.instance_id.clone()]))
        .await
        .unwrap();
    cloud.client.wait_job(&job.job_id, None).await.unwrap();
    let pid = |i: &iaas_client::model::Instance| format!("cloudsuite://emu1/{}", i.instance_id);
    let addrs = |i: &iaas_client::model::Instance, name: &str| json!([{"type": "InternalIP", "address": i.vxnets[0].private_ip}, {"type": "Hostname", "address": name}]);
    let mut n1 = node_json("node-1", json!({"spec": {"providerID": pid(&i1)}}));
    merge(&mut n1, ready("False"));
    let mut n2 = node_json(
        "node-2",
        json!({"spec": {"providerID": pid(&i2)}, "status": {"addresses": addrs(&i2, "node-2")}}),
    );
    merge(&mut n2, ready("Unknown"));
    let mut n3 = node_json(
        "node-3",
        json!({"spec": {"providerID": pid(&i3), "taints": [{"key": SHUTDOWN, "effect": "NoSchedule"}]},
               "status": {"addresses": addrs(&i3, "node-3")}}),
    );
    merge(&mut n3, ready("True"));
    // A node of another provider is never touched.
    let mut foreign = node_json(
        "other",
        json!({"spec": {"providerID": "aws:///us-east-1a/i-0"}}),
    );
    merge(&mut foreign, ready("False"));
    let list = node_list(vec![n1.clone(), n2.clone(), n3.clone(), foreign]);
    let (r1, r2, r3) = (n1.clone(), n2.clone(), n3.clone());
    let (kube, api) = script(vec![
        event("default", "DeletingNode", "terminated"),
        step(
            "DELETE",
            "/api/v1/nodes/node-1",
            |b| assert_eq!(b["preconditions"]["uid"], "uid-node-1", "{b}"),
            move |_| (200, r1.clone()),
        ),
        step(
            "PATCH",
            "/api/v1/nodes/node-2",
            |b| {
                assert_eq!(b["metadata"]["resourceVersion"], "10");
                let t = b["spec"]["taints"].as_array().unwrap();
                assert_eq!(t.len(), 1);
                assert_eq!(
                    (t[0]["key"].as_str(), t[0]["effect"].as_str()),
                    (Some(SHUTDOWN), Some("NoSchedule"))
                );
            },
            move |_| (200, r2.clone()),
        ),
        event("default", "NodeShutdown", "shut down"),
        step(
            "PATCH",
            "/api/v1/nodes/node-3",
            |b| assert_eq!(b["spec"]["taints"], Value::Null, "{b}"),
            move |_| (200, r3.clone()),
        ),
        event("default", "NodeRunning", "running again"),
    ]);
    let ctx = cloud.context(kube, cloud.config().await);
    let before = cloud.calls("DescribeInstances");
    lifecycle::pass(&ctx, &nodes_of(&list)).await.unwrap();
    assert_eq!(
        cloud.calls("DescribeInstances") - before,
        1,
        "one batched DescribeInstances per pass"
    );
    drop(ctx);
    api.await.unwrap();
}

#[tokio::test]
async fn routes_are_created_in_one_batch_then_condition_set_and_idle_sync_writes_nothing() {
    let cloud = Cloud::start().await;
    let router = cloud.router_id().await;
    // A stale route of ours and a user's route outside our ownership.
    cloud
        .client
        .add_router_statics(&AddRouterStatics {
            router: router.clone(),
            vxnet: None,
            statics: vec![
                RouterStaticSpec::route(
                    "10.244.9.0/24",
                    "172.30.1.99",
                    Some("k8s-route:c1:gone".into()),
                ),
                RouterStaticSpec::route("10.99.0.0/16", "172.30.1.50", Some("user-route".into())),
            ],
        })
        .await
        .unwrap();
    let job = cloud
        .client
        .update_routers(&UpdateRouters::new([router.clone()]))
        .await
        .unwrap();
    cloud.client.wait_job(&job.job_id, None).await.unwrap();

    let mk = |name: &str, cidr: &str, ip: &str, cond: bool| {
        let mut n = node_json(
            name,
            json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        );
        if cond {
            merge(
                &mut n,
                json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated"}]}}),
            );
        }
        n
    };
    let list = node_list(vec![
        mk("node-1", "10.244.1.0/24", "172.30.1.11", false),
        mk("node-2", "10.244.2.0/24", "172.30.1.12", false),
        node_json("node-3", json!({})),
    ]);
    let cond_check = |b: &Value| {
        let c = &b["status"]["conditions"][0];
        assert_eq!(
            (
                c["type"].as_str(),
                c["status"].as_str(),
                c["reason"].as_str()
            ),
            (
                Some("NetworkUnavailable"),
                Some("False"),
                Some("RouteCreated")
            ),
            "{b}"
        );
    };
    let (kube, api) = script(vec![
        step("PATCH", "/api/v1/nodes/node-1/status", cond_check, |_| {
            (200, node_json("node-1", json!({})))
        }),
        step("PATCH", "/api/v1/nodes/node-2/status", cond_check, |_| {
            (200, node_json("node-2", json!({})))
        }),
    ]);
    let ctx = cloud.context(kube, cloud.config().await);
    let (adds, dels, updates) = (
        cloud.calls("AddRouterStatics"),
        cloud.calls("DeleteRouterStatics"),
        cloud.calls("UpdateRouters"),
    );
    let plan = routes::sync(&ctx, &nodes_of(&list)).await.unwrap();
    assert_eq!(plan.add.len(), 2);
    assert_eq!(plan.delete.len(), 1);
    assert_eq!(
        cloud.calls("AddRouterStatics") - adds,
        1,
        "one AddRouterStatics for all routes"
    );
    assert_eq!(cloud.calls("DeleteRouterStatics") - dels, 1);
    assert_eq!(
        cloud.calls("UpdateRouters") - updates,
        1,
        "one UpdateRouters per batch"
    );
    drop(ctx);
    api.await.unwrap();
    let mut statics: Vec<(String, String, String)> = cloud
        .client
        .describe_router_statics_all(&DescribeRouterStatics {
            router: Some(router.clone()),
            static_type: Some(9),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.router_static_name, s.val1, s.val2))
        .collect();
    statics.sort();
    assert_eq!(
        statics,
        vec![
            (
                "k8s-route:c1:node-1".into(),
                "10.244.1.0/24".into(),
                "172.30.1.11".into()
            ),
            (
                "k8s-route:c1:node-2".into(),
                "10.244.2.0/24".into(),
                "172.30.1.12".into()
            ),
            (
                "user-route".into(),
                "10.99.0.0/16".into(),
                "172.30.1.50".into()
            ),
        ]
    );

    // Idle resync: one Describe, no cloud writes, no Node writes.
    let list = node_list(vec![
        mk("node-1", "10.244.1.0/24", "172.30.1.11", true),
        mk("node-2", "10.244.2.0/24", "172.30.1.12", true),
    ]);
    let (kube, api) = script(vec![]);
    let ctx = cloud.context(kube, cloud.config().await);
    let writes = cloud.writes();
    let describes = cloud.calls("DescribeRouterStatics");
    let plan = routes::sync(&ctx, &nodes_of(&list)).await.unwrap();
    assert!(plan.is_noop());
    assert_eq!(cloud.writes(), writes, "idle sync made cloud writes");
    assert_eq!(cloud.calls("DescribeRouterStatics") - describes, 1);
    drop(ctx);
    api.await.unwrap();

    // A sync that died between AddRouterStatics and UpdateRouters: the
    // statics are listed but the router is not applied. The next (otherwise
    // idle) sync applies them with one UpdateRouters and nothing else.
    cloud
        .client
        .add_router_statics(&AddRouterStatics {
            router: router.clone(),
            vxnet: None,
            statics: vec![RouterStaticSpec::route(
                "10.244.3.0/24",
                "172.30.1.13",
                Some("k8s-route:c1:node-3".into()),
            )],
        })
        .await
        .unwrap();
    let list = node_list(vec![
        mk("node-1", "10.244.1.0/24", "172.30.1.11", true),
        mk("node-2", "10.244.2.0/24", "172.30.1.12", true),
        mk("node-3", "10.244.3.0/24", "172.30.1.13", true),
    ]);
    let (kube, api) = script(vec![]);
    let ctx = cloud.context(kube, cloud.config().await);
    let (adds, updates) = (
        cloud.calls("AddRouterStatics"),
        cloud.calls("UpdateRouters"),
    );
    let plan = routes::sync(&ctx, &nodes_of(&list)).await.unwrap();
    assert!(plan.is_noop());
    assert_eq!(cloud.calls("AddRouterStatics"), adds, "no static re-added");
    assert_eq!(
        cloud.calls("UpdateRouters") - updates,
        1,
        "the unapplied statics are applied"
    );
    let applied = cloud
        .client
        .describe_routers_all(&DescribeRouters {
            routers: vec![router.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(applied[0].is_applied, 1);
    drop(ctx);
    api.await.unwrap();
}

const UID: &str = "6f1c2a7e-0000-0000-0000-000000000001";

fn service_json(finalizer: bool, deleting: bool, ingress: Option<&str>) -> Value {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "uid": UID, "resourceVersion": "5"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]},
        "status": {},
    });
    if finalizer {
        v["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    if let Some(ip) = ingress {
        v["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
    }
    v
}

/// The Service controller's context over `services_json` (its Service store).
async fn service_ctx_with(
    cloud: &Cloud,
    kube: kube::Client,
    services_json: Vec<Value>,
) -> Arc<ServiceCtx> {
    let ctx = cloud.context(kube, cloud.config().await);
    let (nodes, mut writer) = reflector::store::<Node>();
    for name in ["node-1", "node-2"] {
        let i = cloud.instance_named(name).await;
        let mut n = node_json(
            name,
            json!({"spec": {"providerID": format!("cloudsuite://emu1/{}", i.instance_id)}}),
        );
        merge(&mut n, ready("True"));
        writer.apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(n).unwrap()));
    }
    let (slices, _w) = reflector::store();
    let (services, mut svc_writer) = reflector::store::<Service>();
    for svc in services_json {
        svc_writer
            .apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(svc).unwrap()));
    }
    Arc::new(ServiceCtx::new(
        ctx,
        ServiceInputs {
            services,
            nodes,
            slices,
            resync: Duration::from_secs(300),
        },
    ))
}

async fn service_ctx(cloud: &Cloud, kube: kube::Client) -> Arc<ServiceCtx> {
    service_ctx_with(cloud, kube, Vec::new()).await
}

async fn live_lbs(cloud: &Cloud) -> Vec<iaas_client::model::LoadBalancer> {
    cloud
        .client
        .describe_load_balancers_all(&DescribeLoadBalancers {
            verbose: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|l| !matches!(l.status.as_str(), "deleted" | "ceased"))
        .collect()
}

async fn leftovers(cloud: &Cloud) -> (usize, usize, usize) {
    let eips = cloud
        .client
        .describe_eips_all(&DescribeEips::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.status != "released")
        .count();
    let sgs = cloud
        .client
        .describe_security_groups_all(&DescribeSecurityGroups::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.is_default == 0)
        .count();
    (live_lbs(cloud).await.len(), eips, sgs)
}

#[tokio::test]
async fn service_finalizer_then_ensure_then_status_then_delete_in_order() {
    let cloud = Cloud::start().await;
    let svc_path = "/api/v1/namespaces/default/services/web";
    let ingress = Arc::new(std::sync::Mutex::new(String::new()));
    let ingress_w = ingress.clone();
    let (kube, api) = script(vec![
        // 1. The finalizer first, guarded by resourceVersion.
        step(
            "PATCH",
            svc_path,
            |b| {
                assert_eq!(
                    b,
                    &json!({"metadata": {"resourceVersion": "5", "finalizers": [FINALIZER]}})
                )
            },
            |_| (200, service_json(true, false, None)),
        ),
        // 2. Ensuring, the cloud LB, Ensured, then the status.
        event("default", "EnsuringLoadBalancer", "Ensuring"),
        event("default", "EnsuredLoadBalancer", "lb-"),
        step(
            "PATCH",
            format!("{svc_path}/status"),
            move |b| {
                let ip = b["status"]["loadBalancer"]["ingress"][0]["ip"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(ip.starts_with("127.77."), "{b}");
                *ingress_w.lock().unwrap() = ip;
            },
            |b| {
                let mut v = service_json(true, false, None);
                v["status"] = b["status"].clone();
                (200, v)
            },
        ),
        // 4. Deletion: events around the cloud delete, then the finalizer goes.
        event("default", "DeletingLoadBalancer", "Deleting"),
        event("default", "DeletedLoadBalancer", "Deleted"),
        step(
            "PATCH",
            svc_path,
            |b| {
                assert_eq!(
                    b,
                    &json!({"metadata": {"resourceVersion": "5", "finalizers": null}})
                )
            },
            |_| (200, service_json(false, true, None)),
        ),
        // 5. The LB is already gone: deletion still completes (repeated Events become series).
        event_again("default", "DeletingLoadBalancer"),
        event_again("default", "DeletedLoadBalancer"),
        step(
            "PATCH",
            svc_path,
            |b| assert_eq!(b["metadata"]["finalizers"], Value::Null),
            |_| (200, service_json(false, true, None)),
        ),
    ]);
    let sctx = service_ctx(&cloud, kube).await;
    let svc = |v: Value| Arc::new(serde_json::from_value::<Service>(v).unwrap());

    let writes = cloud.writes();
    services::reconcile(svc(service_json(false, false, None)), sctx.clone())
        .await
        .unwrap();
    assert_eq!(
        cloud.writes(),
        writes,
        "nothing may be created before the finalizer is stored"
    );
    assert!(live_lbs(&cloud).await.is_empty());

    services::reconcile(svc(service_json(true, false, None)), sctx.clone())
        .await
        .unwrap();
    let lbs = live_lbs(&cloud).await;
    assert_eq!(lbs.len(), 1);
    let ip = ingress.lock().unwrap().clone();
    assert!(lbs[0].eips.iter().any(|e| e.eip_addr == ip), "{lbs:?}");

    // 3. The event of our own status write: no Kubernetes request (the
    // script allows none here) and not even a Describe (nothing changed
    // since the ensure).
    cloud.emu.reset_stats();
    services::reconcile(svc(service_json(true, false, Some(&ip))), sctx.clone())
        .await
        .unwrap();
    let calls: u64 = cloud.emu.stats().values().map(|s| s.calls).sum();
    assert_eq!(calls, 0, "unchanged Service went to the cloud");
    assert_eq!(sctx.ensured.len(), 1);
    // A restarted controller (nothing remembered) observes the cloud:
    // Describes only, no write, no Kubernetes request.
    let fresh = Arc::new(ServiceCtx::new(sctx.ctx.clone(), sctx.inputs.clone()));
    let writes = cloud.writes();
    services::reconcile(svc(service_json(true, false, Some(&ip))), fresh)
        .await
        .unwrap();
    assert_eq!(cloud.writes(), writes, "idle ensure wrote to the cloud");
    assert!(cloud.emu.stats().values().map(|s| s.calls).sum::<u64>() > 0);

    services::reconcile(svc(service_json(true, true, Some(&ip))), sctx.clone())
        .await
        .unwrap();
    assert_eq!(
        leftovers(&cloud).await,
        (0, 0, 0),
        "LB, EIP or security group leaked"
    );
    assert!(
        sctx.ensured.is_empty(),
        "a deleted Service stays remembered"
    );

    services::reconcile(svc(service_json(true, true, Some(&ip))), sctx.clone())
        .await
        .unwrap();
    drop(sctx);
    api.await.unwrap();
}

#[tokio::test]
async fn invalid_annotation_is_an_event_naming_it_and_nothing_is_created() {
    let cloud = Cloud::start().await;
    let (kube, api) = script(vec![event(
        "default",
        "InvalidLoadBalancerConfig",
        "service.beta.kubernetes.io/qingcloud-lb-listener-balancemode",
    )]);
    let sctx = service_ctx(&cloud, kube).await;
    let mut v = service_json(true, false, None);
    v["metadata"]["annotations"] =
        json!({"service.beta.kubernetes.io/qingcloud-lb-listener-balancemode": "random"});
    let writes = cloud.writes();
    let err = services::reconcile(Arc::new(serde_json::from_value(v).unwrap()), sctx.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("balancemode"), "{err}");
    assert_eq!(cloud.writes(), writes);
    drop(sctx);
    api.await.unwrap();
}

#[tokio::test]
async fn batched_resync_of_many_services_makes_only_describes() {
    let cloud = Cloud::start().await;
    const N: usize = 6;
    let named = |i: usize, ingress: Option<&str>| {
        let mut v = service_json(true, false, ingress);
        v["metadata"]["name"] = json!(format!("web-{i}"));
        v["metadata"]["uid"] = json!(format!("6f1c2a7e-0000-0000-0000-00000000000{i}"));
        v
    };
    // Create N LBs through the work-queue path, remembering each ingress.
    let ips = Arc::new(std::sync::Mutex::new(vec![String::new(); N]));
    let mut steps = Vec::new();
    for i in 0..N {
        let ips = ips.clone();
        steps.push(event("default", "EnsuringLoadBalancer", "Ensuring"));
        steps.push(event("default", "EnsuredLoadBalancer", "lb-"));
        steps.push(step(
            "PATCH",
            format!("/api/v1/namespaces/default/services/web-{i}/status"),
            move |b| {
                ips.lock().unwrap()[i] = b["status"]["loadBalancer"]["ingress"][0]["ip"]
                    .as_str()
                    .unwrap()
                    .to_string();
            },
            move |_| (200, named(i, None)),
        ));
    }
    let (kube, api) = script(steps);
    let sctx = service_ctx(&cloud, kube).await;
    for i in 0..N {
        services::reconcile(
            Arc::new(serde_json::from_value(named(i, None)).unwrap()),
            sctx.clone(),
        )
        .await
        .unwrap();
    }
    drop(sctx);
    api.await.unwrap();
    assert_eq!(live_lbs(&cloud).await.len(), N);

    // Idle resync: Services from the store (no apiserver call), batched
    // Describes, no writes anywhere.
    let ips = ips.lock().unwrap().clone();
    let (kube, api) = script(vec![]);
    let sctx = service_ctx_with(
        &cloud,
        kube,
        (0..N).map(|i| named(i, Some(&ips[i]))).collect(),
    )
    .await;
    cloud.emu.reset_stats();
    let report = services::resync_all(&sctx).await.unwrap();
    assert_eq!(
        report,
        services::ResyncReport {
            ensured: N,
            failed: 0,
            skipped: 0,
        }
    );
    let stats = cloud.emu.stats();
    let describes: u64 = stats
        .iter()
        .filter(|(a, _)| a.starts_with("Describe"))
        .map(|(_, s)| s.calls)
        .sum();
    assert_eq!(cloud.writes(), 0, "idle resync wrote: {stats:?}");
    // Batched: the call count does not grow with the number of Services.
    assert!(
        describes <= 8,
        "{describes} Describe calls for {N} Services: {stats:?}"
    );
    let per_action: Vec<(&String, u64)> = stats.iter().map(|(a, s)| (a, s.calls)).collect();
    eprintln!("idle resync of {N} Services: {describes} Describe calls, 0 writes: {per_action:?}");
    drop(sctx);
    api.await.unwrap();
}

#[tokio::test]
async fn stale_lb_id_annotation_fails_with_the_cloud_message_and_never_blocks_deletion() {
    let cloud = Cloud::start().await;
    let svc_path = "/api/v1/namespaces/default/services/web";
    let (kube, api) = script(vec![
        event("default", "EnsuringLoadBalancer", "Ensuring"),
        event("default", "SyncLoadBalancerFailed", "lb-gone1234"),
        event("default", "DeletingLoadBalancer", "Deleting"),
        event("default", "DeletedLoadBalancer", "Deleted"),
        step(
            "PATCH",
            svc_path,
            |b| assert_eq!(b["metadata"]["finalizers"], Value::Null),
            |_| (200, service_json(false, true, None)),
        ),
    ]);
    let sctx = service_ctx(&cloud, kube).await;
    let with_stale_id = |deleting: bool| {
        let mut v = service_json(true, deleting, None);
        v["metadata"]["annotations"] =
            json!({"service.beta.kubernetes.io/qingcloud-load-balancer-id": "lb-gone1234"});
        Arc::new(serde_json::from_value::<Service>(v).unwrap())
    };
    let err = services::reconcile(with_stale_id(false), sctx.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lb-gone1234"), "{err}");
    services::reconcile(with_stale_id(true), sctx.clone())
        .await
        .unwrap();
    assert_eq!(leftovers(&cloud).await, (0, 0, 0));
    drop(sctx);
    api.await.unwrap();
}
