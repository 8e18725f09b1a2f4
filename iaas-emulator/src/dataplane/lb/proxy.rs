//! L4: accepting on a listener socket, and proxying TCP streams and UDP
//! sessions to backends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::balance::ActiveGuard;
use super::config::Protocol;
use super::{LbCtx, ListenerRuntime, Owned, Slot, closed, http, read_slot};

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Backends tried for one TCP connection before giving up.
const DIAL_ATTEMPTS: usize = 3;

/// Accepts on a TCP socket; the listener currently in `slot` decides how each
/// connection is served (tcp, http or https).
pub(crate) async fn tcp_accept_loop(sock: Owned<TcpListener>, slot: Arc<Slot>, ctx: Arc<LbCtx>) {
    loop {
        let (stream, peer) = match sock.value.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(loadbalancer = %ctx.lb_id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let rt = read_slot(&slot);
        if !rt.allows(peer.ip()) {
            tracing::debug!(loadbalancer = %ctx.lb_id, %peer, "client outside the source ranges");
            continue;
        }
        let ctx = ctx.clone();
        match rt.protocol {
            Protocol::Tcp => {
                tokio::spawn(tcp_conn(stream, peer, rt, ctx));
            }
            Protocol::Http => {
                let slot = slot.clone();
                tokio::spawn(http::serve(stream, peer, Protocol::Http, slot, ctx));
            }
            Protocol::Https => {
                let Some(acceptor) = rt.tls.clone() else {
                    continue;
                };
                let slot = slot.clone();
                tokio::spawn(async move {
                    let accepted =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match accepted {
                        Ok(Ok(tls)) => http::serve(tls, peer, Protocol::Https, slot, ctx).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "tls handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
            // Sockets are keyed by transport, so a UDP listener never gets here.
            Protocol::Udp => {}
        }
    }
}

/// Proxies one TCP connection to a backend, trying the next one if a dial fails.
async fn tcp_conn(
    mut client: TcpStream,
    peer: SocketAddr,
    rt: Arc<ListenerRuntime>,
    ctx: Arc<LbCtx>,
) {
    let mut closing = ctx.closing.clone();
    let order = rt.balancer.order(&rt.backends, &rt.all, peer.ip());
    for i in order.into_iter().take(DIAL_ATTEMPTS) {
        let b = &rt.backends[i];
        let _active = ActiveGuard::new(&b.state);
        match ctx.factory.connect_tcp(b.addr, ctx.connect_timeout).await {
            Ok(mut upstream) => {
                let _ = client.set_nodelay(true);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    _ = closed(&mut closing) => {}
                }
                return;
            }
            Err(e) => {
                tracing::debug!(loadbalancer = %ctx.lb_id, backend = %b.id, error = %e, "dial failed");
            }
        }
    }
    // No backend up or reachable: dropping the client closes it.
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One client address's flow to its backend.
#[derive(Debug)]
struct Session {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the loop started, at the last datagram either way.
    last: Arc<AtomicU64>,
    reply: AbortOnDrop,
    _active: ActiveGuard,
}

/// Serves a UDP socket: a session per client address, each with its own
/// upstream socket to a backend, closed after the idle timeout.
pub(crate) async fn udp_loop(sock: Owned<UdpSocket>, slot: Arc<Slot>, ctx: Arc<LbCtx>) {
    let started = Instant::now();
    let now_ms = move || started.elapsed().as_millis() as u64;
    let idle = ctx.udp_idle_timeout;
    let (tx, mut replies) = mpsc::channel::<(SocketAddr, Bytes)>(1024);
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut sweep = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            r = sock.value.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(loadbalancer = %ctx.lb_id, error = %e, "udp receive failed");
                        continue;
                    }
                };
                let data = &buf[..n];
                if let Some(s) = sessions.get(&peer).filter(|s| !s.reply.0.is_finished()) {
                    s.last.store(now_ms(), Ordering::Relaxed);
                    if s.upstream.send(data).await.is_err() {
                        sessions.remove(&peer);
                    }
                    continue;
                }
                sessions.remove(&peer);
                let rt = read_slot(&slot);
                if !rt.allows(peer.ip()) {
                    continue;
                }
                let Some(s) = udp_session(&rt, &ctx, peer, &tx, started).await else {
                    continue;
                };
                if s.upstream.send(data).await.is_ok() {
                    sessions.insert(peer, s);
                }
            }
            Some((peer, data)) = replies.recv() => {
                let _ = sock.value.send_to(&data, peer).await;
            }
            _ = sweep.tick() => {
                let now = now_ms();
                let idle_ms = idle.as_millis() as u64;
                sessions.retain(|_, s| {
                    !s.reply.0.is_finished()
                        && now.saturating_sub(s.last.load(Ordering::Relaxed)) < idle_ms
                });
            }
        }
    }
}

/// Opens a session for `peer` to the backend the balance mode chooses.
async fn udp_session(
    rt: &ListenerRuntime,
    ctx: &LbCtx,
    peer: SocketAddr,
    tx: &mpsc::Sender<(SocketAddr, Bytes)>,
    started: Instant,
) -> Option<Session> {
    let i = *rt
        .balancer
        .order(&rt.backends, &rt.all, peer.ip())
        .first()?;
    let b = &rt.backends[i];
    let upstream = match ctx.factory.udp_upstream(b.addr).await {
        Ok(u) => Arc::new(u),
        Err(e) => {
            tracing::debug!(loadbalancer = %ctx.lb_id, backend = %b.id, error = %e, "udp upstream failed");
            return None;
        }
    };
    let last = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
    let reply = {
        let upstream = upstream.clone();
        let tx = tx.clone();
        let last = last.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            // An error (ICMP port unreachable) ends the session.
            while let Ok(n) = upstream.recv(&mut buf).await {
                // Replies keep the session alive as well as requests.
                last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                if tx
                    .send((peer, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    Some(Session {
        upstream,
        last,
        reply: AbortOnDrop(reply),
        _active: ActiveGuard::new(&b.state),
    })
}
