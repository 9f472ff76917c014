//! The in-memory view of the durable log that raft-rs reads through its `Storage` trait.
//! The driver mirrors every change here onto the [`flotilla_shims::Disk`]; this type
//! only answers raft-rs's questions.

use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, StorageError};

#[derive(Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// Contiguous entries; `entries[0].index` is the first index held.
    entries: Vec<Entry>,
}

impl LogStore {
    /// Builds the store from recovered parts. Entries must be contiguous and must reach
    /// back to (or before) the snapshot.
    pub fn new(
        hard_state: HardState,
        conf_state: ConfState,
        snapshot: Snapshot,
        entries: Vec<Entry>,
    ) -> Self {
        let s = Self {
            hard_state,
            conf_state,
            snapshot,
            entries,
        };
        s.check();
        s
    }

    fn check(&self) {
        for w in self.entries.windows(2) {
            assert_eq!(w[0].index + 1, w[1].index, "log entries are contiguous");
        }
        if let Some(first) = self.entries.first() {
            assert!(
                first.index <= self.snap_index() + 1,
                "log reaches the snapshot"
            );
        }
    }

    pub fn snap_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn first(&self) -> u64 {
        self.entries
            .first()
            .map(|e| e.index)
            .unwrap_or(self.snap_index() + 1)
    }

    pub fn last(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .unwrap_or(self.snap_index())
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Appends, replacing any conflicting suffix. Returns the index from which older
    /// entries were dropped, if any were (the disk must drop them too).
    pub fn append(&mut self, ents: &[Entry]) -> Option<u64> {
        let first_new = ents.first().map(|e| e.index)?;
        assert!(first_new >= self.first(), "append below the compacted log");
        assert!(first_new <= self.last() + 1, "append leaves a gap");
        let truncated = (first_new <= self.last()).then_some(first_new);
        let keep = (first_new - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        truncated
    }

    /// Records a new local snapshot (made from applied state).
    pub fn set_snapshot(&mut self, snap: Snapshot) {
        assert!(snap.get_metadata().index <= self.last());
        self.snapshot = snap;
    }

    /// Drops entries before `index`.
    pub fn compact(&mut self, index: u64) {
        if index <= self.first() {
            return;
        }
        assert!(
            index <= self.snap_index() + 1,
            "compaction past the snapshot"
        );
        let drop = ((index - self.first()) as usize).min(self.entries.len());
        self.entries.drain(..drop);
    }

    /// Replaces everything with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snap: Snapshot) {
        let meta = snap.get_metadata();
        self.hard_state.commit = meta.index;
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snap;
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let off = self.first();
        let mut out = self.entries[(low - off) as usize..(high - off) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snap_index() < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn append_replaces_conflicting_suffix() {
        let mut s = LogStore::default();
        assert_eq!(s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]), None);
        assert_eq!(s.append(&[ent(2, 2)]), Some(2));
        assert_eq!(s.last(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
    }

    #[test]
    fn compaction_keeps_snapshot_term_answerable() {
        let mut s = LogStore::default();
        s.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>());
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 8;
        snap.mut_metadata().term = 1;
        s.set_snapshot(snap);
        s.compact(9);
        assert_eq!(s.first(), 9);
        assert_eq!(s.term(8).unwrap(), 1);
        assert!(s.term(7).is_err());
        assert!(s
            .entries(8, 10, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(
            s.entries(9, 11, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            2
        );
    }
}
