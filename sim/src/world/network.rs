//! Machines on the cluster network (`--scenario net`): each runs the real network
//! manager (`flotilla::net`) over the HTTP client and the fabric, with its kernel tables
//! simulated ([`SimLinks`]). One machine dies for good mid-run (its lease must expire and
//! its routes leave the others); one dies and comes back after its lease expired (it must
//! get the same subnet back). After the heal, within a bound:
//! - no two live machines hold the same subnet, and no two live leases overlap;
//! - every live machine's tables hold exactly what the others' live leases call for;
//! - no machine's subnet changed while its old one stayed free;
//! - no lease write ever replaced another machine's lease (each machine's writes under
//!   `subnets/` are watched as they return, with the value they replaced).

use super::agents::fabric_kv;
use super::World;
use crate::env::{SimClock, SimSpawn};
use crate::links::SimLinks;
use flotilla::client::{ClientError, KvClient, SetOpts};
use flotilla::kv::Precondition;
use flotilla::net::config::NetConfig;
use flotilla::net::lease::Lease;
use flotilla::net::subnet::Ipv4Net;
use flotilla::net::{NetBugs, NetOptions, NetSeams, NetStatus};
use flotilla_shims::files::MemFiles;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Fabric endpoints of network machines start here (agent-only machines are 500..900).
const NET_BASE: u64 = 900;
/// The leases' TTL: short, so an expiry happens within a run.
const LEASE_TTL_S: u64 = 6;
const PREFIX: &str = "/coreos.com/network";

pub(super) struct NetMachine {
    ip: Ipv4Addr,
    kv: Arc<dyn KvClient>,
    clock: SimClock,
    files: MemFiles,
    links: SimLinks,
    status: Mutex<Option<watch::Receiver<NetStatus>>>,
    /// Every subnet this machine held, in order.
    held: Arc<Mutex<Vec<Ipv4Net>>>,
    /// Lease writes of this machine that replaced another machine's lease.
    overwrote: Arc<Mutex<Vec<String>>>,
}

/// A machine's store client that notes every lease write replacing another machine's
/// lease: with `prevExist=false` on every create, none can.
struct LeaseWrites {
    inner: Arc<dyn KvClient>,
    ip: Ipv4Addr,
    overwrote: Arc<Mutex<Vec<String>>>,
}

impl LeaseWrites {
    fn note(&self, key: &str, ev: &flotilla::kv::Event) {
        let Some(seg) = key.strip_prefix(&format!("{PREFIX}/subnets/")) else {
            return;
        };
        let prev = ev.prev_node.as_ref().and_then(|p| p.value.as_deref());
        let Some(prev) = prev.and_then(|v| Lease::parse(seg, v, true).ok()) else {
            return;
        };
        if prev.attrs.public_ip != self.ip {
            self.overwrote.lock().expect("overwrote lock").push(format!(
                "{} replaced {}'s lease on {seg} at index {}",
                self.ip, prev.attrs.public_ip, ev.index
            ));
        }
    }
}

impl KvClient for LeaseWrites {
    fn get(
        &self,
        key: &str,
        recursive: bool,
        quorum: bool,
    ) -> flotilla_shims::BoxFuture<'_, Result<Option<flotilla::client::Got>, ClientError>> {
        self.inner.get(key, recursive, quorum)
    }

    fn set(
        &self,
        key: &str,
        value: &str,
        opts: SetOpts,
    ) -> flotilla_shims::BoxFuture<'_, Result<flotilla::kv::Event, ClientError>> {
        let key = key.to_string();
        let value = value.to_string();
        Box::pin(async move {
            let r = self.inner.set(&key, &value, opts).await;
            if let Ok(ev) = &r {
                self.note(&key, ev);
            }
            r
        })
    }

    fn delete(
        &self,
        key: &str,
        recursive: bool,
        prev: Precondition,
    ) -> flotilla_shims::BoxFuture<'_, Result<flotilla::kv::Event, ClientError>> {
        self.inner.delete(key, recursive, prev)
    }

    fn watch(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
    ) -> flotilla_shims::BoxFuture<'_, Result<flotilla::kv::Event, ClientError>> {
        self.inner.watch(key, recursive, since)
    }
}

impl NetMachine {
    pub(super) fn new(w: &Weak<World>, j: usize, nodes: usize) -> Self {
        let ip = Ipv4Addr::new(10, 0, 2, j as u8 + 1);
        Self {
            ip,
            kv: fabric_kv(w, NET_BASE + j as u64, j, nodes),
            clock: SimClock::default(),
            files: MemFiles::new(),
            links: SimLinks::new(ip),
            status: Mutex::new(None),
            held: Default::default(),
            overwrote: Default::default(),
        }
    }

    fn start(&self, bugs: NetBugs, seed: u64) {
        let kv = LeaseWrites {
            inner: self.kv.clone(),
            ip: self.ip,
            overwrote: self.overwrote.clone(),
        };
        let seams = NetSeams {
            kv: Arc::new(kv),
            clock: Arc::new(self.clock.clone()),
            links: Arc::new(self.links.clone()),
            files: Arc::new(self.files.clone()),
            seed,
        };
        let opts = NetOptions {
            lease_ttl_s: LEASE_TTL_S,
            renew_margin_s: LEASE_TTL_S - 2,
            repair_ms: 2_000,
            bugs,
            ..NetOptions::defaults()
        };
        let mut rx = flotilla::net::start(seams, opts, &SimSpawn);
        *self.status.lock().expect("status lock") = Some(rx.clone());
        let held = self.held.clone();
        madsim::task::spawn(async move {
            while rx.changed().await.is_ok() {
                let lease = rx.borrow().lease;
                let mut h = held.lock().expect("held lock");
                if let Some(l) = lease.filter(|l| h.last() != Some(l)) {
                    h.push(l);
                }
            }
        });
    }

    fn lease(&self) -> Option<Ipv4Net> {
        self.status
            .lock()
            .expect("status lock")
            .as_ref()?
            .borrow()
            .lease
    }
}

fn bugs(w: &World) -> NetBugs {
    NetBugs {
        create_without_prev_exist: w.s.bug_lease_no_prev_exist,
        keep_routes_on_expiry: w.s.bug_routes_kept_on_expiry,
        renew_moves_subnet: w.s.bug_renew_moves_subnet,
    }
}

fn config_json(seed: u64) -> String {
    let backend = match seed % 3 {
        0 => "host-gw",
        1 => "vxlan",
        _ => "wireguard",
    };
    // Fifteen subnets for six machines: starting at once, they often draw the same one,
    // so a lease created without `prevExist=false` is caught.
    format!(r#"{{"Network":"10.1.0.0/22","SubnetLen":26,"Backend":{{"Type":"{backend}"}}}}"#)
}

/// Boots the network machines (machine 0 also writes the config, as `flotilla net init`
/// would), and schedules the two deaths.
pub(super) fn start_net(w: &Arc<World>) {
    for (j, m) in w.nets.iter().enumerate() {
        let (m, b, seed) = (m.clone(), bugs(w), w.s.seed ^ (j as u64) << 8);
        let node =
            w.rt.create_node()
                .name(format!("net{j}"))
                .init(move || {
                    let (m, b) = (m.clone(), b.clone());
                    async move {
                        if j == 0 {
                            write_config(&*m.kv, &config_json(seed)).await;
                        }
                        m.start(b, seed);
                        std::future::pending::<()>().await
                    }
                })
                .build();
        w.net_nodes.lock().expect("nodes lock").push(node);
    }
}

async fn write_config(kv: &dyn KvClient, json: &str) {
    let opts = SetOpts {
        prev: Precondition {
            exist: Some(false),
            ..Default::default()
        },
        ..Default::default()
    };
    loop {
        match kv
            .set(&format!("{PREFIX}/config"), json, opts.clone())
            .await
        {
            Ok(_) => return,
            Err(ClientError::Store(e)) if e.code == flotilla::kv::error::NODE_EXIST => return,
            Err(_) => madsim::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// When the deaths happen: machine n−1 dies for good, n−2 dies and returns after its
/// lease expired.
pub(super) async fn deaths(w: Arc<World>) {
    let n = w.nets.len();
    if n < 4 {
        return;
    }
    let at = Duration::from_millis(w.s.fault_phase_ms / 4);
    madsim::time::sleep(at).await;
    let (dead, back) = {
        let nodes = w.net_nodes.lock().expect("nodes lock");
        (nodes[n - 1].id(), nodes[n - 2].id())
    };
    w.trace(format!(
        "net machine {} dies, {} dies for a while",
        n - 1,
        n - 2
    ));
    w.rt.kill(dead);
    w.rt.kill(back);
    madsim::time::sleep(Duration::from_secs(2 * LEASE_TTL_S + 1)).await;
    w.trace(format!("net machine {} comes back", n - 2));
    w.rt.restart(back);
}

/// The live machines: all but the one that died for good.
fn live(w: &World) -> &[Arc<NetMachine>] {
    let n = w.nets.len();
    if n >= 4 {
        &w.nets[..n - 1]
    } else {
        &w.nets
    }
}

/// After the heal (and the return of the machine that came back): the checks above,
/// given a bound to converge in.
pub(super) async fn check_net(w: &Arc<World>) {
    if w.nets.is_empty() {
        return;
    }
    // Not before the returning machine is back and has had a TTL to settle.
    let returned =
        Duration::from_millis(w.s.fault_phase_ms / 4) + Duration::from_secs(3 * LEASE_TTL_S + 1);
    let now = Duration::from_nanos(w.now_ns());
    madsim::time::sleep(returned.saturating_sub(now)).await;
    let bound = Duration::from_secs(4 * LEASE_TTL_S);
    let start = madsim::time::Instant::now();
    let mut why = String::from("no answer from the store");
    while start.elapsed() < bound {
        match net_state(w).await {
            Some(Ok(())) => return check_held(w).await,
            Some(Err(e)) => why = e,
            None => {}
        }
        madsim::time::sleep(Duration::from_millis(500)).await;
    }
    w.violation(format!(
        "network: not converged within {bound:?} after the heal: {why}"
    ));
}

/// The live leases in the store, by subnet.
async fn store_leases(w: &World) -> Option<BTreeMap<Ipv4Net, Lease>> {
    let got = w.nets[0]
        .kv
        .get(&format!("{PREFIX}/subnets"), true, true)
        .await
        .ok()?;
    let nodes = got
        .map(|g| g.node.nodes.unwrap_or_default())
        .unwrap_or_default();
    let leases = nodes
        .iter()
        .filter_map(|n| {
            let seg = n.key.rsplit('/').next()?;
            Lease::parse(seg, n.value.as_deref()?, n.expire_ms.is_some()).ok()
        })
        .map(|l| (l.subnet, l))
        .collect();
    Some(leases)
}

/// `Err` with what is wrong, `None` when the store did not answer.
async fn net_state(w: &World) -> Option<Result<(), String>> {
    let leases = store_leases(w).await?;
    let cfg = NetConfig::parse(&config_json(w.s.seed)).expect("the scenario's config parses");
    let mut seen = BTreeMap::new();
    for (j, m) in live(w).iter().enumerate() {
        let Some(own) = m.lease() else {
            return Some(Err(format!("machine {j} holds no lease")));
        };
        if let Some(k) = seen.insert(own, j) {
            return Some(Err(format!("machines {k} and {j} both hold {own}")));
        }
        let peers: BTreeMap<Ipv4Net, Lease> = leases
            .iter()
            .filter(|(s, _)| **s != own)
            .map(|(s, l)| (*s, l.clone()))
            .collect();
        if m.links.filter() != flotilla::net::filter::rules(cfg.network, own, false) {
            return Some(Err(format!(
                "machine {j}'s filter rules are not those of its lease {own}: {:?}",
                m.links.filter()
            )));
        }
        let want = flotilla::net::routes::wanted(&cfg.backend, &peers);
        let have = m.links.entries();
        if have != want {
            let extra: BTreeSet<_> = have.difference(&want).map(|e| e.to_string()).collect();
            let missing: BTreeSet<_> = want.difference(&have).map(|e| e.to_string()).collect();
            return Some(Err(format!("machine {j}'s tables differ from the live leases: extra {extra:?}, missing {missing:?}")));
        }
    }
    let subnets: Vec<&Ipv4Net> = leases.keys().collect();
    for (i, a) in subnets.iter().enumerate() {
        if let Some(b) = subnets[i + 1..].iter().find(|b| a.overlaps(b)) {
            return Some(Err(format!("live leases {a} and {b} overlap")));
        }
    }
    Some(Ok(()))
}

/// A machine whose subnet changed must have lost the old one to another machine; no
/// machine's lease write replaced another's.
async fn check_held(w: &World) {
    for m in &w.nets {
        for o in m.overwrote.lock().expect("overwrote lock").iter() {
            w.violation(format!(
                "network: a lease write replaced another machine's: {o}"
            ));
        }
    }
    let Some(leases) = store_leases(w).await else {
        return;
    };
    for (j, m) in live(w).iter().enumerate() {
        let held = m.held.lock().expect("held lock").clone();
        for pair in held.windows(2) {
            let (old, new) = (pair[0], pair[1]);
            let taken = leases.get(&old).is_some_and(|l| l.attrs.public_ip != m.ip);
            if !taken {
                w.violation(format!(
                    "network: machine {j} moved from {old} to {new} while {old} stayed free"
                ));
            }
        }
    }
}
