//! Ingress controller benchmark (run: `cargo bench -p lb-controller --bench ingress`):
//! Ingress creation to first routed request, 100 Ingresses reconciled, and
//! IaaS calls per idle resync, against the in-process emulator with its
//! L7 proxy data plane. Figures go to docs/BENCHMARKS.md.

#[path = "../tests/ingress_common/mod.rs"]
mod ingress_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ingress_common::*;
use lb_controller::ingress::reconcile;
use serde_json::json;

fn web(name: &str) -> k8s_openapi::api::networking::v1::Ingress {
    finalized(
        &ingress(
            name,
            json!({"rules": [{"host": format!("{name}.example.com"), "http": {"paths": [path("/", "Prefix", "svc")]}}]}),
            json!({}),
        ),
        "ingress",
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = Env::start().await;
    let be = backend("127.0.0.51", "svc").await;
    let mut w = World::new();
    w.add_pod_service("svc", &[be.addr]);

    // 1. Creation to first routed request.
    let mut firsts = Vec::new();
    for i in 0..5 {
        let ing = web(&format!("first{i}"));
        w.put(&ing);
        let t0 = Instant::now();
        reconcile(Arc::new(ing.clone()), env.ctx(&w)).await.unwrap();
        let ip = status_ip(&env.take_seen(), &format!("first{i}")).unwrap();
        let addr = format!("{ip}:80").parse().unwrap();
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                drop(s);
                if http_get(addr, &format!("first{i}.example.com"), "/")
                    .await
                    .0
                    == 200
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        firsts.push(t0.elapsed());
    }
    firsts.sort();
    println!(
        "creation_to_first_routed_request_median_ms {:.1}",
        firsts[2].as_secs_f64() * 1e3
    );

    // 2. 100 Ingresses reconciled (each its own LB).
    let many: Vec<_> = (0..100).map(|i| web(&format!("many{i}"))).collect();
    for i in &many {
        w.put(i);
    }
    let ctx = env.ctx(&w);
    let t0 = Instant::now();
    let results = futures::future::join_all(
        many.iter()
            .map(|i| reconcile(Arc::new(i.clone()), ctx.clone())),
    )
    .await;
    assert!(results.iter().all(|r| r.is_ok()));
    let took = t0.elapsed();
    println!(
        "reconcile_100_ingresses_s {:.2} ({:.1} ms each)",
        took.as_secs_f64(),
        took.as_secs_f64() * 10.0
    );

    // 3. IaaS calls per idle resync of one Ingress.
    env.emu.reset_stats();
    for i in &many {
        reconcile(Arc::new(i.clone()), ctx.clone()).await.unwrap();
    }
    let calls = env.total_calls();
    println!(
        "iaas_calls_per_idle_resync {:.1} (writes {})",
        calls as f64 / many.len() as f64,
        env.write_calls()
    );
    let _ = env.take_seen();
}
