//! Host processes, for Exec lines that are neither `docker` nor `etcdctl` (allowed only
//! with `--allow-host-commands`) and the renderer's check and reload commands.
//!
//! Each process runs in its own process group (stopping a unit signals the whole group)
//! and dies with the node (`PR_SET_PDEATHSIG`), so a crashed node leaves no orphans a
//! restarted one could not adopt. Its output is kept, bounded, for the journal.

use crate::BoxFuture;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::sync::watch;

/// Output lines kept per process.
pub const OUTPUT_LINES_MAX: usize = 200;
/// Finished processes remembered (their exit and output) before the oldest is forgotten.
pub const FINISHED_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProcError {
    #[error("cannot start {argv0}: {why}")]
    Spawn { argv0: String, why: String },
    #[error("no such process {0}")]
    NotFound(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcSpec {
    pub argv: Vec<String>,
    /// The whole environment (nothing is inherited but `PATH`).
    pub env: Vec<(String, String)>,
}

pub trait Processes: Send + Sync + 'static {
    /// Starts a process; its handle.
    fn spawn(&self, spec: ProcSpec) -> BoxFuture<'static, Result<u64, ProcError>>;
    /// Its exit code when it ends (128 + n for a signal n, as a shell reports it).
    fn wait(&self, handle: u64) -> BoxFuture<'static, Result<i64, ProcError>>;
    /// Signals its whole process group.
    fn signal(&self, handle: u64, sig: Signal) -> Result<(), ProcError>;
    /// The last lines it wrote (stdout and stderr).
    fn output(&self, handle: u64) -> Vec<String>;
}

struct Entry {
    pid: u32,
    exit: watch::Receiver<Option<i64>>,
    output: Arc<Mutex<VecDeque<String>>>,
}

/// [`Processes`] on the host, with tokio.
#[derive(Clone, Default)]
pub struct HostProcesses {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    procs: BTreeMap<u64, Entry>,
    finished: VecDeque<u64>,
}

fn push_line(buf: &Mutex<VecDeque<String>>, line: String) {
    let mut b = buf.lock().expect("output lock");
    if b.len() == OUTPUT_LINES_MAX {
        b.pop_front();
    }
    b.push_back(line);
}

impl HostProcesses {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("process table lock")
    }
}

impl Processes for HostProcesses {
    fn spawn(&self, spec: ProcSpec) -> BoxFuture<'static, Result<u64, ProcError>> {
        let me = self.clone();
        Box::pin(async move {
            let argv0 = spec.argv.first().cloned().unwrap_or_default();
            let fail = |why: String| ProcError::Spawn {
                argv0: argv0.clone(),
                why,
            };
            let mut cmd = tokio::process::Command::new(&argv0);
            cmd.args(&spec.argv[1.min(spec.argv.len())..])
                .env_clear()
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .envs(spec.env.iter().cloned())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .process_group(0);
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
            let pid = child.id().ok_or_else(|| fail("exited at once".into()))?;
            let output = Arc::new(Mutex::new(VecDeque::new()));
            for stream in [
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ]
            .into_iter()
            .flatten()
            {
                let out = output.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncBufReadExt;
                    let mut lines = tokio::io::BufReader::new(stream).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        push_line(&out, l);
                    }
                });
            }
            let (tx, rx) = watch::channel(None);
            tokio::spawn(async move {
                use std::os::unix::process::ExitStatusExt;
                let code = match child.wait().await {
                    Ok(st) => st
                        .code()
                        .map(i64::from)
                        .or_else(|| st.signal().map(|s| 128 + i64::from(s)))
                        .unwrap_or(-1),
                    Err(_) => -1,
                };
                let _ = tx.send(Some(code));
            });
            let mut inner = me.lock();
            inner.next += 1;
            let h = inner.next;
            inner.procs.insert(
                h,
                Entry {
                    pid,
                    exit: rx,
                    output,
                },
            );
            inner.finished.push_back(h);
            while inner.finished.len() > FINISHED_MAX {
                if let Some(old) = inner.finished.pop_front() {
                    let done = inner
                        .procs
                        .get(&old)
                        .is_some_and(|e| e.exit.borrow().is_some());
                    if done {
                        inner.procs.remove(&old);
                    } else {
                        inner.finished.push_back(old);
                        break;
                    }
                }
            }
            Ok(h)
        })
    }

    fn wait(&self, handle: u64) -> BoxFuture<'static, Result<i64, ProcError>> {
        let rx = self.lock().procs.get(&handle).map(|e| e.exit.clone());
        Box::pin(async move {
            let mut rx = rx.ok_or(ProcError::NotFound(handle))?;
            loop {
                if let Some(code) = *rx.borrow_and_update() {
                    return Ok(code);
                }
                if rx.changed().await.is_err() {
                    return Ok(-1);
                }
            }
        })
    }

    fn signal(&self, handle: u64, sig: Signal) -> Result<(), ProcError> {
        let inner = self.lock();
        let e = inner
            .procs
            .get(&handle)
            .ok_or(ProcError::NotFound(handle))?;
        if e.exit.borrow().is_some() {
            return Ok(());
        }
        let signo = match sig {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // The negative pid addresses the process group.
        // SAFETY: kill(2) with a pid we started; no memory is touched.
        unsafe {
            libc::kill(-(e.pid as i32), signo);
        }
        Ok(())
    }

    fn output(&self, handle: u64) -> Vec<String> {
        self.lock()
            .procs
            .get(&handle)
            .map(|e| {
                e.output
                    .lock()
                    .expect("output lock")
                    .iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_waits_and_kills_the_group() {
        let p = HostProcesses::new();
        let h = p
            .spawn(ProcSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), "echo hi $X; exit 3".into()],
                env: vec![("X".into(), "there".into())],
            })
            .await
            .unwrap();
        assert_eq!(p.wait(h).await.unwrap(), 3);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(p.output(h), vec!["hi there"]);
        // A shell with a child: the whole group goes.
        let h = p
            .spawn(ProcSpec {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "sleep 100 & sleep 100".into(),
                ],
                env: vec![],
            })
            .await
            .unwrap();
        p.signal(h, Signal::Term).unwrap();
        assert_eq!(p.wait(h).await.unwrap(), 128 + 15);
        let e = p
            .spawn(ProcSpec {
                argv: vec!["/nonexistent/cmd".into()],
                env: vec![],
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cmd"), "{e}");
    }
}
