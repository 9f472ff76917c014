//! One way to wire an agent — for a member, for `flotilla agent` and for the simulator:
//! its machine's presence key, the agent's loop, and the handle its journals are read
//! through. Whatever reaches the store (a member's in-process client, the v2 HTTP API,
//! the simulator's fabric) comes in as the seams' `kv`.

use super::executor::{Agent, AgentBugs, AgentView};
use super::presence::{self, MachineConfig};
use super::run_step::Seams;
use crate::client::KvClient;
use crate::unitfile::name::Host;
use flotilla_shims::containers::Containers;
use flotilla_shims::process::Processes;
use flotilla_shims::{Clock, Spawn};
use std::sync::Arc;

/// How a machine runs its units: the one configuration every caller builds.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub machine: MachineConfig,
    /// Exec lines may run host commands (anything but `docker` and `etcdctl`).
    pub allow_host_commands: bool,
    /// `--container-name-prefix`.
    pub name_prefix: String,
    /// `--publish-ip`.
    pub publish_ip: Option<String>,
    /// A full look at the schedule and the containers at least this often.
    pub reconcile_ms: u64,
    /// What `%H`, `%m` and `%b` expand to (the machine id is the machine's own).
    pub host: Host,
    /// Planted bugs (simulation only).
    pub bugs: AgentBugs,
}

/// A full look at the schedule and the containers at least every five seconds: changes
/// come by watch at once, this catches what a watch cannot see (a container gone).
pub const RECONCILE_MS: u64 = 5_000;

impl AgentConfig {
    /// The defaults for `machine`: no host commands, no prefix, no publish address.
    pub fn new(machine: MachineConfig) -> Self {
        Self {
            machine,
            allow_host_commands: false,
            name_prefix: String::new(),
            publish_ip: None,
            reconcile_ms: RECONCILE_MS,
            host: Host::default(),
            bugs: AgentBugs::default(),
        }
    }
}

/// What a machine's agent exposes for its journal.
#[derive(Clone)]
pub struct AgentHandle {
    pub machine: String,
    pub view: Arc<AgentView>,
    pub containers: Arc<dyn Containers>,
    pub procs: Arc<dyn Processes>,
}

impl AgentHandle {
    /// The unit's journal here, or `None` if this machine does not run it.
    pub async fn journal(&self, unit: &str, n: usize) -> Option<Vec<String>> {
        let r = self
            .view
            .units
            .lock()
            .expect("view lock")
            .get(unit)
            .cloned()?;
        let mut lines: Vec<String> = r.journal.clone();
        let status = format!(
            "state: {}/{}/{}",
            r.reported.load, r.reported.active, r.reported.sub
        );
        lines.push(status);
        if let Some(c) = &r.container {
            match self.containers.logs(c, n).await {
                Ok(out) => lines.extend(out.into_iter().map(|l| format!("{c}: {l}"))),
                Err(e) => lines.push(format!("{c}: (no output: {e})")),
            }
        }
        if let Some(h) = r.process {
            lines.extend(self.procs.output(h));
        }
        let skip = lines.len().saturating_sub(n);
        Some(lines.split_off(skip))
    }
}

/// Starts `cfg.machine`'s presence and its agent on `spawn`; the handle reads journals.
pub fn start(
    mut cfg: AgentConfig,
    seams: Seams,
    clock: Arc<dyn Clock>,
    spawn: Arc<dyn Spawn>,
) -> AgentHandle {
    cfg.host.machine_id = cfg.machine.id.clone();
    let renewed = announce(&cfg.machine, seams.kv.clone(), clock.clone(), &*spawn);
    let view = Arc::new(AgentView::default());
    let handle = AgentHandle {
        machine: cfg.machine.id.clone(),
        view: view.clone(),
        containers: seams.containers.clone(),
        procs: seams.procs.clone(),
    };
    let agent = Agent::new(cfg, seams, clock, spawn.clone(), renewed, view);
    spawn.spawn("agent", Box::pin(agent.run()));
    handle
}

/// Keeps `machine`'s presence key alive (a machine without an agent, as in a simulation
/// of the scheduler alone, does only this); what it learns of its renewals.
pub fn announce(
    machine: &MachineConfig,
    kv: Arc<dyn KvClient>,
    clock: Arc<dyn Clock>,
    spawn: &dyn Spawn,
) -> presence::Renewed {
    let (tx, renewed) = tokio::sync::watch::channel(None);
    let run = presence::run(kv, clock, machine.clone(), tx);
    spawn.spawn("machine-presence", Box::pin(run));
    renewed
}
