//! Applying committed entries: the state machine's write side.
//!
//! An [`Applier`] borrows only what applying needs — not the disk — so the driver can
//! apply one Ready's committed entries (and answer their clients) while that Ready's own
//! sync is in flight on the disk.

use super::driver::{peer_addr, ConfContext, Fatal, Proposal, Request};
use super::handle::{Outcome, ProposeError, Reply, Shared};
use super::machine::Member;
use super::storage::LogStore;
use crate::kv::Command;
use flotilla_shims::PeerNet;
use protobuf::Message as _;
use raft::prelude::*;
use raft::RawNode;
use std::collections::BTreeMap;

pub struct Applier<'a> {
    pub id: u64,
    pub raw: &'a mut RawNode<LogStore>,
    pub shared: &'a Shared,
    pub pending: &'a mut BTreeMap<u64, Reply>,
    pub net: &'a dyn PeerNet,
    /// Planted bug (see [`super::RaftConfig::bug_drop_foreign_ttls`]).
    pub bug_drop_foreign_ttls: bool,
}

impl Applier<'_> {
    pub fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e)?,
                EntryType::EntryConfChange => self.apply_conf_change(&e)?,
                EntryType::EntryConfChangeV2 => {
                    return Err(Fatal::BadEntry {
                        index: e.index,
                        why: "joint consensus (conf change v2) is not used".into(),
                    })
                }
            }
            self.shared.machine().applied = e.index;
            self.shared.metrics.applied.inc();
        }
        Ok(())
    }

    fn apply_normal(&mut self, e: &Entry) -> Result<(), Fatal> {
        if e.data.is_empty() {
            return Ok(()); // a new leader's empty entry
        }
        let p = Proposal::decode(&e.data).map_err(|err| Fatal::BadEntry {
            index: e.index,
            why: err.to_string(),
        })?;
        let applied = {
            let mut m = self.shared.machine();
            if p.origin != 0 && !m.first_application(p.origin, p.seq) {
                tracing::debug!(
                    index = e.index,
                    origin = p.origin,
                    seq = p.seq,
                    "duplicate proposal skipped"
                );
                return Ok(());
            }
            match &p.req {
                Request::Kv(Command::Put {
                    key,
                    value,
                    dir,
                    refresh,
                    prev,
                    ..
                }) if self.bug_drop_foreign_ttls && p.origin != self.id => {
                    m.store.apply(&Command::Put {
                        key: key.clone(),
                        value: value.clone(),
                        dir: *dir,
                        expire_ms: None,
                        refresh: *refresh,
                        prev: prev.clone(),
                    })
                }
                Request::Kv(cmd) => m.store.apply(cmd),
                Request::Publish {
                    id,
                    name,
                    client_urls,
                } => {
                    if let Some(mem) = m.members.get_mut(id) {
                        mem.name = name.clone();
                        mem.client_urls = client_urls.clone();
                    }
                    crate::kv::Applied {
                        result: Ok(None),
                        events: vec![],
                    }
                }
                Request::UpdatePeers { id, peer_urls } => {
                    let result = match m.members.get_mut(id) {
                        Some(mem) => {
                            mem.peer_urls = peer_urls.clone();
                            if *id != self.id {
                                if let Some(a) = peer_urls.first().and_then(|u| peer_addr(u)) {
                                    self.net.set_peer(*id, &a);
                                }
                            }
                            Ok(None)
                        }
                        None => Err(crate::kv::StoreError::new(
                            crate::kv::error::KEY_NOT_FOUND,
                            format!("member {id:x}"),
                            0,
                        )),
                    };
                    crate::kv::Applied {
                        result,
                        events: vec![],
                    }
                }
            }
        };
        if let Request::Kv(cmd) = &p.req {
            count_write(&mut self.shared.store_stats(), cmd, &applied);
        }
        // A publish changes no key, but a member waiting to serve (api::ready) waits on it.
        if !applied.events.is_empty() || matches!(p.req, Request::Publish { .. }) {
            self.shared.notify_events();
            self.shared.watchers.wake(&applied.events);
        }
        if p.origin == self.id {
            if let Some(reply) = self.pending.remove(&p.seq) {
                let _ = reply.send(Ok(Outcome {
                    result: applied.result,
                    raft_index: e.index,
                    raft_term: e.term,
                }));
            }
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), Fatal> {
        let bad = |why: String| Fatal::BadEntry {
            index: e.index,
            why,
        };
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(|err| bad(err.to_string()))?;
        // raft-rs carries the proposal's context on the entry, not inside the change.
        let ctx: ConfContext =
            serde_json::from_slice(&e.context).map_err(|err| bad(err.to_string()))?;
        // Validated here, at apply time, so every replica decides the same way; a refused
        // change is not handed to raft-rs at all.
        let refusal = {
            let m = self.shared.machine();
            match cc.get_change_type() {
                ConfChangeType::RemoveNode if !m.members.contains_key(&cc.node_id) => Some(
                    ProposeError::NotFound(format!("member {:x} not found", cc.node_id)),
                ),
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
                    if m.members.values().any(|x| {
                        x.id == ctx.member.id
                            || x.peer_urls.iter().any(|u| ctx.member.peer_urls.contains(u))
                    }) =>
                {
                    Some(ProposeError::Rejected("membership: peerURL exists".into()))
                }
                _ => None,
            }
        };
        let answer = match refusal {
            Some(err) => Err(err),
            None => self.change_membership(&cc, &ctx.member, e),
        };
        if ctx.origin == self.id {
            if let Some(reply) = self.pending.remove(&ctx.seq) {
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    fn change_membership(
        &mut self,
        cc: &ConfChange,
        member: &Member,
        e: &Entry,
    ) -> Result<Outcome, ProposeError> {
        let cs = self
            .raw
            .apply_conf_change(cc)
            .map_err(|err| ProposeError::Rejected(err.to_string()))?;
        self.raw.mut_store().set_conf_state(cs);
        let mut m = self.shared.machine();
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                m.members.insert(member.id, member.clone());
                if member.id != self.id {
                    if let Some(a) = member.peer_urls.first().and_then(|u| peer_addr(u)) {
                        self.net.set_peer(member.id, &a);
                    }
                }
            }
            ConfChangeType::RemoveNode => {
                m.members.remove(&cc.node_id);
                self.net.remove_peer(cc.node_id);
            }
        }
        Ok(Outcome {
            result: Ok(None),
            raft_index: e.index,
            raft_term: e.term,
        })
    }
}

/// etcd's per-operation store counters, from a command and what applying it did.
fn count_write(st: &mut super::handle::StoreStats, cmd: &Command, applied: &crate::kv::Applied) {
    let ok = applied.result.is_ok();
    let pick = |st: &mut super::handle::StoreStats,
                success: fn(&mut super::handle::StoreStats) -> &mut u64,
                fail: fn(&mut super::handle::StoreStats) -> &mut u64| {
        *(if ok { success(st) } else { fail(st) }) += 1;
    };
    match cmd {
        Command::Put { prev, .. } if prev.is_compare() => pick(
            st,
            |s| &mut s.compare_and_swap_success,
            |s| &mut s.compare_and_swap_fail,
        ),
        Command::Put { prev, .. } => match prev.exist {
            Some(true) => pick(st, |s| &mut s.update_success, |s| &mut s.update_fail),
            Some(false) => pick(st, |s| &mut s.create_success, |s| &mut s.create_fail),
            None => pick(st, |s| &mut s.sets_success, |s| &mut s.sets_fail),
        },
        Command::CreateInOrder { .. } => {
            pick(st, |s| &mut s.create_success, |s| &mut s.create_fail)
        }
        Command::Delete { prev, .. } if prev.is_compare() => pick(
            st,
            |s| &mut s.compare_and_delete_success,
            |s| &mut s.compare_and_delete_fail,
        ),
        Command::Delete { .. } => pick(st, |s| &mut s.delete_success, |s| &mut s.delete_fail),
        Command::Expire { .. } => st.expire_count += applied.events.len() as u64,
        // The scheduler's own writes: not one of etcd's operations, not counted as one.
        Command::Txn { .. } => {}
    }
}
