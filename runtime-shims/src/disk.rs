//! The durable store node logic writes to.
//!
//! Two namespaces: the Raft log (records keyed by index) and a small map of named
//! metadata records (hard state, snapshot, identity). Writes are *pending* until
//! [`Disk::sync`] returns `Ok`; only then are they durable. A failed sync is fatal for the
//! node: it must stop and recover from what is durable, never carry on.
//! Every stored record carries a CRC32; [`Disk::load`] refuses a record whose checksum
//! does not match, naming it.

use crate::BoxFuture;
use std::collections::BTreeMap;
use std::io;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("data dir {path}: {what}")]
    Corrupt { path: String, what: String },
    #[error("data dir {path}: sync failed: {source}")]
    SyncFailed { path: String, source: io::Error },
    #[error("data dir {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Everything durable (and pending) on a disk, as read back at start.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Loaded {
    pub log: BTreeMap<u64, Vec<u8>>,
    pub meta: BTreeMap<String, Vec<u8>>,
}

/// Streams a record's bytes into the writer it is given.
pub type StreamFn<'a> = &'a mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>;

pub trait Disk: Send + 'static {
    /// Writes (or overwrites) the log record at `index`.
    fn log_put(&mut self, index: u64, data: &[u8]) -> Result<(), DiskError>;
    /// Removes every log record with index `>= index`.
    fn log_truncate_from(&mut self, index: u64) -> Result<(), DiskError>;
    /// Removes every log record with index `< index` (compaction).
    fn log_truncate_before(&mut self, index: u64) -> Result<(), DiskError>;
    /// Writes (or overwrites) a named metadata record.
    fn meta_put(&mut self, key: &str, data: &[u8]) -> Result<(), DiskError>;
    /// Writes (or overwrites) a large named record — a snapshot — that `write` streams
    /// out, so that it never has to sit whole in memory. Like every write, durable after
    /// the next [`Disk::sync`]; [`Disk::load`] returns it among the metadata records.
    /// This default buffers it and calls [`Disk::meta_put`].
    fn meta_put_stream(&mut self, key: &str, write: StreamFn<'_>) -> Result<(), DiskError> {
        let mut buf = vec![];
        write(&mut buf).map_err(|source| DiskError::Io {
            path: format!("(metadata record {key})"),
            source,
        })?;
        self.meta_put(key, &buf)
    }
    /// Makes every earlier write durable. An error is fatal for the node.
    fn sync(&mut self) -> BoxFuture<'_, Result<(), DiskError>>;
    /// Reads everything back, verifying each record's checksum.
    fn load(&mut self) -> Result<Loaded, DiskError>;
}

/// Small files (rendered configs): atomic replace, durable on return.
pub trait Files: Send + Sync + 'static {
    fn read(&self, path: &str) -> BoxFuture<'static, io::Result<Option<Vec<u8>>>>;
    /// Writes a temp file beside `path`, syncs it, renames it over `path`, syncs the dir.
    fn write_atomic(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> BoxFuture<'static, io::Result<()>>;
}

/// Checksummed record encoding shared by the disk implementations: CRC32 (big-endian)
/// of the payload, then the payload.
pub fn seal(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 4);
    out.extend_from_slice(&crc32fast::hash(data).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Verifies and strips a [`seal`]ed record; `what` names it in the error.
pub fn unseal(path: &str, what: &str, sealed: &[u8]) -> Result<Vec<u8>, DiskError> {
    let corrupt = |why: &str| DiskError::Corrupt {
        path: path.to_string(),
        what: format!("{what}: {why}"),
    };
    if sealed.len() < 4 {
        return Err(corrupt("record shorter than its checksum (truncated)"));
    }
    let (crc, data) = sealed.split_at(4);
    let want = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(data) != want {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(data.to_vec())
}
