//! [`Files`] on the real filesystem: small files (rendered configs) replaced atomically.

use crate::disk::Files;
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
}

/// Path → (bytes, mode).
type FileMap = std::collections::BTreeMap<String, (Vec<u8>, u32)>;

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
        self.files.lock().expect("files lock").get(path).cloned()
    }

    pub fn put(&self, path: &str, data: &[u8], mode: u32) {
        self.files
            .lock()
            .expect("files lock")
            .insert(path.to_string(), (data.to_vec(), mode));
    }
}

impl Files for MemFiles {
    fn read(&self, path: &str) -> BoxFuture<'static, io::Result<Option<Vec<u8>>>> {
        let r = self.get(path).map(|(d, _)| d);
        Box::pin(async move { Ok(r) })
    }

    fn write_atomic(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> BoxFuture<'static, io::Result<()>> {
        self.put(path, &data, mode);
        Box::pin(async move { Ok(()) })
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
