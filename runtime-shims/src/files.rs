//! [`Files`] on the real filesystem: small files (rendered configs) replaced atomically.

use crate::disk::{FileMeta, Files};
use crate::BoxFuture;
use std::io;
use std::path::{Path, PathBuf};

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

    fn stat(&self, path: &str) -> BoxFuture<'static, io::Result<Option<FileMeta>>> {
        let path = PathBuf::from(path);
        blocking(move || match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(meta_of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
    }

    fn stage(
        &self,
        stage: &str,
        data: Vec<u8>,
        meta: FileMeta,
    ) -> BoxFuture<'static, io::Result<()>> {
        let stage = PathBuf::from(stage);
        blocking(move || stage_blocking(&stage, &data, meta))
    }

    fn sync(&self, path: &str) -> BoxFuture<'static, io::Result<()>> {
        let path = PathBuf::from(path);
        blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .sync_all()
        })
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'static, io::Result<()>> {
        let (from, to) = (PathBuf::from(from), PathBuf::from(to));
        blocking(move || std::fs::rename(&from, &to))
    }

    fn sync_dir(&self, dir: &str) -> BoxFuture<'static, io::Result<()>> {
        let dir = PathBuf::from(if dir.is_empty() { "." } else { dir });
        blocking(move || std::fs::File::open(&dir)?.sync_all())
    }

    fn remove(&self, path: &str) -> BoxFuture<'static, io::Result<()>> {
        let path = PathBuf::from(path);
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
    }

    fn list(&self, dir: &str) -> BoxFuture<'static, io::Result<Vec<String>>> {
        let dir = PathBuf::from(dir);
        blocking(move || {
            let mut names = Vec::new();
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                if std::fs::metadata(e.path())?.is_file() {
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
            }
            names.sort();
            Ok(names)
        })
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> BoxFuture<'static, io::Result<T>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(io::Error::other)?
    })
}

fn meta_of(m: &std::fs::Metadata) -> FileMeta {
    use std::os::unix::fs::MetadataExt;
    FileMeta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
    }
}

/// A fresh stage file (any left by a crash is replaced) with the mode and owner asked for.
fn stage_blocking(stage: &Path, data: &[u8], meta: FileMeta) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(stage) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(stage)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(meta.mode))?;
    let current = meta_of(&f.metadata()?);
    if (current.uid, current.gid) != (meta.uid, meta.gid) {
        std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid))?;
    }
    Ok(())
}

/// One file held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemFile {
    data: Vec<u8>,
    meta: FileMeta,
    /// Whether its data would survive a power loss.
    synced: bool,
}

type FileMap = std::collections::BTreeMap<String, MemFile>;

/// [`Files`] in memory, for tests and the simulator.
#[derive(Clone, Default)]
pub struct MemFiles {
    files: std::sync::Arc<std::sync::Mutex<FileMap>>,
}

impl MemFiles {
    pub fn new() -> Self {
        Self::default()
    }

    /// A file's bytes and mode, if it exists.
    pub fn get(&self, path: &str) -> Option<(Vec<u8>, u32)> {
        let files = self.files.lock().expect("files lock");
        files.get(path).map(|f| (f.data.clone(), f.meta.mode))
    }

    pub fn put(&self, path: &str, data: &[u8], mode: u32) {
        let meta = FileMeta {
            mode,
            uid: 0,
            gid: 0,
        };
        self.insert(path, data.to_vec(), meta, true);
    }

    fn insert(&self, path: &str, data: Vec<u8>, meta: FileMeta, synced: bool) {
        let mut files = self.files.lock().expect("files lock");
        let f = MemFile { data, meta, synced };
        files.insert(path.to_string(), f);
    }

    /// A power loss: every file whose data was never synced is left empty, as a journaling
    /// filesystem can leave a file renamed into place before its data reached the disk.
    /// Returns the paths that lost their data.
    pub fn power_loss(&self) -> Vec<String> {
        let mut files = self.files.lock().expect("files lock");
        let mut lost = vec![];
        for (path, f) in files.iter_mut().filter(|(_, f)| !f.synced) {
            if !f.data.is_empty() {
                lost.push(path.clone());
            }
            f.data.clear();
            f.synced = true;
        }
        lost
    }
}

fn ready<T: Send + 'static>(v: io::Result<T>) -> BoxFuture<'static, io::Result<T>> {
    Box::pin(async move { v })
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{path}: no such file"))
}

impl Files for MemFiles {
    fn read(&self, path: &str) -> BoxFuture<'static, io::Result<Option<Vec<u8>>>> {
        ready(Ok(self.get(path).map(|(d, _)| d)))
    }

    fn write_atomic(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> BoxFuture<'static, io::Result<()>> {
        self.put(path, &data, mode);
        ready(Ok(()))
    }

    fn stat(&self, path: &str) -> BoxFuture<'static, io::Result<Option<FileMeta>>> {
        let files = self.files.lock().expect("files lock");
        ready(Ok(files.get(path).map(|f| f.meta)))
    }

    fn stage(
        &self,
        stage: &str,
        data: Vec<u8>,
        meta: FileMeta,
    ) -> BoxFuture<'static, io::Result<()>> {
        self.insert(stage, data, meta, false);
        ready(Ok(()))
    }

    fn sync(&self, path: &str) -> BoxFuture<'static, io::Result<()>> {
        let mut files = self.files.lock().expect("files lock");
        let r = match files.get_mut(path) {
            Some(f) => {
                f.synced = true;
                Ok(())
            }
            None => Err(not_found(path)),
        };
        ready(r)
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'static, io::Result<()>> {
        let mut files = self.files.lock().expect("files lock");
        let r = match files.remove(from) {
            Some(f) => {
                files.insert(to.to_string(), f);
                Ok(())
            }
            None => Err(not_found(from)),
        };
        ready(r)
    }

    fn sync_dir(&self, _dir: &str) -> BoxFuture<'static, io::Result<()>> {
        ready(Ok(()))
    }

    fn remove(&self, path: &str) -> BoxFuture<'static, io::Result<()>> {
        self.files.lock().expect("files lock").remove(path);
        ready(Ok(()))
    }

    fn list(&self, dir: &str) -> BoxFuture<'static, io::Result<Vec<String>>> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        let files = self.files.lock().expect("files lock");
        let names: Vec<String> = files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(String::from)
            .collect();
        ready(Ok(names))
    }
}

/// Creates `dir` (and its parents) if missing.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// The trimmed text of a small file (`/proc/sys/kernel/hostname`), if it can be read.
pub fn read_small(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The trimmed contents of the small file at `path`; if there is none, `make()` written
/// there first (atomically, synced), as systemd keeps `/etc/machine-id`.
pub fn load_or_create(path: &Path, make: impl FnOnce() -> String) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let v = make();
            write_atomic_blocking(path, format!("{v}\n").as_bytes(), 0o644)?;
            Ok(v)
        }
        Err(e) => Err(e),
    }
}

/// Writes a stage file beside `path`, syncs it, renames it over `path`, syncs the dir.
pub(crate) fn write_atomic_blocking(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
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
