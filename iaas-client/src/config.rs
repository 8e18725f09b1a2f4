//! Client configuration: endpoint, zone, credentials, timeouts, retry, rate
//! limit, job polling and TLS.
//!
//! Sources:
//! - [`Config::new`] plus field assignment (defaults below),
//! - [`Config::from_yaml_file`] / [`Config::from_yaml_str`]: a YAML file,
//! - [`Config::from_credentials_file`]: the emulator's `credentials.yaml`
//!   (QingCloud SDK format; the same loader, it only has fewer keys),
//! - [`Config::from_lookup`] / [`Config::from_env`]: environment variables.
//!
//! Every loader takes its inputs through small seams (a string, a path, a
//! lookup closure) so it is testable without touching the real environment.
//!
//! # YAML format
//!
//! ```yaml
//! endpoint: https://api.qingcloud.com   # or host/port/protocol as the QingCloud SDK writes
//! zone: pek3a                           # lower-cased
//! qy_access_key_id: QYACCESS...         # inline credentials, or:
//! qy_secret_access_key: ...
//! credentials_file: creds.yaml          # a file with the two qy_* keys (relative to this file)
//! credentials_dir: /etc/iaas/secret     # a mounted Secret: files access_key_id, secret_access_key
//! signature_method: HmacSHA256          # or HmacSHA1
//! http_method: POST                     # or GET
//! connect_timeout: 5s
//! request_timeout: 30s
//! retry: { max_elapsed: 60s, initial_delay: 200ms, max_delay: 10s, throttle_multiplier: 4 }
//! rate_limit: { qps: 10, burst: 20 }
//! jobs: { initial_poll: 100ms, max_poll: 5s, default_timeout: 300s }
//! tls: { ca_file: /etc/iaas/ca.pem, insecure_skip_verify: false }
//! ```
//!
//! Durations are either plain numbers of seconds (`30`, `0.5`) or strings made
//! of `<number><unit>` parts with units `ms`, `s`, `m`, `h` (`"1m30s"`, `"200ms"`).
//! Unknown keys inside the sections are errors naming the key; unknown
//! top-level keys are ignored with a warning, because SDK-format credential
//! files carry keys this client has no use for.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::Error;
use crate::sign::SignatureMethod;

/// The endpoint used when none is configured.
pub const DEFAULT_ENDPOINT: &str = "https://api.qingcloud.com";

/// Environment variable holding the access key id.
pub const ENV_ACCESS_KEY_ID: &str = "QY_ACCESS_KEY_ID";
/// Environment variable holding the secret access key.
pub const ENV_SECRET_ACCESS_KEY: &str = "QY_SECRET_ACCESS_KEY";
/// Environment variable holding the endpoint base URL.
pub const ENV_ENDPOINT: &str = "QY_ENDPOINT";
/// Environment variable holding the zone.
pub const ENV_ZONE: &str = "QY_ZONE";

/// An access key pair. `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The public key id (`QYACCESSKEYIDEXAMPLE`).
    pub access_key_id: String,
    /// The HMAC secret. Never logged or printed.
    pub secret_access_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (secret redacted)", self.access_key_id)
    }
}

/// The QingCloud SDK credential file keys.
#[derive(Deserialize)]
struct CredentialFile {
    qy_access_key_id: Option<String>,
    qy_secret_access_key: Option<String>,
}

impl Credentials {
    /// Builds credentials, rejecting empty values (after trimming whitespace).
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Result<Self, Error> {
        let access_key_id = access_key_id.into().trim().to_string();
        let secret_access_key = secret_access_key.into().trim().to_string();
        if access_key_id.is_empty() {
            return Err(Error::Config("access_key_id is empty".into()));
        }
        if secret_access_key.is_empty() {
            return Err(Error::Config("secret_access_key is empty".into()));
        }
        Ok(Credentials {
            access_key_id,
            secret_access_key,
        })
    }

    /// Reads `QY_ACCESS_KEY_ID` and `QY_SECRET_ACCESS_KEY` from the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads `QY_ACCESS_KEY_ID` and `QY_SECRET_ACCESS_KEY` through `lookup`
    /// (a seam for tests); errors name the missing variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Error::Config(format!("environment variable {name} is not set or empty"))
                })
        };
        Self::new(get(ENV_ACCESS_KEY_ID)?, get(ENV_SECRET_ACCESS_KEY)?)
    }

    /// Reads a QingCloud SDK credential file (YAML with `qy_access_key_id`
    /// and `qy_secret_access_key`; other keys are ignored).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = read_to_string(path)?;
        Self::from_yaml_str(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses the credential file format from a string.
    pub fn from_yaml_str(text: &str) -> Result<Self, Error> {
        let file: CredentialFile = serde_yaml::from_str(text)
            .map_err(|e| Error::Config(format!("invalid credentials YAML: {e}")))?;
        let id = file
            .qy_access_key_id
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| Error::Config("qy_access_key_id is missing or empty".into()))?;
        let secret = file
            .qy_secret_access_key
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| Error::Config("qy_secret_access_key is missing or empty".into()))?;
        Self::new(id, secret)
    }

    /// Reads a mounted Kubernetes Secret: files `access_key_id` and
    /// `secret_access_key` in `dir`, surrounding whitespace trimmed.
    pub fn from_secret_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let read = |name: &str| -> Result<String, Error> {
            let path = dir.join(name);
            let value = read_to_string(&path)?.trim().to_string();
            if value.is_empty() {
                return Err(Error::Config(format!("{} is empty", path.display())));
            }
            Ok(value)
        };
        Self::new(read("access_key_id")?, read("secret_access_key")?)
    }
}

fn read_to_string(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
}

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpMethod {
    /// `POST /iaas/` with the signed query as an `application/x-www-form-urlencoded`
    /// body: keeps parameters (and their sizes) out of URLs and access logs.
    #[default]
    Post,
    /// `GET /iaas/?<signed query>`.
    Get,
}

impl HttpMethod {
    /// The method name as signed.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Post => "POST",
            HttpMethod::Get => "GET",
        }
    }
}

/// Retry of retryable failures (see [`crate::codes::retry_class`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Give up once this much time has passed since the first attempt (0 disables retries).
    #[serde(deserialize_with = "de_duration")]
    pub max_elapsed: Duration,
    /// Delay before the first retry.
    #[serde(deserialize_with = "de_duration")]
    pub initial_delay: Duration,
    /// Longest delay between two attempts (before jitter and the throttle multiplier).
    #[serde(deserialize_with = "de_duration")]
    pub max_delay: Duration,
    /// Delays after ret_code 2500 (quota / throttling) are multiplied by this.
    pub throttle_multiplier: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_elapsed: Duration::from_secs(60),
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            throttle_multiplier: 4,
        }
    }
}

/// Client-side rate limit, shared by every clone of a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub qps: u32,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { qps: 10, burst: 20 }
    }
}

/// Polling of asynchronous jobs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// First delay between two DescribeJobs polls.
    #[serde(deserialize_with = "de_duration")]
    pub initial_poll: Duration,
    /// Longest delay between two polls.
    #[serde(deserialize_with = "de_duration")]
    pub max_poll: Duration,
    /// How long `wait_job(.., None)` waits.
    #[serde(deserialize_with = "de_duration")]
    pub default_timeout: Duration,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            initial_poll: Duration::from_millis(100),
            max_poll: Duration::from_secs(5),
            default_timeout: Duration::from_secs(300),
        }
    }
}

/// TLS settings for https endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Extra trusted CA certificates (PEM bundle), added to the platform roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For throwaway test endpoints only.
    pub insecure_skip_verify: bool,
}

/// Everything a [`crate::Client`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Base URL; the client posts to `<endpoint>/iaas/`. Without a scheme, https is assumed.
    pub endpoint: String,
    /// Zone sent with every request (lower case).
    pub zone: String,
    /// The key pair requests are signed with.
    pub credentials: Credentials,
    /// HMAC flavour of the signature.
    pub signature_method: SignatureMethod,
    /// GET or POST.
    pub http_method: HttpMethod,
    /// TCP (and TLS) connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Whole-request timeout per attempt.
    pub request_timeout: Duration,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Client-side rate limit.
    pub rate_limit: RateLimitConfig,
    /// Job polling.
    pub jobs: JobConfig,
    /// TLS settings.
    pub tls: TlsConfig,
}

/// Top-level keys of the YAML file.
#[derive(Deserialize, Default)]
#[serde(default)]
struct FileConfig {
    endpoint: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    protocol: Option<String>,
    zone: Option<String>,
    qy_access_key_id: Option<String>,
    qy_secret_access_key: Option<String>,
    credentials_file: Option<PathBuf>,
    credentials_dir: Option<PathBuf>,
    signature_method: Option<String>,
    http_method: Option<String>,
    #[serde(deserialize_with = "de_opt_duration")]
    connect_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_opt_duration")]
    request_timeout: Option<Duration>,
    retry: Option<RetryConfig>,
    rate_limit: Option<RateLimitConfig>,
    jobs: Option<JobConfig>,
    tls: Option<TlsConfig>,
}

const KNOWN_KEYS: &[&str] = &[
    "endpoint",
    "host",
    "port",
    "protocol",
    "zone",
    "qy_access_key_id",
    "qy_secret_access_key",
    "credentials_file",
    "credentials_dir",
    "signature_method",
    "http_method",
    "connect_timeout",
    "request_timeout",
    "retry",
    "rate_limit",
    "jobs",
    "tls",
];

impl Config {
    /// A configuration with every tunable at its default.
    pub fn new(
        endpoint: impl Into<String>,
        zone: impl Into<String>,
        credentials: Credentials,
    ) -> Self {
        Config {
            endpoint: endpoint.into(),
            zone: zone.into(),
            credentials,
            signature_method: SignatureMethod::default(),
            http_method: HttpMethod::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryConfig::default(),
            rate_limit: RateLimitConfig::default(),
            jobs: JobConfig::default(),
            tls: TlsConfig::default(),
        }
    }

    /// Reads a YAML file (format in the module docs). Relative
    /// `credentials_file`/`credentials_dir`/`tls.ca_file` paths are resolved
    /// against the file's directory.
    pub fn from_yaml_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = read_to_string(path)?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse_yaml(&text, Some(base)).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses the YAML format from a string; relative paths stay relative to
    /// the working directory.
    pub fn from_yaml_str(text: &str) -> Result<Self, Error> {
        Self::parse_yaml(text, None)
    }

    /// Reads the emulator's `credentials.yaml` (QingCloud SDK format with
    /// `qy_access_key_id`, `qy_secret_access_key`, `zone` and `endpoint`).
    pub fn from_credentials_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::from_yaml_file(path)
    }

    /// Reads `QY_ENDPOINT` (default [`DEFAULT_ENDPOINT`]), `QY_ZONE`,
    /// `QY_ACCESS_KEY_ID` and `QY_SECRET_ACCESS_KEY` from the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`] but reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let endpoint = lookup(ENV_ENDPOINT)
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let zone = lookup(ENV_ZONE)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                Error::Config(format!(
                    "environment variable {ENV_ZONE} is not set or empty"
                ))
            })?;
        let credentials = Credentials::from_lookup(&lookup)?;
        let mut config = Config::new(endpoint.trim(), zone, credentials);
        config.validate()?;
        Ok(config)
    }

    fn parse_yaml(text: &str, base: Option<&Path>) -> Result<Self, Error> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| Error::Config(format!("invalid YAML: {e}")))?;
        if let serde_yaml::Value::Mapping(map) = &value {
            for key in map.keys() {
                if let Some(k) = key.as_str().filter(|k| !KNOWN_KEYS.contains(k)) {
                    tracing::warn!(key = k, "ignoring unknown configuration key");
                }
            }
        } else if !value.is_null() {
            return Err(Error::Config(
                "expected a YAML mapping at the top level".into(),
            ));
        }
        // Deserialize from the text (not the Value) so errors carry the key path and line.
        let file: FileConfig = if value.is_null() {
            FileConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| Error::Config(e.to_string()))?
        };
        let resolve = |p: PathBuf| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        };

        let endpoint = match (file.endpoint, file.host) {
            (Some(e), _) => e,
            (None, Some(host)) => {
                let protocol = file.protocol.unwrap_or_else(|| "https".into());
                match file.port {
                    Some(port) => format!("{protocol}://{host}:{port}"),
                    None => format!("{protocol}://{host}"),
                }
            }
            (None, None) => DEFAULT_ENDPOINT.to_string(),
        };
        let zone = file
            .zone
            .ok_or_else(|| Error::Config("zone: missing".into()))?;

        let credentials = match (
            file.qy_access_key_id,
            file.qy_secret_access_key,
            file.credentials_file,
            file.credentials_dir,
        ) {
            (Some(id), Some(secret), None, None) => {
                Credentials::new(id, secret).map_err(|e| match e {
                    Error::Config(m) => Error::Config(format!("qy_{m}")),
                    other => other,
                })?
            }
            (None, None, Some(f), None) => Credentials::from_file(resolve(f))?,
            (None, None, None, Some(d)) => Credentials::from_secret_dir(resolve(d))?,
            (None, None, None, None) => {
                return Err(Error::Config(
                    "credentials: set qy_access_key_id and qy_secret_access_key, credentials_file, or credentials_dir"
                        .into(),
                ));
            }
            (Some(_), None, None, None) => {
                return Err(Error::Config("qy_secret_access_key: missing".into()));
            }
            (None, Some(_), None, None) => {
                return Err(Error::Config("qy_access_key_id: missing".into()));
            }
            _ => {
                return Err(Error::Config(
                    "credentials: qy_* keys, credentials_file and credentials_dir are mutually exclusive".into(),
                ));
            }
        };

        let mut config = Config::new(endpoint, zone, credentials);
        if let Some(m) = file.signature_method {
            config.signature_method = SignatureMethod::parse(&m).ok_or_else(|| {
                Error::Config(format!(
                    "signature_method: expected HmacSHA256 or HmacSHA1, got {m:?}"
                ))
            })?;
        }
        if let Some(m) = file.http_method {
            config.http_method = match m.to_ascii_uppercase().as_str() {
                "POST" => HttpMethod::Post,
                "GET" => HttpMethod::Get,
                _ => {
                    return Err(Error::Config(format!(
                        "http_method: expected POST or GET, got {m:?}"
                    )));
                }
            };
        }
        if let Some(d) = file.connect_timeout {
            config.connect_timeout = d;
        }
        if let Some(d) = file.request_timeout {
            config.request_timeout = d;
        }
        if let Some(r) = file.retry {
            config.retry = r;
        }
        if let Some(r) = file.rate_limit {
            config.rate_limit = r;
        }
        if let Some(j) = file.jobs {
            config.jobs = j;
        }
        if let Some(mut t) = file.tls {
            t.ca_file = t.ca_file.map(resolve);
            config.tls = t;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks and normalises the configuration: the endpoint must be an
    /// http(s) URL without query (https assumed when no scheme is given;
    /// trailing `/` and a trailing `/iaas` are dropped), the zone is
    /// lower-cased, and every limit must be usable. Errors name the field.
    pub fn validate(&mut self) -> Result<(), Error> {
        let mut endpoint = self.endpoint.trim().to_string();
        if endpoint.is_empty() {
            return Err(Error::Config("endpoint: empty".into()));
        }
        if !endpoint.contains("://") {
            endpoint = format!("https://{endpoint}");
        }
        let url = reqwest::Url::parse(&endpoint).map_err(|e| {
            Error::Config(format!("endpoint: {endpoint:?} is not a valid URL: {e}"))
        })?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(Error::Config(format!(
                "endpoint: scheme must be https or http, got {:?}",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::Config(format!("endpoint: {endpoint:?} has no host")));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::Config(
                "endpoint: must not carry a query or fragment".into(),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::Config("endpoint: must not carry user info".into()));
        }
        let mut normalized = url.as_str().trim_end_matches('/').to_string();
        if let Some(stripped) = normalized.strip_suffix("/iaas") {
            normalized = stripped.to_string();
        }
        self.endpoint = normalized;

        let zone = self.zone.trim().to_ascii_lowercase();
        if zone.is_empty() {
            return Err(Error::Config("zone: empty".into()));
        }
        if !zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::Config(format!(
                "zone: {zone:?} may contain only letters, digits, '-' and '_'"
            )));
        }
        self.zone = zone;

        if self.credentials.access_key_id.trim().is_empty() {
            return Err(Error::Config("access_key_id: empty".into()));
        }
        if self.credentials.secret_access_key.is_empty() {
            return Err(Error::Config("secret_access_key: empty".into()));
        }
        let positive = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(Error::Config(format!("{name}: must be greater than zero")))
            } else {
                Ok(())
            }
        };
        positive("connect_timeout", self.connect_timeout)?;
        positive("request_timeout", self.request_timeout)?;
        positive("retry.initial_delay", self.retry.initial_delay)?;
        positive("retry.max_delay", self.retry.max_delay)?;
        if self.retry.max_delay < self.retry.initial_delay {
            return Err(Error::Config(
                "retry.max_delay: must not be shorter than retry.initial_delay".into(),
            ));
        }
        if self.retry.throttle_multiplier == 0 {
            return Err(Error::Config(
                "retry.throttle_multiplier: must be at least 1".into(),
            ));
        }
        if self.rate_limit.qps == 0 {
            return Err(Error::Config("rate_limit.qps: must be at least 1".into()));
        }
        if self.rate_limit.burst == 0 {
            return Err(Error::Config("rate_limit.burst: must be at least 1".into()));
        }
        positive("jobs.initial_poll", self.jobs.initial_poll)?;
        positive("jobs.max_poll", self.jobs.max_poll)?;
        positive("jobs.default_timeout", self.jobs.default_timeout)?;
        if self.jobs.max_poll < self.jobs.initial_poll {
            return Err(Error::Config(
                "jobs.max_poll: must not be shorter than jobs.initial_poll".into(),
            ));
        }
        Ok(())
    }

    /// The URL requests are sent to: `<endpoint>/iaas/`.
    pub fn action_url(&self) -> String {
        format!(
            "{}{}",
            self.endpoint.trim_end_matches('/'),
            crate::sign::QC_URI
        )
    }
}

/// Parses `30`, `0.5`, `"30s"`, `"200ms"`, `"1m30s"`, `"2h"` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("invalid duration {text:?}: {e}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration {text:?}: missing unit (ms, s, m, h)"))?;
        if num_len == 0 {
            return Err(format!("invalid duration {text:?}: expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| {
            format!(
                "invalid duration {text:?}: bad number {:?}",
                &rest[..num_len]
            )
        })?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match rest[..unit_len].trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h)"
                ));
            }
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * scale)
            .map_err(|e| format!("invalid duration {text:?}: {e}"))?;
    }
    Ok(total)
}

/// Accepts a number of seconds or a duration string.
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a duration: seconds as a number, or a string like \"500ms\", \"30s\", \"1m30s\"",
        )
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("invalid duration {v}: negative")))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(v).map_err(|e| E::custom(format!("invalid duration {v}: {e}")))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn creds() -> Credentials {
        Credentials::new("AKID", "TOPSECRET").unwrap()
    }

    #[test]
    fn credentials_never_print_the_secret() {
        let c = creds();
        let dbg = format!("{c:?}");
        let disp = format!("{c}");
        let cfg = format!("{:?}", Config::new("https://x", "z", c.clone()));
        for s in [&dbg, &disp, &cfg] {
            assert!(!s.contains("TOPSECRET"), "{s}");
        }
        assert!(dbg.contains("AKID") && dbg.contains("redacted"), "{dbg}");
        assert!(disp.contains("AKID"), "{disp}");
    }

    #[test]
    fn credentials_from_lookup() {
        let env: HashMap<&str, &str> = [
            (ENV_ACCESS_KEY_ID, " AKID\n"),
            (ENV_SECRET_ACCESS_KEY, "s3cr3t"),
        ]
        .into();
        let c = Credentials::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.secret_access_key, "s3cr3t");

        let env: HashMap<&str, &str> = [(ENV_ACCESS_KEY_ID, "AKID")].into();
        let e = Credentials::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap_err();
        assert!(e.to_string().contains(ENV_SECRET_ACCESS_KEY), "{e}");
    }

    #[test]
    fn credentials_from_file_and_secret_dir() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(
            &f,
            "qy_access_key_id: AK\nqy_secret_access_key: SK\nhost: api.example\nextra: 1\n",
        )
        .unwrap();
        let c = Credentials::from_file(&f).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("AK", "SK")
        );

        std::fs::write(&f, "qy_access_key_id: AK\n").unwrap();
        let e = Credentials::from_file(&f).unwrap_err().to_string();
        assert!(
            e.contains("qy_secret_access_key") && e.contains("config.yaml"),
            "{e}"
        );

        let sec = dir.path().join("secret");
        std::fs::create_dir(&sec).unwrap();
        std::fs::write(sec.join("access_key_id"), "AK2\n").unwrap();
        let e = Credentials::from_secret_dir(&sec).unwrap_err().to_string();
        assert!(e.contains("secret_access_key"), "{e}");
        std::fs::write(sec.join("secret_access_key"), "  SK2 \n").unwrap();
        let c = Credentials::from_secret_dir(&sec).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("AK2", "SK2")
        );
    }

    #[test]
    fn emulator_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials.yaml");
        std::fs::write(
            &f,
            "qy_access_key_id: EMUKEY\nqy_secret_access_key: EMUSECRET\nzone: EMU1\nendpoint: http://127.0.0.1:4567/\n",
        )
        .unwrap();
        let c = Config::from_credentials_file(&f).unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:4567");
        assert_eq!(c.action_url(), "http://127.0.0.1:4567/iaas/");
        assert_eq!(c.zone, "emu1");
        assert_eq!(c.credentials.access_key_id, "EMUKEY");
        assert_eq!(c.http_method, HttpMethod::Post);
        assert_eq!(c.retry, RetryConfig::default());
    }

    #[test]
    fn full_yaml_with_durations_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("creds.yaml"),
            "qy_access_key_id: A\nqy_secret_access_key: B\n",
        )
        .unwrap();
        let f = dir.path().join("client.yaml");
        std::fs::write(
            &f,
            r#"
host: api.example.com
port: 8443
zone: pek3a
credentials_file: creds.yaml
signature_method: HmacSHA1
http_method: get
connect_timeout: 2
request_timeout: "1m30s"
retry: { max_elapsed: 20s, initial_delay: 50ms, max_delay: 1s, throttle_multiplier: 8 }
rate_limit: { qps: 50 }
jobs: { initial_poll: 0.25, max_poll: 2s, default_timeout: 10m }
tls: { ca_file: ca.pem }
"#,
        )
        .unwrap();
        let c = Config::from_yaml_file(&f).unwrap();
        assert_eq!(c.endpoint, "https://api.example.com:8443");
        assert_eq!(c.signature_method, SignatureMethod::HmacSha1);
        assert_eq!(c.http_method, HttpMethod::Get);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.request_timeout, Duration::from_secs(90));
        assert_eq!(c.retry.initial_delay, Duration::from_millis(50));
        assert_eq!(c.retry.throttle_multiplier, 8);
        assert_eq!(c.rate_limit, RateLimitConfig { qps: 50, burst: 20 });
        assert_eq!(c.jobs.initial_poll, Duration::from_millis(250));
        assert_eq!(c.jobs.default_timeout, Duration::from_secs(600));
        assert_eq!(c.tls.ca_file, Some(dir.path().join("ca.pem")));
        assert!(!c.tls.insecure_skip_verify);
    }

    fn yaml_err(extra: &str) -> String {
        let text = format!("qy_access_key_id: A\nqy_secret_access_key: B\nzone: z1\n{extra}");
        Config::from_yaml_str(&text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(yaml_err("retry: { max_elapsd: 3s }").contains("max_elapsd"));
        assert!(yaml_err("request_timeout: 5 parsecs").contains("request_timeout"));
        assert!(yaml_err("rate_limit: { qps: 0 }").contains("rate_limit.qps"));
        assert!(yaml_err("endpoint: ftp://x").contains("endpoint"));
        assert!(yaml_err("endpoint: https://x/?a=1").contains("endpoint"));
        assert!(yaml_err("http_method: PUT").contains("http_method"));
        assert!(yaml_err("signature_method: MD5").contains("signature_method"));
        assert!(yaml_err("jobs: { initial_poll: 10s, max_poll: 1s }").contains("jobs.max_poll"));
        let e =
            Config::from_yaml_str("qy_access_key_id: A\nqy_secret_access_key: B\n").unwrap_err();
        assert!(e.to_string().contains("zone"), "{e}");
        let e = Config::from_yaml_str("zone: z\nqy_access_key_id: A\n").unwrap_err();
        assert!(e.to_string().contains("qy_secret_access_key"), "{e}");
        let e =
            Config::from_yaml_str("zone: 'a b'\nqy_access_key_id: A\nqy_secret_access_key: B\n")
                .unwrap_err();
        assert!(e.to_string().contains("zone"), "{e}");
        // Unknown top-level keys are tolerated (SDK files carry more).
        assert!(
            Config::from_yaml_str(
                "zone: z\nqy_access_key_id: A\nqy_secret_access_key: B\nuri: /iaas\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn env_lookup() {
        let env: HashMap<&str, &str> = [
            (ENV_ZONE, "AP2A"),
            (ENV_ENDPOINT, "api.example.org/iaas/"),
            (ENV_ACCESS_KEY_ID, "A"),
            (ENV_SECRET_ACCESS_KEY, "B"),
        ]
        .into();
        let c = Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.endpoint, "https://api.example.org");
        assert_eq!(c.zone, "ap2a");
        let e = Config::from_lookup(|_| None).unwrap_err();
        assert!(e.to_string().contains(ENV_ZONE), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1h2m3s").unwrap(), Duration::from_secs(3723));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5").is_ok());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("").is_err());
    }
}
