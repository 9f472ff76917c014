//! Readiness, as etcd's `ReadyNotify`: a member answers clients only once its own publish
//! (its name and client URLs) has been committed through Raft and applied here. Whoever
//! it answers then finds at least this member in `/v2/members` with its client URLs, so
//! `etcdctl`'s endpoint sync never comes back empty, and `/health` saying `true` means
//! "published and a leader is known".
//!
//! A request that arrives earlier waits for the publish (bounded by `wait_ms`, the
//! request timeout) and is then served; one that outwaits the bound is answered 503 and
//! never sees the unpublished member. Once ready, a member stays ready: the check is a
//! latch, so the hot path is one atomic load.

use crate::raft::machine::Machine;
use crate::raft::Shared;
use flotilla_shims::Clock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Whether member `id` is applied in `m` with exactly this name and these client URLs.
pub fn is_published(m: &Machine, id: u64, name: &str, client_urls: &[String]) -> bool {
    m.members
        .get(&id)
        .is_some_and(|me| me.name == name && me.client_urls == client_urls)
}

pub struct Readiness {
    id: u64,
    name: String,
    client_urls: Vec<String>,
    wait_ms: u64,
    ready: AtomicBool,
}

impl Readiness {
    /// Ready once member `id` is applied with exactly this name and these client URLs.
    pub fn new(id: u64, name: String, client_urls: Vec<String>, wait_ms: u64) -> Self {
        Self {
            id,
            name,
            client_urls,
            wait_ms,
            ready: AtomicBool::new(false),
        }
    }

    /// Whether the applied member list holds this member as it publishes itself. A
    /// restarted member whose publish is already in its log, unchanged, is ready as soon
    /// as it has applied it.
    pub fn published(&self, m: &Machine) -> bool {
        is_published(m, self.id, &self.name, &self.client_urls)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits until ready, at most `wait_ms`; `false` when the bound passed first or the
    /// node is stopping.
    pub async fn wait(&self, shared: &Shared, clock: &dyn Clock) -> bool {
        if self.is_ready() {
            return true;
        }
        // Subscribed before looking, so a publish applied in between is not missed.
        let mut changes = shared.subscribe();
        let deadline = clock.sleep(Duration::from_millis(self.wait_ms));
        tokio::pin!(deadline);
        loop {
            if self.published(&shared.machine()) {
                self.ready.store(true, Ordering::Release);
                return true;
            }
            tokio::select! {
                biased;
                r = changes.changed() => if r.is_err() { return false },
                _ = &mut deadline => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::machine::Member;

    fn machine(name: &str, urls: &[&str]) -> Machine {
        let mut m = Machine::new();
        m.members.insert(
            7,
            Member {
                id: 7,
                name: name.into(),
                peer_urls: vec!["http://p:2380".into()],
                client_urls: urls.iter().map(|u| u.to_string()).collect(),
            },
        );
        m
    }

    #[test]
    fn ready_only_with_this_members_own_name_and_urls() {
        let r = Readiness::new(7, "n0".into(), vec!["http://c:2379".into()], 1);
        // An initial member is known by name from --initial-cluster, without client URLs.
        assert!(!r.published(&machine("n0", &[])));
        // A member added by POST /v2/members has neither.
        assert!(!r.published(&machine("", &[])));
        // Restarted with another client URL: the old publish is not this one.
        assert!(!r.published(&machine("n0", &["http://old:2379"])));
        assert!(r.published(&machine("n0", &["http://c:2379"])));
        assert!(!Readiness::new(8, "n0".into(), vec![], 1).published(&machine("n0", &[])));
    }
}
