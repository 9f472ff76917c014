//! `flotilla agent`: a machine that is not a Raft member. It reaches the cluster through
//! the client API (etcd's v2 HTTP, [`crate::client::http::HttpKv`]) — 3–5 members, any
//! number of machines — and runs the units placed on it as a member's agent does.

use super::machine::{stored_machine_id, MachineArgs};
use crate::api::journal::agent_handler;
use crate::client::endpoints::Endpoints;
use crate::client::http::HttpKv;
use crate::client::KvClient;
use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_shims::{Spawn, TokioClock, TokioSpawn};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Client URLs of the cluster's members, comma-separated.
    #[arg(
        long,
        default_value = "http://127.0.0.1:2379",
        env = "FLOTILLA_ENDPOINTS"
    )]
    pub endpoints: String,
    /// Where to serve this machine's unit journals (`flotilla units journal`) and the
    /// dashboard (`/ui/`, its API requests passed to the members).
    #[arg(long, default_value = "http://127.0.0.1:2391")]
    pub listen: String,
    /// Where this machine keeps its id (`machine-id`) when `--machine-id` is not given.
    #[arg(long, default_value = "./flotilla-agent.data")]
    pub data_dir: PathBuf,
    /// How long one request to the cluster may take, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    #[command(flatten)]
    pub machine: MachineArgs,
    #[command(flatten)]
    pub tls: super::tls::ClientTlsArgs,
    #[command(flatten)]
    pub net: super::net::NetArgs,
}

pub fn run(a: AgentArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    rt.block_on(serve(a))
}

async fn serve(a: AgentArgs) -> Result<()> {
    let endpoints = Endpoints::parse("--endpoints", &a.endpoints).map_err(anyhow::Error::msg)?;
    a.tls.install(endpoints.urls())?;
    let listen = a
        .listen
        .strip_prefix("http://")
        .with_context(|| format!("--listen {:?}: must be an http:// URL", a.listen))?
        .trim_end_matches('/')
        .to_string();
    if !(1..=600_000).contains(&a.request_timeout_ms) {
        bail!("--request-timeout-ms must be between 1 and 600000");
    }
    let mut machine = a
        .machine
        .config(std::slice::from_ref(&a.listen), &a.listen)?;
    if machine.id.is_empty() {
        flotilla_shims::files::ensure_dir(&a.data_dir)
            .with_context(|| format!("creating {}", a.data_dir.display()))?;
        machine.id = stored_machine_id(&a.data_dir)?;
    }
    let cfg = a.machine.agent_config(machine)?;
    let net = a.net.options(&a.data_dir)?;
    let dns = a.net.dns()?;
    let (docker_net, unit_net) = a.net.unit_network()?;
    let mut seams = a.machine.seams(&cfg.machine.id);
    seams.network = unit_net.with_dns(dns.as_ref().map(|d| d.container_dns()).unwrap_or_default());
    let clock = Arc::new(TokioClock::new());
    let spawn: Arc<dyn Spawn> = Arc::new(TokioSpawn);
    let relay = Arc::new(crate::api::ui::relay::Relay {
        endpoints: endpoints.urls().to_vec(),
        cors: Default::default(),
        timeout: Duration::from_millis(a.request_timeout_ms),
    });
    let kv: Arc<dyn KvClient> = Arc::new(HttpKv::new(
        endpoints,
        Duration::from_millis(a.request_timeout_ms),
    ));
    let id = cfg.machine.id.clone();
    let seed = flotilla_shims::SeededRng::from_entropy().next_u64();
    if let Some(dns) = dns {
        dns.start(kv.clone(), clock.clone(), &*spawn).await?;
    }
    let status = super::net::start(net, kv.clone(), clock.clone(), &*spawn, seed)?;
    if let (Some(d), Some(status)) = (docker_net, status) {
        d.follow(status, seams.containers.clone(), clock.clone(), &*spawn);
    }
    let handle = crate::agent::start(cfg, seams.with_store(kv), clock, spawn.clone());
    let listener = flotilla_shims::tcp::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    spawn.spawn(
        "agent-http",
        Box::pin(flotilla_shims::http::accept_tokio(
            listener,
            agent_handler(handle, Some(relay)),
            spawn.clone(),
            64 << 10,
            None,
        )),
    );
    tracing::info!(machine = %id, listen = %a.listen, "flotilla agent running");
    flotilla_shims::task::stop_signal().await;
    super::net::on_stop(a.net.network).await;
    Ok(())
}
