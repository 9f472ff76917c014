//! Which kernel entries should exist, as a pure function of this machine's lease, the
//! backend and the peers' leases; and the ordered changes from what exists to that.
//!
//! Order matters for VXLAN: a peer's ARP and FDB entries go in before its route and
//! come out after it (flannel's order), so no packet is routed to a VTEP the kernel
//! cannot resolve.

use super::config::Backend;
use super::lease::Lease;
use super::subnet::Ipv4Net;
use flotilla_shims::links::{Entry, Mac, WgKey};
use std::collections::{BTreeMap, BTreeSet};

/// One step towards the wanted entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(Entry),
    Remove(Entry),
}

/// The VXLAN device's name: flannel's `flannel.<VNI>`.
pub fn vxlan_dev(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// The WireGuard device's name: flannel's.
pub const WG_DEV: &str = "flannel-wg";

/// A peer's WireGuard public key and port from its lease's `BackendData`
/// (`{"PublicKey":"<base64>","Port":51820}`).
pub fn wg_peer(l: &Lease) -> Option<(WgKey, u16)> {
    let d = &l.attrs.backend_data;
    let key = d.get("PublicKey")?.as_str()?.parse().ok()?;
    let port = u16::try_from(d.get("Port")?.as_u64()?).ok()?;
    Some((key, port))
}

/// A peer's VTEP MAC from its lease's `BackendData.VtepMAC`.
pub fn vtep_mac(l: &Lease) -> Option<Mac> {
    l.attrs.backend_data.get("VtepMAC")?.as_str()?.parse().ok()
}

/// The entries this machine should hold for `peers` (its own lease excluded by the
/// caller). A peer on another backend, or a VXLAN peer without a usable MAC, gets none:
/// packets to it could not be carried.
pub fn wanted(backend: &Backend, peers: &BTreeMap<Ipv4Net, Lease>) -> BTreeSet<Entry> {
    let mut out = BTreeSet::new();
    for l in peers.values() {
        if l.attrs.backend_type != backend.type_name() {
            continue;
        }
        let s = l.subnet;
        match backend {
            Backend::HostGw => {
                out.insert(Entry::Route {
                    dst: s.ip(),
                    len: s.prefix_len(),
                    via: l.attrs.public_ip,
                    dev: None,
                    onlink: false,
                });
            }
            Backend::Vxlan { vni, .. } => {
                let Some(mac) = vtep_mac(l) else { continue };
                let dev = vxlan_dev(*vni);
                out.insert(Entry::Neigh {
                    dev: dev.clone(),
                    ip: s.ip(),
                    mac,
                });
                out.insert(Entry::Fdb {
                    dev: dev.clone(),
                    mac,
                    dst: l.attrs.public_ip,
                });
                out.insert(Entry::Route {
                    dst: s.ip(),
                    len: s.prefix_len(),
                    via: s.ip(),
                    dev: Some(dev),
                    onlink: true,
                });
            }
            Backend::Wireguard { psk, .. } => {
                let Some((key, port)) = wg_peer(l) else {
                    continue;
                };
                out.insert(Entry::WgPeer {
                    dev: WG_DEV.into(),
                    key,
                    endpoint: l.attrs.public_ip,
                    port,
                    allowed: s.ip(),
                    len: s.prefix_len(),
                    psk: psk.as_deref().and_then(|p| p.parse().ok()),
                });
                out.insert(Entry::Route {
                    dst: s.ip(),
                    len: s.prefix_len(),
                    via: s.ip(),
                    dev: Some(WG_DEV.into()),
                    onlink: true,
                });
            }
        }
    }
    out
}

/// The changes from `have` to `want`: routes out first, then the rest out; the rest
/// in, then routes in.
pub fn diff(have: &BTreeSet<Entry>, want: &BTreeSet<Entry>) -> Vec<Change> {
    let gone: Vec<&Entry> = have.difference(want).collect();
    let new: Vec<&Entry> = want.difference(have).collect();
    let (gone_routes, gone_rest): (Vec<_>, Vec<_>) = gone.into_iter().partition(|e| e.is_route());
    let (new_routes, new_rest): (Vec<_>, Vec<_>) = new.into_iter().partition(|e| e.is_route());
    let remove = gone_routes
        .into_iter()
        .chain(gone_rest)
        .cloned()
        .map(Change::Remove);
    let add = new_rest
        .into_iter()
        .chain(new_routes)
        .cloned()
        .map(Change::Add);
    remove.chain(add).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn peer(subnet: &str, ip: [u8; 4], backend: &str, mac: Option<&str>) -> (Ipv4Net, Lease) {
        let data = mac
            .map(|m| format!(r#","BackendData":{{"VtepMAC":"{m}"}}"#))
            .unwrap_or_default();
        let v = format!(
            r#"{{"PublicIP":"{}","BackendType":"{backend}"{data}}}"#,
            Ipv4Addr::from(ip)
        );
        let l = Lease::parse(subnet, &v, true).unwrap();
        (l.subnet, l)
    }

    fn route(dst: [u8; 4], via: [u8; 4], dev: Option<&str>) -> Entry {
        Entry::Route {
            dst: dst.into(),
            len: 24,
            via: via.into(),
            dev: dev.map(str::to_string),
            onlink: dev.is_some(),
        }
    }

    #[test]
    fn host_gw_routes_each_peer_via_its_public_ip() {
        let peers = BTreeMap::from([
            peer("10.1.2.0-24", [192, 168, 0, 2], "host-gw", None),
            peer("10.1.3.0-24", [192, 168, 0, 3], "host-gw", None),
            peer(
                "10.1.4.0-24",
                [192, 168, 0, 4],
                "vxlan",
                Some("c6:d2:32:6f:8f:44"),
            ),
        ]);
        let w = wanted(&Backend::HostGw, &peers);
        assert_eq!(
            w,
            BTreeSet::from([
                route([10, 1, 2, 0], [192, 168, 0, 2], None),
                route([10, 1, 3, 0], [192, 168, 0, 3], None),
            ])
        );
    }

    #[test]
    fn vxlan_adds_arp_and_fdb_before_the_route_and_removes_the_route_first() {
        let vx = Backend::Vxlan { vni: 1, port: 8472 };
        let peers = BTreeMap::from([
            peer(
                "10.1.2.0-24",
                [192, 168, 0, 2],
                "vxlan",
                Some("c6:d2:32:6f:8f:44"),
            ),
            peer("10.1.5.0-24", [192, 168, 0, 5], "vxlan", Some("not-a-mac")),
        ]);
        let want = wanted(&vx, &peers);
        let mac: Mac = "c6:d2:32:6f:8f:44".parse().unwrap();
        let neigh = Entry::Neigh {
            dev: "flannel.1".into(),
            ip: [10, 1, 2, 0].into(),
            mac,
        };
        let fdb = Entry::Fdb {
            dev: "flannel.1".into(),
            mac,
            dst: [192, 168, 0, 2].into(),
        };
        let r = route([10, 1, 2, 0], [10, 1, 2, 0], Some("flannel.1"));
        let add = diff(&BTreeSet::new(), &want);
        assert_eq!(
            add,
            vec![
                Change::Add(neigh.clone()),
                Change::Add(fdb.clone()),
                Change::Add(r.clone())
            ]
        );
        let remove = diff(&want, &BTreeSet::new());
        assert_eq!(
            remove,
            vec![
                Change::Remove(r),
                Change::Remove(neigh),
                Change::Remove(fdb)
            ]
        );
        assert!(diff(&want, &want).is_empty());
    }

    #[test]
    fn wireguard_peers_carry_their_subnet_to_their_key_then_the_route_follows() {
        let wg = Backend::Wireguard {
            listen_port: 51820,
            psk: None,
        };
        let key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let v = format!(
            r#"{{"PublicIP":"192.168.0.2","BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51821}}}}"#
        );
        let l = Lease::parse("10.1.2.0-24", &v, true).unwrap();
        let bad = r#"{"PublicIP":"192.168.0.3","BackendType":"wireguard","BackendData":{"PublicKey":"short"}}"#;
        let l2 = Lease::parse("10.1.3.0-24", bad, true).unwrap();
        let peers = BTreeMap::from([(l.subnet, l), (l2.subnet, l2)]);
        let peer = Entry::WgPeer {
            dev: WG_DEV.into(),
            key: key.parse().unwrap(),
            endpoint: [192, 168, 0, 2].into(),
            port: 51821,
            allowed: [10, 1, 2, 0].into(),
            len: 24,
            psk: None,
        };
        let r = route([10, 1, 2, 0], [10, 1, 2, 0], Some(WG_DEV));
        assert_eq!(
            diff(&BTreeSet::new(), &wanted(&wg, &peers)),
            vec![Change::Add(peer), Change::Add(r)]
        );
    }

    #[test]
    fn a_moved_peer_is_replaced() {
        let before = wanted(
            &Backend::HostGw,
            &BTreeMap::from([peer("10.1.2.0-24", [192, 168, 0, 2], "host-gw", None)]),
        );
        let after = wanted(
            &Backend::HostGw,
            &BTreeMap::from([peer("10.1.2.0-24", [192, 168, 0, 9], "host-gw", None)]),
        );
        assert_eq!(
            diff(&before, &after),
            vec![
                Change::Remove(route([10, 1, 2, 0], [192, 168, 0, 2], None)),
                Change::Add(route([10, 1, 2, 0], [192, 168, 0, 9], None)),
            ]
        );
    }
}
