//! The agent's loop: the thin async shell around each unit's [`lifecycle::Unit`].
//!
//! It watches only its own machine's part of the schedule, loads the units placed there
//! (parsing their files into lifecycle specs), decides which to start and stop (desired
//! state, `After`/`Requires`/`BindsTo` among them, the lease), carries out the lifecycle's
//! commands through the seams, feeds results and container exits back, and publishes each
//! unit's state (fleet's `/state`) with the machine's TTL.
//!
//! Fencing: the agent knows when its machine's key was last renewed. Once two thirds of
//! the TTL have passed without a renewal it kills its units, so they are down before the
//! key expires and the engine places them elsewhere: a unit runs on two live machines
//! for no longer than the time a kill takes. On start it adopts running containers that
//! carry its machine's label, the unit's name and the same unit hash; other containers
//! with its label that no unit here accounts for are strays, and removed.

use super::execute::{
    run_step, Ctx, Outcome, Seams, LABEL_HASH, LABEL_MACHINE, LABEL_ROLE, LABEL_UNIT,
};
use super::lifecycle::{self, Cmd, Event, Reported};
use super::presence::Renewed;
use super::spec::{env_files, prepare, Deps};
pub use super::start::AgentConfig;
use crate::client::SetOpts;
use crate::kv::Precondition;
use crate::sched::place::{Desired, Entry};
use crate::sched::registry::{self, StoredUnit, UnitState};
use flotilla_shims::containers::{ContainerState, ExitEvent};
use flotilla_shims::process::Signal;
use flotilla_shims::{Clock, Spawn};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Inputs queued for the loop at most; senders wait beyond this.
pub const INPUTS_MAX: usize = 4096;
/// Units one machine runs at most (more are reported failed, not started).
pub const UNITS_MAX: usize = 1024;
/// Retries of a unit that failed because the container runtime was down: first after
/// this, doubling up to the cap.
const RUNTIME_RETRY_MS: u64 = 1_000;
const RUNTIME_RETRY_MAX_MS: u64 = 60_000;

/// Planted bugs (simulation only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentBugs {
    /// Never stop units when the lease is lost.
    pub no_fencing: bool,
    /// Fence late: at one and a half TTLs without a renewal, after the machine's key
    /// has expired and its units may have been placed elsewhere.
    pub fence_late: bool,
}

/// What the agent reports of a unit (for the journal endpoint and tests).
#[derive(Debug, Clone)]
pub struct UnitReport {
    pub reported: Reported,
    pub hash: String,
    pub journal: Vec<String>,
    /// The main container's name, if it has one.
    pub container: Option<String>,
    /// The main process's handle, if it is a host process.
    pub process: Option<u64>,
}

/// The agent's units as it last saw them, shared with whoever asks.
#[derive(Default)]
pub struct AgentView {
    pub units: Mutex<BTreeMap<String, UnitReport>>,
    /// Wake-ups caused by schedule changes (a machine's agent is woken only by its own).
    pub schedule_wakeups: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, PartialEq)]
enum Main {
    None,
    Container { name: String, id: String },
    Process(u64),
}

struct Managed {
    gen: u64,
    hash: String,
    desired: Desired,
    unit: lifecycle::Unit,
    deps: Deps,
    ctx: Ctx,
    main: Main,
    /// We asked it to start (and have not asked it to stop since).
    started: bool,
    /// No longer wanted here (unscheduled, or its file changed): stop, then forget.
    leaving: bool,
    published: Option<(String, String, u64)>,
    /// Retry after a failure caused by an unavailable container runtime: (at, backoff).
    runtime_retry: Option<(u64, u64)>,
    /// Ended main containers to remove once the unit is down.
    leftovers: Vec<String>,
    /// A failed publish is not retried before this.
    publish_after: u64,
}

/// A container carrying this machine's label.
struct Found {
    name: String,
    id: String,
    hash: String,
    running: bool,
    /// A unit's `ExecStart` container (not one of its steps').
    main: bool,
}

/// Lines of a finished main container's output kept in the unit's journal.
pub const EXIT_LOG_LINES: usize = 20;

enum Input {
    Step {
        unit: String,
        gen: u64,
        id: u64,
        outcome: Outcome,
    },
    Exit(ExitEvent),
    MainGone {
        unit: String,
        gen: u64,
        code: i64,
    },
    /// These units' states did not reach the store: publish them again.
    Republish(Vec<String>),
    /// The last output of a main container that ended, for the journal.
    Logs {
        unit: String,
        gen: u64,
        container: String,
        lines: Vec<String>,
    },
    Wake,
}

pub struct Agent {
    cfg: AgentConfig,
    seams: Seams,
    clock: Arc<dyn Clock>,
    spawn: Arc<dyn Spawn>,
    renewed: Renewed,
    view: Arc<AgentView>,
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    units: BTreeMap<String, Managed>,
    next_gen: u64,
    fenced: bool,
    started_ms: u64,
}

fn now_ms(clock: &dyn Clock) -> u64 {
    clock.now_mono().as_millis() as u64
}

impl Agent {
    pub fn new(
        cfg: AgentConfig,
        seams: Seams,
        clock: Arc<dyn Clock>,
        spawn: Arc<dyn Spawn>,
        renewed: Renewed,
        view: Arc<AgentView>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(INPUTS_MAX);
        Self {
            cfg,
            seams,
            clock,
            spawn,
            renewed,
            view,
            tx,
            rx,
            units: BTreeMap::new(),
            next_gen: 1,
            fenced: true,
            started_ms: 0,
        }
    }

    fn me(&self) -> &str {
        &self.cfg.machine.id
    }

    fn ttl_ms(&self) -> u64 {
        self.cfg.machine.ttl_s.max(1) * 1000
    }

    pub async fn run(mut self) {
        self.started_ms = now_ms(&*self.clock);
        self.fenced = false;
        self.spawn_watchers();
        let mut next_reconcile = 0;
        loop {
            let now = now_ms(&*self.clock);
            self.check_lease(now);
            if now >= next_reconcile {
                self.reconcile(now).await;
                next_reconcile = now + self.cfg.reconcile_ms;
            }
            self.decide(now);
            self.clean_up();
            self.publish(now);
            let wait = self.next_wake(now, next_reconcile);
            let input = tokio::select! {
                biased;
                i = self.rx.recv() => i,
                _ = self.clock.sleep(Duration::from_millis(wait)) => None,
            };
            let now = now_ms(&*self.clock);
            match input {
                Some(Input::Wake) => next_reconcile = now,
                Some(i) => self.input(i, now),
                None => self.tick(now),
            }
            // Take whatever else is queued before deciding again.
            while let Ok(i) = self.rx.try_recv() {
                match i {
                    Input::Wake => next_reconcile = now,
                    i => self.input(i, now),
                }
            }
        }
    }

    /// Schedule changes under this machine's prefix, and container exits, become inputs.
    fn spawn_watchers(&self) {
        let (kv, tx, clock, dir) = (
            self.seams.kv.clone(),
            self.tx.clone(),
            self.clock.clone(),
            registry::schedule_dir(self.me()),
        );
        let view = self.view.clone();
        self.spawn.spawn(
            "agent-schedule-watch",
            Box::pin(async move {
                let mut since = 0;
                loop {
                    if since == 0 {
                        since = match kv.get(registry::ROOT, false, false).await {
                            Ok(Some(g)) => g.index + 1,
                            Ok(None) => 1,
                            Err(_) => {
                                clock.sleep(Duration::from_millis(500)).await;
                                continue;
                            }
                        };
                    }
                    match kv.watch(&dir, true, since).await {
                        Ok(ev) => {
                            since = ev.index + 1;
                            view.schedule_wakeups
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if tx.send(Input::Wake).await.is_err() {
                                return;
                            }
                        }
                        // The window moved past us: re-read everything, watch from now.
                        Err(e) if e.code() == Some(crate::kv::error::EVENT_INDEX_CLEARED) => {
                            since = 0;
                            let _ = tx.send(Input::Wake).await;
                        }
                        Err(_) => clock.sleep(Duration::from_millis(500)).await,
                    }
                }
            }),
        );
        let (containers, tx, clock) = (
            self.seams.containers.clone(),
            self.tx.clone(),
            self.clock.clone(),
        );
        self.spawn.spawn(
            "agent-exits",
            Box::pin(async move {
                let mut backoff = 100;
                loop {
                    match containers.next_exit().await {
                        Ok(e) => {
                            backoff = 100;
                            if tx.send(Input::Exit(e)).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => {
                            clock.sleep(Duration::from_millis(backoff)).await;
                            backoff = (backoff * 2).min(5_000);
                        }
                    }
                }
            }),
        );
    }

    /// Fences (kills every unit) once two thirds of the TTL passed without a renewal;
    /// lifts the fence when renewals resume.
    fn check_lease(&mut self, now: u64) {
        // Before its first renewal the agent counts from its own start: a restarted agent
        // keeps (adopts) its running units while it announces itself again.
        let last = self
            .renewed
            .borrow()
            .map_or(self.started_ms, |t| t.as_millis() as u64);
        let fence_after_ms = if self.cfg.bugs.fence_late {
            self.ttl_ms() * 3 / 2
        } else {
            self.ttl_ms() * 2 / 3
        };
        let ok = now.saturating_sub(last) < fence_after_ms;
        if ok != self.fenced {
            return;
        }
        self.fenced = !ok;
        if self.fenced && self.cfg.bugs.no_fencing {
            return;
        }
        if self.fenced {
            tracing::warn!(machine = %self.cfg.machine.id, "lease not renewed: stopping every unit");
            let names: Vec<String> = self.units.keys().cloned().collect();
            for n in names {
                if let Some(m) = self.units.get_mut(&n) {
                    m.started = false;
                }
                self.event(&n, Event::Fence, now);
            }
            // Containers with this machine's label that no unit here manages (found at a
            // restart, before the schedule could be read) go too.
            let managed: Vec<String> = self
                .units
                .values()
                .filter_map(|m| match &m.main {
                    Main::Container { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .collect();
            let (c, me) = (self.seams.containers.clone(), self.cfg.machine.id.clone());
            self.spawn.spawn(
                "agent-fence",
                Box::pin(async move {
                    for f in c
                        .list_by_label(LABEL_MACHINE, &me)
                        .await
                        .unwrap_or_default()
                    {
                        if f.state == ContainerState::Running && !managed.contains(&f.id) {
                            let _ = c.kill(&f.name, "KILL").await;
                        }
                    }
                }),
            );
        }
    }

    fn next_wake(&self, now: u64, next_reconcile: u64) -> u64 {
        let mut at = next_reconcile;
        for m in self.units.values() {
            if let Some(d) = m.unit.next_deadline_ms() {
                at = at.min(d);
            }
            if let Some((r, _)) = m.runtime_retry {
                at = at.min(r);
            }
        }
        // The lease is checked often enough to fence in time.
        at = at.min(now + self.ttl_ms() / 12);
        at.saturating_sub(now).max(1)
    }

    /// Reads this machine's schedule and brings the set of managed units in line with it.
    async fn reconcile(&mut self, now: u64) {
        let dir = registry::schedule_dir(self.me());
        let read = bounded(
            &*self.clock,
            self.store_bound(),
            // A linearizable read: a replica that restarted and has not applied its log
            // yet must not make this machine stop (or remove) what it runs.
            self.seams.kv.get(&dir, true, true),
        );
        let desired: BTreeMap<String, Entry> = match read
            .await
            .unwrap_or_else(|| Err(crate::client::ClientError::Unavailable("timed out".into())))
        {
            Ok(Some(g)) => registry::schedule(Some(&crate::kv::NodeView {
                nodes: Some(vec![g.node]),
                ..empty_dir()
            }))
            .into_iter()
            .filter_map(|(u, mut by_m)| by_m.remove(self.me()).map(|e| (u, e)))
            .collect(),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                tracing::debug!(error = %e, "agent: cannot read the schedule");
                return;
            }
        };
        for (name, m) in self.units.iter_mut() {
            match desired.get(name) {
                Some(e) if e.hash == m.hash => m.desired = e.desired,
                _ => m.leaving = true,
            }
        }
        let gone: Vec<String> = self
            .units
            .iter()
            .filter(|(_, m)| m.leaving && m.unit.is_down())
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            self.forget(&n);
        }
        let running = self.containers_by_unit().await;
        for (name, e) in &desired {
            if self.units.contains_key(name) {
                continue;
            }
            if self.units.len() >= UNITS_MAX {
                tracing::warn!(unit = %name, "agent: too many units on this machine; not loading");
                continue;
            }
            self.load(name, e, running.get(name)).await;
        }
        self.remove_strays(&desired, running).await;
        self.check_mains(now).await;
    }

    /// Containers with this machine's label, by unit.
    async fn containers_by_unit(&self) -> BTreeMap<String, Vec<Found>> {
        let mut out: BTreeMap<String, Vec<Found>> = BTreeMap::new();
        let list = self
            .seams
            .containers
            .list_by_label(LABEL_MACHINE, self.me())
            .await;
        for c in list.unwrap_or_default() {
            let unit = c.labels.get(LABEL_UNIT).cloned().unwrap_or_default();
            out.entry(unit).or_default().push(Found {
                hash: c.labels.get(LABEL_HASH).cloned().unwrap_or_default(),
                main: c.labels.get(LABEL_ROLE).map(String::as_str) == Some("main"),
                running: c.state == ContainerState::Running,
                name: c.name,
                id: c.id,
            });
        }
        out
    }

    /// Starts managing `name`: its file from the store, prepared; adopted if its main
    /// container is already running (after a restart of this agent).
    async fn load(&mut self, name: &str, e: &Entry, found: Option<&Vec<Found>>) {
        let rec = match self
            .seams
            .kv
            .get(&registry::unit_key(name), false, false)
            .await
        {
            Ok(Some(g)) => g
                .node
                .value
                .as_deref()
                .and_then(|v| StoredUnit::parse(v, g.node.modified_index)),
            _ => None,
        };
        let Some(rec) = rec.filter(|r| r.hash == e.hash) else {
            // The unit changed or vanished since the schedule entry: the engine will
            // update the entry; look again then.
            return;
        };
        let mut files = BTreeMap::new();
        for (path, _) in env_files(name, &rec.record.options, &self.cfg.host) {
            let text = self.seams.files.read(&path).await.ok().flatten();
            files.insert(path, text.map(|t| String::from_utf8_lossy(&t).into_owned()));
        }
        let prepared = prepare(name, &rec.record.options, &files, &self.cfg.host);
        let gen = self.next_gen;
        self.next_gen += 1;
        let ctx = |env| Ctx {
            unit: name.to_string(),
            hash: rec.hash.clone(),
            machine: self.cfg.machine.id.clone(),
            env,
            prefix: self.cfg.name_prefix.clone(),
            publish_ip: self.cfg.publish_ip.clone(),
            allow_host_commands: self.cfg.allow_host_commands,
        };
        let m = match prepared {
            Ok(p) => {
                let adopt = found.and_then(|cs| {
                    cs.iter()
                        .find(|c| c.running && c.main && c.hash == rec.hash)
                });
                let (unit, main, started) = match adopt {
                    Some(c) if e.desired == Desired::Launched => (
                        lifecycle::Unit::adopted(p.spec),
                        Main::Container {
                            name: c.name.clone(),
                            id: c.id.clone(),
                        },
                        true,
                    ),
                    _ => (lifecycle::Unit::new(p.spec), Main::None, false),
                };
                Managed {
                    gen,
                    hash: rec.hash.clone(),
                    desired: e.desired,
                    unit,
                    deps: p.deps,
                    ctx: ctx(p.env),
                    main,
                    started,
                    leaving: false,
                    published: None,
                    runtime_retry: None,
                    leftovers: vec![],
                    publish_after: 0,
                }
            }
            Err(why) => Managed {
                gen,
                hash: rec.hash.clone(),
                desired: e.desired,
                unit: lifecycle::Unit::broken(why),
                deps: Deps::default(),
                ctx: ctx(BTreeMap::new()),
                main: Main::None,
                started: false,
                leaving: false,
                published: None,
                runtime_retry: None,
                leftovers: vec![],
                publish_after: 0,
            },
        };
        tracing::info!(unit = name, adopted = m.started, "agent: loaded");
        // Containers of this unit that were not adopted (an older version, or the unit is
        // not to run) belong to no run of it: remove them.
        let adopted = match &m.main {
            Main::Container { id, .. } => Some(id.clone()),
            _ => None,
        };
        for f in found.into_iter().flatten() {
            if Some(&f.id) != adopted.as_ref() {
                let (c, name) = (self.seams.containers.clone(), f.name.clone());
                self.spawn.spawn(
                    "agent-remove",
                    Box::pin(async move {
                        let _ = c.remove(&name, true).await;
                    }),
                );
            }
        }
        self.units.insert(name.to_string(), m);
        self.report(name);
    }

    /// Removes containers with this machine's label that no unit here accounts for.
    async fn remove_strays(
        &self,
        desired: &BTreeMap<String, Entry>,
        found: BTreeMap<String, Vec<Found>>,
    ) {
        for (unit, cs) in found {
            if desired.contains_key(&unit) || self.units.contains_key(&unit) {
                continue;
            }
            for Found { name, .. } in cs {
                tracing::info!(container = %name, unit = %unit, "agent: removing a stray container");
                let _ = self.seams.containers.remove(&name, true).await;
            }
        }
    }

    /// A main container that is no longer running though no exit event came (the event
    /// stream was down): tell its lifecycle.
    async fn check_mains(&mut self, now: u64) {
        let mains: Vec<(String, u64, String)> = self
            .units
            .iter()
            .filter_map(|(n, m)| match &m.main {
                Main::Container { name, .. } => Some((n.clone(), m.gen, name.clone())),
                _ => None,
            })
            .collect();
        for (unit, gen, cname) in mains {
            let code = match self.seams.containers.inspect(&cname).await {
                Ok(info) => match info.state {
                    ContainerState::Exited { code, .. } => Some(code),
                    _ => None,
                },
                Err(flotilla_shims::containers::ContainerError::NotFound(_)) => Some(0),
                Err(_) => None,
            };
            if let Some(code) = code {
                self.input(Input::MainGone { unit, gen, code }, now);
            }
        }
    }

    /// Starts and stops units: wanted and not fenced and its dependencies up → start;
    /// otherwise → stop.
    fn decide(&mut self, now: u64) {
        let names: Vec<String> = self.units.keys().cloned().collect();
        for n in names {
            let (want, deps_up, bound_down) = {
                let m = &self.units[&n];
                let fenced = self.fenced && !self.cfg.bugs.no_fencing;
                let want = m.desired == Desired::Launched && !m.leaving && !fenced;
                let up = |d: &String| self.units.get(d).is_some_and(|x| x.unit.is_active());
                let wants = |d: &String| {
                    self.units
                        .get(d)
                        .is_some_and(|x| x.desired == Desired::Launched && !x.leaving)
                };
                let deps_up =
                    m.deps.after.iter().all(|d| up(d) || !wants(d)) && m.deps.bound().all(up);
                let bound_down = m.started
                    && m.deps.bound().any(|d| {
                        !up(d)
                            && !self
                                .units
                                .get(d)
                                .is_some_and(|x| !x.unit.is_down() && x.started)
                    });
                (want, deps_up, bound_down)
            };
            let m = self.units.get_mut(&n).expect("listed");
            if let Some((at, backoff)) = m.runtime_retry {
                if now >= at && m.unit.is_down() {
                    m.started = false;
                    m.runtime_retry = Some((u64::MAX, backoff));
                }
            }
            if want && deps_up && !m.started {
                m.started = true;
                self.event(&n, Event::Start, now);
            } else if (!want || bound_down) && m.started {
                m.started = false;
                self.event(&n, Event::Stop, now);
            } else if !want && !m.unit.is_down() && !m.started {
                self.event(&n, Event::Stop, now);
            }
        }
    }

    /// Feeds `ev` to `unit`'s lifecycle and carries out what it says.
    fn event(&mut self, unit: &str, ev: Event, now: u64) {
        let Some(m) = self.units.get_mut(unit) else {
            return;
        };
        let cmds = m.unit.handle(ev, now);
        // Failures that are not the unit's own are retried, with bounded backoff: the
        // container runtime was down, or restarts hit the start limit (as systemd allows a
        // new start once its interval has passed).
        let (runtime_down, limit_hit) = match m.unit.failure() {
            Some(f) => (
                f.contains("container runtime unavailable"),
                f == lifecycle::START_LIMIT_HIT,
            ),
            None => (false, false),
        };
        if (runtime_down || limit_hit) && m.desired == Desired::Launched {
            let first = if limit_hit {
                lifecycle::START_LIMIT_INTERVAL_MS
            } else {
                RUNTIME_RETRY_MS
            };
            let backoff = m
                .runtime_retry
                .map_or(first, |(_, b)| (b * 2).clamp(first, RUNTIME_RETRY_MAX_MS));
            if m.runtime_retry.is_none_or(|(at, _)| at == u64::MAX) {
                m.runtime_retry = Some((now + backoff, backoff));
            }
        } else if m.unit.is_active() {
            m.runtime_retry = None;
        }
        for c in cmds {
            self.dispatch(unit, c);
        }
        self.report(unit);
    }

    fn dispatch(&self, unit: &str, cmd: Cmd) {
        let Some(m) = self.units.get(unit) else {
            return;
        };
        let (tx, gen, unit) = (self.tx.clone(), m.gen, unit.to_string());
        match cmd {
            Cmd::Exec { id, stage, step } => {
                let (seams, ctx) = (self.seams.clone(), m.ctx.clone());
                self.spawn.spawn(
                    "agent-step",
                    Box::pin(async move {
                        let outcome = run_step(&seams, &ctx, stage, &step).await;
                        let _ = tx
                            .send(Input::Step {
                                unit,
                                gen,
                                id,
                                outcome,
                            })
                            .await;
                    }),
                );
            }
            Cmd::StopMain { timeout_ms } => self.end_main(&m.main, unit, gen, Some(timeout_ms)),
            Cmd::KillMain => self.end_main(&m.main, unit, gen, None),
        }
    }

    /// Stops (with a grace period) or kills the main process; its end comes back as an
    /// input whether or not the engine's event stream reports it.
    fn end_main(&self, main: &Main, unit: String, gen: u64, grace_ms: Option<u64>) {
        match main {
            Main::Container { name, .. } => {
                let (c, tx, name) = (self.seams.containers.clone(), self.tx.clone(), name.clone());
                self.spawn.spawn(
                    "agent-end-main",
                    Box::pin(async move {
                        let r = match grace_ms {
                            Some(ms) => {
                                c.stop(&name, (ms / 1000).clamp(1, u64::from(u32::MAX)) as u32)
                                    .await
                            }
                            None => c.kill(&name, "KILL").await,
                        };
                        let code = match c.inspect(&name).await {
                            Ok(info) => match info.state {
                                ContainerState::Exited { code, .. } => Some(code),
                                _ => None,
                            },
                            Err(flotilla_shims::containers::ContainerError::NotFound(_)) => Some(0),
                            Err(_) => None,
                        };
                        if let (Some(code), true) = (code, r.is_ok() || code.is_some()) {
                            let _ = tx.send(Input::MainGone { unit, gen, code }).await;
                        }
                    }),
                );
            }
            Main::Process(h) => {
                let sig = if grace_ms.is_some() {
                    Signal::Term
                } else {
                    Signal::Kill
                };
                let _ = self.seams.procs.signal(*h, sig);
            }
            Main::None => {}
        }
    }

    fn input(&mut self, i: Input, now: u64) {
        match i {
            Input::Step {
                unit,
                gen,
                id,
                outcome,
            } => {
                let Some(m) = self.units.get_mut(&unit).filter(|m| m.gen == gen) else {
                    return;
                };
                match &outcome {
                    Outcome::MainContainer { name, id } => {
                        m.main = Main::Container {
                            name: name.clone(),
                            id: id.clone(),
                        }
                    }
                    Outcome::MainProcess { handle } => {
                        m.main = Main::Process(*handle);
                        let (procs, tx, h, u) = (
                            self.seams.procs.clone(),
                            self.tx.clone(),
                            *handle,
                            unit.clone(),
                        );
                        self.spawn.spawn(
                            "agent-process-wait",
                            Box::pin(async move {
                                if let Ok(code) = procs.wait(h).await {
                                    let _ = tx.send(Input::MainGone { unit: u, gen, code }).await;
                                }
                            }),
                        );
                    }
                    Outcome::Done { .. } => {}
                }
                self.event(&unit, outcome.event(id), now);
            }
            Input::Exit(e) => {
                let hit = self.units.iter().find(|(_, m)| match &m.main {
                    Main::Container { name, id } => {
                        *id == e.id || (e.id.is_empty() && *name == e.name)
                    }
                    _ => false,
                });
                if let Some((unit, m)) = hit {
                    let (unit, gen) = (unit.clone(), m.gen);
                    self.main_ended(&unit, gen, e.code, e.oom_killed, now);
                }
            }
            Input::MainGone { unit, gen, code } => self.main_ended(&unit, gen, code, false, now),
            Input::Logs {
                unit,
                gen,
                container,
                lines,
            } => {
                let Some(m) = self.units.get_mut(&unit).filter(|m| m.gen == gen) else {
                    return;
                };
                for l in lines {
                    m.unit.note(format!("{container}: {l}"));
                }
                m.leftovers.push(container);
                self.report(&unit);
            }
            Input::Republish(units) => {
                // Not at once: a store that refuses now would be asked again and again.
                let retry = now + self.ttl_ms() / 12;
                for u in units {
                    if let Some(m) = self.units.get_mut(&u) {
                        m.published = None;
                        m.publish_after = retry;
                    }
                }
            }
            Input::Wake => {}
        }
    }

    fn main_ended(&mut self, unit: &str, gen: u64, code: i64, oom: bool, now: u64) {
        let Some(m) = self.units.get_mut(unit).filter(|m| m.gen == gen) else {
            return;
        };
        let ended = std::mem::replace(&mut m.main, Main::None);
        if ended == Main::None {
            return;
        }
        if let Main::Container { name, .. } = ended {
            // Keep its last words, then (once the unit is down) remove it: a stopped
            // unit leaves no container behind, and its output stays in the journal.
            let (c, tx, unit) = (
                self.seams.containers.clone(),
                self.tx.clone(),
                unit.to_string(),
            );
            self.spawn.spawn(
                "agent-exit-logs",
                Box::pin(async move {
                    let lines = c.logs(&name, EXIT_LOG_LINES).await.unwrap_or_default();
                    let _ = tx
                        .send(Input::Logs {
                            unit,
                            gen,
                            container: name,
                            lines,
                        })
                        .await;
                }),
            );
        }
        self.event(
            unit,
            Event::MainExited {
                code,
                oom_killed: oom,
            },
            now,
        );
    }

    /// Removes the ended main containers of units that are down (a running container of
    /// the same name — the unit started again — is refused by the engine and stays).
    fn clean_up(&mut self) {
        for m in self.units.values_mut().filter(|m| m.unit.is_down()) {
            for name in m.leftovers.drain(..) {
                let c = self.seams.containers.clone();
                self.spawn.spawn(
                    "agent-remove",
                    Box::pin(async move {
                        let _ = c.remove(&name, false).await;
                    }),
                );
            }
        }
    }

    fn tick(&mut self, now: u64) {
        let due: Vec<String> = self
            .units
            .iter()
            .filter(|(_, m)| m.unit.next_deadline_ms().is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for n in due {
            self.event(&n, Event::Tick, now);
        }
    }

    /// Writes each unit's state under `/_flotilla/states` when it changes, and refreshes
    /// it at half the TTL (it expires with the machine).
    fn publish(&mut self, now: u64) {
        let ttl_s = self.cfg.machine.ttl_s;
        let me = self.cfg.machine.id.clone();
        let mut writes: Vec<(String, String, String)> = vec![];
        for (name, m) in self.units.iter_mut() {
            let r = m.unit.reported();
            let key = (r.active.to_string(), r.sub.to_string());
            let stale = m.published.as_ref().is_none_or(|(a, s, at)| {
                (a.as_str(), s.as_str()) != (r.active, r.sub)
                    || now.saturating_sub(*at) >= ttl_s * 500
            });
            if !stale || now < m.publish_after {
                continue;
            }
            m.published = Some((key.0, key.1, now));
            let st = UnitState {
                name: name.clone(),
                hash: m.hash.clone(),
                machine_id: me.clone(),
                systemd_load_state: r.load.to_string(),
                systemd_active_state: r.active.to_string(),
                systemd_sub_state: r.sub.to_string(),
            };
            let value = serde_json::to_string(&st).expect("state serializes");
            writes.push((name.clone(), registry::state_key(name, &me), value));
        }
        if writes.is_empty() {
            return;
        }
        // In the background: a store that does not answer (this machine cut off) must not
        // hold up the loop, which has units to fence.
        let (kv, tx, clock, bound) = (
            self.seams.kv.clone(),
            self.tx.clone(),
            self.clock.clone(),
            self.store_bound(),
        );
        self.spawn.spawn(
            "agent-publish",
            Box::pin(async move {
                let mut failed = vec![];
                for (unit, key, value) in writes {
                    let opts = SetOpts {
                        ttl_s: Some(ttl_s),
                        ..Default::default()
                    };
                    let done = bounded(&*clock, bound, kv.set(&key, &value, opts)).await;
                    if !matches!(done, Some(Ok(_))) {
                        failed.push(unit);
                    }
                }
                if !failed.is_empty() {
                    let _ = tx.send(Input::Republish(failed)).await;
                }
            }),
        );
    }

    /// How long one store request may hold up the loop: a sixth of the TTL, so that a
    /// machine cut off from the store still fences in time.
    fn store_bound(&self) -> Duration {
        Duration::from_millis(self.ttl_ms() / 6)
    }

    fn forget(&mut self, unit: &str) {
        self.units.remove(unit);
        self.view.units.lock().expect("view lock").remove(unit);
        let (kv, key) = (self.seams.kv.clone(), registry::state_key(unit, self.me()));
        self.spawn.spawn(
            "agent-forget",
            Box::pin(async move {
                let _ = kv.delete(&key, false, Precondition::default()).await;
            }),
        );
        tracing::info!(unit, "agent: unloaded");
    }

    fn report(&self, unit: &str) {
        let Some(m) = self.units.get(unit) else {
            return;
        };
        let r = UnitReport {
            reported: m.unit.reported(),
            hash: m.hash.clone(),
            journal: m.unit.journal().cloned().collect(),
            container: match &m.main {
                Main::Container { name, .. } => Some(name.clone()),
                _ => None,
            },
            process: match &m.main {
                Main::Process(h) => Some(*h),
                _ => None,
            },
        };
        self.view
            .units
            .lock()
            .expect("view lock")
            .insert(unit.to_string(), r);
    }
}

/// `fut`, or `None` if it takes longer than `bound`.
async fn bounded<T>(
    clock: &dyn Clock,
    bound: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = clock.sleep(bound) => None,
    }
}

fn empty_dir() -> crate::kv::NodeView {
    crate::kv::NodeView {
        key: registry::SCHEDULE.into(),
        value: None,
        dir: true,
        expire_ms: None,
        nodes: None,
        modified_index: 0,
        created_index: 0,
    }
}
