//! `flotilla confd`: a work-alike of confd's command line (two-dash flags). It reads
//! template resources from `--confdir` and renders them from flotilla or a real etcd
//! (etcd's v2 API, through [`crate::client::http::HttpKv`]).

use crate::client::endpoints::Endpoints;
use crate::client::http::HttpKv;
use crate::render::commit::{WriteOpts, WriteSeams};
use crate::render::runner::{RenderConfig, Renderer};
use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_shims::host::RealHost;
use flotilla_shims::{Spawn, TokioClock, TokioSpawn};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ConfdArgs {
    /// Holds `conf.d/*.toml` (template resources) and `templates/`.
    #[arg(long, default_value = "/etc/confd")]
    pub confdir: String,
    /// The store: `etcd` (etcd's v2 API, served by flotilla and by etcd with --enable-v2).
    #[arg(long, default_value = "etcd")]
    pub backend: String,
    /// A store URL; repeat for several.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Store URLs, comma-separated (joined to any `--node`).
    #[arg(long, env = "FLOTILLA_ENDPOINTS")]
    pub endpoints: Option<String>,
    #[command(flatten)]
    pub tls: super::tls::ClientTlsArgs,
    /// Replaces every resource's key prefix.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Render every resource once and exit (1 if any failed).
    #[arg(long)]
    pub onetime: bool,
    /// Seconds between passes in interval mode (without `--watch` or `--onetime`).
    #[arg(long, default_value_t = 600)]
    pub interval: u64,
    /// Render whenever a resource's keys change.
    #[arg(long)]
    pub watch: bool,
    /// Show what would change as a unified diff; write nothing.
    #[arg(long)]
    pub noop: bool,
    /// Write files but run neither check_cmd nor reload_cmd.
    #[arg(long)]
    pub sync_only: bool,
    /// Keep a stage file that was not renamed into place (a failed check, no change).
    #[arg(long)]
    pub keep_stage_file: bool,
    /// debug, info, warn or error.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Watch mode: changes are gathered this long after a render before the next one.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// The least time between two reloads of one resource: `0`, `500ms`, `5s`.
    #[arg(long, default_value = "0")]
    pub min_reload_interval: String,
    /// How long check_cmd or reload_cmd may run before it is killed: `60s`.
    #[arg(long, default_value = "60s")]
    pub cmd_timeout: String,
    /// How long one request to the store may take, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub request_timeout_ms: u64,
}

/// `0`, a bare number of seconds, or a duration with units (`500ms`, `5s`, `1m`).
pub fn parse_duration_ms(flag: &str, v: &str) -> Result<u64> {
    if let Ok(s) = v.trim().parse::<u64>() {
        return Ok(s.saturating_mul(1000));
    }
    let d = humantime::parse_duration(v.trim())
        .with_context(|| format!("{flag} {v:?}: not a duration (500ms, 5s, 1m)"))?;
    Ok(d.as_millis() as u64)
}

impl ConfdArgs {
    fn endpoints(&self) -> Result<Endpoints> {
        let mut eps: Vec<String> = self.nodes.clone();
        if let Some(e) = &self.endpoints {
            eps.push(e.clone());
        }
        let list = match eps.join(",") {
            l if l.trim_matches([',', ' ']).is_empty() => "http://127.0.0.1:2379".to_string(),
            l => l,
        };
        Endpoints::parse("--node", &list).map_err(anyhow::Error::msg)
    }

    /// The renderer's configuration from the flags.
    pub fn render_config(&self) -> Result<RenderConfig> {
        if self.backend != "etcd" {
            bail!(
                "--backend {:?}: flotilla speaks etcd's v2 API only (use --backend etcd)",
                self.backend
            );
        }
        if self.interval == 0 {
            bail!("--interval must be at least 1 second");
        }
        let mut cfg = RenderConfig::new(&self.confdir);
        cfg.prefix = self.prefix.clone();
        cfg.write = WriteOpts {
            noop: self.noop,
            sync_only: self.sync_only,
            keep_stage_file: self.keep_stage_file,
            cmd_timeout_ms: parse_duration_ms("--cmd-timeout", &self.cmd_timeout)?.max(1),
            bug_skip_sync: false,
        };
        cfg.debounce_ms = self.debounce_ms.min(60_000);
        cfg.min_reload_interval_ms =
            parse_duration_ms("--min-reload-interval", &self.min_reload_interval)?;
        cfg.interval_s = self.interval;
        Ok(cfg)
    }
}

/// The tracing filter `--log-level` asks for.
pub fn log_filter(level: &str) -> Result<&'static str> {
    Ok(match level {
        "debug" => "debug,raft=warn",
        "info" => "info,raft=warn",
        "warn" | "warning" => "warn",
        "error" | "panic" | "fatal" => "error",
        other => bail!("--log-level {other:?}: use debug, info, warn or error"),
    })
}

/// The production seams a renderer writes through.
pub fn real_seams(clock: Arc<TokioClock>) -> WriteSeams {
    WriteSeams {
        files: Arc::new(flotilla_shims::files::RealFiles),
        procs: Arc::new(flotilla_shims::process::HostProcesses::new()),
        clock,
        host: Arc::new(RealHost),
    }
}

pub fn run(a: ConfdArgs) -> Result<()> {
    let cfg = a.render_config()?;
    let endpoints = a.endpoints()?;
    a.tls.install(endpoints.urls())?;
    if !(1..=600_000).contains(&a.request_timeout_ms) {
        bail!("--request-timeout-ms must be between 1 and 600000");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    rt.block_on(async move {
        let clock = Arc::new(TokioClock::new());
        let kv = Arc::new(HttpKv::new(
            endpoints,
            Duration::from_millis(a.request_timeout_ms),
        ));
        let spawn: Arc<dyn Spawn> = Arc::new(TokioSpawn);
        let r = Renderer::new(kv, real_seams(clock), spawn, cfg);
        if a.onetime {
            let errors = r.onetime().await?;
            if !errors.is_empty() {
                bail!("{} template resource(s) failed", errors.len());
            }
            return Ok(());
        }
        let fatal = if a.watch {
            r.run_watch().await
        } else {
            r.run_interval().await
        };
        Err(fatal.into())
    })
}
