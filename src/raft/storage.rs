//! The in-memory view of the durable log that raft-rs reads through its `Storage` trait.
//! The driver mirrors every change here onto the [`flotilla_shims::Disk`]; this type
//! only answers raft-rs's questions.
//!
//! Memory holds only the recent log: the entries a follower may still need, from the
//! last compaction point on. No snapshot *data* is held: a follower too far behind gets
//! a snapshot encoded on demand from the state machine ([`SnapshotSource`]), off the
//! event loop — raft-rs is told "temporarily unavailable" until it is ready and asks
//! again at the follower's next heartbeat response. Rare, and it keeps a copy of the
//! whole store out of every member's memory. The disk keeps the full log since its own
//! snapshot, for recovery.

use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, StorageError};
use std::cell::RefCell;
use std::sync::Arc;

/// The applied state machine, encoded on demand and in the background.
pub trait SnapshotSource: Send + Sync {
    /// The index the state machine has applied through.
    fn applied(&self) -> u64;
    /// Starts encoding the state as it is now (at [`SnapshotSource::applied`]). Called
    /// only when no encoding is under way.
    fn start(&self);
    /// A finished encoding, `(applied index, data)`, handed out once.
    fn take(&self) -> Option<(u64, Vec<u8>)>;
}

#[derive(Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Metadata only (index and term of the compaction point); data is never held.
    snapshot: Snapshot,
    source: Option<Arc<dyn SnapshotSource>>,
    /// The last snapshot encoded for a follower, reused while the log still continues
    /// from it: raft-rs asks again at every heartbeat until the follower has caught up,
    /// and each encoding is a pass over the whole store.
    served: RefCell<Option<Snapshot>>,
    /// The metadata of the snapshot being encoded (index, term, conf state as they were
    /// when it started).
    encoding: RefCell<Option<SnapshotMetadata>>,
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
            snapshot: metadata_only(snapshot),
            source: None,
            served: RefCell::new(None),
            encoding: RefCell::new(None),
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

    /// The index of the snapshot being encoded for followers, or last served to one: a
    /// follower that installs it goes on from the entries right after it.
    pub fn follower_snapshot_index(&self) -> Option<u64> {
        let encoding = self.encoding.borrow().as_ref().map(|m| m.index);
        encoding.or_else(|| {
            self.served
                .borrow()
                .as_ref()
                .map(|s| s.get_metadata().index)
        })
    }

    /// Where snapshots for lagging followers come from.
    pub fn set_source(&mut self, source: Arc<dyn SnapshotSource>) {
        self.source = Some(source);
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

    /// Drops every entry up to and including `index` (which must be applied: the state
    /// machine stands in for them from now on).
    pub fn compact_through(&mut self, index: u64) {
        if index < self.first() {
            return;
        }
        assert!(index <= self.last(), "compaction past the log's end");
        let term = self.entries[(index - self.first()) as usize].term;
        let meta = self.snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        let drop = (index + 1 - self.first()) as usize;
        self.entries.drain(..drop);
        self.drop_stale_served();
        self.check();
    }

    /// Replaces everything with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snap: Snapshot) {
        let meta = snap.get_metadata();
        self.hard_state.commit = meta.index;
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = metadata_only(snap);
        self.drop_stale_served();
    }

    /// A served snapshot is of use only while the log continues from its index.
    fn drop_stale_served(&mut self) {
        let floor = self.snap_index();
        let stale = self
            .served
            .get_mut()
            .as_ref()
            .is_some_and(|s| s.get_metadata().index < floor);
        if stale {
            *self.served.get_mut() = None;
        }
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
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let usable = |index: u64| index >= request_index && index >= self.snap_index();
        if let Some(s) = self.served.borrow().as_ref() {
            if usable(s.get_metadata().index) {
                return Ok(s.clone());
            }
        }
        let source = self.source.as_ref().ok_or_else(unavailable)?;
        if let Some((index, data)) = source.take() {
            let meta = self.encoding.take().expect("an encoding was started");
            assert_eq!(
                meta.index, index,
                "the encoding is of the state it started at"
            );
            let mut snap = Snapshot::default();
            snap.set_data(data.into());
            snap.set_metadata(meta);
            *self.served.borrow_mut() = Some(snap.clone());
            if usable(index) {
                return Ok(snap);
            }
        }
        if self.encoding.borrow().is_none() {
            let applied = source.applied();
            if !usable(applied) {
                return Err(unavailable());
            }
            let mut meta = SnapshotMetadata {
                index: applied,
                term: self.term(applied)?,
                ..Default::default()
            };
            // The conf state is updated as conf changes are applied: it is the one at
            // `applied`.
            meta.set_conf_state(self.conf_state.clone());
            *self.encoding.borrow_mut() = Some(meta);
            source.start();
        }
        Err(unavailable())
    }
}

fn metadata_only(mut snap: Snapshot) -> Snapshot {
    snap.set_data(Default::default());
    snap
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

    /// Counts its encodings; each finishes when the test says so.
    #[derive(Default)]
    struct Manual {
        applied: std::sync::atomic::AtomicU64,
        started: std::sync::atomic::AtomicU64,
        done: std::sync::Mutex<Option<(u64, Vec<u8>)>>,
        at: std::sync::Mutex<Option<u64>>,
    }

    impl Manual {
        fn finish(&self) {
            let at = self
                .at
                .lock()
                .unwrap()
                .take()
                .expect("an encoding under way");
            *self.done.lock().unwrap() = Some((at, b"state".to_vec()));
        }
    }

    impl SnapshotSource for Manual {
        fn applied(&self) -> u64 {
            self.applied.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn start(&self) {
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *self.at.lock().unwrap() = Some(self.applied());
        }
        fn take(&self) -> Option<(u64, Vec<u8>)> {
            self.done.lock().unwrap().take()
        }
    }

    fn is_unavailable(r: raft::Result<Snapshot>) -> bool {
        matches!(
            r,
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        )
    }

    #[test]
    fn a_snapshot_is_encoded_in_the_background_then_reused_until_the_log_moves_past_it() {
        use std::sync::atomic::Ordering::SeqCst;
        let src = Arc::new(Manual::default());
        src.applied.store(6, SeqCst);
        let mut s = LogStore::default();
        s.set_source(src.clone());
        s.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>());
        // First ask: an encoding starts, raft-rs is told to come back.
        assert!(is_unavailable(s.snapshot(0, 2)));
        assert!(is_unavailable(s.snapshot(0, 3)), "still encoding");
        assert_eq!(
            s.follower_snapshot_index(),
            Some(6),
            "the log after it is wanted"
        );
        assert_eq!(
            src.started.load(SeqCst),
            1,
            "one encoding for both followers"
        );
        // The state moves on while it encodes; the snapshot is of where it started.
        src.applied.store(7, SeqCst);
        src.finish();
        let a = s.snapshot(0, 2).unwrap();
        let b = s.snapshot(0, 3).unwrap();
        assert_eq!((a.get_metadata().index, b.get_metadata().index), (6, 6));
        assert_eq!(a.get_metadata().term, 1);
        assert_eq!(a.get_data(), b"state");
        assert_eq!(src.started.load(SeqCst), 1, "reused");
        assert_eq!(s.follower_snapshot_index(), Some(6), "served: still wanted");
        // Asked for more than it holds: encoded afresh.
        src.applied.store(8, SeqCst);
        assert!(is_unavailable(s.snapshot(7, 2)));
        src.finish();
        assert_eq!(s.snapshot(7, 2).unwrap().get_metadata().index, 8);
        assert_eq!(src.started.load(SeqCst), 2);
        // The log no longer continues from index 8: encoded afresh.
        src.applied.store(10, SeqCst);
        s.compact_through(9);
        assert!(is_unavailable(s.snapshot(0, 2)));
        src.finish();
        assert_eq!(s.snapshot(0, 2).unwrap().get_metadata().index, 10);
        assert_eq!(src.started.load(SeqCst), 3);
    }

    #[test]
    fn compaction_keeps_snapshot_term_answerable() {
        let mut s = LogStore::default();
        s.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>());
        s.compact_through(8);
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
