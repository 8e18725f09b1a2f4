//! The metrics and health server: `/metrics` (OpenMetrics text),
//! `/healthz` (the process is alive) and `/readyz` (it can do its work).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::shutdown::Shutdown;

/// Liveness, readiness and leadership flags, shared with the server.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Flags>,
}

#[derive(Debug)]
struct Flags {
    live: AtomicBool,
    ready: AtomicBool,
    leader: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Alive, not ready, not leader.
    pub fn new() -> Self {
        Health {
            inner: Arc::new(Flags {
                live: AtomicBool::new(true),
                ready: AtomicBool::new(false),
                leader: AtomicBool::new(false),
            }),
        }
    }

    /// Marks the process ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Marks the process alive (or wedged: `/healthz` then fails and the kubelet restarts it).
    pub fn set_live(&self, live: bool) {
        self.inner.live.store(live, Ordering::Release);
    }

    /// Records whether this replica currently leads.
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.store(leader, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Whether `/healthz` answers 200.
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.inner.leader.load(Ordering::Acquire)
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The serving task; it ends after the shutdown signal.
    pub handle: JoinHandle<std::io::Result<()>>,
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Health,
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until `shutdown` fires.
/// A `leader` line in `/readyz`'s body tells which replica leads; readiness
/// itself does not depend on leadership (standbys are ready to take over).
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Health,
    shutdown: Shutdown,
) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = AppState {
        registry: Arc::new(registry),
        health,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let handle = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
    });
    Ok(Server { addr, handle })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not live\n")
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let leader = state.health.is_leader();
    if state.health.is_ready() {
        (StatusCode::OK, format!("ok\nleader: {leader}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\nleader: {leader}\n"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry.register("demo_things", "Things", c.clone());
        c.inc();
        let health = Health::new();
        let shutdown = Shutdown::new();
        let server = serve(
            "127.0.0.1:0".parse().unwrap(),
            registry,
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://{}", server.addr);
        let body = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("demo_things_total 1"), "{body}");
        let get = |p: &'static str| {
            let http = http.clone();
            let base = base.clone();
            async move {
                http.get(format!("{base}{p}"))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(get("/healthz").await, 200);
        assert_eq!(get("/readyz").await, 503);
        health.set_ready(true);
        assert_eq!(get("/readyz").await, 200);
        health.set_live(false);
        assert_eq!(get("/healthz").await, 503);
        shutdown.trigger();
        server.handle.await.unwrap().unwrap();
    }
}
