//! The thin async shell around the network's pure parts: it waits for the config, takes
//! a lease ([`super::lease::decide`]), writes the subnet file, keeps the lease renewed,
//! follows the peers' leases with a watch, and makes the kernel's entries match
//! [`super::routes::wanted`] through the [`Links`] seam — and every `repair_ms` it
//! compares the routing table with what should be there, so a route someone deleted
//! comes back.
//!
//! A lease that vanished (expired while this machine was cut off, or deleted) is taken
//! again, the same subnet when it is still free; the node never exits over it.

use super::config::{Backend, NetConfig};
use super::filter;
use super::lease::{self, Decision, Lease, LeaseAttrs, Plan};
use super::routes::{self, Change};
use super::subnet::Ipv4Net;
use super::subnet_file;
use crate::client::{ClientError, KvClient, SetOpts};
use crate::kv::{error, Action, Event, Precondition};
use flotilla_shims::links::{Entry, Iface, Links, VxlanSpec, WgSpec};
use flotilla_shims::{Clock, Files, SeededRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long to wait before trying again after the store or the kernel said no.
const RETRY_MS: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct NetOptions {
    /// flannel's `--etcd-prefix`.
    pub prefix: String,
    /// The interface whose address is this machine's public IP; `None`: the default route's.
    pub iface: Option<String>,
    pub subnet_file: String,
    pub lease_ttl_s: u64,
    pub renew_margin_s: u64,
    pub ip_masq: bool,
    /// Where the WireGuard private key is kept (`None`: beside the subnet file, as
    /// `<its name>.wgkey`).
    pub wg_key_file: Option<String>,
    /// How often the routing table is compared with what should be there.
    pub repair_ms: u64,
    /// Planted bugs (the simulator's tests only; never set in production).
    pub bugs: NetBugs,
}

/// Planted bugs the simulator's checkers must catch (test-only).
#[derive(Debug, Clone, Default)]
pub struct NetBugs {
    /// A new lease is written without `prevExist=false`: two machines can take one subnet.
    pub create_without_prev_exist: bool,
    /// A peer's expired or deleted lease leaves its routes in place.
    pub keep_routes_on_expiry: bool,
    /// A renewal gives up the lease and takes a new subnet.
    pub renew_moves_subnet: bool,
}

impl NetOptions {
    pub fn defaults() -> Self {
        Self {
            prefix: "/coreos.com/network".into(),
            iface: None,
            subnet_file: subnet_file::DEFAULT_PATH.into(),
            lease_ttl_s: 24 * 3600,
            renew_margin_s: 3600,
            ip_masq: false,
            wg_key_file: None,
            repair_ms: 10_000,
            bugs: NetBugs::default(),
        }
    }
}

/// The outside world the network reaches.
#[derive(Clone)]
pub struct NetSeams {
    pub kv: Arc<dyn KvClient>,
    pub clock: Arc<dyn Clock>,
    pub links: Arc<dyn Links>,
    pub files: Arc<dyn Files>,
    pub seed: u64,
}

/// What this machine holds, for status pages and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetStatus {
    pub lease: Option<Ipv4Net>,
    /// The MTU containers on the lease should use (the interface's, less the backend's
    /// encapsulation).
    pub mtu: u32,
    pub backend: String,
    pub peers: BTreeMap<Ipv4Net, Lease>,
    pub entries: BTreeSet<Entry>,
}

struct Net {
    s: NetSeams,
    o: NetOptions,
    cfg: NetConfig,
    iface: Iface,
    attrs: LeaseAttrs,
    rng: SeededRng,
    /// What this node has put into the kernel.
    have: BTreeSet<Entry>,
    status: watch::Sender<NetStatus>,
}

/// Runs the network for good (it never gives up: every failure is retried).
pub async fn run(s: NetSeams, o: NetOptions, status: watch::Sender<NetStatus>) {
    let iface = retry(&s, "find the public interface", || {
        s.links.iface(o.iface.as_deref())
    })
    .await;
    let cfg = wait_config(&s, &o.prefix).await;
    tracing::info!(network = %cfg.network, backend = cfg.backend.type_name(), ip = %iface.ip, "network configured");
    let backend_data = backend_setup(&s, &cfg, &iface, None, &wg_key_file(&o)).await;
    let attrs = LeaseAttrs {
        public_ip: iface.ip,
        backend_type: cfg.backend.type_name().into(),
        backend_data,
    };
    let previous = match s.files.read(&o.subnet_file).await {
        Ok(Some(b)) => subnet_file::previous_subnet(&String::from_utf8_lossy(&b)),
        _ => None,
    };
    let mut net = Net {
        rng: SeededRng::new(s.seed),
        s,
        o,
        cfg,
        iface,
        attrs,
        have: BTreeSet::new(),
        status,
    };
    net.hold(previous).await;
}

impl Net {
    /// Takes a lease, keeps it, and when it is lost takes it again, forever.
    async fn hold(&mut self, mut previous: Option<Ipv4Net>) {
        loop {
            let subnet = self.acquire(previous).await;
            previous = (!self.o.bugs.renew_moves_subnet).then_some(subnet);
            self.publish_local(subnet).await;
            self.follow(subnet).await;
            tracing::warn!(%subnet, "lease lost; taking it again");
        }
    }

    /// Writes the lease, retrying until the store takes it.
    async fn acquire(&mut self, previous: Option<Ipv4Net>) -> Ipv4Net {
        loop {
            match self.try_acquire(previous).await {
                Ok(Some(subnet)) => return subnet,
                Ok(None) => tracing::error!(network = %self.cfg.network, "out of subnets"),
                Err(e) => tracing::warn!(error = %e, "taking a lease failed"),
            }
            self.s.clock.sleep(Duration::from_millis(RETRY_MS)).await;
        }
    }

    async fn try_acquire(
        &mut self,
        previous: Option<Ipv4Net>,
    ) -> Result<Option<Ipv4Net>, ClientError> {
        let value = serde_json::to_string(&self.attrs).expect("lease serializes");
        for _ in 0..lease::CREATE_ATTEMPTS_MAX {
            let (leases, _) = self.list().await?;
            let rng = &mut self.rng;
            let d: Decision = lease::decide(&self.cfg, &leases, self.iface.ip, previous, |n| {
                (rng.next_u64() % n as u64) as usize
            });
            for stale in &d.delete {
                self.s
                    .kv
                    .delete(&self.key(stale), false, Precondition::default())
                    .await
                    .ok();
            }
            let (subnet, ttl, prev) = match d.plan {
                Plan::OutOfSubnets => return Ok(None),
                Plan::Keep {
                    subnet,
                    reservation,
                } => (
                    subnet,
                    (!reservation).then_some(self.o.lease_ttl_s),
                    Precondition::default(),
                ),
                Plan::Create { subnet } => (
                    subnet,
                    Some(self.o.lease_ttl_s),
                    Precondition {
                        exist: (!self.o.bugs.create_without_prev_exist).then_some(false),
                        ..Default::default()
                    },
                ),
            };
            let opts = SetOpts {
                ttl_s: ttl,
                prev,
                ..Default::default()
            };
            match self.s.kv.set(&self.key(&subnet), &value, opts).await {
                Ok(_) => return Ok(Some(subnet)),
                Err(ClientError::Store(e)) if e.code == error::NODE_EXIST => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Unavailable(
            "every subnet tried was taken by another machine meanwhile".into(),
        ))
    }

    /// Every lease under `<prefix>/subnets` (quorum read) and the store index.
    async fn list(&self) -> Result<(Vec<Lease>, u64), ClientError> {
        let dir = format!("{}/subnets", self.o.prefix);
        let Some(got) = self.s.kv.get(&dir, true, true).await? else {
            return Ok((vec![], 0));
        };
        let leases = got
            .node
            .nodes
            .unwrap_or_default()
            .iter()
            .filter_map(|n| {
                let seg = n.key.rsplit('/').next().unwrap_or("");
                match Lease::parse(seg, n.value.as_deref().unwrap_or(""), n.expire_ms.is_some()) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(key = %n.key, error = %e, "skipping a lease");
                        None
                    }
                }
            })
            .collect();
        Ok((leases, got.index))
    }

    fn key(&self, subnet: &Ipv4Net) -> String {
        format!("{}/subnets/{}", self.o.prefix, subnet.key())
    }

    fn mtu(&self) -> u32 {
        self.iface
            .mtu
            .saturating_sub(self.cfg.backend.mtu_overhead())
    }

    /// The subnet file, and the VXLAN device's address on the lease.
    async fn publish_local(&mut self, subnet: Ipv4Net) {
        let text = subnet_file::render(self.cfg.network, subnet, self.mtu(), self.o.ip_masq);
        let (files, path) = (self.s.files.clone(), self.o.subnet_file.clone());
        retry(&self.s, "write the subnet file", || {
            files.write_atomic(&path, text.clone().into_bytes(), 0o644)
        })
        .await;
        backend_setup(
            &self.s,
            &self.cfg,
            &self.iface,
            Some(subnet),
            &wg_key_file(&self.o),
        )
        .await;
        // Routes do not wait for the filter: the repair pass sets it again until it holds.
        let rules = filter::rules(self.cfg.network, subnet, self.o.ip_masq);
        if let Err(e) = self.s.links.set_filter(&rules).await {
            tracing::error!(error = %e, "could not set the packet-filter rules; the repair pass retries");
        }
        let mtu = self.mtu();
        self.status.send_modify(|st| {
            st.lease = Some(subnet);
            st.mtu = mtu;
            st.backend = self.cfg.backend.type_name().into();
        });
    }

    /// Keeps the lease and the peers' entries until the lease is lost.
    async fn follow(&mut self, subnet: Ipv4Net) {
        let mut peers = self.relist(subnet).await;
        let mut since = peers.1 + 1;
        let renew_s = lease::renew_after_s(self.o.lease_ttl_s, self.o.renew_margin_s);
        let mut renew_at = self.s.clock.now_mono() + Duration::from_secs(renew_s);
        // The first repair pass comes at once: a restarted node finds what peers that
        // died meanwhile left in its tables.
        let mut repair_at = self.s.clock.now_mono();
        loop {
            self.apply(&peers.0).await;
            let now = self.s.clock.now_mono();
            let next = renew_at.min(repair_at).saturating_sub(now);
            let dir = format!("{}/subnets", self.o.prefix);
            let kv = self.s.kv.clone();
            let watch = kv.watch(&dir, true, since);
            let ev = tokio::select! {
                biased;
                r = watch => Some(r),
                _ = self.s.clock.sleep(next) => None,
            };
            match ev {
                Some(Ok(ev)) => {
                    since = ev.index + 1;
                    if !self.on_event(subnet, &ev, &mut peers.0) {
                        return;
                    }
                }
                Some(Err(ClientError::Store(e))) if e.code == error::EVENT_INDEX_CLEARED => {
                    peers = self.relist(subnet).await;
                    since = peers.1 + 1;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "watching leases failed");
                    self.s.clock.sleep(Duration::from_millis(RETRY_MS)).await;
                }
                None => {}
            }
            let now = self.s.clock.now_mono();
            if now >= renew_at {
                match self.renew(subnet).await {
                    Ok(()) if self.o.bugs.renew_moves_subnet => {
                        let key = self.key(&subnet);
                        let _ = self.s.kv.delete(&key, false, Precondition::default()).await;
                        return;
                    }
                    Ok(()) => renew_at = now + Duration::from_secs(renew_s),
                    Err(ClientError::Store(e)) if e.code == error::KEY_NOT_FOUND => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the lease failed");
                        renew_at = now + Duration::from_millis(RETRY_MS.max(renew_s * 1000 / 20));
                    }
                }
            }
            if now >= repair_at {
                self.repair(subnet).await;
                repair_at = now + Duration::from_millis(self.o.repair_ms);
            }
        }
    }

    /// The peers' leases from a fresh listing (retrying until the store answers).
    async fn relist(&self, own: Ipv4Net) -> (BTreeMap<Ipv4Net, Lease>, u64) {
        loop {
            match self.list().await {
                Ok((ls, index)) => {
                    let peers = ls
                        .into_iter()
                        .filter(|l| l.subnet != own)
                        .map(|l| (l.subnet, l))
                        .collect();
                    return (peers, index);
                }
                Err(e) => tracing::debug!(error = %e, "listing leases failed"),
            }
            self.s.clock.sleep(Duration::from_millis(RETRY_MS)).await;
        }
    }

    /// Folds one watch event into the peers; `false` when it took this machine's lease.
    fn on_event(&self, own: Ipv4Net, ev: &Event, peers: &mut BTreeMap<Ipv4Net, Lease>) -> bool {
        let seg = ev.node.key.rsplit('/').next().unwrap_or("");
        let Ok(subnet) = Ipv4Net::parse_key(seg) else {
            return true;
        };
        let gone = matches!(
            ev.action,
            Action::Delete | Action::Expire | Action::CompareAndDelete
        );
        if subnet == own {
            return !gone;
        }
        if gone {
            if !self.o.bugs.keep_routes_on_expiry {
                peers.remove(&subnet);
            }
            return true;
        }
        match Lease::parse(
            seg,
            ev.node.value.as_deref().unwrap_or(""),
            ev.node.expire_ms.is_some(),
        ) {
            Ok(l) => {
                peers.insert(subnet, l);
            }
            Err(e) => {
                tracing::warn!(key = %ev.node.key, error = %e, "skipping a lease");
                peers.remove(&subnet);
            }
        }
        true
    }

    async fn renew(&self, subnet: Ipv4Net) -> Result<(), ClientError> {
        let value = serde_json::to_string(&self.attrs).expect("lease serializes");
        // A reservation (no TTL) stays one: only a lease that has a TTL gets it again.
        let Some(got) = self.s.kv.get(&self.key(&subnet), false, false).await? else {
            return Err(ClientError::Store(crate::kv::StoreError::new(
                error::KEY_NOT_FOUND,
                self.key(&subnet),
                0,
            )));
        };
        let ttl = got.node.expire_ms.map(|_| self.o.lease_ttl_s);
        let opts = SetOpts {
            ttl_s: ttl,
            prev: Precondition {
                exist: Some(true),
                ..Default::default()
            },
            ..Default::default()
        };
        self.s
            .kv
            .set(&self.key(&subnet), &value, opts)
            .await
            .map(|_| ())
    }

    /// Makes the kernel hold exactly what the peers call for.
    async fn apply(&mut self, peers: &BTreeMap<Ipv4Net, Lease>) {
        let want = routes::wanted(&self.cfg.backend, peers);
        for c in routes::diff(&self.have, &want) {
            let r = match &c {
                Change::Add(e) => self
                    .s
                    .links
                    .add(e)
                    .await
                    .map(|_| self.have.insert(e.clone()))
                    .map(drop),
                Change::Remove(e) => self
                    .s
                    .links
                    .remove(e)
                    .await
                    .map(|_| self.have.remove(e))
                    .map(drop),
            };
            if let Err(e) = r {
                tracing::warn!(change = ?c, error = %e, "changing the kernel's tables failed; the repair pass retries");
            }
        }
        self.status.send_modify(|st| {
            st.peers = peers.clone();
            st.entries = self.have.clone();
        });
    }

    /// Routes inside the network that someone added or deleted behind this node's back:
    /// forget what is gone (the next apply puts it back), remove what nobody wants. The
    /// filter rules are put back in their places too (Docker puts its own masquerade at
    /// the head of `POSTROUTING` when it makes a network).
    async fn repair(&mut self, subnet: Ipv4Net) {
        let rules = filter::rules(self.cfg.network, subnet, self.o.ip_masq);
        if let Err(e) = self.s.links.set_filter(&rules).await {
            tracing::warn!(error = %e, "putting the filter rules back failed; the next repair pass retries");
        }
        let n = self.cfg.network;
        let Ok(routes) = self.s.links.routes_within(n.ip(), n.prefix_len()).await else {
            return;
        };
        let mut actual: BTreeSet<Entry> = routes.into_iter().collect();
        let dev = match &self.cfg.backend {
            Backend::Vxlan { vni, .. } => Some(routes::vxlan_dev(*vni)),
            Backend::Wireguard { .. } => Some(routes::WG_DEV.to_string()),
            Backend::HostGw => None,
        };
        if let Some(dev) = dev {
            actual.extend(self.s.links.neighbours_on(&dev).await.unwrap_or_default());
        }
        let missing: Vec<Entry> = self
            .have
            .iter()
            .filter(|e| !actual.contains(e))
            .cloned()
            .collect();
        for e in missing {
            tracing::warn!(entry = %e, "an entry went missing; putting it back");
            self.have.remove(&e);
        }
        for e in actual.difference(&self.have) {
            tracing::warn!(entry = %e, "removing an entry into the network that no lease calls for");
            self.s.links.remove(e).await.ok();
        }
    }
}

/// Waits for `<prefix>/config` to exist and parse (a member may start before anyone
/// wrote it: the config goes into the store it serves).
async fn wait_config(s: &NetSeams, prefix: &str) -> NetConfig {
    let key = format!("{prefix}/config");
    let mut said = String::new();
    loop {
        let why = match s.kv.get(&key, false, true).await {
            Ok(Some(g)) => match NetConfig::parse(g.node.value.as_deref().unwrap_or("")) {
                Ok(c) => return c,
                Err(e) => format!("{key}: {e}"),
            },
            Ok(None) => {
                format!("waiting for {key} (flotilla net init CIDR, or etcdctl set {key} …)")
            }
            Err(e) => format!("reading {key}: {e}"),
        };
        if why != said {
            tracing::warn!("{why}");
            said = why;
        }
        s.clock.sleep(Duration::from_millis(RETRY_MS)).await;
    }
}

/// Where this machine's WireGuard private key is kept (it never leaves the machine; the
/// lease carries the public key): as told, else beside the subnet file.
pub fn wg_key_file(o: &NetOptions) -> String {
    if let Some(f) = &o.wg_key_file {
        return f.clone();
    }
    std::path::Path::new(&o.subnet_file)
        .with_extension("wgkey")
        .display()
        .to_string()
}

/// The backend's device and the data peers need in the lease (`VtepMAC` for VXLAN,
/// `PublicKey` and `Port` for WireGuard).
async fn backend_setup(
    s: &NetSeams,
    cfg: &NetConfig,
    iface: &Iface,
    lease: Option<Ipv4Net>,
    wg_key_file: &str,
) -> serde_json::Value {
    match &cfg.backend {
        Backend::Vxlan { vni, port } => {
            let spec = VxlanSpec {
                name: routes::vxlan_dev(*vni),
                vni: *vni,
                port: *port,
                local: iface.ip,
                underlay: iface.name.clone(),
                mtu: iface.mtu.saturating_sub(cfg.backend.mtu_overhead()),
                addr: lease.map(|l| l.ip()),
            };
            let mac = retry(s, "set up the VXLAN device", || s.links.ensure_vxlan(&spec)).await;
            serde_json::json!({ "VtepMAC": mac.to_string() })
        }
        Backend::Wireguard { listen_port, .. } => {
            let spec = WgSpec {
                name: routes::WG_DEV.into(),
                port: *listen_port,
                key_file: wg_key_file.to_string(),
                mtu: iface.mtu.saturating_sub(cfg.backend.mtu_overhead()),
                addr: lease.map(|l| l.ip()),
            };
            let key = retry(s, "set up the WireGuard device", || {
                s.links.ensure_wireguard(&spec)
            })
            .await;
            serde_json::json!({ "PublicKey": key.to_string(), "Port": listen_port })
        }
        Backend::HostGw => serde_json::Value::Null,
    }
}

/// Retries `f` every [`RETRY_MS`] until it succeeds, saying why it failed (once per reason).
async fn retry<T, F>(s: &NetSeams, what: &str, mut f: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = std::io::Result<T>>,
{
    let mut said = String::new();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                let why = e.to_string();
                if why != said {
                    tracing::error!(error = %why, "could not {what}; retrying");
                    said = why;
                }
            }
        }
        s.clock.sleep(Duration::from_millis(RETRY_MS)).await;
    }
}
