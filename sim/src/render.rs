//! The renderer in the simulated world: every node runs an in-process confd over the
//! keys the KV clients write. Its check and reload commands are simulated processes that
//! record what they saw, and its files are watched, so the world can check that
//!
//! - a destination is only ever a whole render whose content passed its check,
//! - a reload follows a changed, checked write (never an unchanged one),
//! - after the heal every node's destination is the template over the final KV state.

use flotilla_shims::files::MemFiles;
use flotilla_shims::process::{ProcError, ProcSpec, Processes, Signal};
use flotilla_shims::{BoxFuture, FileMeta, Files};
use madsim::rand::Rng;
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const CONFDIR: &str = "/etc/confd";
pub const DEST: &str = "/etc/app/app.conf";
/// Every KV client key, one line each, then an end marker that shows the file is whole.
pub const TEMPLATE: &str = "{{range gets \"/k*\"}}{{.Key}}={{.Value}}\n{{end}}# end\n";
pub const RESOURCE: &str =
    "[template]\nsrc = \"app.tmpl\"\ndest = \"/etc/app/app.conf\"\nkeys = [\"/\"]\n\
    check_cmd = \"sim-check {{.src}}\"\nreload_cmd = \"sim-reload\"\n";

/// The stack scenario's upstream: the seed's nginx template over the presence keys.
pub const STACK_TEMPLATE: &str = "upstream app_pool {\n\
    {{ range getvs \"/services/app/*\" }}    server {{ . }};\n{{ end }}}\n# end\n";
pub const STACK_RESOURCE: &str =
    "[template]\nsrc = \"app.tmpl\"\ndest = \"/etc/app/app.conf\"\nkeys = [\"/services/app\"]\n\
    check_cmd = \"sim-check {{.src}}\"\nreload_cmd = \"sim-reload\"\n";

/// What the stack's upstream should hold for these presence values (`getvs` sorts them).
pub fn stack_expected(values: &[String]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort();
    let servers: String = sorted
        .iter()
        .map(|v| format!("    server {v};\n"))
        .collect();
    format!("upstream app_pool {{\n{servers}}}\n# end\n")
}

/// The check refuses a render holding a value that ends in `3` (one value in ten).
pub fn refused(content: &str) -> Option<String> {
    content
        .lines()
        .find(|l| l.contains('=') && l.ends_with('3'))
        .map(String::from)
}

/// What the destination should hold for these keys (sorted by key, as `gets` sorts).
pub fn expected(kv: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in kv.iter().filter(|(k, _)| k.starts_with("/k")) {
        out.push_str(&format!("{k}={v}\n"));
    }
    out + "# end\n"
}

/// One node's renderer, as seen from outside.
#[derive(Debug, Default)]
pub struct RenderLog {
    /// Destination contents, in the order they were put in place.
    pub commits: Vec<String>,
    /// Commits since the last reload.
    pub unreloaded: u32,
    pub reloads: u32,
    pub checks_refused: u32,
    /// What the world's checks found wrong.
    pub violations: Vec<String>,
}

/// The node's files with the destination's replacements recorded.
#[derive(Clone)]
pub struct WatchedFiles {
    pub inner: MemFiles,
    pub log: Arc<Mutex<RenderLog>>,
}

impl WatchedFiles {
    /// The node's files with the resource and template in place: the KV keys' listing,
    /// or with `stack` the upstream over the presence keys.
    pub fn new(inner: MemFiles, stack: bool) -> Self {
        let (resource, template) = if stack {
            (STACK_RESOURCE, STACK_TEMPLATE)
        } else {
            (RESOURCE, TEMPLATE)
        };
        inner.put(
            &format!("{CONFDIR}/conf.d/app.toml"),
            resource.as_bytes(),
            0o644,
        );
        inner.put(
            &format!("{CONFDIR}/templates/app.tmpl"),
            template.as_bytes(),
            0o644,
        );
        Self {
            inner,
            log: Arc::default(),
        }
    }

    pub fn dest(&self) -> Option<String> {
        self.inner
            .get(DEST)
            .map(|(d, _)| String::from_utf8_lossy(&d).into_owned())
    }

    /// A power loss on the machine: unsynced files lose their data. A destination must
    /// come through whole (or as it was): anything else is a violation.
    pub fn power_loss(&self) {
        self.inner.power_loss();
        if let Some(d) = self.dest().filter(|d| !d.ends_with("# end\n")) {
            self.log
                .lock()
                .expect("render log")
                .violations
                .push(format!(
                    "after a power loss the destination is not a whole render ({d:?}): \
                 it was renamed into place before its data was synced"
                ));
        }
    }

    fn committed(&self, content: String) {
        let mut log = self.log.lock().expect("render log");
        if !content.ends_with("# end\n") {
            log.violations
                .push(format!("destination not a whole render: {content:?}"));
        }
        if let Some(line) = refused(&content) {
            log.violations
                .push(format!("destination holds a refused value: {line}"));
        }
        if log.commits.last() == Some(&content) {
            log.violations
                .push("an unchanged render was written again".into());
        }
        log.commits.push(content);
        log.unreloaded += 1;
    }
}

impl Files for WatchedFiles {
    fn read(&self, path: &str) -> BoxFuture<'static, io::Result<Option<Vec<u8>>>> {
        self.inner.read(path)
    }

    fn write_atomic(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> BoxFuture<'static, io::Result<()>> {
        self.inner.write_atomic(path, data, mode)
    }

    fn stat(&self, path: &str) -> BoxFuture<'static, io::Result<Option<FileMeta>>> {
        self.inner.stat(path)
    }

    fn stage(
        &self,
        stage: &str,
        data: Vec<u8>,
        meta: FileMeta,
    ) -> BoxFuture<'static, io::Result<()>> {
        self.inner.stage(stage, data, meta)
    }

    fn sync(&self, path: &str) -> BoxFuture<'static, io::Result<()>> {
        self.inner.sync(path)
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'static, io::Result<()>> {
        let r = self.inner.rename(from, to);
        if to == DEST {
            self.committed(self.dest().unwrap_or_default());
        }
        r
    }

    fn sync_dir(&self, dir: &str) -> BoxFuture<'static, io::Result<()>> {
        self.inner.sync_dir(dir)
    }

    fn remove(&self, path: &str) -> BoxFuture<'static, io::Result<()>> {
        self.inner.remove(path)
    }

    fn list(&self, dir: &str) -> BoxFuture<'static, io::Result<Vec<String>>> {
        self.inner.list(dir)
    }
}

/// `sim-check PATH` and `sim-reload`, run against the node's files; each takes a seeded
/// few milliseconds, so a crash can land between the stage and the rename.
#[derive(Clone)]
pub struct RenderProcs {
    files: WatchedFiles,
    runs: Arc<Mutex<BTreeMap<u64, (Duration, i64)>>>,
}

impl RenderProcs {
    pub fn new(files: WatchedFiles) -> Self {
        Self {
            files,
            runs: Arc::default(),
        }
    }

    fn outcome(&self, cmd: &str) -> i64 {
        let mut words = cmd.split_whitespace();
        match (words.next(), words.next()) {
            (Some("sim-check"), Some(path)) => {
                let content = self
                    .files
                    .inner
                    .get(path)
                    .map(|(d, _)| d)
                    .unwrap_or_default();
                let refused = refused(&String::from_utf8_lossy(&content)).is_some();
                if refused {
                    self.files.log.lock().expect("render log").checks_refused += 1;
                }
                i64::from(refused)
            }
            (Some("sim-reload"), None) => {
                let mut log = self.files.log.lock().expect("render log");
                if log.unreloaded == 0 {
                    log.violations
                        .push("reload without a changed write before it".into());
                }
                log.unreloaded = 0;
                log.reloads += 1;
                0
            }
            _ => 127,
        }
    }
}

impl Processes for RenderProcs {
    fn spawn(&self, spec: ProcSpec) -> BoxFuture<'static, Result<u64, ProcError>> {
        let cmd = spec.argv.get(2).cloned().unwrap_or_default();
        let code = self.outcome(&cmd);
        let took = Duration::from_millis(madsim::rand::thread_rng().gen_range(1..20));
        let mut runs = self.runs.lock().expect("runs lock");
        let h = runs.keys().next_back().map_or(1, |h| h + 1);
        runs.insert(h, (took, code));
        Box::pin(async move { Ok(h) })
    }

    fn wait(&self, handle: u64) -> BoxFuture<'static, Result<i64, ProcError>> {
        let run = self.runs.lock().expect("runs lock").remove(&handle);
        Box::pin(async move {
            let (took, code) = run.ok_or(ProcError::NotFound(handle))?;
            madsim::time::sleep(took).await;
            Ok(code)
        })
    }

    fn signal(&self, handle: u64, _sig: Signal) -> Result<(), ProcError> {
        Err(ProcError::NotFound(handle))
    }

    fn output(&self, _handle: u64) -> Vec<String> {
        vec![]
    }
}
