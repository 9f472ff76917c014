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
    // `error`, not `source`: the cause is in the message, so a reporter that also walks
    // `source()` chains would print it twice.
    #[error("data dir {path}: sync failed: {error}")]
    SyncFailed { path: String, error: io::Error },
    #[error("data dir {path}: {error}")]
    Io { path: String, error: io::Error },
}

/// Everything durable (and pending) on a disk, as read back at start.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Loaded {
    pub log: BTreeMap<u64, Vec<u8>>,
    pub meta: BTreeMap<String, Vec<u8>>,
}

/// Streams a record's bytes into the writer it is given.
pub type StreamFn<'a> = &'a mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>;

/// Produces a large record's bytes into the writer it is given, once, wherever the disk
/// chooses to run it (a background thread, for the production disk).
pub type Producer = Box<dyn FnOnce(&mut dyn io::Write) -> io::Result<()> + Send>;

/// A large record made durable by [`Disk::blob_write`] but not yet in effect: it
/// replaces its named record only through [`Disk::blob_commit`].
#[derive(Debug)]
pub struct Blob {
    pub(crate) key: String,
    /// The file holding it (disks that keep such records in files of their own).
    pub(crate) name: String,
    pub(crate) len: u64,
    pub(crate) crc: u32,
    /// The bytes themselves (disks that keep every record in one place).
    pub(crate) data: Vec<u8>,
}

impl Blob {
    pub fn len_bytes(&self) -> u64 {
        self.len
    }
}

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
        write(&mut buf).map_err(|error| DiskError::Io {
            path: format!("(metadata record {key})"),
            error,
        })?;
        self.meta_put(key, &buf)
    }
    /// Writes a large named record — a snapshot — off the event loop: `produce` runs
    /// elsewhere, the future resolves once its bytes are durable, and it borrows nothing,
    /// so the disk goes on taking writes and syncs meanwhile. Nothing changes until the
    /// [`Blob`] is handed to [`Disk::blob_commit`]. One at a time. An error is fatal for
    /// the node. This default runs `produce` at once, into memory, and keeps the bytes
    /// for `blob_commit` to write as an ordinary record.
    fn blob_write(
        &mut self,
        key: &str,
        produce: Producer,
    ) -> BoxFuture<'static, Result<Blob, DiskError>> {
        let mut data = vec![];
        let blob = produce(&mut data)
            .map(|()| Blob {
                key: key.to_string(),
                name: String::new(),
                len: data.len() as u64,
                crc: 0,
                data,
            })
            .map_err(|error| DiskError::Io {
                path: format!("(metadata record {key})"),
                error,
            });
        Box::pin(std::future::ready(blob))
    }
    /// Makes a written blob the value of its named record, durable after the next
    /// [`Disk::sync`] (like every write).
    fn blob_commit(&mut self, blob: Blob) -> Result<(), DiskError> {
        self.meta_put(&blob.key, &blob.data)
    }
    /// Drops a written blob that will never be committed (a newer one took its place).
    fn blob_discard(&mut self, blob: Blob) {
        drop(blob);
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
    /// A file's permission bits and owner; `None` when it does not exist.
    fn stat(&self, path: &str) -> BoxFuture<'static, io::Result<Option<FileMeta>>>;
    /// Writes `data` to a fresh file `stage` with `meta`'s mode and owner (not yet synced:
    /// the caller syncs it once it has passed its check).
    fn stage(
        &self,
        stage: &str,
        data: Vec<u8>,
        meta: FileMeta,
    ) -> BoxFuture<'static, io::Result<()>>;
    /// fsyncs a file's data. A file renamed into place before this may be empty after a
    /// power loss: that is why the steps are separate seams the simulator can crash between.
    fn sync(&self, path: &str) -> BoxFuture<'static, io::Result<()>>;
    /// Renames `from` over `to` (atomic on one filesystem).
    fn rename(&self, from: &str, to: &str) -> BoxFuture<'static, io::Result<()>>;
    /// fsyncs a directory, making the renames in it durable.
    fn sync_dir(&self, dir: &str) -> BoxFuture<'static, io::Result<()>>;
    /// Removes a file; a missing one is not an error.
    fn remove(&self, path: &str) -> BoxFuture<'static, io::Result<()>>;
    /// The names of the regular files in `dir`, sorted; `NotFound` if there is no `dir`.
    fn list(&self, dir: &str) -> BoxFuture<'static, io::Result<Vec<String>>>;
}

/// A file's permission bits and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
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
