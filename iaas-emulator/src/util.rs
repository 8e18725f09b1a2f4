//! Small helpers: ids, timestamps, IPv4 CIDR arithmetic.

use std::net::Ipv4Addr;

use rand::Rng;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

const ID_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A new resource id: `prefix` + `-` + 8 random lowercase alphanumerics.
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let tail: String = (0..8)
        .map(|_| ID_CHARS[rng.random_range(0..ID_CHARS.len())] as char)
        .collect();
    format!("{prefix}-{tail}")
}

/// A random string over `chars` (credentials).
pub fn random_string(chars: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| chars[rng.random_range(0..chars.len())] as char)
        .collect()
}

/// Now, RFC 3339 UTC with second precision (what `create_time` carries).
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    now.format(&Rfc3339).unwrap_or_default()
}

/// Parses the QingCloud `time_stamp` format `YYYY-MM-DDThh:mm:ssZ`.
pub fn parse_time_stamp(s: &str) -> Option<OffsetDateTime> {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::PrimitiveDateTime::parse(s, fmt)
        .ok()
        .map(|t| t.assume_utc())
}

/// Formats a time as `YYYY-MM-DDThh:mm:ssZ` (tests build signed requests with it).
pub fn format_time_stamp(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(fmt).unwrap_or_default()
}

/// An IPv4 network `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub network: Ipv4Addr,
    /// Prefix length 0..=32.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; host bits must be zero when `strict`.
    pub fn parse(s: &str, strict: bool) -> Result<Cidr, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (expected a.b.c.d/n)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {len:?} is not 0..32"))?;
        let mask = Self::mask_of(prefix);
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if strict && network != addr {
            return Err(format!(
                "{s} has host bits set (network is {network}/{prefix})"
            ));
        }
        Ok(Cidr { network, prefix })
    }

    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.prefix) == u32::from(self.network)
    }

    /// The `n`-th address of the network (0 is the network address).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - self.prefix as u32);
        if (n as u64) < size {
            Some(Ipv4Addr::from(u32::from(self.network) + n))
        } else {
            None
        }
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix as u32)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_eight_chars() {
        let id = new_id("vol");
        assert!(id.starts_with("vol-"));
        assert_eq!(id.len(), 12);
        assert!(id[4..].bytes().all(|b| ID_CHARS.contains(&b)));
    }

    #[test]
    fn cidr_math() {
        let c = Cidr::parse("172.30.1.0/24", true).unwrap();
        assert!(c.contains("172.30.1.200".parse().unwrap()));
        assert!(!c.contains("172.30.2.1".parse().unwrap()));
        assert_eq!(c.nth(11).unwrap().to_string(), "172.30.1.11");
        assert!(c.nth(256).is_none());
        assert!(Cidr::parse("172.30.1.1/24", true).is_err());
        assert!(Cidr::parse("172.30.1.1/33", false).is_err());
        assert!(Cidr::parse("10.0.0.0", false).is_err());
    }

    #[test]
    fn time_stamp_round_trip() {
        let t = parse_time_stamp("2013-08-27T14:30:10Z").unwrap();
        assert_eq!(format_time_stamp(t), "2013-08-27T14:30:10Z");
        assert!(parse_time_stamp("2013-08-27 14:30:10").is_none());
    }
}
