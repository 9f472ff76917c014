//! DNS from the store, as SkyDNS answered it from etcd, plus names for what flotilla
//! itself knows (units' running instances, machines).
//!
//! # Layout
//! - [`mirror`]: a subtree of the store kept in memory from a read and its watch — pure.
//! - [`skydns`]: SkyDNS's `/skydns` layout and its A/SRV/TXT/CNAME answers — pure.
//! - [`answer`]: what a question gets from the mirrored keys ([`answer::View`]) — pure.
//! - this file: the shell — one task per mirrored root keeps the view current; the
//!   wire side ([`flotilla_shims::dns`], hickory-server) asks [`Dns`] each question.
//!
//! Data flow: store (`KvClient` read + watch) → [`mirror::Mirror`]s → [`answer::answer`]
//! with the wall clock's `now` (TTLs follow the keys') → records on the wire.

pub mod answer;
pub mod mirror;
pub mod skydns;

use crate::client::{ClientError, KvClient};
use crate::sched::registry;
use flotilla_shims::dns::{Question, Reply, Resolve};
use flotilla_shims::{Clock, Spawn};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The domain flotilla's own names sit under when `--dns-domain` does not say.
pub const DEFAULT_DOMAIN: &str = "flotilla.local";
/// Pause before reading a root again after the store did not answer.
const RETRY_MS: u64 = 1_000;
/// A watch with nothing to say is asked again after this: a long poll to a member that a
/// partition cut off (its connection silently gone) would otherwise keep the answers
/// stale for the whole poll (a minute) after the network heals.
pub const WATCH_RENEW_MS: u64 = 3_000;

/// The answering side: the mirrored keys and the clock their TTLs count on.
pub struct Dns {
    view: RwLock<answer::View>,
    clock: Arc<dyn Clock>,
    domain: String,
}

impl Dns {
    pub fn new(clock: Arc<dyn Clock>, domain: &str) -> Self {
        Self {
            view: RwLock::new(answer::View::default()),
            clock,
            domain: domain.trim_matches('.').to_ascii_lowercase(),
        }
    }

    /// A copy of what is mirrored now (for checks and status).
    pub fn view(&self) -> answer::View {
        self.view.read().expect("dns view lock").clone()
    }

    fn with<T>(&self, f: impl FnOnce(&mut answer::View) -> T) -> T {
        f(&mut self.view.write().expect("dns view lock"))
    }
}

impl Resolve for Dns {
    fn resolve(&self, q: &Question) -> Reply {
        let now = self.clock.now_wall_ms();
        let view = self.view.read().expect("dns view lock");
        answer::answer(&view, &self.domain, now, q)
    }
}

/// Which mirror a task keeps.
#[derive(Debug, Clone, Copy)]
enum Root {
    SkyDns,
    States,
    Machines,
}

impl Root {
    fn key(self) -> &'static str {
        match self {
            Root::SkyDns => skydns::ROOT,
            Root::States => registry::STATES,
            Root::Machines => registry::MACHINES,
        }
    }

    fn of(self, v: &mut answer::View) -> &mut mirror::Mirror {
        match self {
            Root::SkyDns => &mut v.skydns,
            Root::States => &mut v.states,
            Root::Machines => &mut v.machines,
        }
    }
}

/// Starts the tasks that keep `dns` current from the store.
pub fn follow(dns: &Arc<Dns>, kv: Arc<dyn KvClient>, spawn: &dyn Spawn) {
    for root in [Root::SkyDns, Root::States, Root::Machines] {
        let (dns, kv) = (dns.clone(), kv.clone());
        spawn.spawn("dns-mirror", Box::pin(keep(dns, kv, root)));
    }
}

/// Read the root, then apply its watch's events; read again when the store's history
/// no longer reaches the watch's index (etcd's 401) or the store stops answering.
async fn keep(dns: Arc<Dns>, kv: Arc<dyn KvClient>, root: Root) {
    loop {
        let since = match load(&dns, &*kv, root).await {
            Ok(since) => since,
            Err(e) => {
                tracing::debug!(root = root.key(), error = %e, "dns: read failed; retrying");
                dns.clock.sleep(Duration::from_millis(RETRY_MS)).await;
                continue;
            }
        };
        let why = watch(&dns, &*kv, root, since).await;
        tracing::debug!(root = root.key(), error = %why, "dns: reading again");
        if why.code().is_none() {
            dns.clock.sleep(Duration::from_millis(RETRY_MS)).await;
        }
    }
}

/// Loads the root's keys; returns the first index its watch starts from.
async fn load(dns: &Dns, kv: &dyn KvClient, root: Root) -> Result<u64, ClientError> {
    let (node, index) = match kv.get(root.key(), true, false).await? {
        Some(got) => (Some(got.node), got.index),
        None => {
            // Absent: a watch for its creation starts past the store's index, read
            // *before* looking again, so a creation in between is not skipped.
            let before = kv.get("/", false, false).await?.map_or(0, |g| g.index);
            match kv.get(root.key(), true, false).await? {
                Some(got) => (Some(got.node), got.index),
                None => (None, before),
            }
        }
    };
    dns.with(|v| root.of(v).load(node.as_ref()));
    Ok(index + 1)
}

async fn watch(dns: &Dns, kv: &dyn KvClient, root: Root, mut since: u64) -> ClientError {
    loop {
        let renew = dns.clock.sleep(Duration::from_millis(WATCH_RENEW_MS));
        let got = tokio::select! {
            got = kv.watch(root.key(), true, since) => got,
            // Nothing yet: the same question again, on a fresh request.
            () = renew => continue,
        };
        match got {
            Ok(ev) => {
                since = ev.index + 1;
                dns.with(|v| root.of(v).apply(&ev));
            }
            Err(e) => return e,
        }
    }
}
