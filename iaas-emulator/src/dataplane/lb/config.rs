//! Parsing a listener's settings as the API stores them into typed values.
//!
//! Every error names the listener and the field, so the failed job says what
//! to fix.

use std::net::IpAddr;
use std::time::Duration;

use crate::dataplane::{DataPlaneError, DpResult};

/// What a listener speaks to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Bytes proxied over TCP.
    Tcp,
    /// Datagrams proxied over UDP, per client-address session.
    Udp,
    /// HTTP/1.1 (and h2c) terminated and routed per request.
    Http,
    /// TLS terminated with SNI, then as `Http`.
    Https,
}

impl Protocol {
    /// Parses `listener_protocol`.
    pub fn parse(listener: &str, v: &str) -> DpResult<Self> {
        match v.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "http" => Ok(Protocol::Http),
            "https" => Ok(Protocol::Https),
            _ => Err(field_err(
                listener,
                "listener_protocol",
                v,
                "expected tcp, udp, http or https",
            )),
        }
    }

    /// True for the datagram transport.
    pub fn is_udp(self) -> bool {
        self == Protocol::Udp
    }

    /// The `X-Forwarded-Proto` value.
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Https => "https",
            _ => "http",
        }
    }
}

/// How a backend is chosen for a new connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceMode {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Fewest active connections relative to weight.
    LeastConn,
    /// Weighted rendezvous hash of the client IP: stable per client.
    Source,
}

impl BalanceMode {
    /// Parses `balance_mode` (empty: roundrobin).
    pub fn parse(listener: &str, v: &str) -> DpResult<Self> {
        match v.to_ascii_lowercase().as_str() {
            "" | "roundrobin" => Ok(BalanceMode::RoundRobin),
            "leastconn" => Ok(BalanceMode::LeastConn),
            "source" => Ok(BalanceMode::Source),
            _ => Err(field_err(
                listener,
                "balance_mode",
                v,
                "expected roundrobin, leastconn or source",
            )),
        }
    }
}

/// How a backend is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthMethod {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http {
        /// Request path.
        path: String,
    },
}

/// Health-check settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Probe kind.
    pub method: HealthMethod,
    /// Time between probe rounds.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Consecutive failures that take an up backend down.
    pub unhealthy: u32,
    /// Consecutive successes that bring a down backend up.
    pub healthy: u32,
}

impl HealthCheck {
    /// Parses `healthy_check_method` (`tcp`, `http|/path`; empty: tcp) and
    /// `healthy_check_option` (`interval|timeout|unhealthy|healthy`; empty:
    /// `10|5|2|5`). Times are seconds, or milliseconds with an `ms` suffix
    /// (`200ms`), which tests use for fast probing.
    pub fn parse(listener: &str, method: &str, option: &str) -> DpResult<Self> {
        let method = {
            let (kind, rest) = match method.split_once('|') {
                Some((k, r)) => (k, Some(r)),
                None => (method, None),
            };
            match kind.trim().to_ascii_lowercase().as_str() {
                "" | "tcp" => HealthMethod::Tcp,
                "http" => {
                    let path = rest.map(str::trim).filter(|p| !p.is_empty()).unwrap_or("/");
                    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace()) {
                        return Err(field_err(
                            listener,
                            "healthy_check_method",
                            method,
                            "the http path must start with / and contain no spaces",
                        ));
                    }
                    HealthMethod::Http {
                        path: path.to_string(),
                    }
                }
                _ => {
                    return Err(field_err(
                        listener,
                        "healthy_check_method",
                        method,
                        "expected tcp or http|/path",
                    ));
                }
            }
        };
        let option = option.trim();
        let option = if option.is_empty() {
            "10|5|2|5"
        } else {
            option
        };
        let parts: Vec<&str> = option.split('|').map(str::trim).collect();
        let bad = |why: &str| field_err(listener, "healthy_check_option", option, why);
        if parts.len() != 4 {
            return Err(bad("expected interval|timeout|unhealthy|healthy"));
        }
        let interval = parse_duration(parts[0]).ok_or_else(|| bad("bad interval"))?;
        let timeout = parse_duration(parts[1]).ok_or_else(|| bad("bad timeout"))?;
        let count = |s: &str| s.parse::<u32>().ok().filter(|n| (1..=100).contains(n));
        let unhealthy = count(parts[2]).ok_or_else(|| bad("unhealthy must be 1..100"))?;
        let healthy = count(parts[3]).ok_or_else(|| bad("healthy must be 1..100"))?;
        Ok(HealthCheck {
            method,
            interval,
            timeout,
            unhealthy,
            healthy,
        })
    }
}

/// `N` seconds or `Nms` milliseconds, strictly positive, at most an hour.
fn parse_duration(s: &str) -> Option<Duration> {
    let d = if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(ms.parse().ok()?)
    } else {
        Duration::from_secs(s.parse().ok()?)
    };
    (!d.is_zero() && d <= Duration::from_secs(3600)).then_some(d)
}

/// An allowed client range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, an IPv6 CIDR, or a bare address (a host).
    pub fn parse(v: &str) -> Option<Cidr> {
        let v = v.trim();
        let (ip, prefix) = match v.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (v.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { net: ip, prefix })
    }

    /// True when `ip` is inside (IPv4-mapped IPv6 clients count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses the LB's source CIDRs (empty: everyone).
pub fn parse_cidrs(cidrs: &[String]) -> DpResult<Vec<Cidr>> {
    cidrs
        .iter()
        .map(|c| {
            Cidr::parse(c).ok_or_else(|| {
                DataPlaneError(format!(
                    "security group source [{c}]: not an IP address or CIDR"
                ))
            })
        })
        .collect()
}

/// One condition of an L7 policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Host equals this (lowercase, no port).
    Host(String),
    /// `*.example.com`: host is exactly one label followed by this suffix
    /// (stored with its leading dot).
    WildcardHost(String),
    /// Path starts with this string.
    Prefix(String),
    /// `~/a/b`: path is `/a/b` or continues with `/` (Kubernetes Prefix,
    /// element-wise: `/a/bc` does not match).
    ElementPrefix(String),
    /// `=/a/b`: path equals this (Kubernetes Exact).
    Exact(String),
}

/// How specific a match is; greater wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Specificity {
    /// 2 exact host, 1 wildcard host, 0 no host rule.
    pub host: u8,
    /// Length of the matched path rule.
    pub path_len: usize,
    /// An exact path beats a prefix of the same length.
    pub path_exact: bool,
}

impl Rule {
    /// Parses a policy rule (`rule_type` domain or url).
    pub fn parse(policy: &str, rule_type: &str, val: &str) -> DpResult<Rule> {
        let bad =
            |why: &str| DataPlaneError(format!("policy {policy}: rule {rule_type} [{val}]: {why}"));
        let val = val.trim();
        match rule_type.to_ascii_lowercase().as_str() {
            "domain" => {
                let v = val.to_ascii_lowercase();
                if v.is_empty() || v.contains(['/', ' ']) {
                    return Err(bad("expected a host name or *.domain"));
                }
                if let Some(suffix) = v.strip_prefix('*') {
                    if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') {
                        return Err(bad("a wildcard must be a whole first label: *.example.com"));
                    }
                    Ok(Rule::WildcardHost(suffix.to_string()))
                } else if v.contains('*') {
                    Err(bad("a wildcard must be a whole first label: *.example.com"))
                } else {
                    Ok(Rule::Host(v))
                }
            }
            "url" => {
                if let Some(p) = val.strip_prefix('=') {
                    check_path(p).map_err(bad)?;
                    Ok(Rule::Exact(p.to_string()))
                } else if let Some(p) = val.strip_prefix('~') {
                    check_path(p).map_err(bad)?;
                    Ok(Rule::ElementPrefix(p.trim_end_matches('/').to_string()))
                } else {
                    check_path(val).map_err(bad)?;
                    Ok(Rule::Prefix(val.to_string()))
                }
            }
            _ => Err(bad("rule_type must be domain or url")),
        }
    }

    /// Whether the rule holds for this request; `host` is lowercase without port.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        match self {
            Rule::Host(h) => host == h,
            Rule::WildcardHost(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            Rule::Prefix(p) => path.starts_with(p.as_str()),
            Rule::ElementPrefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.is_empty()),
            Rule::Exact(p) => path == p,
        }
    }

    /// Adds what this (matched) rule contributes to the specificity.
    fn score(&self, s: &mut Specificity) {
        match self {
            Rule::Host(_) => s.host = s.host.max(2),
            Rule::WildcardHost(_) => s.host = s.host.max(1),
            Rule::Prefix(p) | Rule::ElementPrefix(p) => {
                if p.len() > s.path_len {
                    s.path_len = p.len();
                    s.path_exact = false;
                }
            }
            Rule::Exact(p) => {
                if p.len() >= s.path_len {
                    s.path_len = p.len();
                    s.path_exact = true;
                }
            }
        }
    }
}

fn check_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') || p.chars().any(char::is_whitespace) {
        return Err("a url rule is a path starting with /");
    }
    Ok(())
}

/// A compiled L7 policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// True for `and` (all rules), false for `or` (any rule).
    pub all: bool,
    /// Conditions.
    pub rules: Vec<Rule>,
}

impl Policy {
    /// Compiles a policy with its rules.
    pub fn compile(p: &iaas_client::model::LoadBalancerPolicy) -> DpResult<Policy> {
        let all = match p.operator.to_ascii_lowercase().as_str() {
            "" | "or" => false,
            "and" => true,
            other => {
                return Err(DataPlaneError(format!(
                    "policy {}: operator [{other}]: expected and or or",
                    p.loadbalancer_policy_id
                )));
            }
        };
        let rules = p
            .rules
            .iter()
            .map(|r| Rule::parse(&p.loadbalancer_policy_id, &r.rule_type, &r.val))
            .collect::<DpResult<Vec<_>>>()?;
        Ok(Policy { all, rules })
    }

    /// The match's specificity, or `None` when the request does not match.
    /// A policy without rules matches nothing.
    pub fn matches(&self, host: &str, path: &str) -> Option<Specificity> {
        if self.rules.is_empty() {
            return None;
        }
        let mut s = Specificity::default();
        let mut any = false;
        for r in &self.rules {
            if r.matches(host, path) {
                any = true;
                r.score(&mut s);
            } else if self.all {
                return None;
            }
        }
        any.then_some(s)
    }
}

fn field_err(listener: &str, field: &str, value: &str, why: &str) -> DataPlaneError {
    DataPlaneError(format!("listener {listener}: {field} [{value}]: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_defaults_and_ms() {
        let h = HealthCheck::parse("lbl-1", "", "").unwrap();
        assert_eq!(h.method, HealthMethod::Tcp);
        assert_eq!(h.interval, Duration::from_secs(10));
        assert_eq!((h.unhealthy, h.healthy), (2, 5));
        let h = HealthCheck::parse("lbl-1", "http|/healthz", "200ms|100ms|1|1").unwrap();
        assert_eq!(
            h.method,
            HealthMethod::Http {
                path: "/healthz".into()
            }
        );
        assert_eq!(h.interval, Duration::from_millis(200));
        let e = HealthCheck::parse("lbl-1", "ping", "").unwrap_err();
        assert!(e.0.contains("healthy_check_method"), "{e}");
        let e = HealthCheck::parse("lbl-1", "tcp", "10|5|0|5").unwrap_err();
        assert!(e.0.contains("healthy_check_option"), "{e}");
        assert!(HealthCheck::parse("lbl-1", "tcp", "0|5|2|5").is_err());
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            Cidr::parse("127.0.0.2")
                .unwrap()
                .contains("127.0.0.2".parse().unwrap())
        );
        assert!(
            !Cidr::parse("127.0.0.2")
                .unwrap()
                .contains("127.0.0.3".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(parse_cidrs(&["nope".into()]).is_err());
    }

    #[test]
    fn rules() {
        let w = Rule::parse("p", "domain", "*.Example.com").unwrap();
        assert!(w.matches("a.example.com", "/"));
        assert!(!w.matches("a.b.example.com", "/"));
        assert!(!w.matches("example.com", "/"));
        assert!(Rule::parse("p", "domain", "a*.example.com").is_err());
        let e = Rule::parse("p", "url", "~/foo").unwrap();
        assert!(e.matches("", "/foo") && e.matches("", "/foo/x") && !e.matches("", "/foobar"));
        let x = Rule::parse("p", "url", "=/foo").unwrap();
        assert!(x.matches("", "/foo") && !x.matches("", "/foo/"));
        let p = Rule::parse("p", "url", "/foo").unwrap();
        assert!(p.matches("", "/foobar"));
        assert!(Rule::parse("p", "url", "foo").is_err());
        assert!(Rule::parse("p", "cookie", "x").is_err());
    }
}
