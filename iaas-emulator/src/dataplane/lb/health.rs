//! Active health checks: one probing task per listener.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::config::{HealthCheck, HealthMethod};
use super::netns::SocketFactory;
use super::{LbCtx, Slot, read_slot};

/// Probes the listener's current backends every interval, forever (the
/// driver aborts it when the listener goes). Settings and backends are read
/// from the slot each round, so an apply takes effect on the next round.
pub(crate) async fn health_loop(slot: Arc<Slot>, ctx: Arc<LbCtx>) {
    loop {
        let rt = read_slot(&slot);
        let hc = rt.health.clone();
        // UDP has no handshake to probe; its backends stay up.
        if !rt.protocol.is_udp() {
            let probes = rt.backends.iter().map(|b| probe(b.addr, &hc, &ctx.factory));
            let results = futures::future::join_all(probes).await;
            for (b, ok) in rt.backends.iter().zip(results) {
                if let Some(up) = b.state.record(ok, hc.healthy, hc.unhealthy) {
                    tracing::info!(
                        loadbalancer = %ctx.lb_id,
                        listener = %rt.id,
                        backend = %b.id,
                        addr = %b.addr,
                        "backend is {}",
                        if up { "up" } else { "down" }
                    );
                }
            }
        }
        drop(rt);
        tokio::time::sleep(hc.interval).await;
    }
}

/// One probe: a TCP connect, or an HTTP GET answered 2xx/3xx, within the timeout.
pub(crate) async fn probe(addr: SocketAddr, hc: &HealthCheck, factory: &SocketFactory) -> bool {
    let attempt = async {
        let stream = factory.connect_tcp(addr, hc.timeout).await.ok()?;
        let HealthMethod::Http { path } = &hc.method else {
            return Some(true);
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let req = hyper::Request::get(path.as_str())
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::USER_AGENT, "iaas-emulator-health-check")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .ok()?;
        // The connection task ends when the backend closes or the sender drops.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(req).await.ok()?;
        let s = resp.status();
        Some(s.is_success() || s.is_redirection())
    };
    matches!(
        tokio::time::timeout(hc.timeout, attempt).await,
        Ok(Some(true))
    )
}
