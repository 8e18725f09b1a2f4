//! L7: HTTP served to clients, routed per request by the listener's
//! policies, forwarded to backends over pooled HTTP/1.1 connections.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::balance::ActiveGuard;
use super::config::Protocol;
use super::netns::SocketFactory;
use super::{LbCtx, Slot, closed, read_slot};

/// The body type answered to clients.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The pooled client to backends, dialling through the LB's namespace.
pub(crate) type BackendClient = Client<Connector, Incoming>;

/// Dials backends for the pooled client (in the LB's namespace).
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    factory: Arc<SocketFactory>,
    timeout: Duration,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let factory = self.factory.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            // The proxy always writes the backend's IP and port in the URI.
            let addr: SocketAddr = uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
                .parse()
                .map_err(|_| io::Error::other(format!("backend uri {uri} has no ip:port")))?;
            Ok(TokioIo::new(factory.connect_tcp(addr, timeout).await?))
        })
    }
}

/// A client to backends for one LB.
pub(crate) fn backend_client(factory: Arc<SocketFactory>, timeout: Duration) -> BackendClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(Connector { factory, timeout })
}

/// Serves HTTP (1.1 with keep-alive, or h2) on an accepted client connection.
pub(crate) async fn serve<S>(
    io: S,
    peer: SocketAddr,
    scheme: Protocol,
    slot: Arc<Slot>,
    ctx: Arc<LbCtx>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut closing = ctx.closing.clone();
    let svc = hyper::service::service_fn(move |req| {
        let slot = slot.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, scheme, &slot, &ctx).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "client connection ended");
            }
        }
        // The LB was deleted: drop the connection.
        _ = closed(&mut closing) => {}
    }
}

/// Routes and forwards one request.
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    scheme: Protocol,
    slot: &Slot,
    ctx: &LbCtx,
) -> Response<ProxyBody> {
    // Read per request: a keep-alive connection follows backend changes.
    let rt = read_slot(slot);
    let authority = request_authority(&req);
    let host = host_without_port(&authority);
    let group = rt.route(&host, req.uri().path());
    let order = rt.balancer.order(&rt.backends, group, peer.ip());
    let Some(&i) = order.first() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n");
    };
    let b = &rt.backends[i];
    let _active = ActiveGuard::new(&b.state);

    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let Ok(uri) = format!("http://{}{}", b.addr, path_and_query).parse::<Uri>() else {
        return text(StatusCode::BAD_REQUEST, "bad request target\n");
    };
    strip_hop_by_hop(&mut parts.headers);
    // Backends see the host the client asked for (h2 carries it only in the URI).
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&authority)
    {
        parts.headers.insert(header::HOST, v);
    }
    if rt.forwardfor & 1 != 0 {
        append_forwarded_for(&mut parts.headers, peer);
    }
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(scheme.scheme()),
    );
    parts.uri = uri;
    parts.version = hyper::Version::HTTP_11;
    match ctx.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            tracing::debug!(loadbalancer = %ctx.lb_id, backend = %b.id, error = %e, "backend request failed");
            text(StatusCode::BAD_GATEWAY, "backend unreachable\n")
        }
    }
}

/// The authority the client addressed: the URI's (h2, absolute form), else Host.
fn request_authority(req: &Request<Incoming>) -> String {
    if let Some(a) = req.uri().authority() {
        return a.as_str().to_string();
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Lowercase host without port (`[v6]:port` keeps the bracketed address).
pub(crate) fn host_without_port(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if a.starts_with('[') {
        return a.split_once(']').map(|(h, _)| format!("{h}]")).unwrap_or(a);
    }
    let host = a.rsplit_once(':').map(|(h, _)| h).unwrap_or(&a);
    host.trim_end_matches('.').to_string()
}

/// Removes per-connection headers (RFC 9110 §7.6.1), including any the
/// Connection header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// Appends the client's address to X-Forwarded-For, keeping earlier hops.
fn append_forwarded_for(h: &mut HeaderMap, peer: SocketAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let mut hops: Vec<String> = h
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    hops.push(peer.ip().to_canonical().to_string());
    if let Ok(v) = HeaderValue::from_str(&hops.join(", ")) {
        h.insert(name, v);
    }
}

fn text(status: StatusCode, msg: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(msg.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_without_port("Foo.Example.com:8080"), "foo.example.com");
        assert_eq!(host_without_port("foo.example.com."), "foo.example.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port(""), "");
    }

    #[test]
    fn hop_by_hop_and_xff() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get(header::CONNECTION).is_none());
        append_forwarded_for(&mut h, "127.0.0.9:1234".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
    }
}
