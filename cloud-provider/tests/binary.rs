//! The real `cloud-controller-manager` binary, two replicas, against a real
//! kube-apiserver (skipped loudly without KUBE_APISERVER/ETCD) and the
//! emulator: one leader, /readyz and /metrics, node initialisation by the
//! leader, graceful exit on SIGTERM with failover to the standby.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use serde_json::json;
use suite_tests::control_plane::ControlPlane;

/// A child process killed (by PID) when dropped.
struct Replica {
    child: Child,
    addr: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

async fn leader_flags(replicas: &[Replica]) -> Vec<bool> {
    let mut out = Vec::new();
    for r in replicas {
        let body = get(&format!("http://{}/readyz", r.addr))
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        out.push(body.contains("leader: true"));
    }
    out
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_graceful_failover() -> anyhow::Result<()> {
    let Some(plane) = ControlPlane::start().await? else {
        return Ok(());
    };
    let cloud = Cloud::start().await;
    let dir = tempfile::tempdir()?;
    let cc = dir.path().join("cloud-config.yaml");
    std::fs::write(
        &cc,
        format!(
            "credentials_file: {}\ncluster_id: c1\nrouter_id: {}\ncluster_cidr: 10.244.0.0/16\n",
            cloud.emu.credentials_file().display(),
            cloud.router_id().await
        ),
    )?;
    let spawn = |id: &str| {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_cloud-controller-manager"))
            .args(["--cloud-config", cc.to_str().unwrap()])
            .args(["--kubeconfig", plane.kubeconfig_path().to_str().unwrap()])
            .args(["--metrics-addr", &addr, "--identity", id])
            .args([
                "--leader-elect-namespace",
                "default",
                "--leader-elect-lease-duration",
                "4",
            ])
            .args(["--node-monitor-period", "1s", "--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cloud-controller-manager");
        Replica { child, addr }
    };
    let mut replicas = vec![spawn("ccm-a"), spawn("ccm-b")];
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    for a in &addrs {
        wait_for("/healthz", Duration::from_secs(30), || async move {
            get(&format!("http://{a}/healthz"))
                .await
                .is_some_and(|(s, _)| s == 200)
        })
        .await;
    }
    wait_for("one leader", Duration::from_secs(30), || {
        let r = &replicas;
        async move { leader_flags(r).await.iter().filter(|l| **l).count() == 1 }
    })
    .await;
    let flags = leader_flags(&replicas).await;
    let leader = flags.iter().position(|l| *l).unwrap();
    let (_, metrics) = get(&format!("http://{}/metrics", addrs[leader]))
        .await
        .unwrap();
    assert!(metrics.contains("ccm_leader 1"), "{metrics}");
    let (_, standby_metrics) = get(&format!("http://{}/metrics", addrs[1 - leader]))
        .await
        .unwrap();
    assert!(
        standby_metrics.contains("ccm_leader 0"),
        "{standby_metrics}"
    );

    // The leader initialises a new node.
    let nodes: Api<Node> = Api::all(plane.client());
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": "node-3"},
        "spec": {"taints": [{"key": UNINIT, "value": "true", "effect": "NoSchedule"}]},
    }))?;
    nodes.create(&PostParams::default(), &n).await?;
    wait_for("node-3 initialised", Duration::from_secs(60), || {
        let nodes = nodes.clone();
        async move {
            nodes
                .get("node-3")
                .await
                .ok()
                .and_then(|n| n.spec?.provider_id)
                .is_some_and(|p| p.starts_with("cloudsuite://emu1/i-"))
        }
    })
    .await;

    // SIGTERM the leader: it exits cleanly and the standby takes over.
    let pid = replicas[leader].child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = replicas[leader].child.try_wait()? {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "leader did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.success(), "exit status {status}");
    let standby = replicas.remove(1 - leader);
    drop(replicas);
    let standby_addr = standby.addr.clone();
    wait_for("failover", Duration::from_secs(30), || {
        let a = standby_addr.clone();
        async move {
            get(&format!("http://{a}/readyz"))
                .await
                .is_some_and(|(_, b)| b.contains("leader: true"))
        }
    })
    .await;
    drop(standby);
    Ok(())
}
