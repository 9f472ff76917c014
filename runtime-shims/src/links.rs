//! Links and routes: the container network's kernel side, behind [`Links`].
//!
//! Node logic decides which [`Entry`]s should exist (a route per peer subnet, and for
//! VXLAN an ARP and an FDB entry per peer); this seam adds and removes them. Production
//! ([`crate::netlink`]) speaks rtnetlink to the kernel of the current network namespace;
//! the simulator keeps a table per machine.

use crate::BoxFuture;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address (six hex pairs)"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16)
                .ok()
                .filter(|_| p.len() == 2)
                .ok_or_else(|| format!("{s:?} is not a MAC address (six hex pairs)"))?;
        }
        Ok(Mac(out))
    }
}

/// A WireGuard key (Curve25519), shown as WireGuard shows it: base64.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WgKey(pub [u8; 32]);

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use base64::Engine;
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl std::str::FromStr for WgKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("{s:?} is not a WireGuard key (base64): {e}"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{s:?} is not a WireGuard key (32 bytes)"))?;
        Ok(WgKey(key))
    }
}

/// One kernel entry the network keeps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// `dst/len via via [dev dev] [onlink]` in the main table.
    Route {
        dst: Ipv4Addr,
        len: u8,
        via: Ipv4Addr,
        dev: Option<String>,
        onlink: bool,
    },
    /// A permanent ARP entry: `ip` is at `mac` on `dev`.
    Neigh { dev: String, ip: Ipv4Addr, mac: Mac },
    /// A VXLAN forwarding entry on `dev`: frames for `mac` go to the VTEP at `dst`.
    Fdb {
        dev: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// A WireGuard peer on `dev`: `key` at `endpoint:port`, carrying `allowed/len`.
    WgPeer {
        dev: String,
        key: WgKey,
        endpoint: Ipv4Addr,
        port: u16,
        allowed: Ipv4Addr,
        len: u8,
        psk: Option<WgKey>,
    },
}

impl Entry {
    pub fn is_route(&self) -> bool {
        matches!(self, Entry::Route { .. })
    }

    pub fn is_fdb(&self) -> bool {
        matches!(self, Entry::Fdb { .. })
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Route {
                dst,
                len,
                via,
                dev,
                onlink,
            } => {
                write!(f, "route {dst}/{len} via {via}")?;
                if let Some(d) = dev {
                    write!(f, " dev {d}")?;
                }
                if *onlink {
                    write!(f, " onlink")?;
                }
                Ok(())
            }
            Entry::Neigh { dev, ip, mac } => write!(f, "neigh {ip} lladdr {mac} dev {dev}"),
            Entry::Fdb { dev, mac, dst } => write!(f, "fdb {mac} dst {dst} dev {dev}"),
            Entry::WgPeer {
                dev,
                key,
                endpoint,
                port,
                allowed,
                len,
                psk,
            } => {
                let psk = if psk.is_some() { " psk" } else { "" };
                write!(f, "wg peer {key} endpoint {endpoint}:{port} allowed-ips {allowed}/{len}{psk} dev {dev}")
            }
        }
    }
}

/// An interface's IPv4 address and MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mtu: u32,
}

/// A VXLAN device as flannel makes it: learning off, the local VTEP address on `local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    /// The underlay device's index name, so VXLAN packets leave through it.
    pub underlay: String,
    pub mtu: u32,
    /// The address the device holds once the lease is known: its network address, as a
    /// /32 (flannel's scheme).
    pub addr: Option<Ipv4Addr>,
}

/// A WireGuard device as flannel makes it (`flannel-wg`): its private key kept in
/// `key_file` on this machine (made on first use), listening on `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgSpec {
    pub name: String,
    pub port: u16,
    pub key_file: String,
    pub mtu: u32,
    /// The lease's network address, held as a /32 once the lease is known.
    pub addr: Option<Ipv4Addr>,
}

/// One packet-filter rule in one of flotilla's own chains (`iptables -t TABLE -A CHAIN
/// ARGS…`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FilterRule {
    pub table: &'static str,
    pub chain: &'static str,
    pub args: Vec<String>,
}

pub trait Links: Send + Sync + 'static {
    /// The interface named, or (`None`) the one the default route leaves by.
    fn iface(&self, name: Option<&str>) -> BoxFuture<'_, io::Result<Iface>>;
    /// Makes (or finds and re-checks) the VXLAN device; its MAC, which peers need.
    fn ensure_vxlan(&self, spec: &VxlanSpec) -> BoxFuture<'_, io::Result<Mac>>;
    /// Makes (or finds and re-checks) the WireGuard device; its public key, which peers
    /// need.
    fn ensure_wireguard(&self, spec: &WgSpec) -> BoxFuture<'_, io::Result<WgKey>>;
    /// Adds or replaces an entry: adding one that exists is not an error.
    fn add(&self, e: &Entry) -> BoxFuture<'_, io::Result<()>>;
    /// Removes an entry: removing one that is gone is not an error.
    fn remove(&self, e: &Entry) -> BoxFuture<'_, io::Result<()>>;
    /// The main table's routes whose destination lies inside `net/len`: what the repair
    /// pass compares with what should be there.
    fn routes_within(&self, net: Ipv4Addr, len: u8) -> BoxFuture<'_, io::Result<Vec<Entry>>>;
    /// The permanent ARP and FDB entries, or the WireGuard peers, on device `dev` (none
    /// when it does not exist):
    /// a restarted node finds those of peers that died while it was down.
    fn neighbours_on(&self, dev: &str) -> BoxFuture<'_, io::Result<Vec<Entry>>>;
    /// Makes flotilla's chains hold exactly `rules` (each chain named is flushed and
    /// refilled), jumped to from `FORWARD`'s end (filter) and `POSTROUTING`'s head (nat).
    fn set_filter(&self, rules: &[FilterRule]) -> BoxFuture<'_, io::Result<()>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let m: Mac = "c6:d2:32:6f:8f:44".parse().unwrap();
        assert_eq!(m.to_string(), "c6:d2:32:6f:8f:44");
        let k: WgKey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
            .parse()
            .unwrap();
        assert_eq!(
            k.to_string(),
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
        );
        assert!("c2hvcnQ=".parse::<WgKey>().is_err());
        for bad in [
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:4",
            "zz:d2:32:6f:8f:44",
            "",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
