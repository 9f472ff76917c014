//! Starting a node from its disk: a fresh bootstrap, or recovery with every record
//! checked. A data dir that does not add up (bad checksum, missing identity, gaps in the
//! log, a commit index past the log's end, another node's identity) is refused with a
//! message naming the problem, and nothing is written to it.

use super::machine::{Machine, Member};
use super::storage::LogStore;
use flotilla_shims::{Disk, DiskError};
use protobuf::Message as _;
use raft::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const META_IDENTITY: &str = "identity";
pub const META_HARD_STATE: &str = "hardstate";
pub const META_SNAPSHOT: &str = "snapshot";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum BootError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("data dir is corrupt: {0}")]
    Corrupt(String),
    #[error("data dir belongs to another member: {0}")]
    Mismatch(String),
}

/// Writes the on-disk snapshot record: the metadata's length (`u32` LE), the metadata
/// (protobuf), then the state machine (bincode) as `data` streams it.
pub fn write_snapshot_record(
    w: &mut dyn std::io::Write,
    meta: &SnapshotMetadata,
    data: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    write_snapshot_head(w, meta)?;
    data(w)
}

/// The part of a snapshot record before the state machine's bytes.
pub fn write_snapshot_head(
    w: &mut dyn std::io::Write,
    meta: &SnapshotMetadata,
) -> std::io::Result<()> {
    let head = meta.write_to_bytes().map_err(std::io::Error::other)?;
    let len = u32::try_from(head.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&head)
}

/// Splits a snapshot record into its metadata and its state-machine bytes.
pub fn read_snapshot_record(b: &[u8]) -> Result<(SnapshotMetadata, &[u8]), String> {
    let len = b
        .get(..4)
        .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .ok_or("shorter than its header")?;
    let head = b.get(4..4 + len).ok_or("metadata cut short")?;
    let meta = SnapshotMetadata::parse_from_bytes(head).map_err(|e| e.to_string())?;
    Ok((meta, &b[4 + len..]))
}

/// Who this node is; written once, checked on every start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub id: u64,
    pub name: String,
    pub cluster_id: u64,
    /// Members at bootstrap; empty when joining an existing cluster.
    pub initial_members: Vec<Member>,
}

pub struct Recovered {
    pub identity: Identity,
    pub log: LogStore,
    pub machine: Machine,
    pub fresh: bool,
}

fn corrupt(what: impl Into<String>) -> BootError {
    BootError::Corrupt(what.into())
}

/// Loads (or, on an empty disk, bootstraps) the node. A fresh bootstrap leaves the
/// identity record pending; the caller syncs before serving.
pub fn recover(disk: &mut dyn Disk, want: &Identity) -> Result<Recovered, BootError> {
    let loaded = disk.load()?;
    let Some(raw_identity) = loaded.meta.get(META_IDENTITY) else {
        if !loaded.log.is_empty() || !loaded.meta.is_empty() {
            return Err(corrupt(
                "records present but the identity record is missing (truncated?)",
            ));
        }
        let bytes = serde_json::to_vec(want).expect("identity serializes");
        disk.meta_put(META_IDENTITY, &bytes)?;
        return fresh(disk, want.clone());
    };
    let identity: Identity = serde_json::from_slice(raw_identity)
        .map_err(|e| corrupt(format!("identity record does not parse: {e}")))?;
    if identity.format != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} is not {FORMAT_VERSION}",
            identity.format
        )));
    }
    if identity.name != want.name || identity.id != want.id {
        return Err(BootError::Mismatch(format!(
            "it holds member {} ({:x}), not {} ({:x})",
            identity.name, identity.id, want.name, want.id
        )));
    }
    let hs = match loaded.meta.get(META_HARD_STATE) {
        Some(b) => HardState::parse_from_bytes(b)
            .map_err(|e| corrupt(format!("hard state record does not parse: {e}")))?,
        None => HardState::default(),
    };
    let (snapshot, machine) = match loaded.meta.get(META_SNAPSHOT) {
        Some(b) => {
            let (meta, data) = read_snapshot_record(b)
                .map_err(|e| corrupt(format!("snapshot record does not parse: {e}")))?;
            let machine: Machine = Machine::decode(data)
                .map_err(|e| corrupt(format!("snapshot data does not parse: {e}")))?;
            let mut snap = Snapshot::default();
            snap.set_metadata(meta);
            (snap, machine)
        }
        None => (Snapshot::default(), Machine::new()),
    };
    let conf_state = if loaded.meta.contains_key(META_SNAPSHOT) {
        snapshot.get_metadata().get_conf_state().clone()
    } else {
        initial_conf_state(&identity)
    };
    let mut entries = Vec::with_capacity(loaded.log.len());
    for (i, b) in &loaded.log {
        let e = Entry::parse_from_bytes(b)
            .map_err(|err| corrupt(format!("log record {i} does not parse: {err}")))?;
        if e.index != *i {
            return Err(corrupt(format!("log record {i} holds entry {}", e.index)));
        }
        if let Some(prev) = entries.last().map(|p: &Entry| p.index) {
            if prev + 1 != e.index {
                return Err(corrupt(format!(
                    "log has a gap between entries {prev} and {}",
                    e.index
                )));
            }
        }
        entries.push(e);
    }
    let snap_index = snapshot.get_metadata().index;
    if let Some(first) = entries.first() {
        if first.index > snap_index + 1 {
            return Err(corrupt(format!(
                "log starts at {} but the snapshot ends at {snap_index}",
                first.index
            )));
        }
    }
    let last = entries
        .last()
        .map(|e| e.index)
        .unwrap_or(snap_index)
        .max(snap_index);
    if hs.commit > last {
        return Err(corrupt(format!(
            "hard state commits index {} but the log ends at {last} (truncated?)",
            hs.commit
        )));
    }
    // A snapshot holds only applied, so committed, entries; the commit index raft-rs
    // learns between full Readies is not written (it is relearned from the leader), so a
    // snapshot taken since may be ahead of the recorded one. raft-rs refuses to start
    // with a commit index behind its snapshot (found by stack seed 2492 on five nodes).
    let mut hs = hs;
    hs.commit = hs.commit.max(snap_index);
    let log = LogStore::new(hs, conf_state, snapshot, entries);
    Ok(Recovered {
        identity,
        log,
        machine,
        fresh: false,
    })
}

/// A new member. Bootstrapping a new cluster writes the same committed conf-change
/// entries (one `AddNode` per initial member, term 1) into every member's log, as etcd
/// does, so the member list is a function of the log and a member that joins later
/// learns it by replaying the log.
fn fresh(disk: &mut dyn Disk, identity: Identity) -> Result<Recovered, BootError> {
    let entries = bootstrap_entries(&identity.initial_members);
    for e in &entries {
        disk.log_put(e.index, &e.write_to_bytes().expect("entry encodes"))?;
    }
    let mut hs = HardState::default();
    if let Some(last) = entries.last() {
        hs.term = 1;
        hs.commit = last.index;
        disk.meta_put(
            META_HARD_STATE,
            &hs.write_to_bytes().expect("hard state encodes"),
        )?;
    }
    let cs = initial_conf_state(&identity);
    let log = LogStore::new(hs, cs, Snapshot::default(), entries);
    Ok(Recovered {
        identity,
        log,
        machine: Machine::new(),
        fresh: true,
    })
}

fn bootstrap_entries(members: &[Member]) -> Vec<Entry> {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|m| m.id);
    sorted
        .into_iter()
        .zip(1u64..)
        .map(|(member, index)| {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = member.id;
            let ctx = super::driver::ConfContext {
                origin: 0,
                seq: 0,
                member,
            };
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChange);
            e.term = 1;
            e.index = index;
            e.data = cc.write_to_bytes().expect("conf change encodes").into();
            e.context = serde_json::to_vec(&ctx).expect("context serializes").into();
            e
        })
        .collect()
}

fn initial_conf_state(identity: &Identity) -> ConfState {
    let voters: Vec<u64> = identity.initial_members.iter().map(|m| m.id).collect();
    ConfState::from((voters, vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_shims::mem_disk::MemDiskHandle;

    fn identity() -> Identity {
        let member = |id: u64| Member {
            id,
            name: format!("n{id}"),
            peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            client_urls: vec![],
        };
        Identity {
            format: FORMAT_VERSION,
            id: 1,
            name: "n1".into(),
            cluster_id: 7,
            initial_members: vec![member(1), member(2), member(3)],
        }
    }

    /// A bootstrapped disk: the three conf-change entries, committed.
    fn bootstrapped() -> MemDiskHandle {
        let h = MemDiskHandle::new();
        let r = recover(&mut h.open(None), &identity()).expect("bootstraps");
        assert!(r.fresh);
        h
    }

    fn refused(h: &MemDiskHandle) -> String {
        match recover(&mut h.open(None), &identity()) {
            Err(BootError::Corrupt(why)) => why,
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a damaged dir was accepted"),
        }
    }

    #[test]
    fn a_bootstrapped_dir_recovers() {
        let h = bootstrapped();
        let r = recover(&mut h.open(None), &identity()).expect("recovers");
        assert!(!r.fresh);
    }

    #[test]
    fn a_gap_in_the_log_is_refused() {
        let h = bootstrapped();
        let mut e = Entry::default();
        (e.index, e.term) = (5, 1);
        let mut d = h.open(None);
        d.log_put(5, &e.write_to_bytes().expect("encodes")).unwrap();
        let why = refused(&h);
        assert!(why.contains("gap between entries 3 and 5"), "{why}");
    }

    #[test]
    fn a_commit_past_the_logs_end_is_refused() {
        let h = bootstrapped();
        let mut hs = HardState::default();
        (hs.term, hs.commit) = (1, 10);
        let mut d = h.open(None);
        d.meta_put(META_HARD_STATE, &hs.write_to_bytes().expect("encodes"))
            .unwrap();
        let why = refused(&h);
        assert!(
            why.contains("commits index 10 but the log ends at 3"),
            "{why}"
        );
    }

    #[test]
    fn another_members_dir_is_refused_as_a_mismatch() {
        let h = bootstrapped();
        let other = Identity {
            id: 2,
            name: "n2".into(),
            ..identity()
        };
        assert!(matches!(
            recover(&mut h.open(None), &other),
            Err(BootError::Mismatch(_))
        ));
    }
}
