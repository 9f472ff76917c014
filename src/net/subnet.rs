//! IPv4 subnets as flannel writes them: `10.1.0.0/16` in configs, `10.1.74.0-24` in
//! lease keys.

use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 network: its first address and its prefix length (0..=32). The address is
/// always the network's first (host bits zero): constructors mask it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: u32,
    len: u8,
}

impl Ipv4Net {
    /// The network of `addr` with `len` prefix bits; `None` when `len` is over 32.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then(|| Self {
            addr: u32::from(addr) & mask(len),
            len,
        })
    }

    /// `a.b.c.d/len`, refusing host bits set (flannel's config must name a network).
    pub fn parse_cidr(s: &str) -> Result<Self, String> {
        Self::parse_sep(s, '/')
    }

    /// A lease key's last segment: `a.b.c.d-len`.
    pub fn parse_key(s: &str) -> Result<Self, String> {
        Self::parse_sep(s, '-')
    }

    fn parse_sep(s: &str, sep: char) -> Result<Self, String> {
        let (ip, len) = s
            .split_once(sep)
            .ok_or_else(|| format!("{s:?} is not a.b.c.d{sep}len"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} in {s:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{len:?} in {s:?} is not a prefix length 0..32"))?;
        let net = Self::new(ip, len).expect("len checked");
        if net.ip() != ip {
            return Err(format!("{s:?} has host bits set (the network is {net})"));
        }
        Ok(net)
    }

    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The key form, `10.1.74.0-24`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.ip(), self.len)
    }

    /// The first host address, which the bridge (and flannel's `FLANNEL_SUBNET`) takes.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr.wrapping_add(1))
    }

    /// The number of addresses in the network (2^(32-len)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.addr
    }

    /// Whether `other` lies wholly inside this network.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        other.len >= self.len && self.contains(other.ip())
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The `len`-long subnet that follows this one (same length), if it fits in u32.
    pub fn next(&self) -> Option<Self> {
        let step = u32::try_from(self.size()).ok()?;
        let addr = self.addr.checked_add(step)?;
        Some(Self {
            addr,
            len: self.len,
        })
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        Ipv4Net::parse_cidr(s).unwrap()
    }

    #[test]
    fn parses_both_forms_and_refuses_bad_ones() {
        assert_eq!(net("10.1.0.0/16").key(), "10.1.0.0-16");
        assert_eq!(
            Ipv4Net::parse_key("10.1.74.0-24").unwrap(),
            net("10.1.74.0/24")
        );
        for bad in [
            "10.1.0.0",
            "10.1.0.1/16",
            "10.1.0.0/33",
            "x/8",
            "10.1.0.0/-1",
        ] {
            assert!(Ipv4Net::parse_cidr(bad).is_err(), "{bad}");
        }
        let e = Ipv4Net::parse_cidr("10.1.0.1/16").unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.1.0.0/16"), "{e}");
    }

    #[test]
    fn containment_and_stepping() {
        let n = net("10.1.0.0/16");
        assert!(n.covers(&net("10.1.74.0/24")));
        assert!(!n.covers(&net("10.2.0.0/24")));
        assert!(!net("10.1.74.0/24").covers(&n));
        assert!(n.overlaps(&net("10.1.74.0/24")) && net("10.1.74.0/24").overlaps(&n));
        assert_eq!(net("10.1.74.0/24").next(), Some(net("10.1.75.0/24")));
        assert_eq!(net("255.255.255.0/24").next(), None);
        assert_eq!(net("10.1.74.0/24").gateway(), Ipv4Addr::new(10, 1, 74, 1));
        assert_eq!(net("0.0.0.0/0").size(), 1 << 32);
    }
}
