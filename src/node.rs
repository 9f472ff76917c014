//! Wiring: from a configuration, an environment (the seam) and a disk to a running node —
//! recovered Raft state, the Ready-loop driver, and the API handler.

use crate::api::Api;
use crate::raft::{
    cluster_id, member_id, peer_addr, recover, BootError, Driver, DriverParts, Identity, Member,
    RaftConfig, RaftHandle, Shared,
};
use bytes::Bytes;
use flotilla_shims::http::Handler;
use flotilla_shims::{Clock, Disk, PeerNet, SeededRng, Spawn};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// The node's view of the outside world.
#[derive(Clone)]
pub struct Env {
    pub clock: Arc<dyn Clock>,
    pub spawn: Arc<dyn Spawn>,
    /// Seeds the node's RNG (request ids); fixed in simulation, random in production.
    pub seed: u64,
    /// What the agent runs units with; `None`: this node runs no units.
    pub agent: Option<RunSeams>,
    /// What an in-process renderer writes through; `None`: this node renders nothing.
    pub render: Option<crate::render::commit::WriteSeams>,
}

/// The seams units run through: a container engine, host processes, files.
#[derive(Clone)]
pub struct RunSeams {
    pub containers: Arc<dyn flotilla_shims::containers::Containers>,
    pub procs: Arc<dyn flotilla_shims::process::Processes>,
    pub files: Arc<dyn flotilla_shims::Files>,
    /// The cluster network's Docker network, which units' containers join.
    pub network: crate::net::docker::UnitNetwork,
}

impl RunSeams {
    /// These seams, and `kv` to reach the store by: what an agent runs through.
    pub fn with_store(
        &self,
        kv: Arc<dyn crate::client::KvClient>,
    ) -> crate::agent::run_step::Seams {
        crate::agent::run_step::Seams {
            kv,
            containers: self.containers.clone(),
            procs: self.procs.clone(),
            files: self.files.clone(),
            network: self.network.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// `(name, peer url)` pairs, as in `--initial-cluster`.
    pub initial_cluster: Vec<(String, String)>,
    pub cluster_state: ClusterState,
    pub raft: RaftConfig,
    pub request_timeout_ms: u64,
    pub value_bytes_max: usize,
    pub inbox_inputs_max: usize,
    /// Browser origins allowed to read answers (etcd's `--cors`).
    pub cors: crate::api::cors::Cors,
    /// This member as a machine units run on, and how; `None` with `--no-agent`.
    pub agent: Option<crate::agent::AgentConfig>,
    pub engine: crate::sched::engine::EngineConfig,
    /// An in-process confd (`--confdir`), watching through the member's own client.
    pub render: Option<crate::render::runner::RenderConfig>,
    /// What the dashboard shows that the store does not hold.
    pub ui: crate::api::ui::UiConfig,
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error("--initial-cluster: {0}")]
    BadCluster(String),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Fatal(#[from] crate::raft::Fatal),
}

pub struct Started {
    pub id: u64,
    pub handle: RaftHandle,
    /// The agent's units, when this node is a machine.
    pub agent: Option<crate::agent::AgentHandle>,
    pub handler: Handler,
    /// Run this to completion; an `Err` means the node must stop.
    pub driver: Driver,
    /// The in-process renderer, for the shell to run beside the driver (its
    /// [`Renderer::run_watch`](crate::render::runner::Renderer::run_watch) returns only
    /// on a fatal write error, which stops the node too).
    pub renderer: Option<Arc<crate::render::runner::Renderer>>,
}

/// Members named by `--initial-cluster`, grouping repeated names.
pub fn initial_members(cfg: &NodeConfig) -> Result<Vec<Member>, StartError> {
    let mut members: Vec<Member> = Vec::new();
    for (name, url) in &cfg.initial_cluster {
        if peer_addr(url).is_none() {
            return Err(StartError::BadCluster(format!(
                "{name}={url}: not a peer URL"
            )));
        }
        match members.iter_mut().find(|m| &m.name == name) {
            Some(m) => m.peer_urls.push(url.clone()),
            None => members.push(Member {
                id: 0,
                name: name.clone(),
                peer_urls: vec![url.clone()],
                client_urls: vec![],
            }),
        }
    }
    for m in &mut members {
        m.id = member_id(&m.peer_urls);
    }
    if !members.iter().any(|m| m.name == cfg.name) {
        return Err(StartError::BadCluster(format!(
            "this member ({}) is not in it",
            cfg.name
        )));
    }
    Ok(members)
}

/// Checks that `disk` holds this member's consistent state (or nothing), without
/// bootstrapping it. Run it on a scratch copy before opening a data dir for real.
pub fn check_disk(cfg: &NodeConfig, disk: &mut dyn Disk) -> Result<(), StartError> {
    let want = identity(cfg)?;
    if disk.load().map_err(BootError::from)?.meta.is_empty() {
        return Ok(());
    }
    recover(disk, &want)?;
    Ok(())
}

fn identity(cfg: &NodeConfig) -> Result<Identity, StartError> {
    let members = initial_members(cfg)?;
    let me = members
        .iter()
        .find(|m| m.name == cfg.name)
        .expect("checked by initial_members");
    Ok(Identity {
        format: crate::raft::boot::FORMAT_VERSION,
        id: me.id,
        name: cfg.name.clone(),
        cluster_id: cluster_id(&members),
        initial_members: match cfg.cluster_state {
            ClusterState::New => members.clone(),
            ClusterState::Existing => vec![],
        },
    })
}

const PUBLISH_ATTEMPT_MS: u64 = 1_000;

/// Announces this member's name and client URLs through Raft, retrying (bounded backoff)
/// until it lands, as an etcd member publishes its attributes after it starts.
fn publish(env: &Env, handle: &RaftHandle, id: u64, cfg: &NodeConfig) {
    let (h, clock) = (handle.clone(), env.clock.clone());
    let (name, urls) = (cfg.name.clone(), cfg.client_urls.clone());
    env.spawn.spawn(
        "publish",
        Box::pin(async move {
            let mut backoff_ms = 100;
            loop {
                // A restarted member whose publish the cluster already holds, unchanged,
                // adds no entry. Checked after a quorum read, not against its own log
                // alone: a later publish may have committed without reaching this disk.
                let read = tokio::select! {
                    biased;
                    r = h.read_barrier() => r.is_ok(),
                    _ = clock.sleep(Duration::from_millis(PUBLISH_ATTEMPT_MS)) => false,
                };
                if read && crate::api::ready::is_published(&h.shared.machine(), id, &name, &urls) {
                    return;
                }
                if !read {
                    clock.sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(1_000);
                    continue;
                }
                // A forwarded proposal lost while peer connections come up is never
                // retried by Raft: give each attempt a short deadline of its own.
                let attempt = tokio::select! {
                    biased;
                    r = h.publish(id, name.clone(), urls.clone()) => r,
                    _ = clock.sleep(Duration::from_millis(PUBLISH_ATTEMPT_MS)) => Err(crate::raft::ProposeError::Timeout),
                };
                match attempt {
                    Ok(_) | Err(crate::raft::ProposeError::Stopped) => return,
                    Err(_) => {
                        clock.sleep(Duration::from_millis(backoff_ms)).await;
                        backoff_ms = (backoff_ms * 2).min(1_000);
                    }
                }
            }
        }),
    );
}

/// The scheduling engine (every member runs one; it acts while it leads) and, unless the
/// member is not a machine, its presence and its agent.
fn start_fleet(
    env: &Env,
    handle: &RaftHandle,
    id: u64,
    cfg: &NodeConfig,
) -> Option<crate::agent::AgentHandle> {
    let kv = crate::client::inproc::InProc::new(handle.clone(), env.clock.clone());
    let engine_cfg = crate::sched::engine::EngineConfig {
        member: format!("{id:x}"),
        ..cfg.engine.clone()
    };
    if engine_cfg.enabled {
        let engine = crate::sched::engine::Engine::new(
            kv.clone(),
            env.clock.clone(),
            env.spawn.clone(),
            engine_cfg,
        );
        env.spawn.spawn("sched-engine", Box::pin(engine.run()));
    }
    let agent = cfg.agent.clone()?;
    let kv: Arc<dyn crate::client::KvClient> = Arc::new(kv);
    let Some(seams) = &env.agent else {
        // A machine without run seams (a simulation of the scheduler alone) only
        // announces itself.
        crate::agent::start::announce(&agent.machine, kv, env.clock.clone(), &*env.spawn);
        return None;
    };
    let run = seams.with_store(kv);
    Some(crate::agent::start(
        agent,
        run,
        env.clock.clone(),
        env.spawn.clone(),
    ))
}

/// Recovers (or bootstraps) from `disk` and assembles the node. Nothing is served until
/// a fresh identity is synced.
pub async fn start(
    cfg: &NodeConfig,
    env: &Env,
    mut disk: Box<dyn Disk>,
    net: Arc<dyn PeerNet>,
    peer_in: mpsc::Receiver<Bytes>,
) -> Result<Started, StartError> {
    let members = initial_members(cfg)?;
    let want = identity(cfg)?;
    let rec = recover(disk.as_mut(), &want)?;
    if rec.fresh {
        disk.sync().await.map_err(BootError::from)?;
    }
    let id = rec.identity.id;
    // Peers: everyone we know of, from the replicated member list and the flags.
    for m in rec.machine.members.values().chain(members.iter()) {
        if m.id != id {
            if let Some(a) = m.peer_urls.first().and_then(|u| peer_addr(u)) {
                net.set_peer(m.id, &a);
            }
        }
    }
    let shared = Arc::new(Shared::new(rec.machine, id));
    shared.raft_stats().start_wall_ms = env.clock.now_wall_ms();
    let (tx, inbox) = mpsc::channel(cfg.inbox_inputs_max);
    let timeout = Duration::from_millis(cfg.request_timeout_ms);
    let handle = RaftHandle::new(tx, shared.clone(), env.clock.clone(), timeout);
    let mut rng = SeededRng::new(env.seed);
    let driver = Driver::new(DriverParts {
        id,
        log: rec.log,
        disk,
        net,
        clock: env.clock.clone(),
        spawn: env.spawn.clone(),
        shared,
        inbox,
        peer_in,
        cfg: cfg.raft.clone(),
        seq_start: rng.next_u64() >> 16,
    })?;
    publish(env, &handle, id, cfg);
    let agent = start_fleet(env, &handle, id, cfg);
    let api = Api {
        raft: handle.clone(),
        clock: env.clock.clone(),
        spawn: env.spawn.clone(),
        cluster_id: rec.identity.cluster_id,
        value_bytes_max: cfg.value_bytes_max,
        agent: agent.clone(),
        rng: std::sync::Mutex::new(flotilla_shims::SeededRng::new(rng.next_u64())),
        verified: Default::default(),
        cors: cfg.cors.clone(),
        ready: crate::api::ready::Readiness::new(
            id,
            cfg.name.clone(),
            cfg.client_urls.clone(),
            cfg.request_timeout_ms,
        ),
        ui: cfg.ui.clone(),
        ui_history: Default::default(),
    };
    let renderer = match (&cfg.render, &env.render) {
        (Some(rc), Some(seams)) => Some(crate::render::runner::Renderer::new(
            Arc::new(crate::client::inproc::InProc::new(
                handle.clone(),
                env.clock.clone(),
            )),
            seams.clone(),
            env.spawn.clone(),
            rc.clone(),
        )),
        _ => None,
    };
    Ok(Started {
        id,
        handle,
        agent,
        renderer,
        handler: api.into_handler(),
        driver,
    })
}
