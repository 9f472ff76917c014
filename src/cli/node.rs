//! `flotilla node`: production wiring (Tokio, TCP, the WAL disk) of [`crate::node`].

use super::machine::{stored_machine_id, MachineArgs};
use crate::node::{start, ClusterState, Env, NodeConfig, RunSeams};
use crate::raft::{peer_addr, RaftConfig};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use flotilla_shims::tcp::{StreamTransport, TlsConnect, TokioConnect, INBOUND_QUEUE_FRAMES_MAX};
use flotilla_shims::wal_disk::WalDisk;
use flotilla_shims::{SeededRng, Spawn, TokioClock, TokioSpawn};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory.
    #[arg(long, default_value = "./flotilla.data")]
    pub data_dir: PathBuf,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Client URLs to advertise to the cluster (default: the listen URLs).
    #[arg(long)]
    pub advertise_client_urls: Option<String>,
    /// URL to listen on for peer traffic.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// Peer URLs to advertise (default: the listen URL).
    #[arg(long)]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster, `name=peerURL,...` (default: this member alone).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap, `existing` to join a running cluster.
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Time between heartbeats, in milliseconds (the Raft tick).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Election timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Event-loop threads: 0 runs the node on one thread (the default); N > 0 uses a
    /// work-stealing runtime with N workers, for machines with cores to spare.
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
    /// Applied entries between snapshots to disk, at the least (etcd's default). Memory
    /// holds only the last `--snapshot-catchup-entries` applied entries whatever this is.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// A snapshot also waits until the log written since the last one is this percentage
    /// of that snapshot's size, so that snapshot work per write stays constant as the
    /// store grows (0: snapshot every `--snapshot-count` entries, as etcd does).
    #[arg(long, default_value_t = 100)]
    pub snapshot_log_percent: u64,
    /// Applied entries kept (in memory and after a disk snapshot) for slow followers;
    /// one further behind is sent a snapshot.
    #[arg(long, default_value_t = 5_000)]
    pub snapshot_catchup_entries: u64,
    /// Largest client request body (and value), in bytes.
    #[arg(long, default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// How long a write may wait for commit, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// Origins allowed to read answers from a browser (CORS), comma-separated, as etcd's
    /// `--cors`: empty (the default, as etcd's) or `*` allows any origin.
    #[arg(long, default_value = "")]
    pub cors: String,
    /// A member that is not a machine: it stores and schedules, it runs no units.
    #[arg(long)]
    pub no_agent: bool,
    /// Seconds between scheduling passes when nothing changes (fleet's
    /// engine_reconcile_interval); changes are scheduled at once.
    #[arg(long, default_value_t = 2.0)]
    pub engine_reconcile_interval: f64,
    /// Run confd in this node: render the template resources in DIR (`conf.d/*.toml`,
    /// `templates/`) in watch mode, through the member's own client.
    #[arg(long)]
    pub confdir: Option<String>,
    #[command(flatten)]
    pub machine: MachineArgs,
    #[command(flatten)]
    pub tls: super::tls::ServerTlsArgs,
    #[command(flatten)]
    pub net: super::net::NetArgs,
}

impl NodeArgs {
    pub fn default_args() -> Self {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: NodeArgs,
        }
        Wrap::parse_from(["flotilla"]).a
    }
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

fn host_port(flag: &str, url: &str) -> Result<String> {
    if !url.starts_with("http://") && !url.starts_with("https://") {
        bail!("{flag}: {url:?} must be an http:// or https:// URL");
    }
    match peer_addr(url) {
        Some(a) if a.contains(':') => Ok(a),
        _ => bail!("{flag}: {url:?} has no host:port"),
    }
}

fn config(a: &NodeArgs) -> Result<NodeConfig> {
    let peer_urls = split_urls(
        a.initial_advertise_peer_urls
            .as_deref()
            .unwrap_or(&a.listen_peer_urls),
    );
    let client_urls = split_urls(
        a.advertise_client_urls
            .as_deref()
            .unwrap_or(&a.listen_client_urls),
    );
    for u in &peer_urls {
        host_port("--initial-advertise-peer-urls", u)?;
    }
    let cluster = match &a.initial_cluster {
        Some(c) => c.clone(),
        None => peer_urls
            .iter()
            .map(|u| format!("{}={u}", a.name))
            .collect::<Vec<_>>()
            .join(","),
    };
    let initial_cluster = parse_cluster(&cluster)?;
    check_numbers(a)?;
    let agent = if a.no_agent {
        None
    } else {
        let url = client_urls.first().cloned().unwrap_or_default();
        let machine = a.machine.config(&client_urls, &url)?;
        Some(a.machine.agent_config(machine)?)
    };
    Ok(NodeConfig {
        render: a
            .confdir
            .as_deref()
            .map(crate::render::runner::RenderConfig::new),
        agent,
        engine: crate::sched::engine::EngineConfig {
            reconcile_ms: (a.engine_reconcile_interval * 1000.0) as u64,
            ..Default::default()
        },
        name: a.name.clone(),
        peer_urls,
        client_urls,
        initial_cluster,
        cluster_state: if a.initial_cluster_state == "existing" {
            ClusterState::Existing
        } else {
            ClusterState::New
        },
        raft: raft_config(a),
        request_timeout_ms: a.request_timeout_ms,
        value_bytes_max: a.max_request_bytes,
        inbox_inputs_max: INBOX_INPUTS_MAX,
        cors: crate::api::cors::Cors::parse(&a.cors).map_err(anyhow::Error::msg)?,
        ui: crate::api::ui::UiConfig {
            network_prefix: a.net.network_prefix.trim_end_matches('/').to_string(),
            dns_domain: a
                .net
                .dns_addr
                .is_some()
                .then(|| a.net.dns_domain.trim_matches('.').to_string()),
        },
    })
}

/// Client requests queued for the Ready loop at most (more wait in their handlers).
const INBOX_INPUTS_MAX: usize = 65_536;

/// `--initial-cluster`'s `name=peerURL,...`.
fn parse_cluster(cluster: &str) -> Result<Vec<(String, String)>> {
    let mut out = vec![];
    for item in split_urls(cluster) {
        let Some((name, url)) = item.split_once('=') else {
            bail!("--initial-cluster: {item:?} is not name=peerURL");
        };
        host_port("--initial-cluster", url)?;
        out.push((name.to_string(), url.to_string()));
    }
    Ok(out)
}

/// The numeric flags that must make sense together.
fn check_numbers(a: &NodeArgs) -> Result<()> {
    if a.heartbeat_interval == 0 || a.election_timeout < 5 * a.heartbeat_interval {
        bail!("--election-timeout must be at least 5 x --heartbeat-interval (and both non-zero)");
    }
    if a.worker_threads > 1024 {
        bail!("--worker-threads must be at most 1024 (0 runs the node on one thread)");
    }
    if a.snapshot_count == 0 {
        bail!("--snapshot-count must be positive");
    }
    if !(a.engine_reconcile_interval > 0.0 && a.engine_reconcile_interval <= 3600.0) {
        bail!("--engine-reconcile-interval must be between 0 and 3600 seconds");
    }
    Ok(())
}

fn raft_config(a: &NodeArgs) -> RaftConfig {
    RaftConfig {
        tick_ms: a.heartbeat_interval,
        election_ticks: (a.election_timeout / a.heartbeat_interval) as usize,
        heartbeat_ticks: 1,
        snapshot_entries: a.snapshot_count,
        snapshot_log_percent: a.snapshot_log_percent,
        catchup_entries: a.snapshot_catchup_entries,
        ..RaftConfig::default()
    }
}

pub fn run(a: NodeArgs) -> Result<()> {
    let cfg = config(&a)?;
    // One event-loop thread by default: the Ready loop is one task anyway, and on a
    // small machine cross-thread wakeups cost more than a second core gains (measured in
    // the README's benchmark notes). Syncs run on Tokio's blocking pool either way.
    let mut b = match a.worker_threads {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let rt = b
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    rt.block_on(serve(a, cfg))
}

async fn serve(a: NodeArgs, mut cfg: NodeConfig) -> Result<()> {
    let dir = a.data_dir.display().to_string();
    let net_opts = a.net.options(&a.data_dir)?;
    let disk = open_disk(&a, &cfg)?;
    if let Some(m) = cfg.agent.as_mut().map(|a| &mut a.machine) {
        if m.id.is_empty() {
            m.id = stored_machine_id(&a.data_dir)?;
        }
    }
    let clock = Arc::new(TokioClock::new());
    let spawn = Arc::new(TokioSpawn);
    let dns = a.net.dns()?;
    let (docker_net, unit_net) = a.net.unit_network()?;
    let unit_net = unit_net.with_dns(dns.as_ref().map(|d| d.container_dns()).unwrap_or_default());
    let env = production_env(&a, &cfg, clock.clone(), spawn.clone(), unit_net);
    let peer_tls = a.tls.peer(&split_urls(&a.listen_peer_urls))?;
    let client_tls = a.tls.client_listener(&split_urls(&a.listen_client_urls))?;
    a.tls.install_client()?;
    let net = peer_transport(&cfg, &peer_tls, &env)?;
    let (peer_tx, peer_rx) = mpsc::channel(INBOUND_QUEUE_FRAMES_MAX);
    let peer_listen = host_port("--listen-peer-urls", &a.listen_peer_urls)?;
    let peer_listener = flotilla_shims::tcp::bind(&peer_listen)
        .await
        .with_context(|| format!("listening for peers on {peer_listen}"))?;
    let client_listeners = bind_clients(&a).await?;
    let started = start(&cfg, &env, Box::new(disk), net, peer_rx)
        .await
        .with_context(|| format!("starting from data dir {dir}"))?;
    // A member reaches the store in-process; it may be the one the config goes into,
    // so the network waits for the config key rather than refusing to start.
    let kv = Arc::new(crate::client::inproc::InProc::new(
        started.handle.clone(),
        clock.clone(),
    ));
    if let Some(dns) = dns {
        dns.start(kv.clone(), clock.clone(), &*spawn).await?;
    }
    let status = super::net::start(net_opts, kv, clock.clone(), &*spawn, env.seed ^ 0x6e6574)?;
    let containers = env.agent.as_ref().map(|s| s.containers.clone());
    if let (Some(d), Some(status), Some(c)) = (docker_net, status, containers) {
        d.follow(status, c, clock.clone(), &*spawn);
    }
    let peer_accept = flotilla_shims::tcp::accept_tokio(
        peer_listener,
        peer_tx,
        spawn.clone(),
        peer_tls.map(|(listener, _)| listener),
    );
    spawn.spawn("peer-accept", Box::pin(peer_accept));
    for l in client_listeners {
        let body_max = a.max_request_bytes + 4096;
        let tls = client_tls.clone();
        let accept = flotilla_shims::http::accept_tokio(
            l,
            started.handler.clone(),
            spawn.clone(),
            body_max,
            tls,
        );
        spawn.spawn("http-accept", Box::pin(accept));
    }
    tracing::info!(
        name = %cfg.name, id = format!("{:x}", started.id),
        clients = %a.listen_client_urls, peers = %a.listen_peer_urls,
        machine = cfg.agent.as_ref().map(|c| c.machine.id.as_str()).unwrap_or("-"),
        "flotilla member serving"
    );
    let net_on = a.net.network;
    tokio::select! {
        r = run_until_stopped(started) => r,
        _ = flotilla_shims::task::stop_signal() => {
            // Every acknowledged write is already synced: nothing to flush.
            super::net::on_stop(net_on).await;
            Ok(())
        }
    }
}

/// The seams of a real machine: Tokio's clock and tasks, Docker, the host's files.
fn production_env(
    a: &NodeArgs,
    cfg: &NodeConfig,
    clock: Arc<TokioClock>,
    spawn: Arc<TokioSpawn>,
    network: crate::net::docker::UnitNetwork,
) -> Env {
    Env {
        clock: clock.clone(),
        spawn,
        seed: SeededRng::from_entropy().next_u64(),
        agent: cfg.agent.as_ref().map(|c| RunSeams {
            network,
            ..a.machine.seams(&c.machine.id)
        }),
        render: cfg.render.as_ref().map(|_| super::confd::real_seams(clock)),
    }
}

/// The member runs until its driver stops (a failed sync) or its renderer gives up.
async fn run_until_stopped(started: crate::node::Started) -> Result<()> {
    let Some(renderer) = started.renderer else {
        started.driver.run().await.context("member stopped")?;
        return Ok(());
    };
    tokio::select! {
        r = started.driver.run() => r.context("member stopped")?,
        e = renderer.run_watch() => return Err(e).context("renderer stopped the member"),
    }
    Ok(())
}

/// The data dir, replayed and checked read-only: nothing is written before the identity
/// check passes, so a refused dir is left exactly as it was.
fn open_disk(a: &NodeArgs, cfg: &NodeConfig) -> Result<WalDisk> {
    let dir = a.data_dir.display().to_string();
    let mut disk = WalDisk::open(&a.data_dir).with_context(|| format!("opening data dir {dir}"))?;
    crate::node::check_disk(cfg, &mut disk).with_context(|| format!("checking data dir {dir}"))?;
    if std::env::var("FLOTILLA_TEST_PLANTED_BUG").as_deref() == Ok("ignore-sync-errors") {
        tracing::error!(
            "FLOTILLA_TEST_PLANTED_BUG: this member ignores failed fsyncs (tests only)"
        );
        disk.plant_ignore_sync_errors();
    }
    Ok(disk)
}

/// The peer listener's TLS and what peers are dialled with.
type PeerTls = (
    Arc<flotilla_shims::tls::Listener>,
    Arc<flotilla_shims::tls::ClientConfig>,
);

/// Peer connections, over TLS when the peer flags ask for it.
fn peer_transport(
    cfg: &NodeConfig,
    peer_tls: &Option<PeerTls>,
    env: &Env,
) -> Result<Arc<dyn flotilla_shims::PeerNet>> {
    let members = crate::node::initial_members(cfg)?;
    let my_id = members
        .iter()
        .find(|m| m.name == cfg.name)
        .map_or(0, |m| m.id);
    let (clock, spawn) = (env.clock.clone(), env.spawn.clone());
    Ok(match peer_tls {
        Some((_, connect)) => Arc::new(StreamTransport::new(
            my_id,
            TlsConnect(connect.clone()),
            clock,
            spawn,
        )),
        None => Arc::new(StreamTransport::new(my_id, TokioConnect, clock, spawn)),
    })
}

/// Every `--listen-client-urls` address, bound.
async fn bind_clients(a: &NodeArgs) -> Result<Vec<tokio::net::TcpListener>> {
    let mut out = vec![];
    for u in split_urls(&a.listen_client_urls) {
        let addr = host_port("--listen-client-urls", &u)?;
        let l = flotilla_shims::tcp::bind(&addr)
            .await
            .with_context(|| format!("listening for clients on {addr}"))?;
        out.push(l);
    }
    Ok(out)
}
