//! The simulated network: every message between nodes, and every client request and
//! response, crosses this fabric, which applies seeded latency (and so reordering),
//! loss, duplication, and per-link cuts (partitions, one-way, flapping).

use crate::scenario::Net;
use bytes::Bytes;
use flotilla_shims::PeerNet;
use madsim::rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Endpoints: nodes are `0..n`, clients `CLIENT_BASE + i`.
pub const CLIENT_BASE: u64 = 1_000;

#[derive(Default)]
pub struct Stats {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

struct State {
    inboxes: BTreeMap<u64, mpsc::Sender<Bytes>>,
    /// Cut links (from, to), each with a count of faults holding it cut.
    cut: BTreeMap<(u64, u64), u32>,
    /// Slow machines: extra milliseconds on every message to or from the endpoint.
    slow: BTreeMap<u64, u64>,
    net: Net,
    stats: Stats,
}

pub struct Fabric {
    st: Mutex<State>,
    /// Raft node id → fabric endpoint.
    ids: Mutex<BTreeMap<u64, u64>>,
}

impl Fabric {
    pub fn new(net: Net) -> Arc<Self> {
        Arc::new(Self {
            st: Mutex::new(State {
                inboxes: BTreeMap::new(),
                cut: BTreeMap::new(),
                slow: BTreeMap::new(),
                net,
                stats: Stats::default(),
            }),
            ids: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().expect("fabric lock poisoned")
    }

    pub fn map_id(&self, raft_id: u64, endpoint: u64) {
        self.ids.lock().expect("ids lock").insert(raft_id, endpoint);
    }

    fn endpoint(&self, raft_id: u64) -> Option<u64> {
        self.ids.lock().expect("ids lock").get(&raft_id).copied()
    }

    pub fn register(&self, endpoint: u64, inbox: mpsc::Sender<Bytes>) {
        self.lock().inboxes.insert(endpoint, inbox);
    }

    pub fn unregister(&self, endpoint: u64) {
        self.lock().inboxes.remove(&endpoint);
    }

    pub fn set_net(&self, net: Net) {
        self.lock().net = net;
    }

    pub fn cut(&self, from: u64, to: u64) {
        *self.lock().cut.entry((from, to)).or_default() += 1;
    }

    pub fn restore(&self, from: u64, to: u64) {
        let mut st = self.lock();
        if let Some(n) = st.cut.get_mut(&(from, to)) {
            *n -= 1;
            if *n == 0 {
                st.cut.remove(&(from, to));
            }
        }
    }

    pub fn heal(&self) {
        let mut st = self.lock();
        st.cut.clear();
        st.slow.clear();
    }

    /// Makes every message to or from `endpoint` take `extra_ms` longer (0: normal again).
    pub fn set_slow(&self, endpoint: u64, extra_ms: u64) {
        let mut st = self.lock();
        if extra_ms == 0 {
            st.slow.remove(&endpoint);
        } else {
            st.slow.insert(endpoint, extra_ms);
        }
    }

    pub fn is_cut(&self, from: u64, to: u64) -> bool {
        self.lock().cut.contains_key(&(from, to))
    }

    pub fn stats(&self) -> (u64, u64, u64) {
        let st = self.lock();
        (st.stats.sent, st.stats.dropped, st.stats.duplicated)
    }

    /// A latency drawn for one hop, or `None` if the message is lost.
    pub fn hop(&self, from: u64, to: u64) -> Option<Duration> {
        let mut st = self.lock();
        st.stats.sent += 1;
        let mut rng = madsim::rand::thread_rng();
        if st.cut.contains_key(&(from, to)) || rng.gen_range(0..1000) < st.net.loss_permille {
            st.stats.dropped += 1;
            return None;
        }
        let slow = |e: u64| st.slow.get(&e).copied().unwrap_or(0);
        let ms =
            rng.gen_range(st.net.latency_min_ms..=st.net.latency_max_ms) + slow(from) + slow(to);
        Some(Duration::from_micros(ms * 1000 + rng.gen_range(0..1000)))
    }

    fn duplicate(&self) -> bool {
        let mut st = self.lock();
        let dup = madsim::rand::thread_rng().gen_range(0..1000) < st.net.dup_permille;
        if dup {
            st.stats.duplicated += 1;
        }
        dup
    }

    fn deliver(self: &Arc<Self>, from: u64, to: u64, frame: Bytes) {
        let copies = if self.duplicate() { 2 } else { 1 };
        for _ in 0..copies {
            let Some(delay) = self.hop(from, to) else {
                continue;
            };
            let fabric = self.clone();
            let frame = frame.clone();
            madsim::task::spawn(async move {
                madsim::time::sleep(delay).await;
                // A link cut while the message was in flight loses it too.
                if fabric.is_cut(from, to) {
                    return;
                }
                let inbox = fabric.lock().inboxes.get(&to).cloned();
                if let Some(tx) = inbox {
                    let _ = tx.try_send(frame);
                }
            });
        }
    }
}

/// One node's [`PeerNet`] on the fabric.
pub struct SimNet {
    pub endpoint: u64,
    pub fabric: Arc<Fabric>,
    pub peers: Mutex<BTreeSet<u64>>,
}

impl PeerNet for SimNet {
    fn send(&self, to: u64, frame: Bytes) {
        if !self.peers.lock().expect("peers lock").contains(&to) {
            return;
        }
        if let Some(ep) = self.fabric.endpoint(to) {
            self.fabric.deliver(self.endpoint, ep, frame);
        }
    }

    fn set_peer(&self, id: u64, _addr: &str) {
        self.peers.lock().expect("peers lock").insert(id);
    }

    fn remove_peer(&self, id: u64) {
        self.peers.lock().expect("peers lock").remove(&id);
    }
}
