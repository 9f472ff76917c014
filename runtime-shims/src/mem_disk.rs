//! An in-memory [`Disk`] with a durable and a pending layer, for tests and the simulator.
//!
//! Writes land in the pending layer; `sync` moves them to the durable layer. The handle
//! ([`MemDiskHandle`]) outlives the node using the disk, so a harness can crash it
//! (dropping all or a prefix of the pending writes), corrupt a durable record, or make
//! the next sync fail.

use crate::clock::Clock;
use crate::disk::{seal, unseal, Disk, DiskError, Loaded};
use crate::BoxFuture;
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    LogPut(u64, Vec<u8>),
    LogTruncateFrom(u64),
    LogTruncateBefore(u64),
    MetaPut(String, Vec<u8>),
}

#[derive(Debug, Default, Clone)]
struct Layer {
    log: BTreeMap<u64, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl Layer {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::LogPut(i, d) => {
                self.log.insert(*i, d.clone());
            }
            Op::LogTruncateFrom(i) => {
                self.log.split_off(i);
            }
            Op::LogTruncateBefore(i) => {
                self.log = self.log.split_off(i);
            }
            Op::MetaPut(k, d) => {
                self.meta.insert(k.clone(), d.clone());
            }
        }
    }
}

#[derive(Default)]
struct State {
    durable: Layer,
    pending: Vec<Op>,
    fail_next_sync: bool,
}

/// Shared control over one simulated disk.
#[derive(Clone, Default)]
pub struct MemDiskHandle {
    state: Arc<Mutex<State>>,
}

impl MemDiskHandle {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("mem disk lock poisoned")
    }

    /// A disk for a (re)started node; it sees what is durable plus nothing pending.
    pub fn open(&self, clock: Option<(Arc<dyn Clock>, Duration)>) -> MemDisk {
        MemDisk {
            handle: self.clone(),
            sync_latency: clock,
        }
    }

    /// Crash: keep the first `keep` pending writes (as if they reached the platter),
    /// drop the rest.
    pub fn crash(&self, keep: usize) {
        let mut st = self.lock();
        let pending = std::mem::take(&mut st.pending);
        for op in pending.iter().take(keep) {
            st.durable.apply(op);
        }
    }

    pub fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Flips one bit in a durable record, chosen by `pick` among all records.
    /// Returns the record's name, or `None` if the disk is empty.
    pub fn corrupt(&self, pick: u64) -> Option<String> {
        let mut st = self.lock();
        let n = (st.durable.log.len() + st.durable.meta.len()) as u64;
        if n == 0 {
            return None;
        }
        let k = (pick % n) as usize;
        let log_len = st.durable.log.len();
        let (name, rec) = if k < log_len {
            let (i, rec) = st.durable.log.iter_mut().nth(k)?;
            (format!("log record {i}"), rec)
        } else {
            let (key, rec) = st.durable.meta.iter_mut().nth(k - log_len)?;
            (format!("meta record {key}"), rec)
        };
        let byte = (pick as usize / 7) % rec.len().max(1);
        if let Some(b) = rec.get_mut(byte) {
            *b ^= 1 << (pick % 8);
        }
        Some(name)
    }
}

/// The node's side of a [`MemDiskHandle`].
pub struct MemDisk {
    handle: MemDiskHandle,
    sync_latency: Option<(Arc<dyn Clock>, Duration)>,
}

const PATH: &str = "<memory>";

impl MemDisk {
    fn push(&mut self, op: Op) -> Result<(), DiskError> {
        self.handle.lock().pending.push(op);
        Ok(())
    }
}

impl Disk for MemDisk {
    fn log_put(&mut self, index: u64, data: &[u8]) -> Result<(), DiskError> {
        self.push(Op::LogPut(index, seal(data)))
    }

    fn log_truncate_from(&mut self, index: u64) -> Result<(), DiskError> {
        self.push(Op::LogTruncateFrom(index))
    }

    fn log_truncate_before(&mut self, index: u64) -> Result<(), DiskError> {
        self.push(Op::LogTruncateBefore(index))
    }

    fn meta_put(&mut self, key: &str, data: &[u8]) -> Result<(), DiskError> {
        self.push(Op::MetaPut(key.to_string(), seal(data)))
    }

    fn sync(&mut self) -> BoxFuture<'_, Result<(), DiskError>> {
        Box::pin(async move {
            if let Some((clock, d)) = &self.sync_latency {
                clock.sleep(*d).await;
            }
            let mut st = self.handle.lock();
            if std::mem::take(&mut st.fail_next_sync) {
                return Err(DiskError::SyncFailed {
                    path: PATH.into(),
                    error: io::Error::other("injected sync failure"),
                });
            }
            let pending = std::mem::take(&mut st.pending);
            for op in &pending {
                st.durable.apply(op);
            }
            Ok(())
        })
    }

    fn load(&mut self) -> Result<Loaded, DiskError> {
        let st = self.handle.lock();
        let mut view = st.durable.clone();
        for op in &st.pending {
            view.apply(op);
        }
        let mut out = Loaded::default();
        for (i, rec) in &view.log {
            out.log
                .insert(*i, unseal(PATH, &format!("log record {i}"), rec)?);
        }
        for (k, rec) in &view.meta {
            out.meta
                .insert(k.clone(), unseal(PATH, &format!("meta record {k}"), rec)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn crash_drops_unsynced_writes() {
        let h = MemDiskHandle::new();
        let mut d = h.open(None);
        d.log_put(1, b"a").unwrap();
        block(d.sync()).unwrap();
        d.log_put(2, b"b").unwrap();
        d.meta_put("hs", b"x").unwrap();
        h.crash(1);
        let got = h.open(None).load().unwrap();
        assert_eq!(got.log.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert!(got.meta.is_empty(), "second pending write must be lost");
    }

    #[test]
    fn failed_sync_makes_nothing_durable() {
        let h = MemDiskHandle::new();
        let mut d = h.open(None);
        d.log_put(1, b"a").unwrap();
        h.fail_next_sync();
        assert!(block(d.sync()).is_err());
        h.crash(0);
        assert!(h.open(None).load().unwrap().log.is_empty());
    }

    #[test]
    fn corruption_is_detected_and_named() {
        let h = MemDiskHandle::new();
        let mut d = h.open(None);
        d.log_put(5, b"hello").unwrap();
        block(d.sync()).unwrap();
        let name = h.corrupt(0).unwrap();
        let err = h.open(None).load().unwrap_err();
        assert!(err.to_string().contains(&name), "{err}");
    }

    #[test]
    fn truncation_ops_apply_in_order() {
        let h = MemDiskHandle::new();
        let mut d = h.open(None);
        for i in 1..=10 {
            d.log_put(i, b"e").unwrap();
        }
        d.log_truncate_before(4).unwrap();
        d.log_truncate_from(8).unwrap();
        block(d.sync()).unwrap();
        let got = h.open(None).load().unwrap();
        assert_eq!(
            got.log.keys().copied().collect::<Vec<_>>(),
            vec![4, 5, 6, 7]
        );
    }
}
