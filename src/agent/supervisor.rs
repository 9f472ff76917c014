//! The agent's core, sans-io: one machine's set of units, what it sees in, what to do out.
//!
//! Inputs: the schedule as read (`schedule`, then `load` for each unit new here), the
//! lease (`lease`, with when it was last renewed), step outcomes and main-process ends
//! (`input`), timers (`tick`), all with `now_ms`. Outputs: [`Effect`]s for the
//! [`super::executor`] — run a step, end a main process, remove a container, fence,
//! publish — and the units' reports for the journal view (`take_reports`).
//!
//! Invariants and rules it owns:
//! - **Fencing**: once two thirds of the TTL pass without a renewal every unit is killed
//!   (and every running container with this machine's label that no unit manages), so
//!   they are down before the machine's key expires and the engine places them
//!   elsewhere. A unit is never started while fenced. Before its first renewal the
//!   agent counts from its own start, so a restarted agent keeps what it adopted.
//! - **Dependencies**: a unit starts when the units it comes `After` (and still wants)
//!   are up and the units it `Requires`/`BindsTo` are up; a unit bound to one that went
//!   down (and is not coming back up) is stopped.
//! - **Retries**: a failure that is not the unit's own — the container runtime was
//!   unavailable, or restarts hit the start limit — is retried with a backoff that
//!   doubles up to a cap (the start limit waits its interval first, as systemd does).
//! - **Adoption**: a unit loaded while its main container (same hash, running) is found
//!   is adopted, not restarted; its other containers are removed.
//! - **Publishing**: a unit's state is written when it changes and refreshed at half its
//!   TTL ([`STATE_TTL_FACTOR`] machine TTLs); a write that failed is retried after a
//!   twelfth of the machine TTL.
//! - **Bounds**: at most [`UNITS_MAX`] units on one machine.

use super::lifecycle::{self, Cmd, Event, Failure, Reported, Stage, Step};
use super::run_step::{Ctx, Outcome};
use super::spec::{prepare, Deps};
use super::start::AgentConfig;
use crate::sched::place::{Desired, Entry};
use crate::sched::registry::{self, StoredUnit, UnitState};
use std::collections::{BTreeMap, BTreeSet};

/// Units one machine runs at most (more are not loaded).
pub const UNITS_MAX: usize = 1024;
/// A unit's state key lives this many machine TTLs and is refreshed at half of that. The
/// fleet API shows only the states of live machines, so a dead machine's states vanish
/// with its key; their own TTL only collects them. (At one machine TTL, refreshed every
/// half TTL, the state refreshes were nine writes in ten of an idle cluster.)
pub const STATE_TTL_FACTOR: u64 = 10;
/// How long after start (machine TTLs) the agent keeps deleting states left by an
/// earlier run.
pub const SWEEP_TTLS: u64 = 2;
/// Retries of a unit that failed because the container runtime was down: first after
/// this, doubling up to the cap.
pub const RUNTIME_RETRY_MS: u64 = 1_000;
pub const RUNTIME_RETRY_MAX_MS: u64 = 60_000;

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
#[derive(Debug, Clone, PartialEq)]
pub struct UnitReport {
    pub reported: Reported,
    pub hash: String,
    pub journal: Vec<String>,
    /// The main container's name, if it has one.
    pub container: Option<String>,
    /// The main process's handle, if it is a host process.
    pub process: Option<u64>,
}

/// A unit's main process as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Main {
    None,
    Container { name: String, id: String },
    Process(u64),
}

/// Where a unit's main container can be reached: its address on the cluster network
/// and the host ports it publishes (DNS answers the unit's name with them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub address: String,
    pub ports: Vec<u16>,
}

/// A container carrying this machine's label, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub id: String,
    pub hash: String,
    pub running: bool,
    /// A unit's `ExecStart` container (not one of its steps').
    pub main: bool,
    pub reach: Reach,
}

/// What the executor is to do. Results come back as [`Input`]s naming `unit` and `gen`
/// (a unit reloaded since has a new `gen`, and the old run's results are dropped).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Carry out a lifecycle step → [`Input::Step`].
    Exec {
        unit: String,
        gen: u64,
        id: u64,
        stage: Stage,
        step: Box<Step>,
        ctx: Box<Ctx>,
    },
    /// Stop (`grace_ms`: SIGTERM, then SIGKILL) or kill (`None`) the main process →
    /// [`Input::MainGone`] once it has ended.
    EndMain {
        unit: String,
        gen: u64,
        main: Main,
        grace_ms: Option<u64>,
    },
    /// Wait for a host process to end → [`Input::MainGone`].
    WaitProcess { unit: String, gen: u64, handle: u64 },
    /// Fetch an ended main container's last lines → [`Input::Logs`].
    FetchLogs {
        unit: String,
        gen: u64,
        container: String,
    },
    /// Remove a container (`force`: even if it runs).
    Remove { container: String, force: bool },
    /// Kill every running container with this machine's label but these ids (fencing).
    KillUnmanaged { keep_ids: Vec<String> },
    /// Write these states, in order, with this TTL → [`Input::Published`] once done.
    /// One publish is in flight at a time: two racing batches could leave a unit's
    /// older state in the store, the newer one lost until the next refresh.
    Publish { ttl_s: u64, writes: Vec<Publish> },
    /// Delete the states of units no longer here → [`Input::Unpublished`]. Sent only
    /// while no publish is in flight, so a late write cannot bring a state back.
    Unpublish { keys: Vec<String> },
}

/// One unit's state to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub unit: String,
    pub key: String,
    pub value: String,
}

/// What comes back from the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Step {
        unit: String,
        gen: u64,
        id: u64,
        outcome: Outcome,
    },
    /// A container ended (from the engine's event stream; `id` may be empty).
    Exit {
        id: String,
        name: String,
        code: i64,
        oom_killed: bool,
    },
    /// A main process is gone (waited for, stopped, or found ended).
    MainGone { unit: String, gen: u64, code: i64 },
    /// A publish is done; these units' states did not reach the store.
    Published { failed: Vec<String> },
    /// An unpublish is done; these keys are still there.
    Unpublished { failed: Vec<String> },
    /// The last output of a main container that ended, for the journal.
    Logs {
        unit: String,
        gen: u64,
        container: String,
        lines: Vec<String>,
    },
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
    /// (active, sub, when) last written.
    published: Option<(&'static str, &'static str, u64)>,
    /// The main container's reach now, and as last written.
    reach: Reach,
    published_reach: Reach,
    /// Retry after a failure that was not the unit's own: (at, backoff).
    retry: Option<(u64, u64)>,
    /// Ended main containers to remove once the unit is down.
    leftovers: Vec<String>,
    /// A failed publish is not retried before this.
    publish_after: u64,
}

/// One machine's units and what to do about them.
pub struct Supervisor {
    cfg: AgentConfig,
    units: BTreeMap<String, Managed>,
    next_gen: u64,
    fenced: bool,
    started_ms: u64,
    /// Units whose report changed (`take_reports`).
    dirty: BTreeSet<String>,
    /// A publish or an unpublish is in flight: the next waits for its input.
    publishing: bool,
    /// States of units no longer here, to delete, each not before its time (a failed
    /// delete is retried: left behind, a state would name a unit running here that does
    /// not, in the fleet API and in DNS, until its own TTL).
    unpublish: BTreeMap<String, u64>,
    /// The store's states for this machine have been compared with what it runs: an
    /// agent restarted knows nothing of the units moved away meanwhile. Again on every
    /// pass for [`SWEEP_TTLS`] machine TTLs after start, for a state an earlier
    /// incarnation proposed before it died that commits only after this one started.
    swept: bool,
    out: Vec<Effect>,
}

impl Supervisor {
    /// The agent of `cfg.machine`, started at `now_ms`.
    pub fn new(cfg: AgentConfig, now_ms: u64) -> Self {
        Self {
            cfg,
            units: BTreeMap::new(),
            next_gen: 1,
            fenced: false,
            started_ms: now_ms,
            dirty: BTreeSet::new(),
            publishing: false,
            unpublish: BTreeMap::new(),
            swept: false,
            out: vec![],
        }
    }

    fn me(&self) -> &str {
        &self.cfg.machine.id
    }

    pub fn ttl_ms(&self) -> u64 {
        self.cfg.machine.ttl_s.max(1) * 1000
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// Fences once two thirds of the TTL passed since `renewed_ms` (the last renewal of
    /// the machine's key, if any); lifts the fence when renewals resume.
    pub fn lease(&mut self, now: u64, renewed_ms: Option<u64>) -> Vec<Effect> {
        let last = renewed_ms.unwrap_or(self.started_ms);
        let ok = now.saturating_sub(last) < self.fence_after_ms();
        if ok == self.fenced {
            self.fenced = !ok;
            if self.fenced && !self.cfg.bugs.no_fencing {
                self.fence(now);
            }
        }
        self.take()
    }

    fn fence_after_ms(&self) -> u64 {
        if self.cfg.bugs.fence_late {
            self.ttl_ms() * 3 / 2
        } else {
            self.ttl_ms() * 2 / 3
        }
    }

    /// When a lease last renewed at `renewed_ms` runs out and [`Self::lease`] must fence;
    /// `None` once fenced. The executor holds no pass over the store past it.
    pub fn fence_due_ms(&self, renewed_ms: Option<u64>) -> Option<u64> {
        let last = renewed_ms.unwrap_or(self.started_ms);
        (!self.fenced).then(|| last + self.fence_after_ms())
    }

    fn fence(&mut self, now: u64) {
        tracing::warn!(machine = %self.me(), "lease not renewed: stopping every unit");
        let names: Vec<String> = self.units.keys().cloned().collect();
        for n in names {
            if let Some(m) = self.units.get_mut(&n) {
                m.started = false;
            }
            self.event(&n, Event::Fence, now);
        }
        // Containers with this machine's label that no unit here manages (found at a
        // restart, before the schedule could be read) go too.
        let keep_ids = self
            .units
            .values()
            .filter_map(|m| match &m.main {
                Main::Container { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        self.out.push(Effect::KillUnmanaged { keep_ids });
    }

    /// This machine's part of the schedule, as just read: units no longer in it (or
    /// changed) are to leave; those down and leaving are forgotten. Returns the entries
    /// to load, in name order (at most [`UNITS_MAX`] units are managed).
    pub fn schedule(
        &mut self,
        desired: &BTreeMap<String, Entry>,
    ) -> (Vec<Effect>, Vec<(String, Entry)>) {
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
        let room = UNITS_MAX.saturating_sub(self.units.len());
        let new: Vec<(String, Entry)> = desired
            .iter()
            .filter(|(n, _)| !self.units.contains_key(*n))
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        if new.len() > room {
            tracing::warn!(
                units = new.len() - room,
                "agent: too many units on this machine; not loading"
            );
        }
        (self.take(), new.into_iter().take(room).collect())
    }

    /// Whether [`Supervisor::sweep`] is to run on this pass.
    pub fn needs_sweep(&self, now: u64) -> bool {
        !self.swept || now < self.started_ms + SWEEP_TTLS * self.ttl_ms()
    }

    /// `stated` are the units the store holds a state of for this machine: those neither
    /// managed nor scheduled here are a previous run's, and are deleted.
    pub fn sweep(&mut self, stated: &[String], desired: &BTreeMap<String, Entry>) {
        for unit in stated {
            if !self.units.contains_key(unit) && !desired.contains_key(unit) {
                tracing::info!(unit, "agent: deleting a state left by an earlier run");
                let key = registry::state_key(unit, self.me());
                self.unpublish.entry(key).or_insert(0);
            }
        }
        self.swept = true;
    }

    fn forget(&mut self, unit: &str) {
        self.units.remove(unit);
        self.dirty.insert(unit.to_string());
        let key = registry::state_key(unit, self.me());
        self.unpublish.insert(key, 0);
        tracing::info!(unit, "agent: unloaded");
    }

    /// Starts managing `name` from its stored file (`rec`, matching the schedule entry
    /// `e`) and its environment files' text; adopts its main container among `found`
    /// if it runs with the same hash, and removes the unit's other containers.
    pub fn load(
        &mut self,
        name: &str,
        e: &Entry,
        rec: &StoredUnit,
        files: &BTreeMap<String, Option<String>>,
        found: &[Found],
    ) -> Vec<Effect> {
        assert_eq!(rec.hash, e.hash, "load a unit only as scheduled");
        // Back here before its old state was deleted: its new state replaces it.
        let key = registry::state_key(name, self.me());
        self.unpublish.remove(&key);
        let gen = self.next_gen;
        self.next_gen += 1;
        let m = match prepare(name, &rec.record.options, files, &self.cfg.host) {
            Ok(p) => {
                let adopt = found
                    .iter()
                    .find(|c| c.running && c.main && c.hash == rec.hash)
                    .filter(|_| e.desired == Desired::Launched);
                let (unit, main) = match adopt {
                    Some(c) => (
                        lifecycle::Unit::adopted(p.spec),
                        Main::Container {
                            name: c.name.clone(),
                            id: c.id.clone(),
                        },
                    ),
                    None => (lifecycle::Unit::new(p.spec), Main::None),
                };
                let mut m = self.managed(name, gen, e, unit, p.deps, p.env, main);
                m.reach = adopt.map(|c| c.reach.clone()).unwrap_or_default();
                m
            }
            Err(why) => self.managed(
                name,
                gen,
                e,
                lifecycle::Unit::broken(why),
                Deps::default(),
                BTreeMap::new(),
                Main::None,
            ),
        };
        tracing::info!(unit = name, adopted = m.started, "agent: loaded");
        // Containers of this unit that were not adopted (an older version, or the unit is
        // not to run) belong to no run of it.
        let adopted = match &m.main {
            Main::Container { id, .. } => Some(id.as_str()),
            _ => None,
        };
        for f in found.iter().filter(|f| Some(f.id.as_str()) != adopted) {
            self.out.push(Effect::Remove {
                container: f.name.clone(),
                force: true,
            });
        }
        self.units.insert(name.to_string(), m);
        self.dirty.insert(name.to_string());
        self.take()
    }

    #[allow(clippy::too_many_arguments)]
    fn managed(
        &self,
        name: &str,
        gen: u64,
        e: &Entry,
        unit: lifecycle::Unit,
        deps: Deps,
        env: BTreeMap<String, String>,
        main: Main,
    ) -> Managed {
        let ctx = Ctx {
            unit: name.to_string(),
            hash: e.hash.clone(),
            machine: self.cfg.machine.id.clone(),
            env,
            prefix: self.cfg.name_prefix.clone(),
            publish_ip: self.cfg.publish_ip.clone(),
            allow_host_commands: self.cfg.allow_host_commands,
        };
        Managed {
            gen,
            hash: e.hash.clone(),
            desired: e.desired,
            started: main != Main::None,
            unit,
            deps,
            ctx,
            main,
            leaving: false,
            published: None,
            reach: Reach::default(),
            published_reach: Reach::default(),
            retry: None,
            leftovers: vec![],
            publish_after: 0,
        }
    }

    /// Units neither scheduled here nor managed: their containers are strays.
    pub fn is_stray(&self, unit: &str, desired: &BTreeMap<String, Entry>) -> bool {
        !desired.contains_key(unit) && !self.units.contains_key(unit)
    }

    /// Main containers to look at (an exit the event stream missed): (unit, gen, name).
    pub fn main_containers(&self) -> Vec<(String, u64, String)> {
        self.units
            .iter()
            .filter_map(|(n, m)| match &m.main {
                Main::Container { name, .. } => Some((n.clone(), m.gen, name.clone())),
                _ => None,
            })
            .collect()
    }

    /// Starts and stops units: wanted, not fenced and its dependencies up → start;
    /// otherwise → stop.
    pub fn decide(&mut self, now: u64) -> Vec<Effect> {
        let names: Vec<String> = self.units.keys().cloned().collect();
        for n in names {
            let (want, deps_up, bound_down) = self.wants(&n);
            let m = self.units.get_mut(&n).expect("listed");
            if let Some((at, backoff)) = m.retry {
                if now >= at && m.unit.is_down() {
                    m.started = false;
                    m.retry = Some((u64::MAX, backoff));
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
        self.take()
    }

    /// Unit `n`: (wanted here, its dependencies up, a unit it binds to went down).
    fn wants(&self, n: &str) -> (bool, bool, bool) {
        let m = &self.units[n];
        let fenced = self.fenced && !self.cfg.bugs.no_fencing;
        let want = m.desired == Desired::Launched && !m.leaving && !fenced;
        let up = |d: &String| self.units.get(d).is_some_and(|x| x.unit.is_active());
        let wants = |d: &String| {
            self.units
                .get(d)
                .is_some_and(|x| x.desired == Desired::Launched && !x.leaving)
        };
        let coming = |d: &String| {
            self.units
                .get(d)
                .is_some_and(|x| !x.unit.is_down() && x.started)
        };
        let deps_up = m.deps.after.iter().all(|d| up(d) || !wants(d)) && m.deps.bound().all(up);
        let bound_down = m.started && m.deps.bound().any(|d| !up(d) && !coming(d));
        (want, deps_up, bound_down)
    }

    /// Feeds `ev` to `unit`'s lifecycle and turns its commands into effects.
    fn event(&mut self, unit: &str, ev: Event, now: u64) {
        let Some(m) = self.units.get_mut(unit) else {
            return;
        };
        let cmds = m.unit.handle(ev, now);
        schedule_retry(m, now);
        let gen = m.gen;
        for c in cmds {
            let effect = match c {
                Cmd::Exec { id, stage, step } => Effect::Exec {
                    unit: unit.to_string(),
                    gen,
                    id,
                    stage,
                    step: Box::new(step),
                    ctx: Box::new(m.ctx.clone()),
                },
                Cmd::StopMain { timeout_ms } => end_main(unit, m, Some(timeout_ms)),
                Cmd::KillMain => end_main(unit, m, None),
            };
            self.out.push(effect);
        }
        self.dirty.insert(unit.to_string());
    }

    /// What the executor learned.
    pub fn input(&mut self, i: Input, now: u64) -> Vec<Effect> {
        match i {
            Input::Step {
                unit,
                gen,
                id,
                outcome,
            } => self.step_done(&unit, gen, id, outcome, now),
            Input::Exit {
                id,
                name,
                code,
                oom_killed,
            } => {
                let hit = self.units.iter().find(|(_, m)| match &m.main {
                    Main::Container { name: n, id: i } => *i == id || (id.is_empty() && *n == name),
                    _ => false,
                });
                if let Some((unit, m)) = hit {
                    let (unit, gen) = (unit.clone(), m.gen);
                    self.main_ended(&unit, gen, code, oom_killed, now);
                }
            }
            Input::MainGone { unit, gen, code } => self.main_ended(&unit, gen, code, false, now),
            Input::Logs {
                unit,
                gen,
                container,
                lines,
            } => self.logs(&unit, gen, container, lines),
            Input::Unpublished { failed } => {
                self.publishing = false;
                let retry = now + self.ttl_ms() / 12;
                self.unpublish.retain(|_, at| *at != u64::MAX);
                for k in failed {
                    self.unpublish.insert(k, retry);
                }
            }
            Input::Published { failed } => {
                self.publishing = false;
                // Not at once: a store that refuses now would be asked again and again.
                let retry = now + self.ttl_ms() / 12;
                for u in failed {
                    if let Some(m) = self.units.get_mut(&u) {
                        m.published = None;
                        m.publish_after = retry;
                    }
                }
            }
        }
        self.take()
    }

    fn step_done(&mut self, unit: &str, gen: u64, id: u64, outcome: Outcome, now: u64) {
        let Some(m) = self.units.get_mut(unit).filter(|m| m.gen == gen) else {
            return;
        };
        match &outcome {
            Outcome::MainContainer { name, id, reach } => {
                m.main = Main::Container {
                    name: name.clone(),
                    id: id.clone(),
                };
                m.reach = reach.clone();
            }
            Outcome::MainProcess { handle } => {
                m.main = Main::Process(*handle);
                self.out.push(Effect::WaitProcess {
                    unit: unit.to_string(),
                    gen,
                    handle: *handle,
                });
            }
            Outcome::Done(_) => {}
        }
        self.event(unit, outcome.event(id), now);
    }

    fn logs(&mut self, unit: &str, gen: u64, container: String, lines: Vec<String>) {
        let Some(m) = self.units.get_mut(unit).filter(|m| m.gen == gen) else {
            return;
        };
        for l in lines {
            m.unit.note(format!("{container}: {l}"));
        }
        m.leftovers.push(container);
        self.dirty.insert(unit.to_string());
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
            self.out.push(Effect::FetchLogs {
                unit: unit.to_string(),
                gen,
                container: name,
            });
        }
        let ev = Event::MainExited {
            code,
            oom_killed: oom,
        };
        self.event(unit, ev, now);
    }

    /// Timers that came due.
    pub fn tick(&mut self, now: u64) -> Vec<Effect> {
        let due: Vec<String> = self
            .units
            .iter()
            .filter(|(_, m)| m.unit.next_deadline_ms().is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for n in due {
            self.event(&n, Event::Tick, now);
        }
        self.take()
    }

    /// Removes the ended main containers of units that are down (a running container of
    /// the same name — the unit started again — is refused by the engine and stays).
    pub fn clean_up(&mut self) -> Vec<Effect> {
        for m in self.units.values_mut().filter(|m| m.unit.is_down()) {
            for container in m.leftovers.drain(..) {
                self.out.push(Effect::Remove {
                    container,
                    force: false,
                });
            }
        }
        self.take()
    }

    /// Each unit's state under `/_flotilla/states` when it changed, or half the TTL
    /// after it was last written (it expires with the machine).
    pub fn publish(&mut self, now: u64) -> Vec<Effect> {
        if self.publishing {
            return self.take();
        }
        // Units gone from here first, each batch alone in flight.
        let due: Vec<String> = self
            .unpublish
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        if !due.is_empty() {
            for k in &due {
                // In flight: marked so the answer can tell it from a key added since.
                self.unpublish.insert(k.clone(), u64::MAX);
            }
            self.publishing = true;
            self.out.push(Effect::Unpublish { keys: due });
            return self.take();
        }
        let ttl_s = self.cfg.machine.ttl_s.max(1) * STATE_TTL_FACTOR;
        let me = self.cfg.machine.id.clone();
        let mut writes = vec![];
        for (name, m) in self.units.iter_mut() {
            let r = m.unit.reported();
            let stale = m.reach != m.published_reach
                || m.published.is_none_or(|(a, s, at)| {
                    (a, s) != (r.active, r.sub) || now.saturating_sub(at) >= ttl_s * 500
                });
            if !stale || now < m.publish_after {
                continue;
            }
            m.published = Some((r.active, r.sub, now));
            m.published_reach = m.reach.clone();
            let st = UnitState {
                name: name.clone(),
                hash: m.hash.clone(),
                machine_id: me.clone(),
                systemd_load_state: r.load.to_string(),
                systemd_active_state: r.active.to_string(),
                systemd_sub_state: r.sub.to_string(),
                address: m.reach.address.clone(),
                ports: m.reach.ports.clone(),
            };
            writes.push(Publish {
                unit: name.clone(),
                key: registry::state_key(name, &me),
                value: serde_json::to_string(&st).expect("state serializes"),
            });
        }
        if !writes.is_empty() {
            self.publishing = true;
            self.out.push(Effect::Publish { ttl_s, writes });
        }
        self.take()
    }

    /// When the loop must next look (ms from `now`, at least 1): the earliest lifecycle
    /// deadline or retry, the next reconcile, and often enough to fence in time.
    pub fn next_wake_ms(&self, now: u64, next_reconcile: u64) -> u64 {
        let mut at = next_reconcile.min(now + self.ttl_ms() / 12);
        for m in self.units.values() {
            if let Some(d) = m.unit.next_deadline_ms() {
                at = at.min(d);
            }
            if let Some((r, _)) = m.retry {
                at = at.min(r);
            }
        }
        at.saturating_sub(now).max(1)
    }

    /// Reports of the units that changed since the last call (`None`: forgotten).
    pub fn take_reports(&mut self) -> Vec<(String, Option<UnitReport>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|n| {
                let r = self.units.get(&n).map(report);
                (n, r)
            })
            .collect()
    }
}

/// Failures that are not the unit's own are retried, with bounded backoff: the container
/// runtime was down, or restarts hit the start limit (as systemd allows a new start once
/// its interval has passed).
fn schedule_retry(m: &mut Managed, now: u64) {
    let first = match m.unit.failure() {
        Some(Failure::StartLimit) => lifecycle::START_LIMIT_INTERVAL_MS,
        Some(Failure::Runtime(_)) => RUNTIME_RETRY_MS,
        _ => {
            if m.unit.is_active() {
                m.retry = None;
            }
            return;
        }
    };
    if m.desired != Desired::Launched {
        return;
    }
    let backoff = m
        .retry
        .map_or(first, |(_, b)| (b * 2).clamp(first, RUNTIME_RETRY_MAX_MS));
    if m.retry.is_none_or(|(at, _)| at == u64::MAX) {
        m.retry = Some((now + backoff, backoff));
    }
}

fn end_main(unit: &str, m: &Managed, grace_ms: Option<u64>) -> Effect {
    Effect::EndMain {
        unit: unit.to_string(),
        gen: m.gen,
        main: m.main.clone(),
        grace_ms,
    }
}

fn report(m: &Managed) -> UnitReport {
    UnitReport {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::lifecycle::StepResult;
    use crate::agent::presence::MachineConfig;
    use crate::agent::run_step::Outcome;
    use crate::sched::registry::UnitRecord;

    const TTL_S: u64 = 30;
    const ME: &str = "m1";

    fn supervisor() -> Supervisor {
        let machine = MachineConfig {
            id: ME.into(),
            public_ip: "10.0.0.1".into(),
            metadata: BTreeMap::new(),
            ttl_s: TTL_S,
            agent_url: String::new(),
        };
        let mut cfg = AgentConfig::new(machine);
        cfg.host.machine_id = ME.into();
        Supervisor::new(cfg, 0)
    }

    fn stored(name: &str, text: &str) -> StoredUnit {
        let options = crate::unitfile::file::parse(text).expect("test unit parses");
        let record = UnitRecord {
            name: name.into(),
            options,
            desired_state: Desired::Launched,
        };
        let value = serde_json::to_string(&record).expect("record serializes");
        StoredUnit::parse(&value, 1).expect("record parses")
    }

    fn entry(rec: &StoredUnit) -> Entry {
        Entry {
            desired: Desired::Launched,
            hash: rec.hash.clone(),
        }
    }

    const SLEEPER: &str = "[Service]\nExecStart=/usr/bin/docker run --name %p busybox sleep 1000\n";

    /// Loads `name` with `text`, with `found` containers of it on the engine.
    fn load(s: &mut Supervisor, name: &str, text: &str, found: &[Found]) -> Vec<Effect> {
        let rec = stored(name, text);
        let (_, new) = s.schedule(&[(name.to_string(), entry(&rec))].into());
        assert_eq!(new.len(), 1);
        s.load(name, &entry(&rec), &rec, &BTreeMap::new(), found)
    }

    /// Effects as one line each: what a reader checks them against.
    fn show(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Exec { unit, id, step, .. } => format!("exec {unit} #{id} {}", step.line),
                Effect::EndMain {
                    unit,
                    main,
                    grace_ms,
                    ..
                } => format!("end {unit} {main:?} grace {grace_ms:?}"),
                Effect::WaitProcess { unit, handle, .. } => format!("wait {unit} {handle}"),
                Effect::FetchLogs {
                    unit, container, ..
                } => format!("logs {unit} {container}"),
                Effect::Remove { container, force } => format!("remove {container} force {force}"),
                Effect::KillUnmanaged { keep_ids } => format!("kill-unmanaged keep {keep_ids:?}"),
                Effect::Publish { writes, .. } => {
                    let w: Vec<String> = writes.iter().map(|w| w.value.clone()).collect();
                    format!("publish {}", w.join(" "))
                }
                Effect::Unpublish { keys } => format!("unpublish {}", keys.join(" ")),
            })
            .collect()
    }

    fn main_started(s: &mut Supervisor, unit: &str, gen: u64, id: u64, now: u64) -> Vec<Effect> {
        let outcome = Outcome::MainContainer {
            name: unit.trim_end_matches(".service").into(),
            id: format!("id-{unit}"),
            reach: Reach::default(),
        };
        s.input(
            Input::Step {
                unit: unit.into(),
                gen,
                id,
                outcome,
            },
            now,
        )
    }

    fn step(
        s: &mut Supervisor,
        unit: &str,
        gen: u64,
        id: u64,
        r: StepResult,
        now: u64,
    ) -> Vec<Effect> {
        let outcome = Outcome::Done(r);
        let unit = unit.into();
        s.input(
            Input::Step {
                unit,
                gen,
                id,
                outcome,
            },
            now,
        )
    }

    fn state(s: &mut Supervisor, unit: &str) -> (&'static str, &'static str) {
        let r = &s.units[unit].unit.reported();
        (r.active, r.sub)
    }

    fn running(s: &mut Supervisor, unit: &str) -> Main {
        s.units[unit].main.clone()
    }

    #[test]
    fn a_scheduled_unit_starts_and_its_state_is_published() {
        let mut s = supervisor();
        assert!(load(&mut s, "web.service", SLEEPER, &[]).is_empty());
        assert_eq!(
            show(&s.decide(0)),
            ["exec web.service #1 /usr/bin/docker run --name web busybox sleep 1000"]
        );
        assert!(main_started(&mut s, "web.service", 1, 1, 5).is_empty());
        assert_eq!(state(&mut s, "web.service"), ("active", "running"));
        let p = s.publish(5);
        let [Effect::Publish { ttl_s, writes }] = p.as_slice() else {
            panic!("one publish: {p:?}")
        };
        assert_eq!((*ttl_s, writes.len()), (TTL_S * STATE_TTL_FACTOR, 1));
        assert_eq!(writes[0].key, registry::state_key("web.service", ME));
        assert!(
            writes[0].value.contains(r#""systemdSubState":"running""#),
            "{}",
            writes[0].value
        );
        // Unchanged: not written again before half the TTL.
        s.input(Input::Published { failed: vec![] }, 6);
        let half_ms = TTL_S * STATE_TTL_FACTOR * 500;
        assert!(s.publish(5 + half_ms - 1).is_empty());
        assert_eq!(s.publish(5 + half_ms).len(), 1);
        let reports = s.take_reports();
        assert_eq!(reports.len(), 1);
        assert_eq!(
            reports[0].1.as_ref().map(|r| r.reported.sub),
            Some("running")
        );
    }

    /// The main container's cluster address and published ports go into its state (DNS
    /// answers the unit's name from them); a new address is written at once, and an
    /// adopted container keeps the address it was found with.
    #[test]
    fn where_the_main_container_is_reached_is_published_with_its_state() {
        let mut s = supervisor();
        load(&mut s, "web.service", SLEEPER, &[]);
        s.decide(0);
        let reach = |address: &str| Reach {
            address: address.into(),
            ports: vec![8081],
        };
        let started = |reach| Input::Step {
            unit: "web.service".into(),
            gen: 1,
            id: 1,
            outcome: Outcome::MainContainer {
                name: "web".into(),
                id: "c1".into(),
                reach,
            },
        };
        s.input(started(reach("10.1.74.2")), 1);
        let p = show(&s.publish(1));
        assert!(
            p[0].contains(r#""address":"10.1.74.2","ports":[8081]"#),
            "{p:?}"
        );
        s.input(Input::Published { failed: vec![] }, 2);
        assert!(s.publish(3).is_empty());
        s.units.get_mut("web.service").unwrap().reach = reach("10.1.74.9");
        assert!(show(&s.publish(4))[0].contains(r#""address":"10.1.74.9""#));

        let mut s = supervisor();
        let rec = stored("web.service", SLEEPER);
        let found = [Found {
            name: "web".into(),
            id: "c-now".into(),
            hash: rec.hash.clone(),
            running: true,
            main: true,
            reach: reach("10.1.74.3"),
        }];
        load(&mut s, "web.service", SLEEPER, &found);
        assert!(show(&s.publish(0))[0].contains(r#""address":"10.1.74.3""#));
    }

    /// A restarted agent deletes the states an earlier run left of units that are no
    /// longer here (moved away while it was down); it keeps those it runs or is given.
    #[test]
    fn a_restarted_agent_deletes_the_states_of_units_moved_away_meanwhile() {
        let mut s = supervisor();
        assert!(s.needs_sweep(0));
        load(&mut s, "web.service", SLEEPER, &[]);
        let desired = BTreeMap::from([(
            "db.service".to_string(),
            entry(&stored("db.service", SLEEPER)),
        )]);
        let stated = ["web.service", "db.service", "gone.service"].map(String::from);
        s.sweep(&stated, &desired);
        assert!(s.needs_sweep(1), "again for a while after start");
        assert!(!s.needs_sweep(SWEEP_TTLS * TTL_S * 1000));
        let p = show(&s.publish(0));
        assert_eq!(
            p,
            [format!(
                "unpublish {}",
                registry::state_key("gone.service", ME)
            )]
        );
    }

    /// States are written one batch at a time, so a newer state is never overwritten by
    /// an older batch still in flight; a failed write is retried after a twelfth of the
    /// TTL.
    #[test]
    fn states_are_published_one_batch_at_a_time_and_failures_retried() {
        let mut s = supervisor();
        load(&mut s, "web.service", SLEEPER, &[]);
        s.decide(0);
        let first = s.publish(0);
        assert!(show(&first)[0].contains(r#""systemdActiveState":"activating""#));
        main_started(&mut s, "web.service", 1, 1, 1);
        assert!(s.publish(1).is_empty(), "waits for the batch in flight");
        s.input(Input::Published { failed: vec![] }, 2);
        let second = s.publish(2);
        assert!(
            show(&second)[0].contains(r#""systemdSubState":"running""#),
            "{second:?}"
        );
        let failed = Input::Published {
            failed: vec!["web.service".into()],
        };
        s.input(failed, 3);
        let retry_ms = TTL_S * 1000 / 12;
        assert!(s.publish(3 + retry_ms - 1).is_empty());
        assert_eq!(s.publish(3 + retry_ms).len(), 1);
    }

    #[test]
    fn a_lost_lease_kills_every_unit_and_unmanaged_containers_then_restarts_on_renewal() {
        let mut s = supervisor();
        load(&mut s, "web.service", SLEEPER, &[]);
        s.decide(0);
        main_started(&mut s, "web.service", 1, 1, 0);
        // Renewed at 1 s; two thirds of 30 s later the lease is taken as lost, and the
        // executor is told when, so no pass over the store holds the fence up.
        assert_eq!(s.fence_due_ms(Some(1_000)), Some(21_000));
        assert!(s.lease(20_999, Some(1_000)).is_empty());
        assert_eq!(
            show(&s.lease(21_000, Some(1_000))),
            [
                "end web.service Container { name: \"web\", id: \"id-web.service\" } grace None",
                "kill-unmanaged keep [\"id-web.service\"]",
            ]
        );
        assert!(s.is_fenced());
        assert_eq!(s.fence_due_ms(Some(1_000)), None);
        // Its main container is gone; fenced, it is not started again.
        let gone = Input::MainGone {
            unit: "web.service".into(),
            gen: 1,
            code: 137,
        };
        assert_eq!(show(&s.input(gone, 21_100)), ["logs web.service web"]);
        assert!(s.decide(21_200).is_empty());
        assert!(s.tick(30_000).is_empty());
        assert!(s.decide(30_000).is_empty());
        // Renewals resume: the fence lifts and the unit starts again.
        assert!(s.lease(31_000, Some(31_000)).is_empty());
        assert!(!s.is_fenced());
        assert_eq!(
            show(&s.decide(31_000)),
            ["exec web.service #2 /usr/bin/docker run --name web busybox sleep 1000"]
        );
    }

    #[test]
    fn before_its_first_renewal_a_restarted_agent_counts_from_its_start() {
        let mut s = supervisor();
        assert!(s.lease(19_999, None).is_empty());
        assert_eq!(show(&s.lease(20_000, None)), ["kill-unmanaged keep []"]);
    }

    #[test]
    fn a_running_main_container_is_adopted_and_the_units_other_containers_removed() {
        let rec = stored("web.service", SLEEPER);
        let found = [
            Found {
                name: "web".into(),
                id: "c-now".into(),
                hash: rec.hash.clone(),
                running: true,
                main: true,
                reach: Reach::default(),
            },
            Found {
                name: "web-old".into(),
                id: "c-old".into(),
                hash: "an-older-version".into(),
                running: false,
                main: true,
                reach: Reach::default(),
            },
        ];
        let mut s = supervisor();
        assert_eq!(
            show(&load(&mut s, "web.service", SLEEPER, &found)),
            ["remove web-old force true"]
        );
        assert_eq!(state(&mut s, "web.service"), ("active", "running"));
        assert!(
            s.decide(0).is_empty(),
            "an adopted unit is not started again"
        );
        assert_eq!(
            running(&mut s, "web.service"),
            Main::Container {
                name: "web".into(),
                id: "c-now".into()
            }
        );
        // Its exit arrives by id.
        let exit = Input::Exit {
            id: "c-now".into(),
            name: String::new(),
            code: 1,
            oom_killed: false,
        };
        assert_eq!(show(&s.input(exit, 10)), ["logs web.service web"]);
        assert_eq!(state(&mut s, "web.service"), ("failed", "failed"));
    }

    #[test]
    fn a_unit_bound_to_another_waits_for_it_and_stops_with_it() {
        let mut s = supervisor();
        let web = "[Unit]\nBindsTo=db.service\nAfter=db.service\n[Service]\nExecStart=/usr/bin/docker run --name web busybox sleep 1000\n";
        let db_rec = stored("db.service", SLEEPER);
        let web_rec = stored("web.service", web);
        let desired: BTreeMap<String, Entry> = [
            ("db.service".to_string(), entry(&db_rec)),
            ("web.service".to_string(), entry(&web_rec)),
        ]
        .into();
        let (_, new) = s.schedule(&desired);
        assert_eq!(new.len(), 2);
        s.load(
            "db.service",
            &entry(&db_rec),
            &db_rec,
            &BTreeMap::new(),
            &[],
        );
        s.load(
            "web.service",
            &entry(&web_rec),
            &web_rec,
            &BTreeMap::new(),
            &[],
        );
        assert_eq!(
            show(&s.decide(0)),
            ["exec db.service #1 /usr/bin/docker run --name db busybox sleep 1000"]
        );
        main_started(&mut s, "db.service", 1, 1, 1);
        assert_eq!(
            show(&s.decide(1)),
            ["exec web.service #1 /usr/bin/docker run --name web busybox sleep 1000"]
        );
        main_started(&mut s, "web.service", 2, 1, 2);
        // db's container dies: db fails (no Restart=), and web goes down with it.
        let gone = Input::MainGone {
            unit: "db.service".into(),
            gen: 1,
            code: 1,
        };
        assert_eq!(show(&s.input(gone, 3)), ["logs db.service db"]);
        assert_eq!(
            show(&s.decide(3)),
            [
                "end web.service Container { name: \"web\", id: \"id-web.service\" } grace Some(90000)"
            ]
        );
    }

    #[test]
    fn an_engine_outage_is_retried_with_a_doubling_backoff_and_a_units_own_failure_is_not() {
        let mut s = supervisor();
        load(&mut s, "web.service", SLEEPER, &[]);
        s.decide(0);
        let down = || StepResult::RuntimeDown("container runtime unavailable: gone".into());
        assert!(step(&mut s, "web.service", 1, 1, down(), 10).is_empty());
        assert_eq!(state(&mut s, "web.service"), ("failed", "failed"));
        assert_eq!(s.next_wake_ms(10, u64::MAX), RUNTIME_RETRY_MS);
        assert!(s.decide(10 + RUNTIME_RETRY_MS - 1).is_empty());
        assert_eq!(show(&s.decide(10 + RUNTIME_RETRY_MS)).len(), 1);
        let again = 10 + RUNTIME_RETRY_MS;
        step(&mut s, "web.service", 1, 2, down(), again);
        assert_eq!(s.next_wake_ms(again, u64::MAX), 2 * RUNTIME_RETRY_MS);
        assert_eq!(show(&s.decide(again + 2 * RUNTIME_RETRY_MS)).len(), 1);
        // Now the unit's own failure (a bad image): it stays failed.
        let bad = StepResult::Failed("no such image".into());
        step(&mut s, "web.service", 1, 3, bad, 5_000);
        assert_eq!(state(&mut s, "web.service"), ("failed", "failed"));
        assert!(s.decide(100_000).is_empty());
    }

    #[test]
    fn restarts_that_hit_the_start_limit_are_allowed_again_after_its_interval() {
        let text = "[Service]\nRestart=always\nRestartSec=0\nExecStart=/usr/bin/docker run --name web busybox true\n";
        let mut s = supervisor();
        load(&mut s, "web.service", text, &[]);
        let mut effects = s.decide(0);
        let mut starts = 0;
        let mut now = 0;
        while let [Effect::Exec { id, .. }] = effects.as_slice() {
            starts += 1;
            let id = *id;
            main_started(&mut s, "web.service", 1, id, now);
            let gone = Input::MainGone {
                unit: "web.service".into(),
                gen: 1,
                code: 0,
            };
            s.input(gone, now);
            now += 10;
            effects = s.tick(now);
        }
        assert_eq!(starts, lifecycle::START_LIMIT_BURST);
        assert_eq!(
            s.units["web.service"].unit.failure(),
            Some(&Failure::StartLimit)
        );
        let limit_at = now;
        assert!(s
            .decide(limit_at + lifecycle::START_LIMIT_INTERVAL_MS - 1)
            .is_empty());
        assert_eq!(
            show(&s.decide(limit_at + lifecycle::START_LIMIT_INTERVAL_MS)),
            ["exec web.service #6 /usr/bin/docker run --name web busybox true"]
        );
    }

    #[test]
    fn a_unit_leaving_the_schedule_stops_then_is_forgotten() {
        let mut s = supervisor();
        load(&mut s, "web.service", SLEEPER, &[]);
        s.decide(0);
        main_started(&mut s, "web.service", 1, 1, 0);
        s.take_reports();
        let (effects, new) = s.schedule(&BTreeMap::new());
        assert!(effects.is_empty() && new.is_empty(), "still running: kept");
        assert_eq!(
            show(&s.decide(1)),
            ["end web.service Container { name: \"web\", id: \"id-web.service\" } grace Some(90000)"]
        );
        let gone = Input::MainGone {
            unit: "web.service".into(),
            gen: 1,
            code: 0,
        };
        s.input(gone, 2);
        let (effects, _) = s.schedule(&BTreeMap::new());
        assert!(effects.is_empty(), "{effects:?}");
        assert!(s
            .take_reports()
            .contains(&("web.service".to_string(), None)));
        // Its state is deleted with the next publish, and again until the store says so.
        let key = registry::state_key("web.service", ME);
        let p = show(&s.publish(2));
        assert_eq!(
            p.last().map(String::as_str),
            Some(format!("unpublish {key}").as_str()),
            "{p:?}"
        );
        assert!(s.publish(3).is_empty(), "one in flight at a time");
        s.input(
            Input::Unpublished {
                failed: vec![key.clone()],
            },
            4,
        );
        let retry_ms = TTL_S * 1000 / 12;
        assert!(s.publish(4 + retry_ms - 1).is_empty());
        assert_eq!(show(&s.publish(4 + retry_ms)), [format!("unpublish {key}")]);
        s.input(Input::Unpublished { failed: vec![] }, 5 + retry_ms);
        assert!(s.publish(10 * retry_ms).is_empty(), "deleted: never again");
        // A late result of the forgotten run changes nothing.
        assert!(main_started(&mut s, "web.service", 1, 1, 3).is_empty());
    }

    #[test]
    fn a_unit_that_cannot_be_prepared_is_failed_and_never_started() {
        let text = "[Service]\nEnvironmentFile=/etc/missing.env\nExecStart=/usr/bin/docker run busybox true\n";
        let mut s = supervisor();
        load(&mut s, "web.service", text, &[]);
        assert_eq!(state(&mut s, "web.service"), ("failed", "failed"));
        assert!(matches!(
            s.units["web.service"].unit.failure(),
            Some(Failure::Broken(why)) if why.contains("/etc/missing.env")
        ));
        assert!(s.decide(0).is_empty());
        assert!(s.decide(100_000).is_empty());
    }

    #[test]
    fn at_most_units_max_are_loaded() {
        let mut s = supervisor();
        let rec = stored("u.service", SLEEPER);
        let desired: BTreeMap<String, Entry> = (0..UNITS_MAX + 5)
            .map(|i| (format!("u{i:05}.service"), entry(&rec)))
            .collect();
        let (_, new) = s.schedule(&desired);
        assert_eq!(new.len(), UNITS_MAX);
    }
}
