//! Against a real kube-apiserver + etcd (skipped loudly without
//! KUBE_APISERVER/ETCD; see docs/TESTING.md), with the emulator as the
//! cloud: node initialisation (including a node whose name differs from its
//! instance's), routes, a Service getting an ingress address and its
//! deletion leaving no cloud resource, and leader election between two
//! replicas.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloud_provider::config::Flags;
use cloud_provider::manager::run_controllers;
use common::*;
use iaas_client::actions::{
    DescribeEips, DescribeLoadBalancers, DescribeRouterStatics, DescribeSecurityGroups,
};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use suite_runtime::Shutdown;
use suite_runtime::http::Health;
use suite_runtime::leader::{LeaderConfig, run_while_leader};
use suite_tests::control_plane::ControlPlane;
use suite_tests::wait::eventually;

fn flags() -> Flags {
    use clap::Parser;
    let mut f = Flags::try_parse_from(["ccm", "--cloud-config", "/unused.yaml"]).unwrap();
    f.node_monitor_period = Duration::from_secs(1);
    f.route_reconcile_period = Duration::from_secs(2);
    f.service_resync_period = Duration::from_secs(30);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_routes_and_a_load_balancer_service() -> anyhow::Result<()> {
    let Some(plane) = ControlPlane::start().await? else {
        return Ok(());
    };
    let kube = plane.client();
    let cloud = Cloud::start().await;
    let i1 = cloud.instance_named("node-1").await;
    let i2 = cloud.instance_named("node-2").await;
    let nodes: Api<Node> = Api::all(kube.clone());
    let taint = json!([{"key": UNINIT, "value": "true", "effect": "NoSchedule"}]);
    // node-1 is named after its instance; worker-b is not (openstack #540)
    // and is found by its private address.
    for (name, cidr) in [("node-1", "10.244.1.0/24"), ("worker-b", "10.244.2.0/24")] {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "taints": taint},
        }))?;
        nodes.create(&PostParams::default(), &n).await?;
    }
    let now = "2026-01-01T00:00:00Z";
    let status = |addrs: serde_json::Value| json!({"status": {"addresses": addrs, "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    nodes
        .patch_status(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(status(json!([{"type": "Hostname", "address": "node-1"}]))),
        )
        .await?;
    nodes
        .patch_status("worker-b", &PatchParams::default(), &Patch::Merge(status(json!([{"type": "InternalIP", "address": i2.vxnets[0].private_ip}, {"type": "Hostname", "address": "worker-b"}])))).await?;

    let ctx = cloud.context(kube.clone(), cloud.config().await);
    let shutdown = Shutdown::new();
    let controllers = tokio::spawn(run_controllers(ctx.clone(), flags(), shutdown.clone()));

    // Node initialisation.
    for (name, inst) in [("node-1", &i1), ("worker-b", &i2)] {
        let want = format!("cloudsuite://emu1/{}", inst.instance_id);
        let n = eventually(
            &format!("{name} initialised"),
            Duration::from_secs(60),
            || {
                let nodes = nodes.clone();
                let want = want.clone();
                async move {
                    let n = nodes.get(name).await.ok()?;
                    let spec = n.spec.clone()?;
                    let done = spec.provider_id.as_deref() == Some(want.as_str())
                        && !spec
                            .taints
                            .unwrap_or_default()
                            .iter()
                            .any(|t| t.key == UNINIT);
                    done.then_some(n)
                }
            },
        )
        .await;
        let labels = n.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("node.kubernetes.io/instance-type")
                .map(String::as_str),
            Some("c1m2")
        );
        assert_eq!(
            labels
                .get("topology.kubernetes.io/zone")
                .map(String::as_str),
            Some("emu1")
        );
        let addrs = n.status.unwrap().addresses.unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.type_ == "InternalIP" && a.address == inst.vxnets[0].private_ip),
            "{addrs:?}"
        );
    }

    // Routes, and the NetworkUnavailable condition.
    let router = cloud.router_id().await;
    eventually("routes", Duration::from_secs(60), || {
        let client = cloud.client.clone();
        let router = router.clone();
        async move {
            let s = client
                .describe_router_statics_all(&DescribeRouterStatics {
                    router: Some(router),
                    static_type: Some(9),
                    ..Default::default()
                })
                .await
                .ok()?;
            let mut got: Vec<(String, String)> = s.into_iter().map(|s| (s.val1, s.val2)).collect();
            got.sort();
            (got.len() == 2).then_some(got)
        }
    })
    .await;
    for name in ["node-1", "worker-b"] {
        eventually("NetworkUnavailable=False", Duration::from_secs(30), || {
            let nodes = nodes.clone();
            async move {
                let n = nodes.get(name).await.ok()?;
                cloud_provider::routes::has_route_condition(&n).then_some(())
            }
        })
        .await;
    }

    // A LoadBalancer Service gets an ingress address.
    let services: Api<Service> = Api::namespaced(kube.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))?;
    services.create(&PostParams::default(), &svc).await?;
    let ip = eventually("ingress address", Duration::from_secs(60), || {
        let services = services.clone();
        async move {
            let s = services.get("web").await.ok()?;
            s.status?.load_balancer?.ingress?.first()?.ip.clone()
        }
    })
    .await;
    let s = services.get("web").await?;
    assert!(
        s.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == cloud_provider::services::FINALIZER)
    );
    let lbs = cloud
        .client
        .describe_load_balancers_all(&DescribeLoadBalancers {
            verbose: true,
            ..Default::default()
        })
        .await?;
    let lb = lbs
        .iter()
        .find(|l| l.eips.iter().any(|e| e.eip_addr == ip))
        .expect("LB with the ingress EIP");
    let backends: Vec<&str> = lb
        .listeners
        .iter()
        .flat_map(|l| l.backends.iter())
        .map(|b| b.resource_id.as_str())
        .collect();
    assert!(
        backends.contains(&i1.instance_id.as_str()) && backends.contains(&i2.instance_id.as_str()),
        "{backends:?}"
    );

    // Deleting it leaves no cloud resource.
    services.delete("web", &DeleteParams::default()).await?;
    eventually("Service gone", Duration::from_secs(60), || {
        let services = services.clone();
        async move { services.get_opt("web").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let live = cloud
        .client
        .describe_load_balancers_all(&DescribeLoadBalancers::default())
        .await?
        .into_iter()
        .filter(|l| !matches!(l.status.as_str(), "deleted" | "ceased"))
        .count();
    let eips = cloud
        .client
        .describe_eips_all(&DescribeEips::default())
        .await?
        .into_iter()
        .filter(|e| e.status != "released")
        .count();
    let sgs = cloud
        .client
        .describe_security_groups_all(&DescribeSecurityGroups::default())
        .await?
        .into_iter()
        .filter(|s| s.is_default == 0)
        .count();
    assert_eq!(
        (live, eips, sgs),
        (0, 0, 0),
        "leaked LB / EIP / security group"
    );

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(20), controllers).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_failover() -> anyhow::Result<()> {
    let Some(plane) = ControlPlane::start().await? else {
        return Ok(());
    };
    let active = Arc::new(AtomicUsize::new(0));
    let max_active = Arc::new(AtomicUsize::new(0));
    let mut replicas = Vec::new();
    for id in ["replica-a", "replica-b"] {
        let mut cfg = LeaderConfig::new("ccm-test", "default", id);
        cfg.lease_duration_secs = 4;
        cfg.renew_grace_secs = 1;
        let (health, shutdown) = (Health::new(), Shutdown::new());
        let (active, max_active, stop) = (active.clone(), max_active.clone(), shutdown.clone());
        let work = move || {
            let (active, max_active, stop) = (active.clone(), max_active.clone(), stop.clone());
            async move {
                struct Running(Arc<AtomicUsize>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let n = active.fetch_add(1, Ordering::SeqCst) + 1;
                max_active.fetch_max(n, Ordering::SeqCst);
                let _running = Running(active);
                // Like the controllers: run until shutdown (or until aborted on lost leadership).
                stop.wait().await;
            }
        };
        let task = tokio::spawn(run_while_leader(
            plane.client(),
            cfg,
            health.clone(),
            shutdown.clone(),
            work,
        ));
        replicas.push((health, shutdown, task));
    }
    let leader = eventually("a leader", Duration::from_secs(30), || {
        let leaders: Vec<usize> = replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.0.is_leader())
            .map(|(i, _)| i)
            .collect();
        async move { (leaders.len() == 1).then(|| leaders[0]) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        replicas.iter().filter(|r| r.0.is_leader()).count(),
        1,
        "exactly one leader"
    );
    assert_eq!(active.load(Ordering::SeqCst), 1);

    // The leader stops (SIGTERM): it releases the Lease and the other takes over.
    let other = 1 - leader;
    replicas[leader].1.trigger();
    eventually("failover", Duration::from_secs(30), || {
        let ok = replicas[other].0.is_leader();
        async move { ok.then_some(()) }
    })
    .await;
    assert_eq!(
        max_active.load(Ordering::SeqCst),
        1,
        "work never ran on two replicas at once"
    );
    replicas[other].1.trigger();
    for (_, _, task) in replicas {
        tokio::time::timeout(Duration::from_secs(30), task).await???;
    }
    Ok(())
}
