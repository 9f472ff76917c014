//! The production [`Disk`]: a write-ahead log of preallocated segment files, as etcd's.
//!
//! Every [`Disk`] call appends one checksummed record to an in-memory batch; [`Disk::sync`]
//! hands the batch to a blocking thread that writes it with one `pwrite` and makes it
//! durable with one `fdatasync`. Segments are preallocated (`fallocate`), so a sync has no
//! file-size metadata to commit. Replaying every segment in order rebuilds [`Loaded`].
//!
//! When the active segment passes [`SEGMENT_BYTES`] a new one is started, opening with the
//! current value of every metadata record; older segments then hold nothing but log
//! records, and are deleted once the log is compacted past them.
//!
//! Large records (snapshots, [`Disk::meta_put_stream`]) are streamed to their own file in
//! `snap/`, synced there, and referenced from the log by a small record carrying their
//! length and CRC; a superseded file is deleted once its successor's reference is durable.
//!
//! Records are [`crate::wal_record`]'s (encoded, parsed and applied there, without I/O).
//! `seq` runs on across segments without gaps; zeros (`len` 0) mark the unwritten,
//! preallocated rest of a segment.
//!
//! Damage: a record that fails its checksum in any segment but the last, a gap in `seq`,
//! or a log that ends before the record the side file [`WATERMARK_FILE`] says was durable
//! is refused at open, naming the segment. A bad record at the very tail of the last
//! segment after the watermark is a torn, unacknowledged write: it is cut off (zeroed)
//! before the first new write, never before — a refused dir is left as it was.

use crate::disk::{seal, unseal, Blob, Disk, DiskError, Loaded, Producer, StreamFn};
use crate::files::write_atomic_blocking;
use crate::wal_record::{
    apply, blob_body, encode, meta_body, parse, u64_at, BlobRef, Parse, BLOB, META, PUT,
    TRUNCATE_BEFORE, TRUNCATE_FROM,
};
use crate::BoxFuture;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const WAL_DIR: &str = "wal";
pub const SNAP_DIR: &str = "snap";
/// Size a segment is preallocated to; the next segment starts once it is full.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Written once, when the dir is created; its absence in a non-empty dir means the dir
/// is not (or no longer) a flotilla data dir.
pub const MARKER_FILE: &str = "FLOTILLA_DATA_DIR";
const MARKER_TEXT: &[u8] = b"flotilla data dir, format 2 (wal)\n";
/// Side file recording a record `seq` known durable (rewritten at most once a second):
/// how a restart notices that synced records went missing from the tail.
pub const WATERMARK_FILE: &str = "DURABLE_SEQ";
const WATERMARK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// The batch buffer keeps its capacity between syncs unless it grew past this.
const BATCH_CAPACITY_KEEP: usize = 4 << 20;
/// How far ahead of the last record a segment is kept zero-filled.
const ZERO_AHEAD_BYTES: u64 = 4 << 20;

/// Counts and checksums what goes through it.
struct Hashing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: io::Write> io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `snap/<name>` through a temp file: streamed, synced, renamed into place, the
/// dir synced. Returns its length and CRC.
fn write_blob_file(
    snap: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> io::Result<(u64, u32)> {
    std::fs::create_dir_all(snap)?;
    let tmp = snap.join(format!("{name}.tmp"));
    let file = File::create(&tmp)?;
    let mut w = Hashing {
        inner: io::BufWriter::with_capacity(1 << 20, &file),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    write(&mut w)?;
    io::Write::flush(&mut w)?;
    let (len, crc) = (w.len, w.crc.finalize());
    drop(w.inner);
    file.sync_data()?;
    std::fs::rename(&tmp, snap.join(name))?;
    File::open(snap)?.sync_all()?;
    Ok((len, crc))
}

struct Segment {
    id: u64,
    file: Arc<File>,
    /// Highest log index written into this segment (0: none).
    log_index_max: u64,
}

/// Where the latest record for a metadata key lives: (segment id, offset, total length).
type MetaAt = (u64, u64, usize);

pub struct WalDisk {
    path: String,
    dir: PathBuf,
    /// Oldest first; the last is the active one.
    segments: Vec<Segment>,
    segment_bytes: u64,
    /// End of the last record in the active segment, counting the pending batch's start.
    written: u64,
    /// How far the active segment is written or zero-filled (see [`write_batch`]).
    zeroed: u64,
    batch: Vec<u8>,
    seq: u64,
    meta_at: BTreeMap<String, MetaAt>,
    compacted_before: u64,
    /// A torn tail found at open, cut off before the first write: (offset in the active
    /// segment).
    torn_at: Option<u64>,
    watermark_at: Option<std::time::Instant>,
    /// Set by a failed sync: the node must stop; every later call fails.
    broken: bool,
    /// Planted bug (tests only, see [`WalDisk::plant_ignore_sync_errors`]).
    ignore_sync_errors: bool,
    /// The file holding each file-backed metadata record.
    blobs: BTreeMap<String, String>,
    /// Files to delete once the pending batch is durable (superseded), and files no
    /// record references (left by a crash), deleted at the first sync.
    garbage_after_sync: Vec<String>,
    /// The number in the last blob file name handed out.
    blob_no: u64,
    /// A blob is being written in the background (one at a time).
    blob_in_flight: bool,
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.wal")
}

/// Everything replayed from the segments, and where appending resumes.
struct Replay {
    loaded: Loaded,
    segments: Vec<(u64, u64)>, // (id, log_index_max)
    last_seq: u64,
    end: u64,
    torn_at: Option<u64>,
    meta_at: BTreeMap<String, MetaAt>,
    compacted_before: u64,
    /// The final file reference of each file-backed record.
    refs: BTreeMap<String, BlobRef>,
    /// Files in `snap/` that no final reference names.
    orphans: Vec<String>,
}

impl WalDisk {
    /// Opens the data dir, creating it if absent or empty. An existing dir is replayed and
    /// checked here, read-only: refusing it leaves every byte as it was.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// Planted bug, for the suite to show its fsync-failure test has teeth: a failed
    /// `fdatasync` is logged and ignored, so writes are acknowledged that no sync made
    /// durable. Never set in production (`flotilla node` sets it only when the test
    /// suite asks, through `FLOTILLA_TEST_PLANTED_BUG=ignore-sync-errors`).
    pub fn plant_ignore_sync_errors(&mut self) {
        self.ignore_sync_errors = true;
    }

    /// [`WalDisk::open`] with another segment size (tests use small ones).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, DiskError> {
        let path = dir.display().to_string();
        let io_err = |error| DiskError::Io {
            path: path.clone(),
            error,
        };
        if !is_populated(dir).map_err(io_err)? {
            return Self::create(dir, &path, segment_bytes);
        }
        check_marker(dir, &path)?;
        let rp = replay(dir, &path)?;
        let mut segments = vec![];
        for (id, log_index_max) in &rp.segments {
            let f = File::options()
                .read(true)
                .write(true)
                .open(dir.join(WAL_DIR).join(segment_name(*id)))
                .map_err(io_err)?;
            segments.push(Segment {
                id: *id,
                file: Arc::new(f),
                log_index_max: *log_index_max,
            });
        }
        // Records a crashed process wrote but never synced can still sit in the page cache,
        // and were just replayed as if durable: make them so before anything acts on them.
        // (An fsync changes no byte: a dir refused after this is still as it was.)
        if let Some(s) = segments.last() {
            s.file.sync_data().map_err(io_err)?;
        }
        File::open(dir.join(WAL_DIR))
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        Ok(Self {
            path: path.clone(),
            dir: dir.to_path_buf(),
            segments,
            segment_bytes,
            written: rp.end,
            zeroed: rp.end,
            batch: vec![],
            seq: rp.last_seq,
            meta_at: rp.meta_at,
            compacted_before: rp.compacted_before,
            torn_at: rp.torn_at,
            watermark_at: None,
            broken: false,
            ignore_sync_errors: false,
            blobs: rp.refs.into_iter().map(|(k, b)| (k, b.name)).collect(),
            garbage_after_sync: rp.orphans,
            blob_no: 0,
            blob_in_flight: false,
        })
    }

    fn create(dir: &Path, path: &str, segment_bytes: u64) -> Result<Self, DiskError> {
        let io_err = |error| DiskError::Io {
            path: path.to_string(),
            error,
        };
        std::fs::create_dir_all(dir.join(WAL_DIR)).map_err(io_err)?;
        std::fs::create_dir_all(dir.join(SNAP_DIR)).map_err(io_err)?;
        let file = new_segment(&dir.join(WAL_DIR), 0, segment_bytes).map_err(io_err)?;
        write_marker(dir).map_err(io_err)?;
        Ok(Self {
            path: path.to_string(),
            dir: dir.to_path_buf(),
            segments: vec![Segment {
                id: 0,
                file: Arc::new(file),
                log_index_max: 0,
            }],
            segment_bytes,
            written: 0,
            zeroed: 0,
            batch: vec![],
            seq: 0,
            meta_at: BTreeMap::new(),
            compacted_before: 0,
            torn_at: None,
            watermark_at: None,
            broken: false,
            ignore_sync_errors: false,
            blobs: BTreeMap::new(),
            garbage_after_sync: vec![],
            blob_no: 0,
            blob_in_flight: false,
        })
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a WAL always has an active segment")
    }

    fn push(&mut self, kind: u8, parts: &[&[u8]]) -> u64 {
        let at = self.batch.len();
        self.seq += 1;
        encode(&mut self.batch, self.seq, kind, parts);
        self.written + at as u64
    }

    fn check_usable(&self) -> Result<(), DiskError> {
        if self.broken {
            return Err(DiskError::SyncFailed {
                path: self.path.clone(),
                error: io::Error::other(
                    "an earlier sync failed; the node must restart from what is durable",
                ),
            });
        }
        Ok(())
    }

    fn io(&self, error: io::Error) -> DiskError {
        DiskError::Io {
            path: self.path.clone(),
            error,
        }
    }

    /// Starts the next segment with every metadata record's current value, so that the
    /// older segments hold only log records. Rare (every [`SEGMENT_BYTES`]).
    fn rotate(&mut self) -> Result<(), DiskError> {
        let id = self.active().id + 1;
        let wal = self.dir.join(WAL_DIR);
        let file = new_segment(&wal, id, self.segment_bytes).map_err(|e| self.io(e))?;
        let mut values = vec![];
        for &(seg, off, len) in self.meta_at.values() {
            let s = self
                .segments
                .iter()
                .find(|s| s.id == seg)
                .expect("metadata lives in a kept segment");
            let mut buf = vec![0; len];
            s.file
                .read_exact_at(&mut buf, off)
                .map_err(|e| self.io(e))?;
            match parse(&buf, 0) {
                Parse::Record(r) if r.kind == META || r.kind == BLOB => {
                    values.push((r.kind, r.body.to_vec()))
                }
                _ => return Err(self.corrupt_in(seg, off, "metadata record unreadable")),
            }
        }
        self.segments.push(Segment {
            id,
            file: Arc::new(file),
            log_index_max: 0,
        });
        self.written = 0;
        self.zeroed = 0;
        for (kind, body) in values {
            let key = meta_body(&body)
                .map(|(k, _)| k.to_string())
                .expect("parsed when written");
            self.push_meta(&key, kind, &[&body]);
        }
        if self.compacted_before > 0 {
            self.push(TRUNCATE_BEFORE, &[&self.compacted_before.to_le_bytes()]);
        }
        let batch = std::mem::take(&mut self.batch);
        let f = &self.active().file;
        f.write_all_at(&batch, 0)
            .and_then(|_| f.sync_data())
            .and_then(|_| File::open(&wal)?.sync_all())
            .map_err(|e| self.sync_failed(e))?;
        self.written = batch.len() as u64;
        Ok(())
    }

    /// Deletes the oldest segments once every log record in them is compacted away.
    fn delete_compacted(&mut self) -> Result<(), DiskError> {
        let mut removed = false;
        // A segment may still hold a metadata record's latest value if a crash cut its
        // successor's opening copy short.
        while self.segments.len() > 1
            && self.segments[0].log_index_max < self.compacted_before
            && !self.meta_at.values().any(|m| m.0 == self.segments[0].id)
        {
            let s = self.segments.remove(0);
            let p = self.dir.join(WAL_DIR).join(segment_name(s.id));
            std::fs::remove_file(&p).map_err(|e| self.io(e))?;
            removed = true;
        }
        if removed {
            File::open(self.dir.join(WAL_DIR))
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    fn put_meta(&mut self, key: &str, data: &[u8]) {
        let key_len = u16::try_from(key.len()).expect("metadata keys are short names");
        self.push_meta(key, META, &[&key_len.to_le_bytes(), key.as_bytes(), data]);
        if let Some(old) = self.blobs.remove(key) {
            self.garbage_after_sync.push(old);
        }
    }

    fn push_meta(&mut self, key: &str, kind: u8, parts: &[&[u8]]) {
        let off = self.push(kind, parts);
        let len = self.written as usize + self.batch.len() - off as usize;
        self.meta_at
            .insert(key.to_string(), (self.active().id, off, len));
    }

    /// Streams a value into `snap/<key>-<n>.snap`, synced and renamed into place before
    /// the record referencing it is even queued.
    fn write_blob(&mut self, key: &str, write: StreamFn<'_>) -> io::Result<BlobRef> {
        let name = self.blob_name(key);
        let (len, crc) = write_blob_file(&self.dir.join(SNAP_DIR), &name, write)?;
        Ok(BlobRef { name, len, crc })
    }

    /// A file name for a new value of `key`, unlike any other file this disk may still
    /// write or delete.
    fn blob_name(&mut self, key: &str) -> String {
        assert!(
            key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "metadata keys are plain names: {key}"
        );
        // Past every record so far, and past every name handed out before (a blob
        // written in the background is named before the records that follow it).
        self.blob_no = self.blob_no.max(self.seq) + 1;
        let name = format!("{key}-{:016x}.snap", self.blob_no);
        // A crash can leave an unreferenced file under this very name (its record never
        // became durable, so the number was handed out again): it is about to be
        // replaced, and deleting it as garbage after that would delete the new value.
        let tmp = format!("{name}.tmp");
        self.garbage_after_sync.retain(|g| *g != name && *g != tmp);
        name
    }

    fn commit_blob(&mut self, key: &str, b: BlobRef) {
        self.push_meta(key, BLOB, &[&blob_body(key, &b)]);
        if let Some(old) = self.blobs.insert(key.to_string(), b.name) {
            self.garbage_after_sync.push(old);
        }
    }

    fn delete_garbage(&mut self) -> io::Result<()> {
        let snap = self.dir.join(SNAP_DIR);
        for name in std::mem::take(&mut self.garbage_after_sync) {
            match std::fs::remove_file(snap.join(&name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn corrupt_in(&self, seg: u64, off: u64, what: &str) -> DiskError {
        DiskError::Corrupt {
            path: self.path.clone(),
            what: format!(
                "wal segment {}: record at byte {off}: {what}",
                segment_name(seg)
            ),
        }
    }

    fn sync_failed(&mut self, error: io::Error) -> DiskError {
        self.broken = true;
        DiskError::SyncFailed {
            path: self.path.clone(),
            error,
        }
    }

    fn write_watermark(&mut self) -> io::Result<()> {
        let now = std::time::Instant::now();
        if self
            .watermark_at
            .is_some_and(|t| now.duration_since(t) < WATERMARK_EVERY)
        {
            return Ok(());
        }
        self.watermark_at = Some(now);
        let mark = seal(self.seq.to_string().as_bytes());
        write_atomic_blocking(&self.dir.join(WATERMARK_FILE), &mark, 0o644)
    }
}

/// One `pwrite` and one `fdatasync`, on a blocking thread; first cuts off a torn tail.
/// Also keeps the segment zero-filled [`ZERO_AHEAD_BYTES`] past the batch: fallocate
/// leaves "unwritten" extents, and converting them as records land would be a metadata
/// change that every fdatasync commits through the journal (measured: mean sync 0.41 ->
/// 0.35 ms). Returns how far the segment is now written or zeroed.
fn write_batch(
    file: &File,
    batch: &[u8],
    at: u64,
    torn: Option<(u64, u64)>,
    mut zeroed: u64,
    ignore_sync_errors: bool,
) -> io::Result<u64> {
    if let Some((t, size)) = torn {
        file.set_len(t)?;
        preallocate(file, size)?;
        zeroed = t;
    }
    file.write_all_at(batch, at)?;
    let end = at + batch.len() as u64;
    zeroed = zeroed.max(end);
    if zeroed < end + ZERO_AHEAD_BYTES / 2 {
        zero_fill(file, zeroed, end + ZERO_AHEAD_BYTES)?;
        zeroed = end + ZERO_AHEAD_BYTES;
    }
    match file.sync_data() {
        Err(e) if ignore_sync_errors => {
            tracing::error!(error = %e, "planted bug: a failed fdatasync ignored")
        }
        r => r?,
    }
    Ok(zeroed)
}

fn new_segment(wal: &Path, id: u64, size: u64) -> io::Result<File> {
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(wal.join(segment_name(id)))?;
    preallocate(&f, size)?;
    f.sync_all()?;
    File::open(wal)?.sync_all()?;
    Ok(f)
}

/// Zeros for [`zero_fill`], static: a fresh multi-MiB buffer per fill was allocated on
/// whichever blocking thread ran the sync, and glibc kept up to twice its size resident
/// in that thread's arena after it was freed (~8 MiB per member, measured).
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Writes zeros over `[from, to)`.
fn zero_fill(f: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = &ZEROS[..];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Reserves the segment's blocks up front so that syncs write data only. A filesystem
/// without `fallocate` still works, with costlier syncs; any other failure (a full disk)
/// is an error.
fn preallocate(f: &File, size: u64) -> io::Result<()> {
    // SAFETY: fallocate on an open descriptor we own; no memory is passed.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            tracing::debug!(error = %e, "fallocate unsupported");
            Ok(())
        }
        _ => Err(e),
    }
}

fn replay(dir: &Path, path: &str) -> Result<Replay, DiskError> {
    let corrupt = |what: String| DiskError::Corrupt {
        path: path.to_string(),
        what,
    };
    let io_err = |error| DiskError::Io {
        path: path.to_string(),
        error,
    };
    let ids = segment_ids(dir, path)?;
    let mut rp = Replay {
        loaded: Loaded::default(),
        segments: vec![],
        last_seq: 0,
        end: 0,
        torn_at: None,
        meta_at: BTreeMap::new(),
        compacted_before: 0,
        refs: BTreeMap::new(),
        orphans: vec![],
    };
    for (n, &id) in ids.iter().enumerate() {
        let name = segment_name(id);
        let last = n + 1 == ids.len();
        let buf = std::fs::read(dir.join(WAL_DIR).join(&name)).map_err(io_err)?;
        let mut at = 0;
        let mut log_index_max = 0;
        loop {
            let r = match parse(&buf, at) {
                Parse::Record(r) => r,
                Parse::End => break,
                Parse::Bad(why) if last => {
                    rp.torn_at = Some(at as u64);
                    tracing::info!(segment = %name, at, why, "cutting off a torn tail");
                    break;
                }
                Parse::Bad(why) => {
                    return Err(corrupt(format!(
                        "wal segment {name}: record at byte {at}: {why} (damaged)"
                    )))
                }
            };
            if rp.last_seq != 0 && r.seq != rp.last_seq + 1 {
                return Err(corrupt(format!(
                    "wal segment {name}: record {} follows record {}: records are missing \
                     (truncated or damaged)",
                    r.seq, rp.last_seq
                )));
            }
            apply(&mut rp.loaded, &mut rp.refs, &r)
                .map_err(|w| corrupt(format!("wal segment {name}: record at byte {at}: {w}")))?;
            match r.kind {
                PUT => log_index_max = log_index_max.max(u64_at(r.body, "log").unwrap_or(0)),
                TRUNCATE_BEFORE => {
                    rp.compacted_before = rp.compacted_before.max(u64_at(r.body, "").unwrap_or(0))
                }
                META | BLOB => {
                    let key = meta_body(r.body)
                        .map(|(k, _)| k.to_string())
                        .unwrap_or_default();
                    rp.meta_at.insert(key, (id, at as u64, r.next - at));
                }
                _ => {}
            }
            rp.last_seq = r.seq;
            at = r.next;
        }
        rp.segments.push((id, log_index_max));
        rp.end = at as u64;
    }
    let durable = read_watermark(dir, path)?;
    if rp.last_seq < durable {
        return Err(corrupt(format!(
            "wal recovers only to record {} but record {durable} was durable: its tail is \
             truncated or damaged",
            rp.last_seq
        )));
    }
    resolve(dir, path, &rp.refs, &mut rp.loaded)?;
    rp.orphans = orphans(dir, &rp.refs).map_err(io_err)?;
    Ok(rp)
}

/// Reads the files that file-backed records name, checking length and CRC.
fn resolve(
    dir: &Path,
    path: &str,
    refs: &BTreeMap<String, BlobRef>,
    out: &mut Loaded,
) -> Result<(), DiskError> {
    for (key, b) in refs {
        let what = |why: &str| DiskError::Corrupt {
            path: path.to_string(),
            what: format!("{SNAP_DIR}/{} ({key}) {why}", b.name),
        };
        let data =
            std::fs::read(dir.join(SNAP_DIR).join(&b.name)).map_err(|_| what("is missing"))?;
        if data.len() as u64 != b.len {
            return Err(what("has the wrong length (truncated)"));
        }
        if crc32fast::hash(&data) != b.crc {
            return Err(what("fails its checksum (damaged)"));
        }
        out.meta.insert(key.clone(), data);
    }
    Ok(())
}

/// Files in `snap/` that no final reference names: left by a crash or superseded.
fn orphans(dir: &Path, refs: &BTreeMap<String, BlobRef>) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir.join(SNAP_DIR)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = vec![];
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !refs.values().any(|b| b.name == name) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn read_watermark(dir: &Path, path: &str) -> Result<u64, DiskError> {
    match std::fs::read(dir.join(WATERMARK_FILE)) {
        Ok(d) => {
            let data = unseal(path, WATERMARK_FILE, &d)?;
            String::from_utf8_lossy(&data)
                .trim()
                .parse::<u64>()
                .map_err(|_| DiskError::Corrupt {
                    path: path.to_string(),
                    what: format!("{WATERMARK_FILE} does not hold a number"),
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(DiskError::Io {
            path: format!("{path}/{WATERMARK_FILE}"),
            error,
        }),
    }
}

/// The segment ids in `dir/wal`, in order; at least one.
fn segment_ids(dir: &Path, path: &str) -> Result<Vec<u64>, DiskError> {
    let corrupt = |what: String| DiskError::Corrupt {
        path: path.to_string(),
        what,
    };
    let entries = std::fs::read_dir(dir.join(WAL_DIR))
        .map_err(|_| corrupt(format!("its {WAL_DIR} directory is missing")))?;
    let mut ids = vec![];
    for e in entries {
        let e = e.map_err(|error| DiskError::Io {
            path: path.to_string(),
            error,
        })?;
        let name = e.file_name().to_string_lossy().into_owned();
        match name
            .strip_suffix(".wal")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            Some(id) => ids.push(id),
            None => return Err(corrupt(format!("{WAL_DIR}/{name} is not a wal segment"))),
        }
    }
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(corrupt(format!(
            "{WAL_DIR} holds no segments: the wal is missing"
        )));
    }
    if let Some(w) = ids.windows(2).find(|w| w[1] != w[0] + 1) {
        return Err(corrupt(format!(
            "wal segments {} to {} are missing",
            segment_name(w[0] + 1),
            segment_name(w[1] - 1)
        )));
    }
    Ok(ids)
}

fn write_marker(dir: &Path) -> io::Result<()> {
    write_atomic_blocking(&dir.join(MARKER_FILE), MARKER_TEXT, 0o644)
}

fn check_marker(dir: &Path, path: &str) -> Result<(), DiskError> {
    let corrupt = |what: String| DiskError::Corrupt {
        path: path.to_string(),
        what,
    };
    match std::fs::read(dir.join(MARKER_FILE)) {
        Ok(m) if m == MARKER_TEXT => Ok(()),
        Ok(_) => Err(corrupt(format!(
            "{MARKER_FILE} has unexpected contents (another format or not a flotilla dir)"
        ))),
        Err(_) => Err(corrupt(format!(
            "not empty and has no {MARKER_FILE}: not a flotilla data dir"
        ))),
    }
}

fn is_populated(dir: &Path) -> io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Disk for WalDisk {
    fn log_put(&mut self, index: u64, data: &[u8]) -> Result<(), DiskError> {
        self.check_usable()?;
        self.push(PUT, &[&index.to_le_bytes(), data]);
        let s = self.segments.last_mut().expect("active segment");
        s.log_index_max = s.log_index_max.max(index);
        Ok(())
    }

    fn log_truncate_from(&mut self, index: u64) -> Result<(), DiskError> {
        self.check_usable()?;
        self.push(TRUNCATE_FROM, &[&index.to_le_bytes()]);
        Ok(())
    }

    fn log_truncate_before(&mut self, index: u64) -> Result<(), DiskError> {
        self.check_usable()?;
        self.push(TRUNCATE_BEFORE, &[&index.to_le_bytes()]);
        self.compacted_before = self.compacted_before.max(index);
        Ok(())
    }

    fn meta_put(&mut self, key: &str, data: &[u8]) -> Result<(), DiskError> {
        self.check_usable()?;
        self.put_meta(key, data);
        Ok(())
    }

    fn meta_put_stream(&mut self, key: &str, write: StreamFn<'_>) -> Result<(), DiskError> {
        self.check_usable()?;
        let b = self
            .write_blob(key, write)
            .map_err(|e| self.sync_failed(e))?;
        self.commit_blob(key, b);
        Ok(())
    }

    fn blob_write(
        &mut self,
        key: &str,
        produce: Producer,
    ) -> BoxFuture<'static, Result<Blob, DiskError>> {
        let usable = self.check_usable();
        assert!(!self.blob_in_flight, "one blob write at a time");
        self.blob_in_flight = true;
        let name = self.blob_name(key);
        let (snap, path, key) = (self.dir.join(SNAP_DIR), self.path.clone(), key.to_string());
        Box::pin(async move {
            usable?;
            let failed = |error| DiskError::SyncFailed {
                path: path.clone(),
                error,
            };
            let job = tokio::task::spawn_blocking(move || {
                write_blob_file(&snap, &name, produce).map(|(len, crc)| (name, len, crc))
            });
            let (name, len, crc) = job
                .await
                .map_err(|e| failed(io::Error::other(e)))?
                .map_err(failed)?;
            Ok(Blob {
                key,
                name,
                len,
                crc,
                data: Vec::new(),
            })
        })
    }

    fn blob_commit(&mut self, blob: Blob) -> Result<(), DiskError> {
        self.blob_in_flight = false;
        self.check_usable()?;
        let b = BlobRef {
            name: blob.name,
            len: blob.len,
            crc: blob.crc,
        };
        self.commit_blob(&blob.key, b);
        Ok(())
    }

    fn blob_discard(&mut self, blob: Blob) {
        self.blob_in_flight = false;
        self.garbage_after_sync.push(blob.name);
    }

    fn sync(&mut self) -> BoxFuture<'_, Result<(), DiskError>> {
        Box::pin(async move {
            self.check_usable()?;
            // Until this sync completes, what is written where is in flux: an error
            // anywhere below, or this future dropped half-way, leaves the disk unusable.
            self.broken = true;
            let batch = std::mem::take(&mut self.batch);
            let torn = self.torn_at.map(|t| (t, self.segment_bytes));
            let (file, at, zeroed) = (self.active().file.clone(), self.written, self.zeroed);
            let careless = self.ignore_sync_errors;
            let job = tokio::task::spawn_blocking(move || {
                let r = write_batch(&file, &batch, at, torn, zeroed, careless);
                (r, batch)
            });
            let (r, mut batch) = match job.await {
                Ok(done) => done,
                Err(e) => return Err(self.sync_failed(io::Error::other(e))),
            };
            self.zeroed = r.map_err(|e| self.sync_failed(e))?;
            self.torn_at = None;
            self.written += batch.len() as u64;
            batch.clear();
            if batch.capacity() <= BATCH_CAPACITY_KEEP {
                self.batch = batch;
            }
            if self.written >= self.segment_bytes {
                self.rotate()?;
            }
            self.delete_compacted()?;
            self.delete_garbage().map_err(|e| self.io(e))?;
            self.write_watermark().map_err(|e| self.sync_failed(e))?;
            self.broken = false;
            Ok(())
        })
    }

    fn load(&mut self) -> Result<Loaded, DiskError> {
        let mut loaded = replay(&self.dir, &self.path)?.loaded;
        // Pending records count too, as on every Disk.
        let mut at = 0;
        let mut refs = BTreeMap::new();
        while let Parse::Record(r) = parse(&self.batch, at) {
            apply(&mut loaded, &mut refs, &r).expect("records this disk wrote are well-formed");
            at = r.next;
        }
        resolve(&self.dir, &self.path, &refs, &mut loaded)?;
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn filled(dir: &Path) {
        let mut d = WalDisk::open(dir).unwrap();
        for i in 1..=10 {
            d.log_put(i, format!("e{i}").as_bytes()).unwrap();
        }
        d.log_truncate_before(3).unwrap();
        d.log_truncate_from(9).unwrap();
        d.meta_put("hs", b"state").unwrap();
        d.sync().await.unwrap();
    }

    #[tokio::test]
    async fn records_survive_reopen_and_truncations_apply() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        let mut d = WalDisk::open(dir.path()).unwrap();
        let got = d.load().unwrap();
        assert_eq!(
            got.log.keys().copied().collect::<Vec<_>>(),
            (3..=8).collect::<Vec<_>>()
        );
        assert_eq!(got.log[&3], b"e3");
        assert_eq!(got.meta["hs"], b"state");
        // Appending resumes after the replayed records.
        d.log_put(9, b"again").unwrap();
        d.sync().await.unwrap();
        let got = WalDisk::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(got.log[&9], b"again");
    }

    #[tokio::test]
    async fn unsynced_batch_is_not_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        {
            let mut d = WalDisk::open(dir.path()).unwrap();
            d.log_put(9, b"lost").unwrap();
        }
        let got = WalDisk::open(dir.path()).unwrap().load().unwrap();
        assert!(!got.log.contains_key(&9));
    }

    const SMALL: u64 = 16 << 10;

    fn segment(dir: &Path, id: u64) -> PathBuf {
        dir.join(WAL_DIR).join(segment_name(id))
    }

    /// A record missing from the middle of a segment (its neighbours intact, checksums
    /// and all) is a gap in `seq`: refused, and the segment left as it was.
    #[tokio::test]
    async fn a_gap_in_the_sequence_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        let p = segment(dir.path(), 0);
        let data = std::fs::read(&p).unwrap();
        let mut bounds = vec![0];
        while let Parse::Record(r) = parse(&data, *bounds.last().unwrap()) {
            bounds.push(r.next);
        }
        assert!(bounds.len() > 5, "{bounds:?}");
        let (from, to) = (bounds[3], bounds[4]);
        let mut cut = data[..from].to_vec();
        cut.extend_from_slice(&data[to..]);
        cut.resize(data.len(), 0);
        std::fs::write(&p, &cut).unwrap();
        let err = WalDisk::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("records are missing"), "{err}");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            cut,
            "a refused dir is left as it was"
        );
    }

    #[tokio::test]
    async fn torn_tail_is_cut_before_new_records() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        std::fs::remove_file(dir.path().join(WATERMARK_FILE)).unwrap();
        // Garbage after the last record: a torn write that never synced, which could
        // hold what looks like a later record.
        let p = segment(dir.path(), 0);
        let data = std::fs::read(&p).unwrap();
        let end = data.iter().rposition(|b| *b != 0).unwrap() + 1;
        let f = File::options().write(true).open(&p).unwrap();
        f.write_all_at(&[0x77; 300], end as u64 + 5).unwrap();
        f.write_all_at(&[0x10, 0, 0, 0], end as u64).unwrap();
        let mut d = WalDisk::open(dir.path()).unwrap();
        assert_eq!(d.load().unwrap().log.len(), 6);
        d.log_put(9, b"after").unwrap();
        d.sync().await.unwrap();
        let got = WalDisk::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(got.log[&9], b"after");
        assert_eq!(got.log.len(), 7);
        let data = std::fs::read(&p).unwrap();
        assert!(
            !data.windows(2).any(|w| w == [0x77, 0x77]),
            "torn bytes left"
        );
    }

    #[tokio::test]
    async fn damage_below_the_watermark_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        let p = segment(dir.path(), 0);
        let mut data = std::fs::read(&p).unwrap();
        data[20] ^= 0x5a;
        std::fs::write(&p, &data).unwrap();
        let err = WalDisk::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("truncated or damaged"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), data);
    }

    #[tokio::test]
    async fn segments_rotate_carry_metadata_and_are_deleted_once_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WalDisk::open_with(dir.path(), SMALL).unwrap();
        d.meta_put("identity", b"me").unwrap();
        let big = vec![7u8; 1 << 10];
        let per_segment = SMALL / (1 << 10) + 1;
        for i in 1..=per_segment * 2 {
            d.log_put(i, &big).unwrap();
            d.meta_put("hs", &i.to_le_bytes()).unwrap();
            d.sync().await.unwrap();
        }
        let before = d.segments.len();
        assert!(before >= 3, "{before} segments");
        d.log_truncate_before(per_segment * 2).unwrap();
        d.sync().await.unwrap();
        // Only the segment holding the last entry (if not the active one) and the active
        // one remain.
        assert!(d.segments.len() <= 2, "{} segments kept", d.segments.len());
        let files = std::fs::read_dir(dir.path().join(WAL_DIR)).unwrap().count();
        assert_eq!(files, d.segments.len(), "compacted segment files deleted");
        let got = WalDisk::open_with(dir.path(), SMALL)
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(got.meta["identity"], b"me");
        assert_eq!(got.meta["hs"], (per_segment * 2).to_le_bytes());
        assert_eq!(
            got.log.keys().copied().collect::<Vec<_>>(),
            vec![per_segment * 2]
        );
    }

    fn bytes(data: Vec<u8>) -> Producer {
        Box::new(move |w| w.write_all(&data))
    }

    fn snap_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join(SNAP_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn streamed_records_live_in_files_superseded_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WalDisk::open_with(dir.path(), SMALL).unwrap();
        let big = |tag: u8| vec![tag; 100_000];
        d.meta_put_stream("snapshot", &mut |w| w.write_all(&big(1)))
            .unwrap();
        // Before the sync the reference is pending but load sees it, as every write.
        assert_eq!(d.load().unwrap().meta["snapshot"], big(1));
        d.sync().await.unwrap();
        let first = snap_files(dir.path());
        assert_eq!(first.len(), 1);
        d.meta_put_stream("snapshot", &mut |w| w.write_all(&big(2)))
            .unwrap();
        assert_eq!(
            snap_files(dir.path()).len(),
            2,
            "old file kept until the sync"
        );
        // Rotation re-emits the reference, not the value.
        for i in 1..=40 {
            d.log_put(i, &[0; 1000]).unwrap();
            d.sync().await.unwrap();
        }
        assert!(d.segments.len() > 1);
        let kept = snap_files(dir.path());
        assert_eq!(kept.len(), 1);
        assert_ne!(kept, first);
        drop(d);
        let mut d = WalDisk::open_with(dir.path(), SMALL).unwrap();
        assert_eq!(d.load().unwrap().meta["snapshot"], big(2));
        // A file-backed value replaced by a plain one: the file goes after the sync.
        d.meta_put("snapshot", b"small").unwrap();
        d.sync().await.unwrap();
        assert!(snap_files(dir.path()).is_empty());
        let got = WalDisk::open_with(dir.path(), SMALL)
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(got.meta["snapshot"], b"small");
    }

    #[tokio::test]
    async fn a_damaged_or_missing_snapshot_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WalDisk::open(dir.path()).unwrap();
        d.meta_put_stream("snapshot", &mut |w| w.write_all(&[5; 5000]))
            .unwrap();
        d.sync().await.unwrap();
        drop(d);
        let p = dir.path().join(SNAP_DIR).join(&snap_files(dir.path())[0]);
        let mut data = std::fs::read(&p).unwrap();
        data[100] ^= 1;
        std::fs::write(&p, &data).unwrap();
        let err = WalDisk::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("fails its checksum"), "{err}");
        data[100] ^= 1;
        std::fs::write(&p, &data[..data.len() - 10]).unwrap();
        let err = WalDisk::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("wrong length"), "{err}");
        std::fs::remove_file(&p).unwrap();
        let err = WalDisk::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("is missing"), "{err}");
    }

    #[tokio::test]
    async fn an_unreferenced_snapshot_file_left_by_a_crash_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        {
            let mut d = WalDisk::open(dir.path()).unwrap();
            d.meta_put_stream("snapshot", &mut |w| w.write_all(&[5; 5000]))
                .unwrap();
            // Crash: the file is there, the record referencing it never synced.
        }
        assert_eq!(snap_files(dir.path()).len(), 1);
        let mut d = WalDisk::open(dir.path()).unwrap();
        assert!(!d.load().unwrap().meta.contains_key("snapshot"));
        d.log_put(9, b"x").unwrap();
        d.sync().await.unwrap();
        assert!(snap_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_snapshot_reusing_a_crash_leftovers_name_survives() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        {
            let mut d = WalDisk::open(dir.path()).unwrap();
            d.meta_put_stream("snapshot", &mut |w| w.write_all(&[5; 5000]))
                .unwrap();
            // Crash before the sync: the leftover file has the next sequence number.
        }
        let mut d = WalDisk::open(dir.path()).unwrap();
        d.meta_put_stream("snapshot", &mut |w| w.write_all(&[6; 5000]))
            .unwrap();
        d.sync().await.unwrap();
        assert_eq!(snap_files(dir.path()).len(), 1);
        drop(d);
        let mut d = WalDisk::open(dir.path()).unwrap();
        assert_eq!(d.load().unwrap().meta["snapshot"], vec![6; 5000]);
    }

    #[tokio::test]
    async fn a_sync_dropped_half_way_leaves_the_disk_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WalDisk::open(dir.path()).unwrap();
        d.log_put(1, b"x").unwrap();
        // Polled once (the write is handed to a blocking thread), then dropped.
        tokio::select! {
            biased;
            _ = d.sync() => panic!("an fdatasync does not finish within one poll"),
            _ = std::future::ready(()) => {}
        }
        let refused = d.log_put(2, b"y").unwrap_err().to_string();
        assert!(refused.contains("an earlier sync failed"), "{refused}");
        assert!(d.sync().await.is_err());
    }

    #[tokio::test]
    async fn a_reference_outside_snap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WalDisk::open(dir.path()).unwrap();
        let evil = BlobRef {
            name: "../FLOTILLA_DATA_DIR".into(),
            len: 0,
            crc: 0,
        };
        d.push_meta("snapshot", BLOB, &[&blob_body("snapshot", &evil)]);
        d.sync().await.unwrap();
        drop(d);
        let refused = WalDisk::open(dir.path()).err().unwrap().to_string();
        assert!(
            refused.contains(r#"names "../FLOTILLA_DATA_DIR""#),
            "{refused}"
        );
        assert!(dir.path().join(MARKER_FILE).exists());
    }

    #[tokio::test]
    async fn a_missing_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WalDisk::open_with(dir.path(), SMALL).unwrap();
        let big = vec![7u8; 1 << 10];
        for i in 1..=SMALL / (1 << 10) * 3 {
            d.log_put(i, &big).unwrap();
            d.sync().await.unwrap();
        }
        drop(d);
        std::fs::remove_file(segment(dir.path(), 1)).unwrap();
        let err = WalDisk::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("are missing"), "{err}");
    }

    #[tokio::test]
    async fn a_background_blob_takes_effect_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WalDisk::open(dir.path()).unwrap();
        d.meta_put_stream("snapshot", &mut |w| w.write_all(&[1; 3000]))
            .unwrap();
        d.sync().await.unwrap();
        let write = d.blob_write("snapshot", bytes(vec![2; 4000]));
        // The disk goes on taking writes and syncs while the blob is written.
        d.log_put(1, b"during").unwrap();
        d.sync().await.unwrap();
        let blob = write.await.unwrap();
        assert_eq!(blob.len_bytes(), 4000);
        assert_eq!(
            snap_files(dir.path()).len(),
            2,
            "written, not yet in effect"
        );
        assert_eq!(d.load().unwrap().meta["snapshot"], vec![1; 3000]);
        d.blob_commit(blob).unwrap();
        d.sync().await.unwrap();
        assert_eq!(
            snap_files(dir.path()).len(),
            1,
            "the superseded file is gone"
        );
        drop(d);
        let got = WalDisk::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(got.meta["snapshot"], vec![2; 4000]);
        assert_eq!(got.log[&1], b"during");
    }

    #[tokio::test]
    async fn an_uncommitted_or_discarded_blob_leaves_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WalDisk::open(dir.path()).unwrap();
        d.meta_put_stream("snapshot", &mut |w| w.write_all(&[1; 3000]))
            .unwrap();
        d.sync().await.unwrap();
        let blob = d
            .blob_write("snapshot", bytes(vec![2; 4000]))
            .await
            .unwrap();
        d.blob_discard(blob);
        d.sync().await.unwrap();
        assert_eq!(
            snap_files(dir.path()).len(),
            1,
            "a discarded blob is deleted"
        );
        // Written but never committed: a crash leaves the file, the next open removes it.
        let _blob = d
            .blob_write("snapshot", bytes(vec![3; 4000]))
            .await
            .unwrap();
        drop(d);
        let mut d = WalDisk::open(dir.path()).unwrap();
        assert_eq!(d.load().unwrap().meta["snapshot"], vec![1; 3000]);
        d.sync().await.unwrap();
        assert_eq!(snap_files(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn a_background_blob_named_like_a_crash_leftover_survives() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        {
            let mut d = WalDisk::open(dir.path()).unwrap();
            let _leftover = d
                .blob_write("snapshot", bytes(vec![5; 5000]))
                .await
                .unwrap();
        }
        let mut d = WalDisk::open(dir.path()).unwrap();
        let write = d.blob_write("snapshot", bytes(vec![6; 5000]));
        // The open listed the leftover for deletion at the first sync; the new blob took
        // its name, so that sync must not delete it.
        d.sync().await.unwrap();
        let blob = write.await.unwrap();
        d.blob_commit(blob).unwrap();
        d.sync().await.unwrap();
        drop(d);
        let mut d = WalDisk::open(dir.path()).unwrap();
        assert_eq!(d.load().unwrap().meta["snapshot"], vec![6; 5000]);
    }

    #[tokio::test]
    async fn blob_names_never_repeat_while_records_follow() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = WalDisk::open(dir.path()).unwrap();
        let first = d.blob_write("snapshot", bytes(vec![1; 10])).await.unwrap();
        // No record in between: a streamed value must still get a name of its own.
        d.meta_put_stream("snapshot", &mut |w| w.write_all(&[2; 10]))
            .unwrap();
        d.blob_commit(first).unwrap();
        d.sync().await.unwrap();
        drop(d);
        let got = WalDisk::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(got.meta["snapshot"], vec![1; 10], "the last committed wins");
    }
}
