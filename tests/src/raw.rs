//! Hand-built signed requests, for tests that must send what a well-behaved
//! client never would (stale timestamps, bad signatures, oversized bodies).

use iaas_client::sign::{self, SignatureMethod};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Credentials and address of an endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:1234`.
    pub endpoint: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret.
    pub secret: String,
    /// Zone.
    pub zone: String,
}

/// QingCloud's `time_stamp` format for a moment.
pub fn time_stamp(at: OffsetDateTime) -> String {
    let s = at
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid")
        .format(&Rfc3339)
        .expect("RFC 3339 formatting of a UTC time");
    s.replace("+00:00", "Z")
}

/// One raw request: common parameters filled in, then `tweak` may change
/// anything before signing.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Every parameter but the signature.
    pub params: Vec<(String, String)>,
    /// HTTP method.
    pub method: &'static str,
    /// Sign with this secret (defaults to the target's).
    pub secret: Option<String>,
    /// Override the computed signature (None: compute; Some(""): omit).
    pub signature: Option<String>,
}

impl RawRequest {
    /// A request for `action` with the common parameters.
    pub fn new(target: &Target, action: &str, params: &[(&str, &str)]) -> Self {
        let mut all: Vec<(String, String)> = vec![
            ("action".into(), action.into()),
            ("zone".into(), target.zone.clone()),
            ("time_stamp".into(), time_stamp(OffsetDateTime::now_utc())),
            ("access_key_id".into(), target.access_key_id.clone()),
            ("version".into(), "1".into()),
            ("signature_method".into(), "HmacSHA256".into()),
            ("signature_version".into(), "1".into()),
        ];
        all.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        RawRequest {
            params: all,
            method: "GET",
            secret: None,
            signature: None,
        }
    }

    /// Replaces (or adds) a parameter.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.params.retain(|(k, _)| k != name);
        self.params.push((name.to_string(), value.to_string()));
        self
    }

    /// Removes a parameter.
    pub fn remove(mut self, name: &str) -> Self {
        self.params.retain(|(k, _)| k != name);
        self
    }

    /// The encoded query or body that would be sent.
    pub fn encode(&self, target: &Target) -> String {
        let secret = self.secret.as_deref().unwrap_or(&target.secret);
        match &self.signature {
            None => sign::signed_query(
                secret,
                SignatureMethod::HmacSha256,
                self.method,
                sign::QC_URI,
                &self.params,
            ),
            Some(s) if s.is_empty() => sign::canonical_query(&self.params),
            Some(s) => format!(
                "{}&signature={}",
                sign::canonical_query(&self.params),
                sign::percent_encode(s)
            ),
        }
    }

    /// Sends it and returns `(http status, json body)`.
    pub async fn send(&self, target: &Target) -> anyhow::Result<(u16, Value)> {
        let encoded = self.encode(target);
        send_encoded(target, self.method, &encoded).await
    }
}

/// Sends an already encoded query (GET) or form body (POST).
pub async fn send_encoded(
    target: &Target,
    method: &str,
    encoded: &str,
) -> anyhow::Result<(u16, Value)> {
    let http = http_client()?;
    let url = format!("{}{}", target.endpoint.trim_end_matches('/'), sign::QC_URI);
    let resp = if method == "GET" {
        http.get(format!("{url}?{encoded}")).send().await?
    } else {
        http.post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encoded.to_string())
            .send()
            .await?
    };
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("non-JSON response ({status}): {e}: {text:.200}"))?;
    Ok((status, json))
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().build()?)
}

/// The `ret_code` of a response body (-1 when absent).
pub fn ret_code(body: &Value) -> i64 {
    body.get("ret_code").and_then(Value::as_i64).unwrap_or(-1)
}

/// The `message` of a response body.
pub fn message(body: &Value) -> String {
    body.get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
