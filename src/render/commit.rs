//! Putting a rendered file in place, as confd does but durably: stage beside the
//! destination with the resource's mode and owner → unchanged? stop → `check_cmd` on the
//! stage file → sync, rename over the destination, sync the directory → `reload_cmd`.
//! Every file and command goes through the seam (`Files`, `Processes`).

use super::resource::Resource;
use flotilla_shims::host::HostInfo;
use flotilla_shims::process::{ProcSpec, Processes, Signal};
use flotilla_shims::{Clock, FileMeta, Files};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Output lines of a failed command kept in its error.
const OUTPUT_LINES_SHOWN: usize = 20;

/// What the write path runs through.
#[derive(Clone)]
pub struct WriteSeams {
    pub files: Arc<dyn Files>,
    pub procs: Arc<dyn Processes>,
    pub clock: Arc<dyn Clock>,
    pub host: Arc<dyn HostInfo>,
}

/// How a render is written (confd's flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOpts {
    /// Print what would change; write nothing.
    pub noop: bool,
    /// Write, but run neither `check_cmd` nor `reload_cmd`.
    pub sync_only: bool,
    pub keep_stage_file: bool,
    /// How long `check_cmd` or `reload_cmd` may run before it is killed.
    pub cmd_timeout_ms: u64,
    /// Planted bug (test-only): rename the stage file into place without syncing it.
    pub bug_skip_sync: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Content, mode and owner already matched: nothing written, nothing reloaded.
    Unchanged,
    /// `--noop`: the unified diff from the destination to the render.
    WouldChange(String),
    /// Replaced (and reloaded, when `reloaded`).
    Changed { reloaded: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WriteError {
    #[error("{dest}: {op}: {why}")]
    Io {
        dest: String,
        op: &'static str,
        why: String,
    },
    #[error("{dest}: check_cmd failed, destination left as it was: {why}")]
    Check { dest: String, why: String },
    #[error("{dest}: written, but reload_cmd failed: {why}")]
    Reload { dest: String, why: String },
}

impl WriteError {
    /// A sync or rename that failed after the data was handed to the kernel: what is on
    /// disk is unknown, so the caller stops (as a failed WAL sync stops a member).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WriteError::Io {
                op: "sync" | "rename" | "sync the directory of",
                ..
            }
        )
    }
}

/// The stage file's path: beside the destination, so the rename stays on one filesystem.
pub fn stage_path(dest: &str) -> String {
    let (dir, name) = dest.rsplit_once('/').unwrap_or((".", dest));
    format!("{dir}/.{name}.flotilla-stage")
}

/// The directory holding `path` (`.` for a bare name, `/` for a file at the root).
fn parent_dir(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => ".",
    }
}

/// The mode and owner the destination should have.
pub async fn wanted_meta(s: &WriteSeams, r: &Resource) -> Result<FileMeta, WriteError> {
    let current = s.files.stat(&r.dest).await.map_err(|e| io(r, "stat", e))?;
    let (euid, egid) = s.host.ids();
    Ok(FileMeta {
        mode: r.mode.or(current.map(|m| m.mode)).unwrap_or(0o644),
        uid: r.uid.unwrap_or(euid),
        gid: r.gid.unwrap_or(egid),
    })
}

fn io(r: &Resource, op: &'static str, e: std::io::Error) -> WriteError {
    WriteError::Io {
        dest: r.dest.clone(),
        op,
        why: e.to_string(),
    }
}

/// Writes `content` to `r.dest` through the stage file, checking and reloading.
pub async fn write(
    s: &WriteSeams,
    r: &Resource,
    content: Vec<u8>,
    opts: &WriteOpts,
) -> Result<Written, WriteError> {
    let meta = wanted_meta(s, r).await?;
    let old = s.files.read(&r.dest).await.map_err(|e| io(r, "read", e))?;
    let old_meta = s.files.stat(&r.dest).await.map_err(|e| io(r, "stat", e))?;
    if old.as_deref() == Some(&content[..]) && old_meta == Some(meta) {
        return Ok(Written::Unchanged);
    }
    if opts.noop {
        return Ok(Written::WouldChange(diff(r, old.as_deref(), &content)));
    }
    let stage = stage_path(&r.dest);
    s.files
        .stage(&stage, content, meta)
        .await
        .map_err(|e| io(r, "stage", e))?;
    if let Some(check) = r.check_cmd.as_ref().filter(|_| !opts.sync_only) {
        if let Err(why) = check_cmd(s, check, &stage, opts).await {
            if !opts.keep_stage_file {
                let _ = s.files.remove(&stage).await;
            }
            return Err(WriteError::Check {
                dest: r.dest.clone(),
                why,
            });
        }
    }
    if !opts.bug_skip_sync {
        s.files.sync(&stage).await.map_err(|e| io(r, "sync", e))?;
    }
    s.files
        .rename(&stage, &r.dest)
        .await
        .map_err(|e| io(r, "rename", e))?;
    s.files
        .sync_dir(parent_dir(&r.dest))
        .await
        .map_err(|e| io(r, "sync the directory of", e))?;
    let Some(reload) = r.reload_cmd.as_ref().filter(|_| !opts.sync_only) else {
        return Ok(Written::Changed { reloaded: false });
    };
    run(s, reload, opts.cmd_timeout_ms)
        .await
        .map_err(|why| WriteError::Reload {
            dest: r.dest.clone(),
            why,
        })?;
    Ok(Written::Changed { reloaded: true })
}

/// A unified diff from the destination to the render, as `--noop` shows it.
pub fn diff(r: &Resource, old: Option<&[u8]>, new: &[u8]) -> String {
    let old = String::from_utf8_lossy(old.unwrap_or_default());
    let new = String::from_utf8_lossy(new);
    similar::TextDiff::from_lines(old.as_ref(), new.as_ref())
        .unified_diff()
        .header(&r.dest, &format!("{} (rendered)", r.dest))
        .to_string()
}

/// `check_cmd` with `{{.src}}` replaced by the stage file's path (a Go template, as in
/// confd).
async fn check_cmd(s: &WriteSeams, cmd: &str, stage: &str, opts: &WriteOpts) -> Result<(), String> {
    let mut data = std::collections::BTreeMap::new();
    data.insert(Arc::<str>::from("src"), gotmpl::Value::String(stage.into()));
    let line = gotmpl::Template::new("check_cmd")
        .parse(cmd)
        .and_then(|t| t.execute_to_string(&gotmpl::Value::Map(Arc::new(data))))
        .map_err(|e| format!("check_cmd {cmd:?}: {e}"))?;
    run(s, &line, opts.cmd_timeout_ms).await
}

/// Runs `/bin/sh -c cmd`; an error says how it ended and what it printed.
pub async fn run(s: &WriteSeams, cmd: &str, timeout_ms: u64) -> Result<(), String> {
    let env: Vec<(String, String)> = ["PATH", "HOME", "USER", "LANG"]
        .iter()
        .filter_map(|k| s.host.getenv(k).map(|v| (k.to_string(), v)))
        .collect();
    let spec = ProcSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        env,
    };
    let handle = s.procs.spawn(spec).await.map_err(|e| e.to_string())?;
    let wait = s.procs.wait(handle);
    let timer = s.clock.sleep(Duration::from_millis(timeout_ms));
    let code = tokio::select! {
        r = wait => r.map_err(|e| e.to_string())?,
        _ = timer => {
            let _ = s.procs.signal(handle, Signal::Kill);
            return Err(format!("{cmd:?} still running after {timeout_ms} ms: killed"));
        }
    };
    if code == 0 {
        return Ok(());
    }
    let out = s.procs.output(handle);
    let tail = &out[out.len().saturating_sub(OUTPUT_LINES_SHOWN)..];
    Err(format!("{cmd:?} exited {code}: {}", tail.join(" | ")))
}
