//! The production [`Disk`] on sled, plus [`RealFiles`] for small files.
//!
//! The log lives in one sled tree (big-endian index → record); each metadata record in a
//! tree of its own, so updating the hard state never rewrites the page that holds a
//! multi-megabyte snapshot (measured: sharing one tree made every hard-state update
//! rewrite the snapshot as a sled blob — gigabytes written for thousands of entries).
//! Every value is [`seal`]ed with a CRC32. sled's background flusher is off,
//! so data reaches the platter only through [`Disk::sync`] (sled `flush` = fsync) — or
//! earlier, which is harmless.

use crate::disk::{seal, unseal, Disk, DiskError, Files, Loaded};
use crate::BoxFuture;
use std::io;
use std::path::{Path, PathBuf};

pub struct SledDisk {
    path: String,
    dir: std::path::PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: std::collections::BTreeMap<String, sled::Tree>,
    /// Syncs so far (stamped into the store on each sync).
    generation: u64,
    /// When the side file last recorded a durable generation.
    watermark_at: Option<std::time::Instant>,
}

/// The side file recording a generation known to be durable: sled treats a damaged or
/// cut tail as a torn write and silently recovers an older state, so this is how a
/// restart notices that synced data went missing.
pub const WATERMARK_FILE: &str = "DURABLE_GENERATION";
const WATERMARK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const GENERATION_KEY: &[u8] = b"g";

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

const LOG_TREE: &str = "log";
pub const SLED_CACHE_BYTES: u64 = 32 << 20;
const META_PREFIX: &str = "meta:";
const META_VALUE: &[u8] = b"v";

impl SledDisk {
    /// Opens (creating if absent or empty) the store in `dir`. An existing dir must have
    /// the marker and sled's files; check its contents first with [`SledDisk::preflight`]
    /// — sled's own recovery rewrites a damaged file as it opens it.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        let path = dir.display().to_string();
        let io_err = |source| DiskError::Io {
            path: path.clone(),
            source,
        };
        if is_populated(dir).map_err(io_err)? {
            check_layout(dir, &path)?;
            return Self::open_sled(dir, &path);
        }
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let disk = Self::open_sled(dir, &path)?;
        write_marker(dir).map_err(io_err)?;
        Ok(disk)
    }

    /// For an existing dir: a scratch copy opened as a disk, so that everything on it can
    /// be read and checked without writing a byte of the original. `None` for a new dir.
    pub fn preflight(dir: &Path) -> Result<Option<Preflight>, DiskError> {
        let path = dir.display().to_string();
        let io_err = |source| DiskError::Io {
            path: path.clone(),
            source,
        };
        if !is_populated(dir).map_err(io_err)? {
            return Ok(None);
        }
        check_layout(dir, &path)?;
        let scratch = tempfile::Builder::new()
            .prefix(".flotilla-preflight")
            .tempdir_in(dir.parent().unwrap_or(Path::new(".")))
            .map_err(io_err)?;
        copy_tree(dir, scratch.path()).map_err(io_err)?;
        // Errors name the original dir: that is what the user has to look at.
        let disk = Self::open_sled(scratch.path(), &path)?;
        disk.check_watermark(dir)?;
        Ok(Some(Preflight {
            disk,
            _scratch: scratch,
        }))
    }

    fn open_sled(dir: &Path, path: &str) -> Result<Self, DiskError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            // sled caches up to 1 GiB by default; Raft reads its log from memory anyway.
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|e| sled_error(path, e))?;
        let log = db.open_tree(LOG_TREE).map_err(|e| sled_error(path, e))?;
        let mut meta = std::collections::BTreeMap::new();
        for name in db.tree_names() {
            if let Some(key) = name.strip_prefix(META_PREFIX.as_bytes()) {
                let key = String::from_utf8_lossy(key).into_owned();
                let tree = db.open_tree(&name).map_err(|e| sled_error(path, e))?;
                meta.insert(key, tree);
            }
        }
        let generation = match db.get(GENERATION_KEY).map_err(|e| sled_error(path, e))? {
            Some(v) => {
                let data = unseal(path, "sync generation record", &v)?;
                let bytes: [u8; 8] =
                    data.as_slice().try_into().map_err(|_| DiskError::Corrupt {
                        path: path.to_string(),
                        what: "sync generation record has the wrong size".into(),
                    })?;
                u64::from_be_bytes(bytes)
            }
            None => 0,
        };
        Ok(Self {
            path: path.to_string(),
            dir: dir.to_path_buf(),
            db,
            log,
            meta,
            generation,
            watermark_at: None,
        })
    }

    /// Refuses a store that recovered to an older generation than one recorded durable.
    fn check_watermark(&self, original: &Path) -> Result<(), DiskError> {
        let recorded = match std::fs::read(original.join(WATERMARK_FILE)) {
            Ok(d) => {
                let data = unseal(&self.path, WATERMARK_FILE, &d)?;
                let text = String::from_utf8_lossy(&data).trim().to_string();
                text.parse::<u64>().map_err(|_| DiskError::Corrupt {
                    path: self.path.clone(),
                    what: format!("{WATERMARK_FILE} does not hold a number"),
                })?
            }
            Err(_) => 0,
        };
        if self.generation < recorded {
            return Err(DiskError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "store file db recovers only to sync {} but sync {recorded} was durable: \
                     its tail is truncated or damaged",
                    self.generation
                ),
            });
        }
        Ok(())
    }

    fn write_watermark(&mut self) -> io::Result<()> {
        use std::io::Write;
        let now = std::time::Instant::now();
        if self
            .watermark_at
            .is_some_and(|t| now.duration_since(t) < WATERMARK_EVERY)
        {
            return Ok(());
        }
        self.watermark_at = Some(now);
        let tmp = self.dir.join(format!("{WATERMARK_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&seal(self.generation.to_string().as_bytes()))?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(WATERMARK_FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn io(&self, e: sled::Error) -> DiskError {
        sled_error(&self.path, e)
    }

    fn remove_range(&mut self, lo: u64, hi_exclusive: Option<u64>) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        let range = match hi_exclusive {
            Some(hi) => self.log.range(log_key(lo)..log_key(hi)),
            None => self.log.range(log_key(lo)..=log_key(u64::MAX)),
        };
        for kv in range.keys() {
            batch.remove(kv.map_err(|e| self.io(e))?);
        }
        self.log.apply_batch(batch).map_err(|e| self.io(e))
    }
}

/// Written once, when the dir is created; its absence in a non-empty dir means the dir
/// is not (or no longer) a flotilla data dir.
pub const MARKER_FILE: &str = "FLOTILLA_DATA_DIR";
const MARKER_TEXT: &[u8] = b"flotilla data dir, format 1\n";
const SLED_FILES: [&str; 2] = ["conf", "db"];

fn write_marker(dir: &Path) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join(MARKER_FILE))?;
    f.write_all(MARKER_TEXT)?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

fn check_layout(dir: &Path, path: &str) -> Result<(), DiskError> {
    let corrupt = |what: String| DiskError::Corrupt {
        path: path.to_string(),
        what,
    };
    match std::fs::read(dir.join(MARKER_FILE)) {
        Ok(m) if m == MARKER_TEXT => {}
        Ok(_) => return Err(corrupt(format!("{MARKER_FILE} has unexpected contents"))),
        Err(_) => {
            return Err(corrupt(format!(
                "not empty and has no {MARKER_FILE}: not a flotilla data dir"
            )))
        }
    }
    for f in SLED_FILES {
        match std::fs::metadata(dir.join(f)) {
            Ok(m) if m.len() > 0 => {}
            Ok(_) => return Err(corrupt(format!("store file {f} is empty (truncated)"))),
            Err(_) => return Err(corrupt(format!("store file {f} is missing"))),
        }
    }
    Ok(())
}

/// A scratch copy of a data dir, deleted on drop.
pub struct Preflight {
    pub disk: SledDisk,
    _scratch: tempfile::TempDir,
}

fn is_populated(dir: &Path) -> io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn sled_error(path: &str, e: sled::Error) -> DiskError {
    match e {
        sled::Error::Io(source) => DiskError::Io {
            path: path.to_string(),
            source,
        },
        sled::Error::Corruption { at, .. } => DiskError::Corrupt {
            path: path.to_string(),
            what: match at {
                Some(at) => format!("store file db fails its checksums at {at:?}"),
                None => "store file db fails its checksums (damaged or truncated)".to_string(),
            },
        },
        other => DiskError::Corrupt {
            path: path.to_string(),
            what: format!("sled: {other}"),
        },
    }
}

impl Disk for SledDisk {
    fn log_put(&mut self, index: u64, data: &[u8]) -> Result<(), DiskError> {
        self.log
            .insert(log_key(index), seal(data))
            .map(|_| ())
            .map_err(|e| self.io(e))
    }

    fn log_truncate_from(&mut self, index: u64) -> Result<(), DiskError> {
        self.remove_range(index, None)
    }

    fn log_truncate_before(&mut self, index: u64) -> Result<(), DiskError> {
        self.remove_range(0, Some(index))
    }

    fn meta_put(&mut self, key: &str, data: &[u8]) -> Result<(), DiskError> {
        if !self.meta.contains_key(key) {
            let tree = self
                .db
                .open_tree(format!("{META_PREFIX}{key}"))
                .map_err(|e| self.io(e))?;
            self.meta.insert(key.to_string(), tree);
        }
        let tree = &self.meta[key];
        tree.insert(META_VALUE, seal(data))
            .map(|_| ())
            .map_err(|e| sled_error(&self.path, e))
    }

    fn sync(&mut self) -> BoxFuture<'_, Result<(), DiskError>> {
        Box::pin(async move {
            self.generation += 1;
            self.db
                .insert(GENERATION_KEY, seal(&self.generation.to_be_bytes()))
                .map_err(|e| self.io(e))?;
            self.db.flush_async().await.map_err(|e| match e {
                sled::Error::Io(source) => DiskError::SyncFailed {
                    path: self.path.clone(),
                    source,
                },
                other => self.io(other),
            })?;
            self.write_watermark()
                .map_err(|source| DiskError::SyncFailed {
                    path: self.path.clone(),
                    source,
                })
        })
    }

    fn load(&mut self) -> Result<Loaded, DiskError> {
        let mut out = Loaded::default();
        for kv in self.log.iter() {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            let bytes: [u8; 8] = k.as_ref().try_into().map_err(|_| DiskError::Corrupt {
                path: self.path.clone(),
                what: format!("log key {k:?} is not an index"),
            })?;
            let i = u64::from_be_bytes(bytes);
            out.log
                .insert(i, unseal(&self.path, &format!("log record {i}"), &v)?);
        }
        for (name, tree) in &self.meta {
            let what = format!("meta record {name}");
            match tree
                .get(META_VALUE)
                .map_err(|e| sled_error(&self.path, e))?
            {
                Some(v) => {
                    out.meta
                        .insert(name.clone(), unseal(&self.path, &what, &v)?);
                }
                None => {
                    return Err(DiskError::Corrupt {
                        path: self.path.clone(),
                        what: format!("{what} is missing its value"),
                    })
                }
            }
        }
        Ok(out)
    }
}

/// [`Files`] on the real filesystem.
#[derive(Clone, Default)]
pub struct RealFiles;

impl Files for RealFiles {
    fn read(&self, path: &str) -> BoxFuture<'static, io::Result<Option<Vec<u8>>>> {
        let path = PathBuf::from(path);
        Box::pin(async move {
            match tokio::fs::read(&path).await {
                Ok(d) => Ok(Some(d)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn write_atomic(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> BoxFuture<'static, io::Result<()>> {
        let path = PathBuf::from(path);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || write_atomic_blocking(&path, &data, mode))
                .await
                .map_err(io::Error::other)?
        })
    }
}

fn write_atomic_blocking(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.flotilla-stage", name.to_string_lossy()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_reopen_and_truncations_apply() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut d = SledDisk::open(dir.path()).unwrap();
            for i in 1..=10 {
                d.log_put(i, format!("e{i}").as_bytes()).unwrap();
            }
            d.log_truncate_before(3).unwrap();
            d.log_truncate_from(9).unwrap();
            d.meta_put("hs", b"state").unwrap();
            d.sync().await.unwrap();
        }
        let mut d = SledDisk::open(dir.path()).unwrap();
        let got = d.load().unwrap();
        assert_eq!(
            got.log.keys().copied().collect::<Vec<_>>(),
            (3..=8).collect::<Vec<_>>()
        );
        assert_eq!(got.log[&3], b"e3");
        assert_eq!(got.meta["hs"], b"state");
    }

    #[tokio::test]
    async fn write_atomic_replaces_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.conf");
        let files = RealFiles;
        files
            .write_atomic(p.to_str().unwrap(), b"one".to_vec(), 0o640)
            .await
            .unwrap();
        files
            .write_atomic(p.to_str().unwrap(), b"two".to_vec(), 0o600)
            .await
            .unwrap();
        assert_eq!(
            files.read(p.to_str().unwrap()).await.unwrap().unwrap(),
            b"two"
        );
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "stage file left behind"
        );
    }
}
