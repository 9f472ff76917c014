//! The links seam in the simulated world: a machine's kernel tables as a set of
//! entries, so the checkers can ask what a machine routes where.

use flotilla_shims::links::{Entry, FilterRule, Iface, Links, Mac, VxlanSpec, WgKey, WgSpec};
use flotilla_shims::BoxFuture;
use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// One machine's tables. Clones share them (the machine's node and the checkers).
#[derive(Clone)]
pub struct SimLinks {
    ip: Ipv4Addr,
    entries: Arc<Mutex<BTreeSet<Entry>>>,
    vxlan: Arc<Mutex<Option<VxlanSpec>>>,
    filter: Arc<Mutex<Vec<FilterRule>>>,
}

impl SimLinks {
    pub fn new(ip: Ipv4Addr) -> Self {
        Self {
            ip,
            entries: Default::default(),
            vxlan: Default::default(),
            filter: Default::default(),
        }
    }

    /// What the machine's tables hold now.
    pub fn entries(&self) -> BTreeSet<Entry> {
        self.entries.lock().expect("links lock").clone()
    }

    /// The packet-filter rules the machine's node last set.
    pub fn filter(&self) -> Vec<FilterRule> {
        self.filter.lock().expect("links lock").clone()
    }

    /// The VTEP MAC: fixed per machine, from its address, as a real device's is per boot.
    fn mac(&self) -> Mac {
        let o = self.ip.octets();
        Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }
}

impl Links for SimLinks {
    fn iface(&self, _name: Option<&str>) -> BoxFuture<'_, io::Result<Iface>> {
        let ip = self.ip;
        Box::pin(async move {
            Ok(Iface {
                name: "eth0".into(),
                ip,
                mtu: 1500,
            })
        })
    }

    fn ensure_vxlan(&self, spec: &VxlanSpec) -> BoxFuture<'_, io::Result<Mac>> {
        *self.vxlan.lock().expect("links lock") = Some(spec.clone());
        let mac = self.mac();
        Box::pin(async move { Ok(mac) })
    }

    fn ensure_wireguard(&self, _spec: &WgSpec) -> BoxFuture<'_, io::Result<WgKey>> {
        // Fixed per machine, from its address, as a kept key file's is.
        let mut key = [0x57u8; 32];
        key[..4].copy_from_slice(&self.ip.octets());
        Box::pin(async move { Ok(WgKey(key)) })
    }

    fn add(&self, e: &Entry) -> BoxFuture<'_, io::Result<()>> {
        self.entries.lock().expect("links lock").insert(e.clone());
        Box::pin(async { Ok(()) })
    }

    fn remove(&self, e: &Entry) -> BoxFuture<'_, io::Result<()>> {
        self.entries.lock().expect("links lock").remove(e);
        Box::pin(async { Ok(()) })
    }

    fn neighbours_on(&self, dev: &str) -> BoxFuture<'_, io::Result<Vec<Entry>>> {
        let on = self
            .entries()
            .into_iter()
            .filter(|e| match e {
                Entry::Neigh { dev: d, .. }
                | Entry::Fdb { dev: d, .. }
                | Entry::WgPeer { dev: d, .. } => d == dev,
                Entry::Route { .. } => false,
            })
            .collect();
        Box::pin(async move { Ok(on) })
    }

    fn routes_within(&self, net: Ipv4Addr, len: u8) -> BoxFuture<'_, io::Result<Vec<Entry>>> {
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        let routes = self
            .entries()
            .into_iter()
            .filter(|e| matches!(e, Entry::Route { dst, .. } if u32::from(*dst) & mask == u32::from(net)))
            .collect();
        Box::pin(async move { Ok(routes) })
    }

    fn set_filter(&self, rules: &[FilterRule]) -> BoxFuture<'_, io::Result<()>> {
        *self.filter.lock().expect("links lock") = rules.to_vec();
        Box::pin(async { Ok(()) })
    }
}
