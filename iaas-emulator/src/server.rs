//! HTTP: the signed API under `/iaas/` and the admin endpoint under `/admin/`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use iaas_client::codes;
use iaas_client::params::Params;
use iaas_client::sign::{QC_URI, SignatureMethod, sign_v1, signatures_equal};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::{self, Ctx};
use crate::emulator::Shared;
use crate::error::{ApiError, ApiResult};
use crate::faults::FaultConfig;
use crate::util::parse_time_stamp;

/// Largest accepted POST body.
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest accepted query string: 64 KiB in spirit, kept just under hyper's
/// own URI limit (65534 bytes, answered with a bare 414) so that clients
/// see the JSON 413 for anything this server can parse at all.
pub const MAX_QUERY: usize = 65_000;

/// The axum router of the emulator.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/iaas/", get(api_get).post(api_post))
        .route("/iaas", get(api_get).post(api_post))
        .route(
            "/admin/faults",
            get(faults_get).put(faults_put).delete(faults_delete),
        )
        .route("/admin/stats", get(stats_get))
        .route("/admin/stats/commits", get(commit_stats_get))
        .route("/admin/instances", post(instances_adopt))
        .route("/admin/stats/reset", post(stats_reset))
        .with_state(shared)
}

fn too_large() -> Response {
    let body = json!({"ret_code": codes::MALFORMED, "message": "request too large"});
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
}

async fn api_get(AxState(shared): AxState<Arc<Shared>>, uri: Uri) -> Response {
    let query = uri.query().unwrap_or("").to_string();
    if query.len() > MAX_QUERY {
        return too_large();
    }
    run(shared, "GET", query).await
}

async fn api_post(AxState(shared): AxState<Arc<Shared>>, uri: Uri, body: Body) -> Response {
    if uri.query().is_some_and(|q| q.len() > MAX_QUERY) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let raw = match String::from_utf8(bytes.to_vec()) {
        Ok(s) => s,
        Err(_) => {
            let body =
                json!({"ret_code": codes::MALFORMED, "message": "request body is not UTF-8"});
            return axum::Json(body).into_response();
        }
    };
    run(shared, "POST", raw).await
}

/// Processes on a task of its own so that a client hanging up mid-request
/// cannot cancel a mutation between its cache update and its commit.
async fn run(shared: Arc<Shared>, method: &'static str, raw: String) -> Response {
    let handle = tokio::spawn(async move { process(&shared, method, &raw).await });
    let body = match handle.await {
        Ok(v) => v,
        Err(e) => {
            json!({"ret_code": codes::INTERNAL, "message": format!("request task failed: {e}")})
        }
    };
    axum::Json(body).into_response()
}

fn error_body(e: &ApiError) -> Value {
    json!({"ret_code": e.code, "message": e.message})
}

/// Parses, authenticates, applies faults, dispatches, commits; returns the JSON envelope.
pub async fn process(shared: &Arc<Shared>, method: &str, raw: &str) -> Value {
    let started = Instant::now();
    let params = match Params::parse(raw) {
        Ok(p) => p,
        Err(e) => {
            shared.record("", codes::MALFORMED);
            return error_body(&e.into());
        }
    };
    let action = params.get("action").unwrap_or("").to_string();
    let result = dispatch(shared, method, &action, &params).await;
    let (code, body) = match result {
        Ok(mut reply) => {
            let mut out = serde_json::Map::new();
            out.insert("action".into(), Value::String(format!("{action}Response")));
            out.insert("ret_code".into(), 0.into());
            out.append(&mut reply);
            (0, Value::Object(out))
        }
        Err(e) => (e.code, error_body(&e)),
    };
    shared.record(&action, code);
    tracing::info!(action = %action, ret_code = code, elapsed_ms = started.elapsed().as_millis() as u64, "api call");
    body
}

async fn dispatch(
    shared: &Arc<Shared>,
    method: &str,
    action: &str,
    params: &Params,
) -> ApiResult<api::Reply> {
    if action.is_empty() {
        return Err(ApiError::param(iaas_client::params::ParamError::Missing(
            "action".into(),
        )));
    }
    let latency = shared.faults.lock().ok().and_then(|f| f.latency());
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    if shared
        .faults
        .lock()
        .map(|mut f| f.throttled(Instant::now()))
        .unwrap_or(false)
    {
        return Err(ApiError::new(
            codes::QUOTA_EXCEEDED,
            "request quota exceeded, please try later",
        ));
    }
    authenticate(shared, method, params)?;
    let Some(handler) = api::handler(action) else {
        return Err(ApiError::malformed(format!("unknown action [{action}]")));
    };
    if let Some(e) = shared
        .faults
        .lock()
        .ok()
        .and_then(|mut f| f.injected_error(action))
    {
        return Err(e);
    }
    let mut st = shared.state.lock().await;
    let mut ctx = Ctx {
        st: &mut st,
        config: &shared.config,
        dp: &shared.dp,
        new_jobs: Vec::new(),
    };
    let result = handler(&mut ctx, params);
    let new_jobs = std::mem::take(&mut ctx.new_jobs);
    match result {
        Ok(reply) => {
            // Releases the lock and waits until durable: reads too, so that
            // nothing not yet durable is ever shown.
            shared.commit(st).await?;
            for j in new_jobs {
                shared.spawn_job(j);
            }
            Ok(reply)
        }
        Err(e) => {
            // A handler that failed part-way must leave nothing behind: drop
            // its uncommitted changes. Its error may still reflect other
            // requests' changes, so it waits for those like a read.
            shared.discard(&mut st);
            shared.commit(st).await?;
            Err(e)
        }
    }
}

/// Verifies a request against this emulator's key, zone and clock.
fn authenticate(shared: &Shared, method: &str, p: &Params) -> ApiResult<()> {
    let v = Verifier {
        access_key_id: &shared.meta.access_key_id,
        secret_access_key: &shared.meta.secret_access_key,
        zone: &shared.meta.zone,
        max_clock_skew_secs: shared.config.max_clock_skew_secs,
    };
    verify_request(&v, method, p, time::OffsetDateTime::now_utc())
}

/// What a request is verified against.
#[derive(Debug, Clone, Copy)]
pub struct Verifier<'a> {
    /// The only access key id this endpoint knows.
    pub access_key_id: &'a str,
    /// Its secret.
    pub secret_access_key: &'a str,
    /// The zone served.
    pub zone: &'a str,
    /// Accepted clock skew of `time_stamp`, in seconds.
    pub max_clock_skew_secs: i64,
}

/// Verifies key, signature, freshness and zone of a request (QingCloud
/// signature v1) received with HTTP `method` at `now`. Pure, so that it can be
/// fuzzed: every input yields Ok or an ApiError, never a panic.
pub fn verify_request(
    v: &Verifier<'_>,
    method: &str,
    p: &Params,
    now: time::OffsetDateTime,
) -> ApiResult<()> {
    let key = p.required("access_key_id")?;
    if key != v.access_key_id {
        return Err(ApiError::new(
            codes::AUTH_FAILED,
            format!("authentication failed: unknown access_key_id [{key}]"),
        ));
    }
    let sig_method = p.required("signature_method")?;
    let sig_method = SignatureMethod::parse(sig_method).ok_or_else(|| {
        ApiError::invalid(
            "signature_method",
            format!("{sig_method:?} is not HmacSHA256 or HmacSHA1"),
        )
    })?;
    let sv = p.required("signature_version")?;
    if sv != "1" {
        return Err(ApiError::invalid(
            "signature_version",
            format!("{sv:?} is not supported (only 1)"),
        ));
    }
    let version = p.required("version")?;
    if version != "1" {
        return Err(ApiError::invalid(
            "version",
            format!("{version:?} is not supported (only 1)"),
        ));
    }
    let received = p.required("signature")?;
    let pairs: Vec<(&str, &str)> = p.pairs().filter(|(k, _)| *k != "signature").collect();
    let expected = sign_v1(v.secret_access_key, sig_method, method, QC_URI, &pairs);
    if !signatures_equal(&expected, received) {
        return Err(ApiError::new(
            codes::AUTH_FAILED,
            "authentication failed: signature mismatch",
        ));
    }
    let ts = p.required("time_stamp")?;
    let t = parse_time_stamp(ts).ok_or_else(|| {
        ApiError::invalid("time_stamp", format!("{ts:?} is not YYYY-MM-DDThh:mm:ssZ"))
    })?;
    let skew = (now - t).whole_seconds();
    let max = v.max_clock_skew_secs;
    if skew > max || skew < -max {
        return Err(ApiError::new(
            codes::EXPIRED,
            format!(
                "request expired: time_stamp {ts} is {skew} s off the server clock (more than {max} s)"
            ),
        ));
    }
    let zone = p.required("zone")?;
    if zone != v.zone {
        return Err(ApiError::invalid(
            "zone",
            format!("unknown zone [{zone}] (this endpoint serves {})", v.zone),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- admin

fn admin_off() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

async fn faults_get(AxState(shared): AxState<Arc<Shared>>) -> Response {
    if !shared.config.admin_enabled {
        return admin_off();
    }
    let cfg = shared
        .faults
        .lock()
        .map(|f| f.config().clone())
        .unwrap_or_default();
    axum::Json(cfg).into_response()
}

async fn faults_put(AxState(shared): AxState<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    if !shared.config.admin_enabled {
        return admin_off();
    }
    let cfg: FaultConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("fault config: {e}")).into_response(),
    };
    if let Err(e) = cfg.validate() {
        return (StatusCode::BAD_REQUEST, format!("fault config: {e}")).into_response();
    }
    shared.set_faults(cfg.clone());
    axum::Json(cfg).into_response()
}

async fn faults_delete(AxState(shared): AxState<Arc<Shared>>) -> Response {
    if !shared.config.admin_enabled {
        return admin_off();
    }
    shared.set_faults(FaultConfig::default());
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /admin/instances` with an [`AdoptedHost`](crate::config::AdoptedHost)
/// JSON body: presents an existing host (a real node) as an instance.
async fn instances_adopt(
    AxState(shared): AxState<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Response {
    if !shared.config.admin_enabled {
        return admin_off();
    }
    let host: crate::config::AdoptedHost = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("adopted host: {e}")).into_response(),
    };
    match shared.adopt(&host).await {
        Ok(inst) => axum::Json(inst).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("adopted host: {}", e.message),
        )
            .into_response(),
    }
}

async fn stats_get(AxState(shared): AxState<Arc<Shared>>) -> Response {
    if !shared.config.admin_enabled {
        return admin_off();
    }
    axum::Json(shared.stats()).into_response()
}

/// `GET /admin/stats/commits`: store transactions (fsyncs) and what they carried.
async fn commit_stats_get(AxState(shared): AxState<Arc<Shared>>) -> Response {
    if !shared.config.admin_enabled {
        return admin_off();
    }
    axum::Json(shared.commit_stats()).into_response()
}

async fn stats_reset(AxState(shared): AxState<Arc<Shared>>) -> Response {
    if !shared.config.admin_enabled {
        return admin_off();
    }
    shared.reset_stats();
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------- accept loop

/// Accepts connections until `shutdown` flips, then lets in-flight requests
/// finish (connections close gracefully) before returning.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => {
                let stream = match res {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let svc = TowerToHyperService::new(app.clone());
                let tls = tls.clone();
                let sd = shutdown.clone();
                conns.spawn(async move {
                    match tls {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => serve_conn(TokioIo::new(s), svc, sd).await,
                            Err(e) => tracing::debug!(error = %e, "tls handshake failed"),
                        },
                        None => serve_conn(TokioIo::new(stream), svc, sd).await,
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
        conns.abort_all();
    }
}

async fn serve_conn<I>(
    io: TokioIo<I>,
    svc: TowerToHyperService<Router>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
