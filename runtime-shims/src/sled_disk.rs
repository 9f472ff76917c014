//! The production [`Disk`] on sled, plus [`RealFiles`] for small files.
//!
//! One sled tree holds everything: log records under `l` + big-endian index, metadata
//! under `m` + name, each value [`seal`]ed with a CRC32. sled's background flusher is off,
//! so data reaches the platter only through [`Disk::sync`] (sled `flush` = fsync) — or
//! earlier, which is harmless.

use crate::disk::{seal, unseal, Disk, DiskError, Files, Loaded};
use crate::BoxFuture;
use std::io;
use std::path::{Path, PathBuf};

pub struct SledDisk {
    path: String,
    db: sled::Db,
}

fn log_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'l';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(b'm');
    k.extend_from_slice(name.as_bytes());
    k
}

impl SledDisk {
    /// Opens (creating if absent) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        let path = dir.display().to_string();
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .map_err(|e| sled_error(&path, e))?;
        Ok(Self { path, db })
    }

    fn io(&self, e: sled::Error) -> DiskError {
        sled_error(&self.path, e)
    }

    fn remove_range(&mut self, lo: u64, hi_exclusive: Option<u64>) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        let range = match hi_exclusive {
            Some(hi) => self.db.range(log_key(lo)..log_key(hi)),
            None => self.db.range(log_key(lo)..=log_key(u64::MAX)),
        };
        for kv in range.keys() {
            batch.remove(kv.map_err(|e| self.io(e))?);
        }
        self.db.apply_batch(batch).map_err(|e| self.io(e))
    }
}

fn sled_error(path: &str, e: sled::Error) -> DiskError {
    match e {
        sled::Error::Io(source) => DiskError::Io {
            path: path.to_string(),
            source,
        },
        sled::Error::Corruption { at, .. } => DiskError::Corrupt {
            path: path.to_string(),
            what: format!("sled reports corruption at {at:?}"),
        },
        other => DiskError::Corrupt {
            path: path.to_string(),
            what: format!("sled: {other}"),
        },
    }
}

impl Disk for SledDisk {
    fn log_put(&mut self, index: u64, data: &[u8]) -> Result<(), DiskError> {
        self.db
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
        self.db
            .insert(meta_key(key), seal(data))
            .map(|_| ())
            .map_err(|e| self.io(e))
    }

    fn sync(&mut self) -> BoxFuture<'_, Result<(), DiskError>> {
        Box::pin(async move {
            self.db
                .flush_async()
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    sled::Error::Io(source) => DiskError::SyncFailed {
                        path: self.path.clone(),
                        source,
                    },
                    other => self.io(other),
                })
        })
    }

    fn load(&mut self) -> Result<Loaded, DiskError> {
        let mut out = Loaded::default();
        for kv in self.db.iter() {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            match k.first() {
                Some(b'l') if k.len() == 9 => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&k[1..]);
                    let i = u64::from_be_bytes(be);
                    out.log
                        .insert(i, unseal(&self.path, &format!("log record {i}"), &v)?);
                }
                Some(b'm') => {
                    let name = String::from_utf8_lossy(&k[1..]).into_owned();
                    let data = unseal(&self.path, &format!("meta record {name}"), &v)?;
                    out.meta.insert(name, data);
                }
                _ => {
                    return Err(DiskError::Corrupt {
                        path: self.path.clone(),
                        what: format!("unknown record key {k:?}"),
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
