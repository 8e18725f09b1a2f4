//! The transport: common parameters, signing, HTTP, envelope decoding,
//! retries, client-side rate limiting, tracing and metrics.
//!
//! Every attempt is rate-limited, gets a fresh `time_stamp` and is signed
//! again, so a retry after a long backoff is never rejected as expired.
//! Logs carry the action, zone, a request id and parameter *names*; never
//! the secret, the signature or parameter values.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use crate::codes::RetryClass;
use crate::config::{Config, HttpMethod};
use crate::error::Error;
use crate::metrics::{CallStats, Metrics};
use crate::params::flatten;
use crate::sign::{self, QC_URI};

/// Parameter names the client sets itself; a request carrying one is rejected.
/// (`zone` is not here: a request may target another zone explicitly.)
pub const RESERVED_PARAMS: &[&str] = &[
    "action",
    "access_key_id",
    "time_stamp",
    "version",
    "signature_method",
    "signature_version",
    "signature",
];

/// A signed-request IaaS client. Cheap to clone; clones share the HTTP
/// connection pool, the rate limiter and the metrics.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    url: String,
    http: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    metrics: Metrics,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials' own Debug redacts the secret.
        f.debug_struct("Client")
            .field("endpoint", &self.inner.config.endpoint)
            .field("zone", &self.inner.config.zone)
            .field("credentials", &self.inner.config.credentials)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Validates the configuration and builds the HTTP client, rate limiter
    /// and metrics. Does not contact the endpoint.
    pub fn new(mut config: Config) -> Result<Client, Error> {
        config.validate()?;
        let http = build_http(&config)?;
        let qps = NonZeroU32::new(config.rate_limit.qps)
            .ok_or_else(|| Error::Config("rate_limit.qps: must be at least 1".into()))?;
        let burst = NonZeroU32::new(config.rate_limit.burst)
            .ok_or_else(|| Error::Config("rate_limit.burst: must be at least 1".into()))?;
        let limiter = RateLimiter::direct(Quota::per_second(qps).allow_burst(burst));
        let url = config.action_url();
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                url,
                http,
                limiter,
                metrics: Metrics::new(),
            }),
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The zone requests are sent to.
    pub fn zone(&self) -> &str {
        &self.inner.config.zone
    }

    /// Per-action call counters seen by this client and its clones.
    pub fn stats(&self) -> BTreeMap<String, CallStats> {
        self.inner.metrics.snapshot()
    }

    /// Registers `iaas_client_calls_total`, `iaas_client_call_duration_seconds`
    /// and `iaas_client_retries_total` in `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.metrics.register(registry);
    }

    /// Calls `action` with a request struct flattened into parameters (see
    /// [`crate::params::flatten`]) and decodes the response envelope into `Resp`.
    pub async fn call<Req, Resp>(&self, action: &str, req: &Req) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let params = flatten(req).map_err(|e| Error::Request(format!("{action}: {e}")))?;
        self.run(action, params, |v| decode_json(action, v)).await
    }

    /// Calls `action` with ready-made flat parameters and returns the raw
    /// envelope (already checked for `ret_code == 0`).
    pub async fn call_params(
        &self,
        action: &str,
        params: Vec<(String, String)>,
    ) -> Result<Value, Error> {
        self.run(action, params, Ok).await
    }

    /// One call: span, retries, decoding and metrics.
    pub(crate) async fn run<T>(
        &self,
        action: &str,
        params: Vec<(String, String)>,
        decode: impl FnOnce(Value) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let request_id = uuid::Uuid::new_v4();
        let span = tracing::info_span!(
            "iaas_call",
            action,
            zone = %self.zone(),
            request_id = %request_id,
            attempt = tracing::field::Empty,
        );
        async move {
            let start = Instant::now();
            let result = match check_request(action, &params) {
                Ok(()) => self.with_retries(action, &params).await.and_then(decode),
                Err(e) => Err(e),
            };
            let elapsed = start.elapsed();
            let label = match &result {
                Ok(_) => "ok",
                Err(e) => e.metric_label(),
            };
            self.inner.metrics.record_call(action, label, elapsed);
            match &result {
                Ok(_) => tracing::debug!(?elapsed, "call succeeded"),
                Err(e) => tracing::debug!(?elapsed, error = %e, "call failed"),
            }
            result
        }
        .instrument(span)
        .await
    }

    /// Attempts with backoff until success, a permanent error, or the retry deadline.
    async fn with_retries(
        &self,
        action: &str,
        params: &[(String, String)],
    ) -> Result<Value, Error> {
        let retry = &self.inner.config.retry;
        let deadline = Instant::now() + retry.max_elapsed;
        let attempts = AtomicU32::new(0);
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(retry.initial_delay)
            .with_max_delay(retry.max_delay)
            .without_max_times();
        let multiplier = retry.throttle_multiplier;
        let attempts_ref = &attempts;
        let result = (|| async move {
            let n = attempts_ref.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::Span::current().record("attempt", n);
            self.attempt(action, params).await
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| should_retry(action, e))
        .adjust(|e, delay| {
            let mut delay = delay?;
            if e.retry_class() == RetryClass::Throttled {
                // Quota errors mean the account is over its API budget: back off harder.
                delay = delay.saturating_mul(multiplier);
            }
            // Do not start a sleep that would end past the deadline.
            (Instant::now() + delay < deadline).then_some(delay)
        })
        .notify(|e, delay| {
            self.inner.metrics.record_retry(action);
            tracing::warn!(error = %e, ?delay, "retrying IaaS call");
        })
        .await;
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                let attempts = attempts.load(Ordering::Relaxed);
                if attempts > 1 && should_retry(action, &e) {
                    Err(Error::RetriesExhausted {
                        action: action.to_string(),
                        attempts,
                        last: Box::new(e),
                    })
                } else {
                    Err(e)
                }
            }
        }
    }

    /// One signed HTTP exchange.
    async fn attempt(&self, action: &str, params: &[(String, String)]) -> Result<Value, Error> {
        // Every attempt, retries included, takes a token: retries must not
        // multiply the load on an endpoint that is already struggling.
        self.inner.limiter.until_ready().await;
        let cfg = &self.inner.config;
        let time_stamp = now_time_stamp();
        let mut all: Vec<(&str, &str)> = Vec::with_capacity(params.len() + 8);
        all.extend([
            ("action", action),
            ("time_stamp", time_stamp.as_str()),
            ("access_key_id", cfg.credentials.access_key_id.as_str()),
            ("version", "1"),
            ("signature_method", cfg.signature_method.as_str()),
            ("signature_version", "1"),
        ]);
        if !params.iter().any(|(k, _)| k == "zone") {
            all.push(("zone", cfg.zone.as_str()));
        }
        all.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let method = cfg.http_method;
        let query = sign::signed_query(
            &cfg.credentials.secret_access_key,
            cfg.signature_method,
            method.as_str(),
            QC_URI,
            &all,
        );
        tracing::debug!(
            params = ?params.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            "sending request"
        );
        let request = match method {
            HttpMethod::Get => self.inner.http.get(format!("{}?{query}", self.inner.url)),
            HttpMethod::Post => self
                .inner
                .http
                .post(&self.inner.url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(query),
        };
        let response = request.send().await.map_err(|e| transport(action, e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| transport(action, e))?;
        decode_envelope(action, status, &body)
    }
}

/// Wraps a reqwest error, dropping the URL: for GET it holds the signed query.
fn transport(action: &str, e: reqwest::Error) -> Error {
    Error::Transport {
        action: action.to_string(),
        source: e.without_url(),
    }
}

/// Whether a failed attempt may be repeated.
///
/// API errors follow their retry class. Transport errors are retried when
/// the request cannot have reached the server (connect failures) or the
/// action only reads; a timed-out `CreateVolumes` may have succeeded, and
/// repeating it could create a second volume. Callers make creates
/// idempotent by looking up by name/tag before trying again.
pub(crate) fn should_retry(action: &str, e: &Error) -> bool {
    match e {
        Error::Transport { .. } if e.is_tls_failure() => false,
        Error::Transport { source, .. } => source.is_connect() || is_read_only(action),
        // 429 and 503 are explicit refusals; other 5xx from a proxy are ambiguous.
        Error::Status { status, .. } => match status {
            429 | 503 => true,
            s if *s >= 500 => is_read_only(action),
            _ => false,
        },
        other => other.retry_class() != RetryClass::Permanent,
    }
}

/// Actions with no side effects.
fn is_read_only(action: &str) -> bool {
    action.starts_with("Describe") || action.starts_with("Get")
}

fn check_request(action: &str, params: &[(String, String)]) -> Result<(), Error> {
    if action.is_empty() || !action.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::Request(format!("invalid action name {action:?}")));
    }
    if let Some((k, _)) = params
        .iter()
        .find(|(k, _)| RESERVED_PARAMS.contains(&k.as_str()))
    {
        return Err(Error::Request(format!(
            "{action}: parameter [{k}] is set by the client and must not be in the request"
        )));
    }
    if let Some((k, _)) = params.iter().find(|(k, _)| k.is_empty()) {
        return Err(Error::Request(format!(
            "{action}: empty parameter name {k:?}"
        )));
    }
    Ok(())
}

/// `YYYY-MM-DDThh:mm:ssZ` in UTC.
fn now_time_stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// A short printable excerpt of a body for error messages.
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX * 4)]);
    let mut out: String = text
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX || body.len() > MAX * 4 {
        out.push('…');
    }
    out
}

/// Checks a response envelope: a JSON object with `ret_code`; non-zero is
/// [`Error::Api`] whatever the HTTP status; a body that is not an envelope is
/// [`Error::Status`] for a non-2xx status and [`Error::Decode`] otherwise.
/// Public so that fuzzers and the emulator's tests can drive it directly.
pub fn decode_envelope(action: &str, status: u16, body: &[u8]) -> Result<Value, Error> {
    let ok_status = (200..300).contains(&status);
    let not_envelope = |detail: String| {
        if ok_status {
            Error::Decode {
                action: action.to_string(),
                detail,
            }
        } else {
            Error::Status {
                action: action.to_string(),
                status,
                detail: excerpt(body),
            }
        }
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return Err(not_envelope(format!(
                "expected a JSON object, got: {}",
                excerpt(body)
            )));
        }
        Err(e) => {
            return Err(not_envelope(format!(
                "invalid JSON ({e}): {}",
                excerpt(body)
            )));
        }
    };
    let code = match value.get("ret_code") {
        Some(Value::Number(n)) => n.as_i64().and_then(|c| i32::try_from(c).ok()),
        // Some gateways quote numbers.
        Some(Value::String(s)) => s.trim().parse::<i32>().ok(),
        _ => None,
    };
    let Some(code) = code else {
        return Err(not_envelope(format!(
            "no integer ret_code in response: {}",
            excerpt(body)
        )));
    };
    if code != crate::codes::OK {
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return Err(Error::Api {
            action: action.to_string(),
            code,
            message,
        });
    }
    Ok(value)
}

/// Decodes a checked envelope into a typed response.
pub(crate) fn decode_json<T: DeserializeOwned>(action: &str, value: Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|e| Error::Decode {
        action: action.to_string(),
        detail: e.to_string(),
    })
}

fn build_http(cfg: &Config) -> Result<reqwest::Client, Error> {
    // reqwest is built without a default crypto provider; installing one
    // twice is harmless (the second call reports an error we ignore).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.request_timeout)
        // A redirect would re-send a signed request somewhere else; refuse.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("iaas-client/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &cfg.tls.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            Error::Config(format!("tls.ca_file: cannot read {}: {e}", ca.display()))
        })?;
        let certs = reqwest::tls::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Config(format!("tls.ca_file: {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(Error::Config(format!(
                "tls.ca_file: {} holds no PEM certificate",
                ca.display()
            )));
        }
        builder = builder.tls_certs_merge(certs);
    }
    if cfg.tls.insecure_skip_verify {
        tracing::warn!(endpoint = %cfg.endpoint, "TLS certificate verification is disabled (tls.insecure_skip_verify)");
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}

/// How long a retry loop may still wait, for callers layering their own waits.
pub(crate) fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_decoding() {
        let v = decode_envelope(
            "DescribeVolumes",
            200,
            br#"{"action":"DescribeVolumesResponse","ret_code":0,"total_count":0}"#,
        )
        .unwrap();
        assert_eq!(v["total_count"], 0);

        let e = decode_envelope(
            "DescribeVolumes",
            200,
            br#"{"ret_code":2100,"message":"resource [vol-x] not found"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Api { code: 2100, message, .. } if message == "resource [vol-x] not found")
        );

        // A non-2xx status with a JSON envelope is still an API error.
        let e = decode_envelope(
            "CreateVolumes",
            400,
            br#"{"ret_code":1100,"message":"missing parameter [size]"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some(1100));

        let e = decode_envelope("X", 200, br#"{"ret_code":"5100","message":"busy"}"#).unwrap_err();
        assert_eq!(e.code(), Some(5100));

        let e = decode_envelope("X", 502, b"<html>Bad Gateway</html>").unwrap_err();
        assert!(matches!(e, Error::Status { status: 502, .. }), "{e}");
        let e = decode_envelope("X", 200, b"<html>").unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
        let e = decode_envelope("X", 200, b"[1]").unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
        let e = decode_envelope("X", 200, br#"{"total_count":1}"#).unwrap_err();
        assert!(e.to_string().contains("ret_code"), "{e}");
        let e = decode_envelope("X", 200, &vec![b'x'; 10_000]).unwrap_err();
        assert!(e.to_string().len() < 600, "{e}");
    }

    #[test]
    fn envelope_decoding_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seeds: [&[u8]; 4] = [
            br#"{"ret_code":0,"volume_set":[{"volume_id":"v"}],"total_count":1}"#,
            br#"{"ret_code":2100,"message":"x"}"#,
            br#"{"ret_code":"12","message":null}"#,
            b"",
        ];
        for i in 0..5000 {
            let mut body = seeds[i % seeds.len()].to_vec();
            for _ in 0..rng.random_range(0..4) {
                if body.is_empty() || rng.random_bool(0.3) {
                    body.push(rng.random());
                } else {
                    let at = rng.random_range(0..body.len());
                    body[at] = rng.random();
                }
            }
            let status = [200u16, 400, 500, 503][i % 4];
            let _ = decode_envelope("Fuzz", status, &body);
        }
    }

    #[test]
    fn retry_decisions() {
        let api = |code: i32, msg: &str| Error::Api {
            action: "A".into(),
            code,
            message: msg.into(),
        };
        assert!(should_retry("CreateVolumes", &api(5100, "busy")));
        assert!(should_retry("CreateVolumes", &api(2500, "quota")));
        assert!(should_retry(
            "AttachVolumes",
            &api(1400, "lease info not ready yet, please try later")
        ));
        assert!(!should_retry(
            "AttachVolumes",
            &api(1400, "volume is in-use")
        ));
        assert!(!should_retry("DescribeVolumes", &api(2100, "")));
        let status = |s: u16| Error::Status {
            action: "A".into(),
            status: s,
            detail: String::new(),
        };
        assert!(should_retry("CreateVolumes", &status(503)));
        assert!(should_retry("CreateVolumes", &status(429)));
        assert!(!should_retry("CreateVolumes", &status(504)));
        assert!(should_retry("DescribeVolumes", &status(504)));
        assert!(!should_retry("DescribeVolumes", &status(404)));
    }

    #[test]
    fn request_checks() {
        assert!(check_request("DescribeVolumes", &[("zone".into(), "z".into())]).is_ok());
        let e = check_request("DescribeVolumes", &[("signature".into(), "x".into())]).unwrap_err();
        assert!(e.to_string().contains("[signature]"), "{e}");
        assert!(check_request("Describe Volumes", &[]).is_err());
        assert!(check_request("", &[]).is_err());
    }

    #[test]
    fn time_stamp_shape() {
        let ts = now_time_stamp();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
}
