//! The Ingress controller's periodic resync is batched: one `resync_all`
//! over every Ingress LB costs a constant handful of Describe calls and no
//! write when nothing drifted, whatever the number of Ingresses; it repairs
//! drift; and it leaves alone LBs the work queue is reconciling.

mod ingress_common;

use std::collections::BTreeMap;
use std::sync::Arc;

use iaas_client::actions::{DeleteLoadBalancerListeners, DescribeLoadBalancerListeners};
use ingress_common::*;
use lb_controller::ingress::annotations as ann;
use lb_controller::ingress::{LbKey, ResyncReport, reconcile, resync_all};
use serde_json::json;

fn web(name: &str, group: Option<&str>) -> k8s_openapi::api::networking::v1::Ingress {
    let annotations = match group {
        Some(g) => json!({ ann::GROUP_NAME: g }),
        None => json!({}),
    };
    let applied = match group {
        Some(g) => format!("group:{g}"),
        None => "ingress".to_string(),
    };
    finalized(
        &ingress(
            name,
            json!({"rules": [{"host": format!("{name}.example.com"), "http": {"paths": [path("/", "Prefix", "svc")]}}]}),
            annotations,
        ),
        &applied,
    )
}

/// Calls per action the emulator answered since the last reset.
fn calls(env: &Env) -> BTreeMap<String, u64> {
    env.emu
        .stats()
        .into_iter()
        .filter(|(_, s)| s.calls > 0)
        .map(|(a, s)| (a, s.calls))
        .collect()
}

/// Creates `n` plain Ingresses plus a group of two, reconciled one by one
/// (the work queue's path); returns the world.
async fn populated(env: &Env, n: usize) -> World {
    let mut w = World::new();
    w.add_pod_service("svc", &["127.0.0.61:8080".parse().unwrap()]);
    let mut all: Vec<_> = (0..n).map(|i| web(&format!("web{i}"), None)).collect();
    all.push(web("g1", Some("shop")));
    all.push(web("g2", Some("shop")));
    for i in &all {
        w.put(i);
    }
    let ctx = env.ctx(&w);
    for i in &all {
        reconcile(Arc::new(i.clone()), ctx.clone()).await.unwrap();
    }
    // The store as the watch would bring it back: with the status written.
    let seen = env.take_seen();
    for i in &mut w.ingresses {
        let ip = status_ip(&seen, i.metadata.name.as_deref().unwrap()).expect("status");
        i.status = Some(
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": ip}]}})).unwrap(),
        );
    }
    w
}

#[tokio::test]
async fn idle_resync_is_a_constant_number_of_describes_and_no_write() {
    let mut per_size = Vec::new();
    for n in [3usize, 12] {
        let env = Env::start().await;
        let w = populated(&env, n).await;
        assert_eq!(
            env.lb_count().await,
            n + 1,
            "one LB per plain Ingress + the group's"
        );
        let ctx = env.ctx(&w);
        env.emu.reset_stats();
        let r = resync_all(&ctx).await;
        assert_eq!(
            r,
            ResyncReport {
                ensured: n + 1,
                failed: 0,
                skipped: 0
            }
        );
        let c = calls(&env);
        assert!(
            c.keys().all(|a| a.starts_with("Describe")),
            "an idle resync only describes: {c:?}"
        );
        assert_eq!(env.write_calls(), 0);
        // Statuses already match: no status patch, no Event.
        let seen = env.take_seen();
        assert!(seen.is_empty(), "{seen:?}");
        per_size.push(c);
    }
    // The same calls for 4 LBs as for 13: batched, not per Ingress.
    assert_eq!(
        per_size[0], per_size[1],
        "calls grow with the Ingress count"
    );
    let total: u64 = per_size[1].values().sum();
    assert!(total <= 12, "{total} calls: {:?}", per_size[1]);
}

#[tokio::test]
async fn resync_repairs_drift_and_leaves_what_the_queue_holds() {
    let env = Env::start().await;
    let w = populated(&env, 2).await;
    let ctx = env.ctx(&w);

    // Drift: someone deletes the HTTP listener of web0's LB in the console.
    let lb = env
        .client
        .describe_load_balancers_all(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|lb| lb.loadbalancer_name.contains("_web0_"))
        .expect("web0's LB");
    let listeners = env
        .client
        .describe_load_balancer_listeners_all(&DescribeLoadBalancerListeners {
            loadbalancer: Some(lb.loadbalancer_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listeners.len(), 1);
    env.client
        .delete_load_balancer_listeners(&DeleteLoadBalancerListeners {
            loadbalancer_listeners: vec![listeners[0].loadbalancer_listener_id.clone()],
        })
        .await
        .unwrap();
    let gone = env
        .client
        .describe_load_balancer_listeners_all(&DescribeLoadBalancerListeners {
            loadbalancer: Some(lb.loadbalancer_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(gone.is_empty(), "{gone:?}");

    env.emu.reset_stats();
    let r = resync_all(&ctx).await;
    assert!(env.write_calls() > 0, "the resync wrote the repair");
    assert_eq!(r.ensured, 3);
    assert_eq!(r.failed, 0);
    let after = env
        .client
        .describe_load_balancer_listeners_all(&DescribeLoadBalancerListeners {
            loadbalancer: Some(lb.loadbalancer_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 1, "the listener is back");
    assert_eq!(after[0].listener_port, 80);

    // An LB the work queue holds is left to it.
    let lock = ctx.lock_for(&LbKey::Group("shop".into()));
    let held = lock.lock().await;
    let r = resync_all(&ctx).await;
    assert_eq!(
        r,
        ResyncReport {
            ensured: 2,
            failed: 0,
            skipped: 1
        }
    );
    drop(held);

    // Deleting every Ingress through the queue leaves nothing behind.
    let mut w = w;
    for i in w.ingresses.clone() {
        w.ingresses.retain(|x| x.metadata.name != i.metadata.name);
        reconcile(Arc::new(deleting(&i)), env.ctx(&w))
            .await
            .unwrap();
    }
    env.assert_clean().await;
}
