//! A tiny scripted HTTP(S) responder on loopback that verifies signatures.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iaas_client::params::Params;
use iaas_client::sign::{self, QC_URI, SignatureMethod};
use iaas_client::{Client, Config, Credentials};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

pub const SECRET: &str = "test-secret-do-not-log";

/// One request as the responder saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub params: BTreeMap<String, String>,
    pub signature_ok: bool,
}

type Handler = dyn Fn(usize, &BTreeMap<String, String>) -> (u16, String) + Send + Sync;

/// A loopback HTTP/1.1 responder; `handler(n, params)` scripts the nth answer.
pub struct Responder {
    pub addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    pub async fn start(
        handler: impl Fn(usize, &BTreeMap<String, String>) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(None, handler).await
    }

    /// Serves HTTPS with `acceptor`.
    pub async fn start_tls(
        acceptor: tokio_rustls::TlsAcceptor,
        handler: impl Fn(usize, &BTreeMap<String, String>) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(Some(acceptor), handler).await
    }

    async fn start_with(
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(usize, &BTreeMap<String, String>) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(sock).await {
                                serve(tls, &*handler, &seen).await;
                            }
                        }
                        None => serve(sock, &*handler, &seen).await,
                    }
                });
            }
        });
        Responder { addr, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn client(&self, tune: impl FnOnce(&mut Config)) -> Client {
        let creds = Credentials::new("AKIDTEST", SECRET).unwrap();
        let mut cfg = Config::new(format!("http://{}", self.addr), "Test1", creds);
        cfg.retry.initial_delay = Duration::from_millis(5);
        cfg.retry.max_delay = Duration::from_millis(20);
        cfg.retry.max_elapsed = Duration::from_secs(5);
        cfg.rate_limit.qps = 10_000;
        cfg.rate_limit.burst = 10_000;
        cfg.jobs.initial_poll = Duration::from_millis(5);
        cfg.jobs.max_poll = Duration::from_millis(20);
        tune(&mut cfg);
        Client::new(cfg).unwrap()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
) {
    let Some((method, target, body)) = read_request(&mut sock).await else {
        return;
    };
    let query = if method == "GET" {
        target
            .split_once('?')
            .map(|(_, q)| q.to_string())
            .unwrap_or_default()
    } else {
        body
    };
    let parsed = Params::parse(&query).unwrap();
    let params: BTreeMap<String, String> = parsed
        .pairs()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let unsigned: Vec<(&str, &str)> = parsed.pairs().filter(|(k, _)| *k != "signature").collect();
    let expected = sign::sign_v1(
        SECRET,
        SignatureMethod::HmacSha256,
        &method,
        QC_URI,
        &unsigned,
    );
    let signature_ok = target.starts_with("/iaas/")
        && params
            .get("signature")
            .is_some_and(|s| sign::signatures_equal(s, &expected));
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.push(Seen {
            method: method.clone(),
            params: params.clone(),
            signature_ok,
        });
        seen.len() - 1
    };
    let (status, body) = handler(n, &params);
    let resp = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

async fn read_request<S: AsyncRead + Unpin>(sock: &mut S) -> Option<(String, String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[header_end..]).to_string();
    Some((method, target, body))
}

pub fn ok(v: Value) -> (u16, String) {
    let mut v = v;
    v["ret_code"] = json!(0);
    (200, v.to_string())
}

pub fn fail(code: i32, message: &str) -> (u16, String) {
    (
        200,
        json!({"ret_code": code, "message": message}).to_string(),
    )
}
