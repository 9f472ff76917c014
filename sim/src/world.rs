//! One simulated run: real flotilla nodes on the madsim seam, concurrent clients, the
//! fault schedule, a heal phase, and every checker.

use crate::engine::{EngineFaults, SimEngine};
use crate::env::{elapsed, SimClock, SimSpawn};
use crate::fabric::{Fabric, SimNet, CLIENT_BASE};
use crate::history::{History, Op, Outcome, Record};
use crate::linearizability::{self, Verdict};
use crate::processes::SimProcesses;
use crate::render::{RenderProcs, WatchedFiles};
use crate::scenario::{Event, Fault, Net, Scenario, UnitAction, UnitOp};
use crate::trace::Trace;
use flotilla::agent::presence::MachineConfig;
use flotilla::agent::run::AgentBugs;
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
use flotilla::sched::unit::UnitOption;
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

mod stack;

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
    engine: SimEngine,
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
}

impl Slot {
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

fn node_config(s: &Scenario, i: usize) -> NodeConfig {
    let initial_cluster = (0..s.nodes)
        .map(|j| (format!("n{j}"), format!("http://10.0.0.{}:2380", j + 1)))
        .collect();
    NodeConfig {
        name: format!("n{i}"),
        peer_urls: vec![format!("http://10.0.0.{}:2380", i + 1)],
        client_urls: vec![format!("http://10.0.0.{}:2379", i + 1)],
        initial_cluster,
        cluster_state: ClusterState::New,
        raft: RaftConfig {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 1,
            // Chaos runs snapshot often to exercise it; the benchmark uses production values.
            snapshot_entries: if s.bench { 10_000 } else { 100 },
            catchup_entries: if s.bench { 5_000 } else { 20 },
            bug_skip_sync: s.bug_skip_sync,
            bug_drop_foreign_ttls: s.bug_drop_foreign_ttls,
            bug_ack_on_propose: s.bug_ack_on_propose,
            ..RaftConfig::default()
        },
        request_timeout_ms: 1_200,
        value_bytes_max: 1 << 20,
        inbox_inputs_max: 4096,
        cors: Default::default(),
        engine: EngineConfig {
            reconcile_ms: 500,
            bugs: Bugs {
                ignore_conflicts: s.bug_ignore_conflicts,
                forget_schedule_on_takeover: s.bug_reshuffle_on_takeover,
            },
            ..Default::default()
        },
        agent: s.sched.as_ref().map(|l| AgentConfig {
            reconcile_ms: 1_000,
            bugs: AgentBugs {
                no_fencing: s.bug_no_fencing,
                fence_late: s.bug_fence_late,
            },
            ..AgentConfig::new(MachineConfig {
                id: format!("m{i}"),
                public_ip: format!("10.0.0.{}", i + 1),
                metadata: [(
                    "zone".to_string(),
                    if i.is_multiple_of(2) { "a" } else { "b" }.to_string(),
                )]
                .into(),
                ttl_s: l.agent_ttl_s,
                agent_url: String::new(),
            })
        }),
        render: s.render.then(|| {
            let mut rc = flotilla::render::runner::RenderConfig::new(crate::render::CONFDIR);
            rc.debounce_ms = 50;
            rc.retry_ms = 200;
            rc.write.cmd_timeout_ms = 5_000;
            rc.write.bug_skip_sync = s.bug_render_skip_sync;
            rc.out = Arc::new(|_| {});
            rc
        }),
    }
}

async fn boot(w: Arc<World>, i: usize) {
    let slot = w.slots[i].clone();
    slot.set_life(Life::Booting);
    let clock = Arc::new(slot.clock.clone());
    let env = Env {
        clock: clock.clone(),
        spawn: Arc::new(SimSpawn),
        seed: madsim::rand::thread_rng().gen(),
        agent: w.s.sched.as_ref().map(|_| RunSeams {
            containers: Arc::new(slot.engine.clone()),
            procs: Arc::new(slot.procs.clone()),
            files: Arc::new(slot.files.clone()),
        }),
        render: slot
            .render
            .as_ref()
            .map(|f| flotilla::render::commit::WriteSeams {
                files: Arc::new(f.clone()),
                procs: Arc::new(RenderProcs::new(f.clone())),
                clock: clock.clone(),
                host: Arc::new(flotilla_shims::host::FixedHost::default()),
            }),
    };
    let latency = Duration::from_millis(w.s.sync_latency_ms);
    let disk = slot.disk.open(Some((clock as Arc<dyn Clock>, latency)));
    let (tx, rx) = mpsc::channel(8192);
    w.fabric.register(i as u64, tx);
    let net = Arc::new(SimNet {
        endpoint: i as u64,
        fabric: w.fabric.clone(),
        peers: Mutex::new(Default::default()),
    });
    let cfg = node_config(&w.s, i);
    match flotilla::node::start(&cfg, &env, Box::new(disk), net, rx).await {
        Err(e) => slot.set_life(Life::Refused(e.to_string())),
        Ok(started) => {
            *slot.handle.lock().expect("slot lock") = Some(started.handle.clone());
            *slot.agent.lock().expect("slot lock") = started.agent.clone();
            slot.set_life(Life::Up);
            let r = match started.renderer {
                None => started.driver.run().await.map_err(|e| e.to_string()),
                Some(renderer) => tokio::select! {
                    r = started.driver.run() => r.map_err(|e| e.to_string()),
                    e = renderer.run_watch() => Err(format!("renderer: {e}")),
                },
            };
            *slot.handle.lock().expect("slot lock") = None;
            match r {
                Ok(()) => slot.set_life(Life::Down),
                Err(e) => slot.set_life(Life::Fatal(e.to_string())),
            }
        }
    }
}

impl World {
    fn node_id(&self, i: usize) -> madsim::task::NodeId {
        self.nodes.lock().expect("nodes lock")[i].id()
    }

    /// The largest clock jump in force on any node.
    fn max_skew_ms(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.clock.skew_ms.load(Ordering::Relaxed).unsigned_abs())
            .max()
            .unwrap_or(0)
    }

    fn now_ns(&self) -> u64 {
        elapsed().as_nanos() as u64
    }

    fn trace(&self, line: String) {
        let t = self.now_ns();
        self.trace
            .lock()
            .expect("trace lock")
            .record(&format!("{t} {line}"));
    }

    fn violation(&self, v: String) {
        self.trace(format!("violation {v}"));
        self.violations.lock().expect("violations lock").push(v);
    }

    fn count(&self, kind: &str) {
        *self
            .faults
            .lock()
            .expect("faults lock")
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// Kills node `i`, keeping `keep_permille` of its unsynced writes. Returns the crash number.
    fn crash(&self, i: usize, keep_permille: u32) -> u64 {
        let slot = &self.slots[i];
        self.rt.kill(self.node_id(i));
        *slot.handle.lock().expect("slot lock") = None;
        self.fabric.unregister(i as u64);
        let pending = slot.disk.pending_len();
        let keep = pending * keep_permille as usize / 1000;
        slot.disk.crash(keep);
        slot.set_life(Life::Down);
        self.trace(format!("crash n{i} kept {keep}/{pending}"));
        let mut c = slot.crashes.lock().expect("slot lock");
        *c += 1;
        *c
    }

    /// The whole machine goes down with its node: its containers and processes, and its
    /// files lose what was never synced.
    fn machine_down(&self, i: usize) {
        let slot = &self.slots[i];
        slot.engine.set_daemon(false);
        slot.procs.kill_all();
        match &slot.render {
            Some(watched) => watched.power_loss(),
            None => {
                slot.files.power_loss();
            }
        }
    }

    fn restart(&self, i: usize) {
        if matches!(self.slots[i].life(), Life::Refused(_)) {
            return;
        }
        self.trace(format!("restart n{i}"));
        self.rt.restart(self.node_id(i));
    }

    fn cut_both(&self, a: usize, b: usize, on: bool) {
        let (a, b) = (a as u64, b as u64);
        if on {
            self.fabric.cut(a, b);
            self.fabric.cut(b, a);
        } else {
            self.fabric.restore(a, b);
            self.fabric.restore(b, a);
        }
    }
}

async fn inject(w: Arc<World>, ev: Event) {
    let f = ev.fault;
    w.count(f.kind());
    w.trace(format!("fault {f:?}"));
    match f {
        Fault::IsolateBusiest { ms } => {
            let busiest = running(&w)
                .into_iter()
                .max_by_key(|(i, units)| (units.len(), std::cmp::Reverse(*i)));
            if let Some((node, _)) = busiest {
                w.trace(format!("isolate: n{node}"));
                let cut = Fault::Partition {
                    side: vec![node],
                    ms,
                };
                Box::pin(inject(
                    w,
                    Event {
                        at_ms: 0,
                        fault: cut,
                    },
                ))
                .await;
            }
        }
        Fault::LeaderKill {
            keep_permille,
            down_ms,
        } => {
            let leader = (0..w.s.nodes).find(|i| {
                w.slots[*i]
                    .handle()
                    .is_some_and(|h| h.shared.status().is_leader)
            });
            if let Some(node) = leader {
                w.trace(format!("leader kill: n{node}"));
                let crash = Fault::Crash {
                    node,
                    keep_permille,
                    down_ms,
                };
                Box::pin(inject(
                    w,
                    Event {
                        at_ms: 0,
                        fault: crash,
                    },
                ))
                .await;
            }
        }
        Fault::Slow { node, extra_ms, ms } => {
            w.fabric.set_slow(node as u64, extra_ms);
            madsim::time::sleep(Duration::from_millis(ms)).await;
            if !w.healed.load(Ordering::Relaxed) {
                w.fabric.set_slow(node as u64, 0);
            }
        }
        Fault::Crash {
            node,
            keep_permille,
            down_ms,
        } => {
            if matches!(w.slots[node].life(), Life::Refused(_)) {
                return;
            }
            let n = w.crash(node, keep_permille);
            w.machine_down(node);
            madsim::time::sleep(Duration::from_millis(down_ms)).await;
            if *w.slots[node].crashes.lock().expect("slot lock") == n {
                w.slots[node].engine.set_daemon(true);
                w.restart(node);
            }
        }
        Fault::ContainerDeath { node, pick, oom } => w.slots[node].engine.kill_some(pick, oom),
        Fault::EngineRestart { node, ms } => {
            w.slots[node].engine.set_daemon(false);
            madsim::time::sleep(Duration::from_millis(ms)).await;
            w.slots[node].engine.set_daemon(true);
        }
        Fault::Pause { node, ms } => {
            *w.slots[node].paused.lock().expect("slot lock") += 1;
            w.slots[node].unsteady();
            w.rt.pause(w.node_id(node));
            madsim::time::sleep(Duration::from_millis(ms)).await;
            let mut p = w.slots[node].paused.lock().expect("slot lock");
            *p -= 1;
            w.slots[node].unsteady();
            // Overlapping pauses: the node runs again when the last one ends.
            if *p == 0 {
                w.rt.resume(w.node_id(node));
            }
        }
        Fault::Partition { side, ms } => {
            let others: Vec<usize> = (0..w.s.nodes).filter(|i| !side.contains(i)).collect();
            for a in &side {
                for b in &others {
                    w.cut_both(*a, *b, true);
                }
            }
            madsim::time::sleep(Duration::from_millis(ms)).await;
            for a in &side {
                for b in &others {
                    w.cut_both(*a, *b, false);
                }
            }
        }
        Fault::OneWay { from, to, ms } => {
            w.fabric.cut(from as u64, to as u64);
            madsim::time::sleep(Duration::from_millis(ms)).await;
            w.fabric.restore(from as u64, to as u64);
        }
        Fault::Flap {
            a,
            b,
            period_ms,
            times,
        } => {
            for _ in 0..times {
                // A flap still going when the heal comes must not cut the link again.
                if w.healed.load(Ordering::Relaxed) {
                    break;
                }
                w.cut_both(a, b, true);
                madsim::time::sleep(Duration::from_millis(period_ms)).await;
                w.cut_both(a, b, false);
                madsim::time::sleep(Duration::from_millis(period_ms)).await;
            }
        }
        Fault::ClockJump { node, delta_ms } => {
            w.slots[node]
                .clock
                .skew_ms
                .fetch_add(delta_ms, Ordering::Relaxed);
        }
        Fault::SyncFail { node } => w.slots[node].disk.fail_next_sync(),
        Fault::Corrupt { node, pick } => corrupt(&w, node, pick).await,
        Fault::ClientCut { client, node, ms } => {
            let c = CLIENT_BASE + client as u64;
            w.fabric.cut(c, node as u64);
            w.fabric.cut(node as u64, c);
            madsim::time::sleep(Duration::from_millis(ms)).await;
            w.fabric.restore(c, node as u64);
            w.fabric.restore(node as u64, c);
        }
    }
}

/// Crashes a node, flips a bit in one of its durable records, restarts it, and requires
/// that it refuses to start, naming the damage.
async fn corrupt(w: &Arc<World>, node: usize, pick: u64) {
    if matches!(w.slots[node].life(), Life::Refused(_)) {
        return;
    }
    w.crash(node, 1000);
    let Some(name) = w.slots[node].disk.corrupt(pick) else {
        return;
    };
    *w.slots[node].corrupted.lock().expect("slot lock") = Some(name.clone());
    w.restart(node);
    madsim::time::sleep(Duration::from_millis(200)).await;
    match w.slots[node].life() {
        Life::Refused(msg) if msg.contains(&name) && msg.contains("checksum") => {
            w.trace(format!("n{node} refused corrupt {name}"));
        }
        other => w.violation(format!(
            "n{node}: corrupted {name} was not refused at start (state {other:?})"
        )),
    }
}

/// Restarts nodes whose driver stopped on a fatal error (a failed sync): they come back
/// from what is durable, never carrying on.
async fn supervise(w: Arc<World>) {
    loop {
        madsim::time::sleep(Duration::from_millis(100)).await;
        for i in 0..w.s.nodes {
            if let Life::Fatal(why) = w.slots[i].life() {
                w.trace(format!("n{i} stopped: {why}"));
                let n = w.crash(i, 0);
                let w2 = w.clone();
                madsim::task::spawn(async move {
                    madsim::time::sleep(Duration::from_millis(300)).await;
                    if *w2.slots[i].crashes.lock().expect("slot lock") == n {
                        w2.restart(i);
                    }
                });
            }
        }
    }
}

/// Every live replica's committed schedule must keep the scheduler's invariants.
fn sample_schedules(w: &World) {
    for (i, slot) in w.slots.iter().enumerate() {
        let Some(h) = slot.handle() else { continue };
        let schedule = {
            let m = h.shared.machine();
            let dir = m.store.get(registry::SCHEDULE, true).ok().map(|e| e.node);
            registry::schedule(dir.as_ref())
        };
        if let Err(e) = crate::sched_check::check(&schedule) {
            w.violation(format!("schedule on n{i}: {e}"));
        }
    }
}

/// Applies one unit operation through a live member's in-process client (as the fleet
/// API would), moving on to the next member while there is no answer (no leader yet, a
/// member down), for a bounded time.
async fn unit_op(w: Arc<World>, op: UnitOp) {
    madsim::time::sleep(Duration::from_millis(op.at_ms)).await;
    for attempt in 0..30 {
        let n = (op.node + attempt) % w.s.nodes;
        let slot = &w.slots[n];
        let outcome = match slot.handle() {
            Some(h) => {
                let kv = InProc::new(h, Arc::new(slot.clock.clone()));
                let r = apply_unit_op(&kv, &op, w.s.stack).await;
                w.trace(format!(
                    "unit op {} {:?} on n{n}: {r:?}",
                    op.unit, op.action
                ));
                r
            }
            None => Err(ClientError::Unavailable("down".into())),
        };
        if !matches!(outcome, Err(ClientError::Unavailable(_))) {
            return;
        }
        madsim::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn apply_unit_op(kv: &InProc, op: &UnitOp, stack: bool) -> Result<(), ClientError> {
    let key = registry::unit_key(&op.unit);
    match &op.action {
        UnitAction::Submit { xfleet, desired } => {
            let mut options: Vec<UnitOption> = crate::scenario::unit_options(&op.unit, stack)
                .iter()
                .filter(|(sec, ..)| sec != "X-Fleet")
                .map(|(sec, k, v)| UnitOption::new(sec, k, v))
                .collect();
            options.extend(
                xfleet
                    .iter()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| UnitOption::new("X-Fleet", k, v)),
            );
            let rec = UnitRecord {
                name: op.unit.clone(),
                options,
                desired_state: Desired::parse(desired).unwrap_or(Desired::Launched),
            };
            let v = serde_json::to_string(&rec).expect("record");
            kv.set(&key, &v, SetOpts::default()).await.map(|_| ())
        }
        UnitAction::SetState { desired } => {
            let Some(g) = kv.get(&key, false, false).await? else {
                return Ok(());
            };
            let Some(mut rec) = g
                .node
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str::<UnitRecord>(v).ok())
            else {
                return Ok(());
            };
            rec.desired_state = Desired::parse(desired).unwrap_or(Desired::Launched);
            let v = serde_json::to_string(&rec).expect("record");
            let opts = SetOpts {
                prev: Precondition {
                    index: g.node.modified_index,
                    ..Default::default()
                },
                ..Default::default()
            };
            kv.set(&key, &v, opts).await.map(|_| ())
        }
        UnitAction::Destroy => kv
            .delete(&key, false, Precondition::default())
            .await
            .map(|_| ()),
    }
}

/// After healing: within `bound`, the leader's next pass would decide nothing
/// (every placeable unit is placed, none on a dead machine), and every launched unit runs
/// exactly where the schedule says.
async fn sched_liveness(w: &Arc<World>, bound: Duration) {
    let deadline = elapsed() + bound;
    let mut last = String::new();
    while elapsed() <= deadline {
        let leader = w
            .slots
            .iter()
            .filter_map(|s| s.handle())
            .find(|h| h.shared.status().is_leader);
        if let Some(h) = leader {
            let (units, machines, schedule) = {
                let m = h.shared.machine();
                let dir = |k: &str| m.store.get(k, true).ok().map(|e| e.node);
                let units: BTreeMap<String, flotilla::sched::place::Unit> = dir(registry::UNITS)
                    .iter()
                    .flat_map(|n| n.nodes.iter().flatten())
                    .filter_map(|n| StoredUnit::parse(n.value.as_deref()?, n.modified_index))
                    .map(|u| (u.record.name.clone(), u.placement()))
                    .collect();
                let machines: BTreeMap<String, flotilla::sched::place::Machine> =
                    registry::machines(
                        dir(registry::MACHINES).as_ref(),
                        dir(registry::METADATA).as_ref(),
                    )
                    .into_iter()
                    .map(|(k, v)| (k, v.placement()))
                    .collect();
                (
                    units,
                    machines,
                    registry::schedule(dir(registry::SCHEDULE).as_ref()),
                )
            };
            let plan = flotilla::sched::place::plan(&machines, &units, &schedule);
            let off = misplaced(w, &units, &schedule);
            if plan.decisions.is_empty() && off.is_none() {
                w.trace(format!(
                    "schedule converged: {} units, {} unplaced",
                    units.len(),
                    plan.unplaced.len()
                ));
                return;
            }
            last = match plan.decisions.first() {
                Some(d) => format!("{d:?}"),
                None => off.unwrap_or_default(),
            };
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    w.violation(format!(
        "scheduler liveness: the schedule did not converge within {bound:?} after healing; still to do: {last}"
    ));
}

/// The unit's state and last journal lines on machine `i`, as its agent has them.
fn agent_says(w: &World, i: usize, unit: &str) -> String {
    let Some(a) = w.slots[i].agent.lock().expect("slot lock").clone() else {
        return "(no agent)".into();
    };
    let r = a.view.units.lock().expect("view lock").get(unit).cloned();
    match r {
        None => "(not loaded)".into(),
        Some(r) => {
            let tail: Vec<&String> = r.journal.iter().rev().take(12).collect();
            format!("{}/{}; {tail:?}", r.reported.active, r.reported.sub)
        }
    }
}

/// A launched unit not running where the schedule says (or running where it does not),
/// on a machine that is up.
fn misplaced(
    w: &World,
    units: &BTreeMap<String, flotilla::sched::place::Unit>,
    schedule: &flotilla::sched::place::Schedule,
) -> Option<String> {
    let by_machine = running(w);
    let launched = |u: &str| units.get(u).is_some_and(|x| x.desired == Desired::Launched);
    for (u, on) in schedule {
        // A unit bound to another (`BindsTo=`, the stack's sidekicks) runs only while
        // that one is launched too, as systemd and fleet would leave it.
        let opts = crate::scenario::unit_options(u, w.s.stack);
        let mut bound_to = opts
            .iter()
            .filter(|(sec, k, _)| sec == "Unit" && k == "BindsTo");
        let launched = launched(u) && bound_to.all(|(_, _, target)| launched(target));
        for m in on.keys() {
            let Some(i) = m.strip_prefix('m').and_then(|i| i.parse::<usize>().ok()) else {
                continue;
            };
            let here = by_machine.get(&i).is_some_and(|rs| rs.contains(u));
            if launched && by_machine.contains_key(&i) && !here {
                return Some(format!(
                    "{u} is scheduled on {m} but does not run there; its agent says: {}",
                    agent_says(w, i, u)
                ));
            }
        }
    }
    for (i, rs) in &by_machine {
        for u in rs {
            let scheduled_here = schedule
                .get(u)
                .is_some_and(|on| on.contains_key(&format!("m{i}")));
            if !(scheduled_here && launched(u)) {
                return Some(format!("{u} runs on m{i}, where it is not scheduled to"));
            }
        }
    }
    None
}

/// Samples every live replica's (applied index, state digest): equal indexes must have
/// equal digests.
fn sample_digests(w: &World) {
    for (i, slot) in w.slots.iter().enumerate() {
        let Some(h) = slot.handle() else { continue };
        // A replica still at the index it was last sampled at (same incarnation) has
        // nothing new to say, and the digest is most of the checker's cost.
        let life = *slot.crashes.lock().expect("slot lock");
        let applied = h.shared.machine().applied;
        {
            let mut last = slot.digested.lock().expect("slot lock");
            if *last == Some((life, applied)) {
                continue;
            }
            *last = Some((life, applied));
        }
        let (applied, digest) = {
            let m = h.shared.machine();
            (m.applied, quick_digest(&m))
        };
        let mut seen = w.digests.lock().expect("digest lock");
        match seen.get(&applied) {
            Some((d, j)) if *d != digest => {
                let msg = format!("replicas diverge at applied index {applied}: n{j} has {d:016x}, n{i} has {digest:016x}");
                drop(seen);
                w.violation(msg);
            }
            Some(_) => {}
            None => {
                seen.insert(applied, (digest, i));
            }
        }
    }
}

/// The replica's state as bytes (its snapshot encoding), hashed eight bytes at a time:
/// the checker compares replicas within one run, so it needs no stable format, and
/// `Machine::digest` (JSON) was most of the simulator's time.
fn quick_digest(m: &flotilla::raft::machine::Machine) -> u64 {
    let mut bytes = Vec::with_capacity(64 * 1024);
    m.encode_to(&mut bytes).expect("machine encodes");
    let mut h: u64 = 0;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h ^ bytes.len() as u64
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

/// The machine keys the most advanced replica held at the last sample.
#[derive(Default)]
struct Leases {
    applied: u64,
    present: std::collections::BTreeSet<String>,
}

/// The machines whose keys the most advanced live replica holds, and its applied index.
fn machine_keys(w: &World) -> Option<(u64, std::collections::BTreeSet<String>)> {
    let h = w
        .slots
        .iter()
        .filter_map(|s| s.handle())
        .max_by_key(|h| h.shared.machine().applied)?;
    let m = h.shared.machine();
    let ids = match m.store.get(registry::MACHINES, true) {
        Ok(ev) => ev.node.nodes.unwrap_or_default(),
        Err(_) => vec![],
    };
    let prefix = format!("{}/", registry::MACHINES);
    let ids = ids.iter().filter_map(|n| n.key.strip_prefix(&prefix));
    Some((m.applied, ids.map(String::from).collect()))
}

/// The README's promise: an agent that cannot renew its machine's key stops its units
/// at two thirds of the TTL, so they are down before the key expires. When a machine's
/// key leaves the store while the machine has run all along (up, never paused, for the
/// whole lease), it must run no unit — while clocks agree well within the TTL.
fn sample_leases(w: &World, seen: &mut Leases) {
    let Some((applied, present)) = machine_keys(w) else {
        return;
    };
    // A replica behind the last one sampled has nothing new to say.
    if applied < seen.applied {
        return;
    }
    let gone: Vec<String> = seen.present.difference(&present).cloned().collect();
    *seen = Leases { applied, present };
    let ttl_ms = w.s.sched.as_ref().map_or(2, |l| l.agent_ttl_s) * 1000;
    // A key is stamped on one member's wall clock and expired on the leader's: clocks
    // that disagree by more than the fencing margin (the last third of the TTL) expire
    // it before any agent could fence, and the promise is void. Then this says nothing.
    let skew_ms = w.skew_seen_ms.load(Ordering::Relaxed);
    if 2 * skew_ms + SAMPLE_MS >= ttl_ms / 3 {
        return;
    }
    let lease_ms = ttl_ms + 2 * SAMPLE_MS;
    let now = elapsed().as_millis() as u64;
    for id in gone {
        let Some(i) = id.strip_prefix('m').and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        let slot = &w.slots[i];
        let steady = slot.life() == Life::Up
            && *slot.paused.lock().expect("slot lock") == 0
            && now.saturating_sub(slot.steady_since_ms.load(Ordering::Relaxed)) >= lease_ms;
        let units = slot.engine.running_units();
        if steady && !units.is_empty() {
            w.violation(format!(
                "{id}'s key expired while it still ran {units:?}, up all along: its agent \
                 must stop them at two thirds of the {ttl_ms} ms lease, before the key expires"
            ));
        }
    }
}

/// How long a plain unit may run on two live machines at once: about what fencing leaves
/// (a paused machine cannot fence until it runs again).
pub fn lease_bound(ttl_s: u64) -> Duration {
    Duration::from_millis(ttl_s * 750)
}

/// Containers running on live machines (nodes that are up and not paused), by machine.
fn running(w: &World) -> BTreeMap<usize, Vec<String>> {
    (0..w.s.nodes)
        .filter(|i| {
            w.slots[*i].life() == Life::Up && *w.slots[*i].paused.lock().expect("slot lock") == 0
        })
        .map(|i| (i, w.slots[i].engine.running_units()))
        .collect()
}

/// Running containers never break a `Conflicts` rule on a machine, and a plain unit runs
/// on two live machines for no longer than the lease bound.
fn sample_running(w: &World, doubled: &mut BTreeMap<String, Duration>) {
    let now = elapsed();
    let by_machine = running(w);
    let mut where_: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (m, units) in &by_machine {
        for (a, ua) in units.iter().enumerate() {
            where_.entry(ua.as_str()).or_default().push(*m);
            let ra = crate::sched_check::requirements(ua);
            for ub in units.iter().skip(a + 1) {
                if ra.conflicts_with(ua, ub, &crate::sched_check::requirements(ub)) {
                    w.violation(format!(
                        "running containers of {ua} and {ub} conflict on n{m}"
                    ));
                }
            }
        }
    }
    let ttl = w.s.sched.as_ref().map_or(2, |l| l.agent_ttl_s);
    // Leases are wall-clock TTLs: clocks that disagree stretch them by the disagreement.
    let bound = lease_bound(ttl) + Duration::from_millis(2 * w.max_skew_ms());
    let mut still = BTreeMap::new();
    for (u, ms) in where_ {
        if crate::sched_check::requirements(u).global || ms.len() < 2 {
            continue;
        }
        let since = doubled.get(u).copied().unwrap_or(now);
        if now.saturating_sub(since) > bound {
            w.violation(format!(
                "{u} has run on machines {ms:?} at once for {:?} (the lease bound is {bound:?})",
                now - since,
            ));
        }
        still.insert(u.to_string(), since);
    }
    *doubled = still;
}

#[derive(Clone)]
enum Req {
    Get { key: String, quorum: bool },
    Write { cmd: Command },
}

async fn perform(slot: &Slot, h: RaftHandle, req: Req) -> Outcome {
    match req {
        Req::Get { key, quorum } => {
            if quorum && h.read_barrier().await.is_err() {
                return Outcome::Unknown;
            }
            let r = h.shared.machine().store.get(&key, false);
            match r {
                Ok(ev) => Outcome::Ok(ev.node.value),
                Err(e) if e.code == 100 => Outcome::Ok(None),
                Err(_) => Outcome::Unknown,
            }
        }
        Req::Write { cmd } => {
            let cmd = match cmd {
                Command::Put {
                    key,
                    value,
                    dir,
                    expire_ms: Some(ttl),
                    refresh,
                    prev,
                } => {
                    // As the API does: the receiving node fixes the expiration.
                    let expire = slot.clock.now_wall_ms() + ttl;
                    Command::Put {
                        key,
                        value,
                        dir,
                        expire_ms: Some(expire),
                        refresh,
                        prev,
                    }
                }
                c => c,
            };
            match h.write(cmd).await {
                Ok(out) => match out.result {
                    Ok(_) => Outcome::Ok(None),
                    Err(e) if e.code == 100 => Outcome::NotFound,
                    Err(e) if e.code == 101 => Outcome::CompareFailed,
                    Err(_) => Outcome::Unknown,
                },
                Err(ProposeError::NoLeader | ProposeError::Busy) => Outcome::Failed,
                Err(_) => Outcome::Unknown,
            }
        }
    }
}

/// A client request across the fabric: the request and the response can each be lost.
async fn client_call(w: &World, client: u64, node: usize, req: Req) -> Outcome {
    // A request that never reaches a node has no effect (the client, timing out, does
    // not know that; the checker may).
    let Some(there) = w.fabric.hop(client, node as u64) else {
        madsim::time::sleep(CLIENT_TIMEOUT).await;
        return Outcome::Failed;
    };
    madsim::time::sleep(there).await;
    let slot = &w.slots[node];
    let Some(h) = slot.handle() else {
        madsim::time::sleep(CLIENT_TIMEOUT).await;
        return Outcome::Failed;
    };
    let out = match madsim::time::timeout(CLIENT_TIMEOUT, perform(slot, h, req)).await {
        Ok(o) => o,
        Err(_) => return Outcome::Unknown,
    };
    match w.fabric.hop(node as u64, client) {
        Some(back) => {
            madsim::time::sleep(back).await;
            out
        }
        None => {
            madsim::time::sleep(CLIENT_TIMEOUT).await;
            Outcome::Unknown
        }
    }
}

fn random_op(rng: &mut impl Rng, client: u64, n: u64, last_seen: Option<&String>) -> Op {
    let value = format!("c{client}.{n}");
    let guess = last_seen
        .cloned()
        .unwrap_or_else(|| format!("c{}.{}", rng.gen_range(0..3), rng.gen_range(0..5)));
    match rng.gen_range(0..100) {
        0..=14 => Op::Get { quorum: false },
        15..=34 => Op::Get { quorum: true },
        35..=59 => Op::Set { value, ttl: false },
        60..=69 => Op::Set { value, ttl: true },
        70..=84 => Op::Cas { prev: guess, value },
        85..=92 => Op::Cad { prev: guess },
        _ => Op::Delete,
    }
}

fn request(key: &str, op: &Op) -> Req {
    let key = key.to_string();
    let put = |value: &str, expire_ms, prev| Req::Write {
        cmd: Command::Put {
            key: key.clone(),
            value: value.to_string(),
            dir: false,
            expire_ms,
            refresh: false,
            prev,
        },
    };
    let delete = |prev| Req::Write {
        cmd: Command::Delete {
            key: key.clone(),
            dir: false,
            recursive: false,
            prev,
        },
    };
    match op {
        Op::Get { quorum } => Req::Get {
            key: key.clone(),
            quorum: *quorum,
        },
        Op::Set { value, ttl } => put(value, ttl.then_some(TTL_MS), Precondition::default()),
        Op::Cas { prev, value } => put(
            value,
            None,
            Precondition {
                value: prev.clone(),
                ..Default::default()
            },
        ),
        Op::Cad { prev } => delete(Precondition {
            value: prev.clone(),
            ..Default::default()
        }),
        Op::Delete => delete(Precondition::default()),
    }
}

/// Records one operation around a client call.
async fn observe(w: &World, client: u64, node: usize, key: &str, op: Op) -> Outcome {
    let id = w.history.lock().expect("history lock").invoke(
        client,
        node as u64,
        key,
        op.clone(),
        w.now_ns(),
    );
    w.trace(format!("invoke {client} n{node} {key} {op:?}"));
    let out = client_call(w, client, node, request(key, &op)).await;
    w.trace(format!("complete {client} {out:?}"));
    w.history
        .lock()
        .expect("history lock")
        .complete(id, out.clone(), w.now_ns());
    out
}

async fn client(w: Arc<World>, c: usize, until: Duration) {
    let me = CLIENT_BASE + c as u64;
    let mut last_seen: BTreeMap<String, String> = BTreeMap::new();
    for n in 0..w.s.ops_per_client as u64 {
        if elapsed() >= until {
            return;
        }
        if w.s.bench {
            // Throughput: unique keys, no think time, each client on its own member.
            let key = format!("/bench/c{c}/{n}");
            let op = Op::Set {
                value: "v".repeat(100),
                ttl: false,
            };
            observe(&w, me, c % w.s.nodes, &key, op).await;
            continue;
        }
        let (key, node, op) = {
            let mut rng = madsim::rand::thread_rng();
            let key = format!("/k{}", rng.gen_range(0..w.s.keys));
            let node = rng.gen_range(0..w.s.nodes);
            let op = random_op(&mut rng, me, n, last_seen.get(&key));
            (key, node, op)
        };
        if let Outcome::Ok(Some(v)) = observe(&w, me, node, &key, op).await {
            last_seen.insert(key, v);
        }
        let pause = madsim::rand::thread_rng().gen_range(0..30);
        madsim::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// After the heal: a write must commit, and every replica that is up must reach the same
/// applied index and state digest, within [`LIVENESS_BOUND`].
async fn liveness(w: &Arc<World>) {
    let deadline = elapsed() + LIVENESS_BOUND;
    let probe = CLIENT_BASE + 999;
    let mut k = 0usize;
    let committed = loop {
        if elapsed() > deadline {
            break false;
        }
        let node = k % w.s.nodes;
        k += 1;
        let op = Op::Set {
            value: format!("probe.{k}"),
            ttl: false,
        };
        if observe(w, probe, node, "/probe", op).await == Outcome::Ok(None) {
            break true;
        }
    };
    if !committed {
        return w.violation("liveness: no write committed within the bound after healing".into());
    }
    loop {
        let states: Vec<(usize, u64, u64)> = w
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !matches!(s.life(), Life::Refused(_)))
            .map(|(i, s)| match s.handle() {
                Some(h) => {
                    let m = h.shared.machine();
                    (i, m.applied, m.digest())
                }
                None => (i, 0, 0),
            })
            .collect();
        let first = states[0];
        if first.1 > 0 && states.iter().all(|s| (s.1, s.2) == (first.1, first.2)) {
            w.trace(format!("converged at {} digest {:016x}", first.1, first.2));
            return;
        }
        if elapsed() > deadline {
            return w.violation(format!(
                "liveness: replicas did not converge after healing: {states:?}"
            ));
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn simulate(s: Scenario) -> Report {
    let rt = Handle::current();
    let fabric = Fabric::new(s.net.clone());
    let members = flotilla::node::initial_members(&node_config(&s, 0)).expect("valid cluster");
    let slots: Vec<Arc<Slot>> = (0..s.nodes)
        .map(|i| {
            let raft_id = members
                .iter()
                .find(|m| m.name == format!("n{i}"))
                .expect("member")
                .id;
            fabric.map_id(raft_id, i as u64);
            let files = MemFiles::new();
            Arc::new(Slot {
                disk: MemDiskHandle::new(),
                clock: SimClock::default(),
                handle: Mutex::new(None),
                life: Mutex::new(Life::Down),
                crashes: Mutex::new(0),
                corrupted: Mutex::new(None),
                engine: SimEngine::new(EngineFaults {
                    pull_fail_permille: s.sched.as_ref().map_or(0, |l| l.pull_fail_permille),
                    start_fail_permille: s.sched.as_ref().map_or(0, |l| l.start_fail_permille),
                }),
                procs: SimProcesses::new(),
                files: files.clone(),
                render: s.render.then(|| WatchedFiles::new(files, s.stack)),
                paused: Mutex::new(0),
                steady_since_ms: Default::default(),
                digested: Mutex::new(None),
                agent: Mutex::new(None),
            })
        })
        .collect();
    let w = Arc::new(World {
        s: s.clone(),
        rt: rt.clone(),
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
    });
    // Building a node starts it (madsim runs its init at once).
    for i in 0..s.nodes {
        let w2 = w.clone();
        let node = rt
            .create_node()
            .name(format!("n{i}"))
            .init(move || boot(w2.clone(), i))
            .build();
        w.nodes.lock().expect("nodes lock").push(node);
    }
    let helpers = rt.create_node().name("harness").build();
    helpers.spawn(supervise(w.clone()));
    if !s.bench {
        helpers.spawn(sampler(w.clone()));
    }
    let fault_end = Duration::from_millis(s.fault_phase_ms);
    let mut clients = vec![];
    for c in 0..s.clients {
        clients.push(helpers.spawn(client(w.clone(), c, fault_end)));
    }
    for op in s.sched.iter().flat_map(|l| l.ops.clone()) {
        helpers.spawn(unit_op(w.clone(), op));
    }
    if s.stack {
        helpers.spawn(stack::presence_keeper(w.clone()));
    }
    for ev in s.schedule.clone() {
        let w2 = w.clone();
        helpers.spawn(async move {
            madsim::time::sleep(Duration::from_millis(ev.at_ms)).await;
            inject(w2, ev).await;
        });
    }
    madsim::time::sleep(fault_end).await;
    heal(&w).await;
    for c in clients {
        let _ = c.await;
    }
    madsim::time::sleep(Duration::from_millis(s.heal_ms)).await;
    liveness(&w).await;
    if w.s.sched.is_some() {
        sched_liveness(&w, LIVENESS_BOUND).await;
        sample_schedules(&w);
    }
    final_reads(&w).await;
    if w.s.stack {
        if stack::converged(&w).await {
            stack::leader_change_probe(&w).await;
        }
    } else if w.s.render {
        render_convergence(&w).await;
    }
    drain_render_logs(&w);
    sample_digests(&w);
    check(&w);
    let trace = w.trace.lock().expect("trace lock").clone();
    let history = w.history.lock().expect("history lock").records.clone();
    let (ops, outcomes) = {
        let h = w.history.lock().expect("history lock");
        let mut o = [0u64; 4];
        for r in &h.records {
            o[match r.outcome {
                Outcome::Ok(_) => 0,
                Outcome::CompareFailed => 1,
                Outcome::NotFound => 2,
                Outcome::Unknown | Outcome::Failed => 3,
            }] += 1;
        }
        (h.records.len(), o)
    };
    let violations = w.violations.lock().expect("violations lock").clone();
    let undecided = w.undecided.lock().expect("undecided lock").clone();
    let faults = w.faults.lock().expect("faults lock").clone();
    let report = Report {
        seed: s.seed,
        violations,
        undecided,
        trace_hash: trace.hash(),
        sim_ms: elapsed().as_millis() as u64,
        ops,
        faults,
        messages: w.fabric.stats(),
        outcomes,
        history,
    };
    // Every task still holding the world (the nodes', the harness's loops) goes with its
    // node: the runtime keeps its tasks, and they the world, so a campaign of thousands
    // of seeds in one process would otherwise keep every seed's world (~5 MB each).
    for i in 0..w.s.nodes {
        w.rt.kill(w.node_id(i));
    }
    w.rt.kill(helpers.id());
    w.nodes.lock().expect("nodes lock").clear();
    report
}

/// Ends every fault: links restored, message faults off, paused nodes resumed, downed
/// nodes restarted (a node that refused a corrupt disk stays down).
async fn heal(w: &Arc<World>) {
    w.trace("heal".into());
    w.healed.store(true, Ordering::Relaxed);
    w.fabric.heal();
    w.fabric.set_net(Net {
        latency_min_ms: 1,
        latency_max_ms: 5,
        loss_permille: 0,
        dup_permille: 0,
    });
    for i in 0..w.s.nodes {
        // The stack's presence keys are TTLs stamped by the member that took the write and
        // expired on the leader's clock (as etcd v2 does): they only mean something while
        // clocks agree within the TTL, so the heal steps every clock back into agreement.
        if w.s.stack {
            w.slots[i].clock.skew_ms.store(0, Ordering::Relaxed);
        }
        w.rt.resume(w.node_id(i));
        w.slots[i].unsteady();
        w.slots[i].engine.set_faults(EngineFaults::default());
        w.slots[i].engine.set_daemon(true);
        if matches!(w.slots[i].life(), Life::Down | Life::Fatal(_)) {
            w.restart(i);
        }
    }
}

/// After the heal: values the check refuses are replaced (through a client, so the
/// history has them), then within [`LIVENESS_BOUND`] every live node's destination must
/// be the template over the final KV state.
async fn render_convergence(w: &Arc<World>) {
    let fixer = CLIENT_BASE + 997;
    for (key, value) in store_keys(w) {
        if crate::render::refused(&format!("{key}={value}")).is_some() {
            for attempt in 0..w.s.nodes * 3 {
                let op = Op::Set {
                    value: "clean".into(),
                    ttl: false,
                };
                if let Outcome::Ok(_) = observe(w, fixer, attempt % w.s.nodes, &key, op).await {
                    break;
                }
            }
        }
    }
    let deadline = elapsed() + LIVENESS_BOUND;
    loop {
        let want = crate::render::expected(&store_keys(w));
        let wrong: Vec<String> = (0..w.s.nodes)
            .filter(|i| w.slots[*i].life() == Life::Up)
            .filter_map(|i| {
                let got = w.slots[i].render.as_ref()?.dest();
                (got.as_deref() != Some(want.as_str())).then(|| format!("n{i} has {got:?}"))
            })
            .collect();
        if wrong.is_empty() {
            w.trace(format!("rendered {} bytes everywhere", want.len()));
            break;
        }
        if elapsed() > deadline {
            w.violation(format!(
                "render convergence: destinations differ from the final state {want:?}: {}",
                wrong.join("; ")
            ));
            break;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What each renderer did wrong along the way, and how much it did.
fn drain_render_logs(w: &World) {
    for (i, slot) in w.slots.iter().enumerate() {
        let Some(files) = &slot.render else { continue };
        let log = std::mem::take(&mut *files.log.lock().expect("render log"));
        for _ in 0..log.reloads {
            w.count("render-reload");
        }
        for _ in 0..log.checks_refused {
            w.count("render-check-refused");
        }
        for v in log.violations {
            w.violation(format!("renderer n{i}: {v}"));
        }
    }
}

/// The KV clients' keys and values, from a node that is up (the replicas converged).
fn store_keys(w: &World) -> BTreeMap<String, String> {
    let Some((h, slot)) = w.slots.iter().find_map(|s| s.handle().map(|h| (h, s))) else {
        return BTreeMap::new();
    };
    let kv = InProc::new(h, Arc::new(slot.clock.clone()));
    let root = kv.read(|s| s.get("/", true));
    let mut out = BTreeMap::new();
    for n in root.ok().and_then(|e| e.node.nodes).unwrap_or_default() {
        if let (Some(v), false) = (n.value, n.dir) {
            out.insert(n.key, v);
        }
    }
    out
}

/// One linearizable read of every key after everything settled.
async fn final_reads(w: &Arc<World>) {
    let reader = CLIENT_BASE + 998;
    for k in 0..w.s.keys {
        let key = format!("/k{k}");
        for attempt in 0..w.s.nodes * 3 {
            let node = attempt % w.s.nodes;
            if let Outcome::Ok(_) = observe(w, reader, node, &key, Op::Get { quorum: true }).await {
                break;
            }
        }
    }
}

fn check(w: &World) {
    let records = w.history.lock().expect("history lock").records.clone();
    match linearizability::check(&records) {
        Verdict::Linearizable => {}
        Verdict::Violation(e) => w.violation(format!("linearizability: {e}")),
        Verdict::Undecided(e) => {
            w.trace(format!("undecided {e}"));
            let why = format!("linearizability undecided: {e}");
            w.undecided.lock().expect("undecided lock").push(why);
        }
    }
    if let Err(e) = check_local_reads(&records) {
        w.violation(e);
    }
    if let Err(e) = check_acknowledged(&records) {
        w.violation(e);
    }
}

/// Local (non-quorum) reads may be stale but never invent a value.
fn check_local_reads(records: &[Record]) -> Result<(), String> {
    // (key, value) → earliest invocation of a write of that value.
    let mut writes: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for w in records {
        if let Op::Set { value, .. } | Op::Cas { value, .. } = &w.op {
            let t = writes
                .entry((w.key.as_str(), value.as_str()))
                .or_insert(u64::MAX);
            *t = (*t).min(w.invoke_ns);
        }
    }
    for r in records.iter().filter(|r| r.op == Op::Get { quorum: false }) {
        if let Outcome::Ok(Some(v)) = &r.outcome {
            let written = writes
                .get(&(r.key.as_str(), v.as_str()))
                .is_some_and(|t| *t <= r.complete_ns.unwrap_or(u64::MAX));
            if !written {
                return Err(format!(
                    "local read of {} returned {v:?}, which nobody wrote",
                    r.key
                ));
            }
        }
    }
    Ok(())
}

/// The last acknowledged write to a key, when no other write could follow it, is what
/// the final read returns.
fn check_acknowledged(records: &[Record]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_key.entry(r.key.as_str()).or_default().push(r);
    }
    for (key, of_key) in by_key {
        let Some(fin) = of_key
            .iter()
            .rev()
            .find(|r| r.op == Op::Get { quorum: true } && r.outcome != Outcome::Unknown)
        else {
            continue;
        };
        let writes: Vec<&&Record> = of_key
            .iter()
            .filter(|r| {
                r.op.is_write() && r.outcome != Outcome::Failed && r.invoke_ns < fin.invoke_ns
            })
            .collect();
        let Some(last) = writes
            .iter()
            .filter(|r| r.outcome == Outcome::Ok(None))
            .max_by_key(|r| r.invoke_ns)
        else {
            continue;
        };
        let isolated = writes.iter().all(|o| {
            std::ptr::eq(**o, **last)
                || o.complete_ns.is_some_and(|t| t < last.invoke_ns)
                    && o.outcome != Outcome::Unknown
        });
        if !isolated {
            continue;
        }
        let want = match &last.op {
            Op::Set { value, ttl: false } | Op::Cas { value, .. } => Some(value.clone()),
            Op::Set { ttl: true, .. } => continue,
            _ => None,
        };
        if fin.outcome != Outcome::Ok(want.clone()) {
            return Err(format!(
                "acknowledged write lost: {key} was last set to {want:?} (acknowledged at {} ns) but the final read returned {:?}",
                last.complete_ns.unwrap_or(0),
                fin.outcome
            ));
        }
    }
    Ok(())
}
