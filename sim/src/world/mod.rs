//! One simulated run: real flotilla nodes on the madsim seam, concurrent clients, the
//! fault schedule, a heal phase, and every checker.

use crate::docker::{DockerFaults, SimDocker};
use crate::env::{elapsed, SimClock, SimSpawn};
use crate::fabric::{Fabric, SimNet, CLIENT_BASE};
use crate::history::{History, Op, Outcome, Record};
use crate::linearizability::{self, Verdict};
use crate::processes::SimProcesses;
use crate::render::{RenderProcs, WatchedFiles};
use crate::scenario::{Event, Fault, Net, Scenario, UnitAction, UnitOp};
use crate::trace::Trace;
use flotilla::agent::presence::MachineConfig;
use flotilla::agent::supervisor::AgentBugs;
use flotilla::agent::AgentConfig;
use flotilla::client::{inproc::InProc, ClientError, KvClient, SetOpts};
use flotilla::kv::{Command, Precondition};
use flotilla::node::RunSeams;
use flotilla::node::{ClusterState, Env, NodeConfig};
use flotilla::raft::{ProposeError, RaftConfig, RaftHandle};
use flotilla::sched::engine::EngineConfig;
use flotilla::sched::place::Bugs;
use flotilla::sched::place::Desired;
use flotilla::sched::registry::{self, StoredUnit, UnitRecord};
use flotilla::unitfile::file::UnitOption;
use flotilla_shims::files::MemFiles;
use flotilla_shims::mem_disk::MemDiskHandle;
use flotilla_shims::Clock;
use madsim::rand::Rng;
use madsim::runtime::{Handle, NodeHandle};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

mod agents;
mod boot;
mod checks;
mod clients;
mod faults;
mod network;
mod rendering;
mod scheduling;
mod stack;

use agents::{start_agents, AgentMachine, AGENT_BASE};
use boot::*;
use checks::*;
use clients::*;
use faults::*;
use rendering::*;
use scheduling::*;

/// How long a client waits for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(1_500);
/// After healing, writes must commit and replicas converge within this much simulated time.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(20);
const TTL_MS: u64 = 1_500;

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub violations: Vec<String>,
    /// Histories the linearizability checker could not decide within its memory bound:
    /// not violations, not passes either.
    pub undecided: Vec<String>,
    pub trace_hash: u64,
    pub sim_ms: u64,
    pub ops: usize,
    pub faults: BTreeMap<String, u64>,
    pub messages: (u64, u64, u64),
    /// Operations by outcome: ok, compare failed, not found, unknown or failed.
    pub outcomes: [u64; 4],
    /// Every client operation, in invocation order.
    pub history: Vec<Record>,
}

impl Report {
    /// No violation, and every history decided.
    pub fn clean(&self) -> bool {
        self.violations.is_empty() && self.undecided.is_empty()
    }

    /// What kept the run from being clean, one finding a line.
    pub fn findings(&self) -> String {
        let all: Vec<&str> = self
            .violations
            .iter()
            .chain(&self.undecided)
            .map(String::as_str)
            .collect();
        all.join("\n")
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Life {
    Booting,
    Up,
    Down,
    /// Refused to start (it must, after corruption).
    Refused(String),
    /// Its driver stopped with a fatal error; it must restart from what is durable.
    Fatal(String),
}

struct Slot {
    disk: MemDiskHandle,
    clock: SimClock,
    handle: Mutex<Option<RaftHandle>>,
    life: Mutex<Life>,
    /// Bumped on every crash, so a delayed restart only undoes its own crash.
    crashes: Mutex<u64>,
    corrupted: Mutex<Option<String>>,
    /// The machine's container engine and host processes: they outlive a restart of the
    /// node's process, not a crash of the machine.
    docker: SimDocker,
    procs: SimProcesses,
    files: MemFiles,
    /// The renderer's view of the node's files (render scenarios).
    render: Option<WatchedFiles>,
    /// Pauses in force: a paused machine's agent cannot fence, so it does not count as
    /// live for the lease bound.
    paused: Mutex<u32>,
    /// When (simulated ms) the machine last came up or ran again after a pause: only one
    /// that has run all along for a whole lease can be held to fencing in time.
    steady_since_ms: std::sync::atomic::AtomicU64,
    /// (crash count, applied index) at the last digest sample.
    digested: Mutex<Option<(u64, u64)>>,
    /// The running node's agent (for what it says of a unit when a check fails).
    agent: Mutex<Option<flotilla::agent::AgentHandle>>,
    /// The running node's client API (agent-only machines' requests are answered by it).
    api: Mutex<Option<flotilla_shims::http::Handler>>,
}

impl Slot {
    /// A member's machine, down until it boots.
    fn new(s: &Scenario) -> Self {
        let files = MemFiles::new();
        let sched = s.sched.as_ref();
        Slot {
            disk: MemDiskHandle::new(),
            clock: SimClock::default(),
            handle: Mutex::new(None),
            life: Mutex::new(Life::Down),
            crashes: Mutex::new(0),
            corrupted: Mutex::new(None),
            docker: SimDocker::new(DockerFaults {
                pull_fail_permille: sched.map_or(0, |l| l.pull_fail_permille),
                start_fail_permille: sched.map_or(0, |l| l.start_fail_permille),
            }),
            procs: SimProcesses::new(),
            files: files.clone(),
            render: s.render.then(|| WatchedFiles::new(files, s.stack)),
            paused: Mutex::new(0),
            steady_since_ms: Default::default(),
            digested: Mutex::new(None),
            agent: Mutex::new(None),
            api: Mutex::new(None),
        }
    }

    fn handle(&self) -> Option<RaftHandle> {
        self.handle.lock().expect("slot lock").clone()
    }

    fn life(&self) -> Life {
        self.life.lock().expect("slot lock").clone()
    }

    fn set_life(&self, l: Life) {
        *self.life.lock().expect("slot lock") = l;
        self.unsteady();
    }

    /// Its run was interrupted (a life change, a pause beginning or ending).
    fn unsteady(&self) {
        let now = elapsed().as_millis() as u64;
        self.steady_since_ms.store(now, Ordering::Relaxed);
    }
}

struct World {
    s: Scenario,
    rt: Handle,
    fabric: Arc<Fabric>,
    slots: Vec<Arc<Slot>>,
    nodes: Mutex<Vec<NodeHandle>>,
    history: Mutex<History>,
    trace: Mutex<Trace>,
    violations: Mutex<Vec<String>>,
    undecided: Mutex<Vec<String>>,
    faults: Mutex<BTreeMap<String, u64>>,
    /// applied index → (digest, node) first seen there.
    digests: Mutex<BTreeMap<u64, (u64, usize)>>,
    /// Set by the heal: faults still running stop there.
    healed: std::sync::atomic::AtomicBool,
    /// Machines that are not members, indexed after the members.
    agents: Vec<Arc<AgentMachine>>,
    agent_nodes: Mutex<Vec<NodeHandle>>,
    /// Machines on the cluster network (`--scenario net`).
    nets: Vec<Arc<network::NetMachine>>,
    net_nodes: Mutex<Vec<NodeHandle>>,
    /// A node's DNS, answering from the store over the HTTP client (stack scenarios):
    /// after the heal it must name exactly the instances that run.
    dns: std::sync::OnceLock<Arc<flotilla::net::dns::Dns>>,
    /// The largest clock disagreement any sample saw: a lease stamped and expired on
    /// different clocks may end early by up to twice this.
    skew_seen_ms: std::sync::atomic::AtomicU64,
}

/// Runs `s` on a fresh OS thread (so thread-locals such as rand's `ThreadRng` start from
/// the seed) in a fresh madsim runtime. A panic anywhere in the run is a violation.
pub fn run(s: &Scenario) -> Report {
    let s2 = s.clone();
    let joined = std::thread::Builder::new()
        .name(format!("sim-{}", s.seed))
        .spawn(move || {
            let mut rt =
                madsim::runtime::Runtime::with_seed_and_config(s2.seed, madsim::Config::default());
            rt.set_time_limit(Duration::from_secs(3_600));
            rt.block_on(simulate(s2))
        })
        .expect("spawn simulation thread")
        .join();
    joined.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Report {
            seed: s.seed,
            violations: vec![format!("panic: {msg}")],
            ..Default::default()
        }
    })
}

async fn sampler(w: Arc<World>) {
    let mut doubled: BTreeMap<String, Duration> = BTreeMap::new();
    let mut leases = Leases::default();
    loop {
        madsim::time::sleep(Duration::from_millis(SAMPLE_MS)).await;
        w.skew_seen_ms.fetch_max(w.max_skew_ms(), Ordering::Relaxed);
        sample_digests(&w);
        if w.s.sched.is_some() {
            sample_schedules(&w);
            sample_running(&w, &mut doubled);
            sample_leases(&w, &mut leases);
        }
    }
}

/// How often the sampler looks at the world.
const SAMPLE_MS: u64 = 250;

/// One run: the world built, the fault phase, the heal, the checks, the report.
async fn simulate(s: Scenario) -> Report {
    let w = build(&s);
    let helpers = start(&w);
    let clients = load(&w, &helpers);
    faults_then_heal(&w, clients).await;
    after_the_heal(&w).await;
    check(&w);
    let report = report(&w);
    // Every task still holding the world (the nodes', the harness's loops) goes with its
    // node: the runtime keeps its tasks, and they the world, so a campaign of thousands
    // of seeds in one process would otherwise keep every seed's world (~5 MB each).
    for i in 0..w.s.nodes {
        w.rt.kill(w.node_id(i));
    }
    for a in w.agent_nodes.lock().expect("nodes lock").drain(..) {
        w.rt.kill(a.id());
    }
    for a in w.net_nodes.lock().expect("nodes lock").drain(..) {
        w.rt.kill(a.id());
    }
    w.rt.kill(helpers.id());
    w.nodes.lock().expect("nodes lock").clear();
    report
}

/// The world of `s`: a slot per member (disk, clock, engine, files), nothing running.
fn build(s: &Scenario) -> Arc<World> {
    let fabric = Fabric::new(s.net.clone());
    let members = flotilla::node::initial_members(&node_config(s, 0)).expect("valid cluster");
    let slots: Vec<Arc<Slot>> = (0..s.nodes)
        .map(|i| {
            let raft_id = members
                .iter()
                .find(|m| m.name == format!("n{i}"))
                .expect("member")
                .id;
            fabric.map_id(raft_id, i as u64);
            Arc::new(Slot::new(s))
        })
        .collect();
    let faults = DockerFaults {
        pull_fail_permille: s.sched.as_ref().map_or(0, |l| l.pull_fail_permille),
        start_fail_permille: s.sched.as_ref().map_or(0, |l| l.start_fail_permille),
    };
    Arc::new_cyclic(|world| World {
        agents: (0..s.agents)
            .map(|j| Arc::new(AgentMachine::new(world, j, s.nodes, faults.clone())))
            .collect(),
        agent_nodes: Mutex::new(vec![]),
        nets: (0..s.net_machines)
            .map(|j| Arc::new(network::NetMachine::new(world, j, s.nodes)))
            .collect(),
        net_nodes: Mutex::new(vec![]),
        dns: std::sync::OnceLock::new(),
        s: s.clone(),
        rt: Handle::current(),
        fabric,
        slots,
        nodes: Mutex::new(vec![]),
        history: Mutex::new(History::default()),
        trace: Mutex::new(Trace::default()),
        violations: Mutex::new(vec![]),
        undecided: Mutex::new(vec![]),
        faults: Mutex::new(BTreeMap::new()),
        digests: Mutex::new(BTreeMap::new()),
        healed: Default::default(),
        skew_seen_ms: Default::default(),
    })
}

/// Boots every member (building a node starts it: madsim runs its init at once) and the
/// harness node that supervises and samples.
fn start(w: &Arc<World>) -> NodeHandle {
    for i in 0..w.s.nodes {
        let w2 = w.clone();
        let node =
            w.rt.create_node()
                .name(format!("n{i}"))
                .init(move || boot(w2.clone(), i))
                .build();
        w.nodes.lock().expect("nodes lock").push(node);
    }
    start_agents(w);
    network::start_net(w);
    if w.s.stack {
        stack::start_dns(w);
    }
    let helpers = w.rt.create_node().name("harness").build();
    if !w.nets.is_empty() {
        helpers.spawn(network::deaths(w.clone()));
    }
    helpers.spawn(supervise(w.clone()));
    if !w.s.bench {
        helpers.spawn(sampler(w.clone()));
    }
    helpers
}

/// The workload on the harness: the clients (whose ends are awaited), the unit
/// operations, the presence containers, and the fault schedule.
fn load(w: &Arc<World>, helpers: &NodeHandle) -> Vec<madsim::task::JoinHandle<()>> {
    let fault_end = Duration::from_millis(w.s.fault_phase_ms);
    let clients = (0..w.s.clients)
        .map(|c| helpers.spawn(client(w.clone(), c, fault_end)))
        .collect();
    for op in w.s.sched.iter().flat_map(|l| l.ops.clone()) {
        helpers.spawn(unit_op(w.clone(), op));
    }
    if w.s.stack {
        helpers.spawn(stack::presence_keeper(w.clone()));
    }
    for ev in w.s.schedule.clone() {
        let w2 = w.clone();
        helpers.spawn(async move {
            madsim::time::sleep(Duration::from_millis(ev.at_ms)).await;
            inject(w2, ev).await;
        });
    }
    clients
}

/// The fault phase, the heal, the clients' last operations, the heal phase.
async fn faults_then_heal(w: &Arc<World>, clients: Vec<madsim::task::JoinHandle<()>>) {
    madsim::time::sleep(Duration::from_millis(w.s.fault_phase_ms)).await;
    heal(w).await;
    for c in clients {
        let _ = c.await;
    }
    madsim::time::sleep(Duration::from_millis(w.s.heal_ms)).await;
}

/// What must hold once healed: writes commit, schedules converge, final reads, the
/// stack's probe or the renderer's convergence, and the last samples.
async fn after_the_heal(w: &Arc<World>) {
    liveness(w).await;
    if w.s.sched.is_some() {
        sched_liveness(w, LIVENESS_BOUND).await;
        sample_schedules(w);
    }
    final_reads(w).await;
    if w.s.stack {
        if stack::converged(w).await {
            stack::leader_change_probe(w).await;
        }
    } else if w.s.render {
        render_convergence(w).await;
    }
    network::check_net(w).await;
    drain_render_logs(w);
    sample_digests(w);
}

/// The run's findings, its history and its trace hash.
fn report(w: &World) -> Report {
    let history = w.history.lock().expect("history lock").records.clone();
    let mut outcomes = [0u64; 4];
    for r in &history {
        outcomes[match r.outcome {
            Outcome::Ok(_) => 0,
            Outcome::CompareFailed => 1,
            Outcome::NotFound => 2,
            Outcome::Unknown | Outcome::Failed => 3,
        }] += 1;
    }
    Report {
        seed: w.s.seed,
        violations: w.violations.lock().expect("violations lock").clone(),
        undecided: w.undecided.lock().expect("undecided lock").clone(),
        trace_hash: w.trace.lock().expect("trace lock").hash(),
        sim_ms: elapsed().as_millis() as u64,
        ops: history.len(),
        faults: w.faults.lock().expect("faults lock").clone(),
        messages: w.fabric.stats(),
        outcomes,
        history,
    }
}

/// Machines by index: the members' first, then the agent-only ones.
impl World {
    fn machines(&self) -> usize {
        self.s.nodes + self.agents.len()
    }

    fn docker(&self, i: usize) -> &SimDocker {
        match self.slots.get(i) {
            Some(slot) => &slot.docker,
            None => &self.agents[i - self.s.nodes].docker,
        }
    }

    /// Up and running now (a paused member cannot fence; an agent-only machine always runs).
    fn machine_live(&self, i: usize) -> bool {
        match self.slots.get(i) {
            Some(s) => s.life() == Life::Up && *s.paused.lock().expect("slot lock") == 0,
            None => true,
        }
    }

    /// When the machine last began to run without interruption (simulated ms).
    fn steady_since_ms(&self, i: usize) -> u64 {
        self.slots
            .get(i)
            .map_or(0, |s| s.steady_since_ms.load(Ordering::Relaxed))
    }

    fn machine_agent(&self, i: usize) -> Option<flotilla::agent::AgentHandle> {
        match self.slots.get(i) {
            Some(s) => s.agent.lock().expect("slot lock").clone(),
            None => self.agents[i - self.s.nodes]
                .agent
                .lock()
                .expect("agent lock")
                .clone(),
        }
    }

    /// The fabric endpoint of machine `i`.
    fn endpoint(&self, i: usize) -> u64 {
        match i < self.s.nodes {
            true => i as u64,
            false => AGENT_BASE + (i - self.s.nodes) as u64,
        }
    }
}
