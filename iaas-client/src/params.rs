//! Flat request parameters (`volumes.1=vol-a`, `listeners.1.listener_port=80`).
//!
//! The client builds them from any `Serialize` request struct; the emulator
//! reads them back with typed getters whose errors name the parameter.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

/// Flattens a serializable request into `name=value` pairs.
///
/// Objects nest with `.`, arrays are 1-based (`x.1`, `x.2`), `null` and empty
/// arrays are omitted, booleans become `1`/`0` as QingCloud expects.
pub fn flatten<T: Serialize + ?Sized>(req: &T) -> Result<Vec<(String, String)>, serde_json::Error> {
    let value = serde_json::to_value(req)?;
    let mut out = Vec::new();
    flatten_value("", &value, &mut out);
    Ok(out)
}

fn flatten_value(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((prefix.to_string(), if *b { "1" } else { "0" }.to_string())),
        Value::Number(n) => out.push((prefix.to_string(), n.to_string())),
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten_value(&join(&(i + 1).to_string()), item, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                flatten_value(&join(k), v, out);
            }
        }
    }
}

/// A parameter that is missing or does not parse; rendered as ret_code 1100.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A required parameter is absent or empty.
    #[error("missing parameter [{0}]")]
    Missing(String),
    /// A parameter is present but invalid.
    #[error("invalid parameter [{name}]: {reason}")]
    Invalid {
        /// The full parameter name, for example `listeners.2.listener_port`.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ParamError {
    /// Builds an [`ParamError::Invalid`].
    pub fn invalid(name: impl Into<String>, reason: impl fmt::Display) -> Self {
        ParamError::Invalid {
            name: name.into(),
            reason: reason.to_string(),
        }
    }
}

/// Received parameters, keyed by their full flat name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
    /// Prefix prepended to names in error messages (for nested records).
    prefix: String,
}

/// Most parameters one request may carry; more is rejected as malformed.
pub const MAX_PARAMS: usize = 4096;
/// Longest list index accepted in `x.N` names.
pub const MAX_LIST_INDEX: usize = 1000;

impl Params {
    /// Parses an `application/x-www-form-urlencoded` string (query or body).
    /// Repeated names keep the last value; `+` is treated as space, as forms do.
    pub fn parse(query: &str) -> Result<Self, ParamError> {
        let mut map = BTreeMap::new();
        for (k, v) in form_pairs(query) {
            if map.len() >= MAX_PARAMS {
                return Err(ParamError::invalid(
                    "*",
                    format!("more than {MAX_PARAMS} parameters"),
                ));
            }
            map.insert(k, v);
        }
        Ok(Params {
            map,
            prefix: String::new(),
        })
    }

    /// Builds from pairs (tests and the client's own round trips).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Params {
            map: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            prefix: String::new(),
        }
    }

    /// All pairs in name order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A raw value; empty strings count as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A required string.
    pub fn required(&self, name: &str) -> Result<&str, ParamError> {
        self.get(name)
            .ok_or_else(|| ParamError::Missing(self.full(name)))
    }

    /// An optional typed value.
    pub fn opt<T: FromStr>(&self, name: &str) -> Result<Option<T>, ParamError>
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|e| ParamError::invalid(self.full(name), e)),
        }
    }

    /// A required typed value.
    pub fn req<T: FromStr>(&self, name: &str) -> Result<T, ParamError>
    where
        T::Err: fmt::Display,
    {
        self.opt(name)?
            .ok_or_else(|| ParamError::Missing(self.full(name)))
    }

    /// A 0/1 flag (`true`/`false` also accepted).
    pub fn flag(&self, name: &str) -> Result<Option<bool>, ParamError> {
        match self.get(name) {
            None => Ok(None),
            Some("1") | Some("true") => Ok(Some(true)),
            Some("0") | Some("false") => Ok(Some(false)),
            Some(other) => Err(ParamError::invalid(
                self.full(name),
                format!("expected 0 or 1, got {other:?}"),
            )),
        }
    }

    /// A list `name.1`, `name.2`, ... of scalars. Indexes must start at 1 and be
    /// contiguous; a gap or a non-numeric index is an error naming the parameter.
    pub fn list(&self, name: &str) -> Result<Vec<String>, ParamError> {
        let items = self.indexed(name)?;
        let mut out = Vec::with_capacity(items.len());
        for (idx, rest, value) in items {
            if !rest.is_empty() {
                return Err(ParamError::invalid(
                    self.full(&format!("{name}.{idx}{rest}")),
                    "unexpected nested field",
                ));
            }
            if !value.is_empty() {
                out.push(value.to_string());
            }
        }
        Ok(out)
    }

    /// A list of records `name.N.field`; each record is returned as `Params`
    /// whose errors carry the full name (`listeners.2.listener_port`).
    pub fn records(&self, name: &str) -> Result<Vec<Params>, ParamError> {
        let mut records: BTreeMap<usize, BTreeMap<String, String>> = BTreeMap::new();
        for (idx, rest, value) in self.indexed(name)? {
            let Some(field) = rest.strip_prefix('.') else {
                return Err(ParamError::invalid(
                    self.full(&format!("{name}.{idx}")),
                    "expected a record with fields",
                ));
            };
            records
                .entry(idx)
                .or_default()
                .insert(field.to_string(), value.to_string());
        }
        Ok(records
            .into_iter()
            .map(|(idx, map)| Params {
                map,
                prefix: format!("{}{name}.{idx}.", self.prefix),
            })
            .collect())
    }

    /// Collects `(index, rest-of-name, value)` for `name.N...`, checking indexes.
    fn indexed(&self, name: &str) -> Result<Vec<(usize, &str, &str)>, ParamError> {
        let head = format!("{name}.");
        let mut out = Vec::new();
        for (k, v) in self.map.range(head.clone()..) {
            let Some(tail) = k.strip_prefix(&head) else {
                break;
            };
            let (idx_str, rest) = match tail.find('.') {
                Some(p) => tail.split_at(p),
                None => (tail, ""),
            };
            let idx: usize = idx_str
                .parse()
                .ok()
                .filter(|i| (1..=MAX_LIST_INDEX).contains(i))
                .ok_or_else(|| {
                    ParamError::invalid(
                        self.full(k),
                        format!("list index must be 1..={MAX_LIST_INDEX}"),
                    )
                })?;
            out.push((idx, rest, v.as_str()));
        }
        out.sort_by_key(|(i, _, _)| *i);
        let mut expected = 1;
        for (idx, _, _) in &out {
            if *idx == expected {
                expected += 1;
            } else if *idx != expected - 1 {
                return Err(ParamError::invalid(
                    self.full(&format!("{name}.{idx}")),
                    format!("list indexes must be contiguous from 1 (missing {name}.{expected})"),
                ));
            }
        }
        Ok(out)
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs (tolerant: bad escapes are kept literally).
fn form_pairs(input: &str) -> impl Iterator<Item = (String, String)> + '_ {
    input.split('&').filter(|s| !s.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(k), decode_component(v))
    })
}

/// Percent-decodes one form component, `+` as space.
pub fn decode_component(s: &str) -> String {
    let replaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&replaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Listener {
        listener_port: u16,
        listener_protocol: &'static str,
        session_sticky: Option<String>,
        forwardfor: bool,
    }

    #[derive(Serialize)]
    struct Req {
        loadbalancer: &'static str,
        listeners: Vec<Listener>,
        volumes: Vec<&'static str>,
        empty: Vec<String>,
        none: Option<u32>,
    }

    #[test]
    fn flattens_lists_and_records_one_based() {
        let r = Req {
            loadbalancer: "lb-1",
            listeners: vec![
                Listener {
                    listener_port: 80,
                    listener_protocol: "tcp",
                    session_sticky: None,
                    forwardfor: true,
                },
                Listener {
                    listener_port: 443,
                    listener_protocol: "https",
                    session_sticky: Some("x".into()),
                    forwardfor: false,
                },
            ],
            volumes: vec!["vol-a", "vol-b"],
            empty: vec![],
            none: None,
        };
        let got: BTreeMap<_, _> = flatten(&r).unwrap().into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("loadbalancer", "lb-1"),
            ("listeners.1.listener_port", "80"),
            ("listeners.1.listener_protocol", "tcp"),
            ("listeners.1.forwardfor", "1"),
            ("listeners.2.listener_port", "443"),
            ("listeners.2.listener_protocol", "https"),
            ("listeners.2.session_sticky", "x"),
            ("listeners.2.forwardfor", "0"),
            ("volumes.1", "vol-a"),
            ("volumes.2", "vol-b"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn round_trip_through_reader() {
        let q = "volumes.2=vol-b&volumes.1=vol-a&size=20&listeners.1.listener_port=80&listeners.10.listener_port=1&name=a+b%20c";
        let p = Params::parse(q);
        // listeners.10 without 2..9 is a gap
        let p = p.unwrap();
        assert_eq!(p.list("volumes").unwrap(), vec!["vol-a", "vol-b"]);
        assert_eq!(p.req::<u32>("size").unwrap(), 20);
        assert_eq!(p.required("name").unwrap(), "a b c");
        let err = p.records("listeners").unwrap_err();
        assert!(err.to_string().contains("listeners.10"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let p = Params::parse("listeners.1.listener_port=eighty&size=x").unwrap();
        let e = p.req::<u32>("size").unwrap_err();
        assert_eq!(
            e,
            ParamError::invalid("size", "invalid digit found in string")
        );
        let recs = p.records("listeners").unwrap();
        let e = recs[0].req::<u16>("listener_port").unwrap_err();
        assert!(e.to_string().contains("[listeners.1.listener_port]"), "{e}");
        let e = recs[0].required("listener_protocol").unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing parameter [listeners.1.listener_protocol]"
        );
        assert!(
            Params::parse("volumes.0=x")
                .unwrap()
                .list("volumes")
                .is_err()
        );
        assert!(
            Params::parse("volumes.a=x")
                .unwrap()
                .list("volumes")
                .is_err()
        );
        assert!(
            Params::parse("volumes.1.x=x")
                .unwrap()
                .list("volumes")
                .is_err()
        );
    }

    #[test]
    fn flags() {
        let p = Params::parse("a=1&b=0&c=yes").unwrap();
        assert_eq!(p.flag("a").unwrap(), Some(true));
        assert_eq!(p.flag("b").unwrap(), Some(false));
        assert_eq!(p.flag("z").unwrap(), None);
        assert!(p.flag("c").is_err());
    }
}
