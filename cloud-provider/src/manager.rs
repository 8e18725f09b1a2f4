//! Wiring: flags and cloud config -> clients, metrics server, leader
//! election, the enabled controllers, graceful shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use suite_runtime::Shutdown;
use suite_runtime::http::{self, Health};
use suite_runtime::leader::{self, LeaderConfig};
use suite_runtime::metrics::ReconcileMetrics;

use crate::config::{self, Flags};
use crate::context::Context;
use crate::{lifecycle, node_cache, nodes, routes, services};

/// Builds a Kubernetes client from `--kubeconfig`, else in-cluster/default inference.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let cfg = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("kubernetes client configuration")?,
    };
    Ok(kube::Client::try_from(cfg)?)
}

/// Runs the enabled controllers until `shutdown` (or until the task is aborted on lost leadership).
pub async fn run_controllers(ctx: Arc<Context>, flags: Flags, shutdown: Shutdown) {
    let mut tasks = Vec::new();
    // One watch of Nodes for every controller (see node_cache).
    let (cache, feeds, watch) = node_cache::node_cache(
        kube::Api::all(ctx.kube.clone()),
        ctx.config.provider_name.clone(),
    );
    let watch_shutdown = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = watch => {}
            _ = watch_shutdown.wait() => {}
        }
    }));
    if flags.runs("node") {
        tasks.push(tokio::spawn(nodes::run(
            ctx.clone(),
            cache.clone(),
            feeds.needs_init,
            shutdown.clone(),
        )));
    }
    if flags.runs("lifecycle") {
        tasks.push(tokio::spawn(lifecycle::run(
            ctx.clone(),
            cache.clone(),
            flags.node_monitor_period,
            shutdown.clone(),
        )));
    }
    if flags.runs("route") {
        tasks.push(tokio::spawn(routes::run(
            ctx.clone(),
            cache.clone(),
            flags.route_reconcile_period,
            shutdown.clone(),
        )));
    }
    if flags.runs("service") {
        tasks.push(tokio::spawn(services::run(
            ctx.clone(),
            cache.clone(),
            feeds.backends_changed,
            flags.service_resync_period,
            shutdown.clone(),
        )));
    }
    // Aborting this future (lost leadership) must stop the controllers too.
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let mut guard = AbortOnDrop(tasks);
    for t in guard.0.iter_mut() {
        let _ = t.await;
    }
}

/// The whole process: returns when shut down.
pub async fn run(flags: Flags) -> anyhow::Result<()> {
    flags.validate().map_err(anyhow::Error::msg)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cloud_config, iaas_config) = config::load(&flags.cloud_config, |k| std::env::var(k).ok())?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();

    let mut registry = Registry::default();
    let cloud = iaas_client::Client::new(iaas_config).context("IaaS client")?;
    cloud.register_metrics(&mut registry);
    let metrics = ReconcileMetrics::register(&mut registry, "ccm");
    let kube = kube_client(flags.kubeconfig.as_deref()).await?;
    let health = Health::new();
    let server = http::serve(
        flags.metrics_addr,
        registry,
        health.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("--metrics-addr {}", flags.metrics_addr))?;
    tracing::info!(addr = %server.addr, "serving /metrics, /healthz, /readyz");

    let identity = flags.identity.clone().unwrap_or_else(hostname);
    let ctx = Arc::new(Context::new(
        kube.clone(),
        cloud,
        cloud_config,
        metrics.clone(),
        Some(identity.clone()),
    ));
    health.set_ready(true);
    let work = {
        let (ctx, flags, shutdown, metrics) = (
            ctx.clone(),
            flags.clone(),
            shutdown.clone(),
            metrics.clone(),
        );
        move || {
            let (ctx, flags, shutdown, metrics) = (
                ctx.clone(),
                flags.clone(),
                shutdown.clone(),
                metrics.clone(),
            );
            async move {
                metrics.set_leader(true);
                struct Unset(ReconcileMetrics);
                impl Drop for Unset {
                    fn drop(&mut self) {
                        self.0.set_leader(false);
                    }
                }
                let _unset = Unset(metrics);
                run_controllers(ctx, flags, shutdown).await;
            }
        }
    };
    if flags.leader_elect {
        let mut lc = LeaderConfig::new(
            &flags.leader_elect_lease_name,
            &flags.leader_elect_namespace,
            &identity,
        );
        lc.lease_duration_secs = flags.leader_elect_lease_duration;
        lc.renew_grace_secs = (flags.leader_elect_lease_duration / 3).max(1);
        leader::run_while_leader(kube, lc, health.clone(), shutdown.clone(), work).await?;
    } else {
        health.set_leader(true);
        work().await;
    }
    shutdown.trigger();
    let _ = server.handle.await;
    tracing::info!("stopped");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("ccm-{}", std::process::id()))
}
