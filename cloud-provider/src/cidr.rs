//! IPv4/IPv6 CIDR parsing and containment (std only).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network in canonical form (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

fn mask_v4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn mask_v6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

impl Cidr {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside this network.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask_v4(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask_v6(self.prefix) == u128::from(n),
            _ => false,
        }
    }

    /// Whether `other` lies entirely inside this network.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains_ip(other.addr)
    }

    /// Whether this is an IPv4 network.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Parses `a.b.c.d/n` or `x::/n`; host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (missing /prefix)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR (bad address)"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR (bad prefix)"))?;
        let addr = match addr {
            IpAddr::V4(v4) if prefix <= 32 => IpAddr::V4((u32::from(v4) & mask_v4(prefix)).into()),
            IpAddr::V6(v6) if prefix <= 128 => {
                IpAddr::V6((u128::from(v6) & mask_v6(prefix)).into())
            }
            _ => return Err(format!("{s:?} is not a CIDR (prefix too long)")),
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(c.contains(&"10.244.3.0/24".parse().unwrap()));
        assert!(!c.contains(&"10.245.0.0/24".parse().unwrap()));
        assert!(!c.contains(&"10.0.0.0/8".parse().unwrap()));
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains_ip("1.2.3.4".parse().unwrap())
        );
        assert!(
            "fd00::/8"
                .parse::<Cidr>()
                .unwrap()
                .contains(&"fd00:1::/64".parse().unwrap())
        );
        assert!(!c.contains(&"fd00::/64".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
