//! The renderer's shell: loads the resources, reads their keys through a [`KvClient`],
//! renders, writes; once (`--onetime`), on an interval, or watching — one recursive
//! watch per resource from the index its last read saw, so no change is ever missed.

use super::commit::{self, WriteError, WriteOpts, WriteSeams, Written};
use super::feed::{self, Applied, Feed};
use super::funcs::Ctx;
use super::memkv::MemKv;
use super::resource::{self, Resource, ResourceError};
use super::template::{self, TemplateError};
use crate::client::{ClientError, KvClient};
use crate::kv::NodeView;
use flotilla_shims::Spawn;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// Values one resource may read (a render holds them all in memory).
pub const VALUES_MAX: usize = 1_000_000;
/// Bytes a template source may have.
pub const TEMPLATE_BYTES_MAX: usize = 1 << 20;

#[derive(Clone)]
pub struct RenderConfig {
    /// Holds `conf.d/*.toml` and `templates/`.
    pub confdir: String,
    /// `--prefix`: replaces every resource's own prefix.
    pub prefix: Option<String>,
    pub write: WriteOpts,
    /// After a render, changes are gathered this long before the next one (a burst of
    /// writes renders a few times, not once per write). The first change after a quiet
    /// spell renders at once.
    pub debounce_ms: u64,
    /// Two reloads of one resource are at least this far apart (`--min-reload-interval`).
    pub min_reload_interval_ms: u64,
    /// Interval mode: seconds between passes.
    pub interval_s: u64,
    /// Wait before retrying when the store cannot be reached.
    pub retry_ms: u64,
    /// Where `--noop` diffs go.
    pub out: Arc<dyn Fn(String) + Send + Sync>,
    /// Planted bug (test-only): the watch starts from "now" instead of the index the
    /// render read, so a change landing between the two is missed (confd 0.16's bug).
    pub bug_watch_from_now: bool,
}

impl std::fmt::Debug for RenderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderConfig")
            .field("confdir", &self.confdir)
            .field("prefix", &self.prefix)
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

impl RenderConfig {
    pub fn new(confdir: &str) -> Self {
        Self {
            confdir: confdir.trim_end_matches('/').to_string(),
            prefix: None,
            write: WriteOpts {
                cmd_timeout_ms: 60_000,
                ..WriteOpts::default()
            },
            debounce_ms: 100,
            min_reload_interval_ms: 0,
            interval_s: 600,
            retry_ms: 1_000,
            out: Arc::new(|s| print!("{s}")),
            bug_watch_from_now: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ProcessError {
    #[error("{file}: missing template {src}")]
    MissingTemplate { file: String, src: String },
    #[error("{file}: key {key}: not in the store (100: Key not found)")]
    KeyMissing { file: String, key: String },
    #[error("{file}: reading {key}: {err}")]
    Store {
        file: String,
        key: String,
        err: ClientError,
    },
    #[error("{file}: {key}: more than {VALUES_MAX} values")]
    TooMany { file: String, key: String },
    #[error("{file}: template {0}", file = .1)]
    Template(TemplateError, String),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Resource(ResourceError),
}

/// One pass over one resource: the store index its reads saw (where a watch resumes),
/// and what became of it.
pub struct Pass {
    pub index: Option<u64>,
    pub result: Result<Written, ProcessError>,
}

/// One resource's watch: its keys as last read and changed since, the feed of changes.
#[derive(Default)]
struct Watch {
    keys: Option<Arc<MemKv>>,
    /// The index `keys` reflect (queued events at or below it are skipped).
    applied: u64,
    feed: Option<mpsc::Receiver<Feed>>,
    last_render_ms: Option<u64>,
    last_reload_ms: Option<u64>,
}

impl Watch {
    /// The feed ended (history cleared): read everything again, from a new feed.
    fn restart(&mut self) {
        self.keys = None;
        self.feed = None;
        self.applied = 0;
    }
}

pub struct Renderer {
    kv: Arc<dyn KvClient>,
    seams: WriteSeams,
    spawn: Arc<dyn Spawn>,
    cfg: RenderConfig,
}

fn flatten(node: NodeView, out: &mut Vec<(String, String)>) {
    if let Some(v) = node.value {
        out.push((node.key, v));
    }
    for child in node.nodes.into_iter().flatten() {
        flatten(child, out);
    }
}

impl Renderer {
    pub fn new(
        kv: Arc<dyn KvClient>,
        seams: WriteSeams,
        spawn: Arc<dyn Spawn>,
        cfg: RenderConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            kv,
            seams,
            spawn,
            cfg,
        })
    }

    /// Every `conf.d/*.toml`, parsed; the bad ones as errors (the rest still run).
    pub async fn load(&self) -> Result<(Vec<Resource>, Vec<ResourceError>), ProcessError> {
        let confd = format!("{}/conf.d", self.cfg.confdir);
        let names = self.seams.files.list(&confd).await.map_err(|e| {
            ProcessError::Io(format!("{confd}: cannot list template resources: {e}"))
        })?;
        let templates = format!("{}/templates", self.cfg.confdir);
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for name in names.iter().filter(|n| n.ends_with(".toml")) {
            let file = format!("{confd}/{name}");
            let text = match self.seams.files.read(&file).await {
                Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
                Ok(None) => continue,
                Err(e) => {
                    bad.push(ResourceError {
                        file,
                        what: e.to_string(),
                    });
                    continue;
                }
            };
            let prefix = self.cfg.prefix.as_deref();
            match resource::parse(&file, &text, &templates, prefix, self.seams.host.as_ref()) {
                Ok(r) => ok.push(r),
                Err(e) => bad.push(e),
            }
        }
        Ok((ok, bad))
    }

    /// The resource's keys, as the template sees them, and the lowest index read.
    async fn fetch(&self, r: &Resource) -> (Option<u64>, Result<MemKv, ProcessError>) {
        let mut kv = MemKv::new();
        let mut index: Option<u64> = None;
        let mut pairs = Vec::new();
        for key in &r.keys {
            let got = match self.kv.get(key, true, true).await {
                Ok(Some(g)) => g,
                Ok(None) => {
                    let e = ProcessError::KeyMissing {
                        file: r.file.clone(),
                        key: key.clone(),
                    };
                    return (index, Err(e));
                }
                Err(ClientError::Store(e)) if e.code == 100 => {
                    let e2 = ProcessError::KeyMissing {
                        file: r.file.clone(),
                        key: key.clone(),
                    };
                    return (Some(index.map_or(e.index, |i| i.min(e.index))), Err(e2));
                }
                Err(err) => {
                    let e = ProcessError::Store {
                        file: r.file.clone(),
                        key: key.clone(),
                        err,
                    };
                    return (index, Err(e));
                }
            };
            index = Some(index.map_or(got.index, |i| i.min(got.index)));
            flatten(got.node, &mut pairs);
            if pairs.len() > VALUES_MAX {
                let e = ProcessError::TooMany {
                    file: r.file.clone(),
                    key: key.clone(),
                };
                return (index, Err(e));
            }
        }
        for (k, v) in pairs {
            // Store keys are clean already: only a real prefix needs stripping.
            let k = if r.prefix == "/" { k } else { r.strip(&k) };
            kv.insert(k, v);
        }
        (index, Ok(kv))
    }

    async fn source(&self, r: &Resource) -> Result<String, ProcessError> {
        let missing = || ProcessError::MissingTemplate {
            file: r.file.clone(),
            src: r.src.clone(),
        };
        let bytes = match self.seams.files.read(&r.src).await {
            Ok(Some(b)) => b,
            Ok(None) => return Err(missing()),
            Err(e) => return Err(ProcessError::Io(format!("{}: {}: {e}", r.file, r.src))),
        };
        if bytes.len() > TEMPLATE_BYTES_MAX {
            let why = format!("{}: larger than {TEMPLATE_BYTES_MAX} bytes", r.src);
            return Err(ProcessError::Io(why));
        }
        String::from_utf8(bytes)
            .map_err(|_| ProcessError::Io(format!("{}: {}: not UTF-8", r.file, r.src)))
    }

    /// Reads, renders and writes one resource.
    pub async fn process(&self, r: &Resource) -> Pass {
        let source = match self.source(r).await {
            Ok(s) => s,
            Err(e) => {
                return Pass {
                    index: None,
                    result: Err(e),
                }
            }
        };
        let (index, kv) = self.fetch(r).await;
        tracing::debug!(resource = %r.file, ?index, "keys read");
        let result = match kv {
            Ok(kv) => self.render_and_write(r, &source, Arc::new(kv)).await,
            Err(e) => Err(e),
        };
        Pass { index, result }
    }

    async fn render_and_write(
        &self,
        r: &Resource,
        source: &str,
        kv: Arc<MemKv>,
    ) -> Result<Written, ProcessError> {
        let ctx = Arc::new(Ctx {
            kv,
            host: self.seams.host.clone(),
            now_ms: self.seams.clock.now_wall_ms(),
        });
        let name = r.src.rsplit('/').next().unwrap_or(&r.src);
        let text = template::render(name, source, ctx)
            .map_err(|e| ProcessError::Template(e, r.file.clone()))?;
        tracing::debug!(resource = %r.file, bytes = text.len(), "rendered");
        let written = commit::write(&self.seams, r, text.into_bytes(), &self.cfg.write).await?;
        match &written {
            Written::WouldChange(diff) => {
                tracing::warn!("noop: {} would change", r.dest);
                (self.cfg.out)(diff.clone());
            }
            Written::Changed { reloaded } => {
                tracing::info!(reloaded, "target config {} has been updated", r.dest)
            }
            Written::Unchanged => tracing::debug!("target config {} in sync", r.dest),
        }
        Ok(written)
    }

    /// `--onetime`: every resource once. The errors (bad resources included), if any.
    pub async fn onetime(&self) -> Result<Vec<ProcessError>, ProcessError> {
        let (resources, bad) = self.load().await?;
        let mut errors: Vec<ProcessError> = bad.into_iter().map(ProcessError::Resource).collect();
        for r in &resources {
            if let Err(e) = self.process(r).await.result {
                errors.push(e);
            }
        }
        for e in &errors {
            tracing::error!("{e}");
        }
        Ok(errors)
    }

    /// Interval mode: every resource, again every `interval_s` (the resources are
    /// re-read each pass, as confd does). Returns only on a fatal write error.
    pub async fn run_interval(&self) -> ProcessError {
        loop {
            match self.onetime().await {
                Err(e) => tracing::error!("{e}"),
                Ok(errors) => {
                    if let Some(e) = errors.into_iter().find(ProcessError::is_fatal) {
                        return e;
                    }
                }
            }
            self.sleep_ms(self.cfg.interval_s.saturating_mul(1000))
                .await;
        }
    }

    /// Watch mode: one loop per resource (each on its own task). Returns the first
    /// fatal write error, or a load error; bad resources are reported and skipped.
    pub async fn run_watch(self: &Arc<Self>) -> ProcessError {
        let (resources, bad) = match self.load().await {
            Ok(x) => x,
            Err(e) => return e,
        };
        for e in &bad {
            tracing::error!("{e}");
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ProcessError>(1);
        for r in resources {
            let (me, tx) = (self.clone(), tx.clone());
            let fut = async move {
                let e = me.watch_resource(&r).await;
                let _ = tx.send(e).await;
            };
            self.spawn.spawn("render-watch", Box::pin(fut));
        }
        drop(tx);
        match rx.recv().await {
            Some(e) => e,
            // No resource to watch: nothing will ever change.
            None => std::future::pending().await,
        }
    }

    /// Renders `r` whenever its keys change. Returns only on a fatal write error.
    pub async fn watch_resource(&self, r: &Resource) -> ProcessError {
        let mut w = Watch::default();
        loop {
            self.pace(w.last_render_ms, w.last_reload_ms, r).await;
            self.drain(&mut w, r);
            if let Err(e) = self.pass(&mut w, r).await {
                return e;
            }
            match w.feed.as_mut() {
                Some(rx) => match rx.recv().await {
                    Some(Feed::Event(ev)) => self.take(&mut w, r, &ev),
                    Some(Feed::Reset) | None => w.restart(),
                },
                // Nothing read yet (the store unreachable): try again later.
                None => self.sleep_ms(self.cfg.retry_ms).await,
            }
        }
    }

    /// Applies every queued event.
    fn drain(&self, w: &mut Watch, r: &Resource) {
        while let Some(rx) = w.feed.as_mut() {
            match rx.try_recv() {
                Ok(Feed::Event(ev)) => self.take(w, r, &ev),
                Ok(Feed::Reset) => w.restart(),
                Err(_) => break,
            }
        }
    }

    fn take(&self, w: &mut Watch, r: &Resource, ev: &crate::kv::Event) {
        // Events the last read already reflects change nothing.
        if ev.index <= w.applied {
            return;
        }
        w.applied = ev.index;
        let Some(kv) = w.keys.as_mut() else { return };
        if feed::apply(Arc::make_mut(kv), r, ev) == Applied::Reread {
            w.keys = None;
        }
    }

    /// Reads the keys if they are not held, starts the feed if none runs, renders and
    /// writes. `Err` only for a fatal write error.
    async fn pass(&self, w: &mut Watch, r: &Resource) -> Result<(), ProcessError> {
        let source = match self.source(r).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        };
        if w.keys.is_none() {
            let (index, kv) = self.fetch(r).await;
            if let Some(i) = index {
                w.applied = i;
                if w.feed.is_none() {
                    w.feed = Some(self.start_feed(r, i + 1));
                }
            }
            match kv {
                Ok(kv) => w.keys = Some(Arc::new(kv)),
                Err(e) => tracing::error!("{e}"),
            }
        }
        let (Some(kv), Some(source)) = (&w.keys, source) else {
            return Ok(());
        };
        let result = self.render_and_write(r, &source, kv.clone()).await;
        let now = self.now_ms();
        w.last_render_ms = Some(now);
        match result {
            Ok(Written::Changed { reloaded: true }) => w.last_reload_ms = Some(now),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e @ ProcessError::Write(WriteError::Reload { .. })) => {
                w.last_reload_ms = Some(now);
                tracing::error!("{e}");
            }
            Err(e) => tracing::error!("{e}"),
            Ok(_) => {}
        }
        Ok(())
    }

    fn start_feed(&self, r: &Resource, since: u64) -> mpsc::Receiver<Feed> {
        let (tx, rx) = mpsc::channel(feed::FEED_EVENTS_MAX);
        let fut = feed::run(
            self.kv.clone(),
            self.seams.clock.clone(),
            r.watch_root(),
            feed::Start {
                since,
                from_now: self.cfg.bug_watch_from_now,
            },
            tx,
            self.cfg.retry_ms,
        );
        self.spawn.spawn("render-feed", Box::pin(fut));
        rx
    }

    /// Waits out the debounce after the last render, and the minimum gap between reloads
    /// when the resource reloads something.
    async fn pace(&self, last_render_ms: Option<u64>, last_reload_ms: Option<u64>, r: &Resource) {
        let now = self.now_ms();
        let mut until = last_render_ms.map_or(0, |t| t + self.cfg.debounce_ms);
        if r.reload_cmd.is_some() {
            until = until.max(last_reload_ms.map_or(0, |t| t + self.cfg.min_reload_interval_ms));
        }
        if until > now {
            self.sleep_ms(until - now).await;
        }
    }

    fn now_ms(&self) -> u64 {
        self.seams.clock.now_mono().as_millis() as u64
    }

    async fn sleep_ms(&self, ms: u64) {
        self.seams.clock.sleep(Duration::from_millis(ms)).await
    }
}

impl ProcessError {
    pub fn is_fatal(&self) -> bool {
        matches!(self, ProcessError::Write(w) if w.is_fatal())
    }
}
