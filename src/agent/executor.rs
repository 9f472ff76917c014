//! The agent's loop: the executor of the [`Supervisor`]'s effects.
//!
//! It reads this machine's part of the schedule and the containers with its label,
//! loads the units new here (their files and environment files from the store and the
//! disk), and hands all of it to the supervisor; it carries out what the supervisor
//! says through the seams, each effect with a result on its own task that feeds the
//! result back ([`Executor::spawn_back`]); and it shows the units' reports to the
//! journal endpoint. Schedule changes (a watch on this machine's prefix) and container
//! exits (the engine's event stream) wake it.

use super::presence::Renewed;
use super::run_step::{run_step, Seams, LABEL_HASH, LABEL_MACHINE, LABEL_ROLE, LABEL_UNIT};
use super::spec::env_files;
pub use super::supervisor::{AgentBugs, UnitReport, UNITS_MAX};
use super::supervisor::{Effect, Found, Input, Main, Publish, Supervisor};
use crate::client::{ClientError, SetOpts};
use crate::kv::Precondition;
use crate::sched::place::Entry;
use crate::sched::registry::{self, StoredUnit};
use flotilla_shims::containers::{ContainerError, ContainerState, Containers};
use flotilla_shims::process::Signal;
use flotilla_shims::{Clock, Spawn};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub use super::start::AgentConfig;

/// Inputs queued for the loop at most; senders wait beyond this.
pub const INPUTS_MAX: usize = 4096;
/// Lines of a finished main container's output kept in the unit's journal.
pub const EXIT_LOG_LINES: usize = 20;
/// A failed read of the schedule (or a broken event stream) is tried again after this.
const WATCH_RETRY_MS: u64 = 500;
/// The event stream's reconnect backoff: from the first, doubling up to the cap.
const EXITS_RETRY_MS: u64 = 100;
const EXITS_RETRY_MAX_MS: u64 = 5_000;

/// The agent's units as it last saw them, shared with whoever asks.
#[derive(Default)]
pub struct AgentView {
    pub units: Mutex<BTreeMap<String, UnitReport>>,
    /// Wake-ups caused by schedule changes (a machine's agent is woken only by its own).
    pub schedule_wakeups: std::sync::atomic::AtomicU64,
}

enum Msg {
    Input(Input),
    /// The schedule changed: reconcile now.
    Wake,
}

pub struct Agent {
    cfg: AgentConfig,
    exec: Executor,
    renewed: Renewed,
    rx: mpsc::Receiver<Msg>,
}

/// Carries out effects; what they find comes back on `tx`.
struct Executor {
    seams: Seams,
    clock: Arc<dyn Clock>,
    spawn: Arc<dyn Spawn>,
    view: Arc<AgentView>,
    tx: mpsc::Sender<Msg>,
    /// How long one store request may hold up the loop.
    store_bound: Duration,
    /// This machine's id.
    me: String,
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
        // A sixth of the TTL, so that a machine cut off from the store still fences in
        // time.
        let store_bound = Duration::from_millis(cfg.machine.ttl_s.max(1) * 1000 / 6);
        let exec = Executor {
            seams,
            clock,
            spawn,
            view,
            tx,
            store_bound,
            me: cfg.machine.id.clone(),
        };
        Self {
            cfg,
            exec,
            renewed,
            rx,
        }
    }

    pub async fn run(mut self) {
        let mut sup = Supervisor::new(self.cfg.clone(), now_ms(&*self.exec.clock));
        self.exec.spawn_watchers(&self.cfg.machine.id);
        let mut next_reconcile = 0;
        loop {
            let now = now_ms(&*self.exec.clock);
            let renewed_ms = self.renewed.borrow().map(|t| t.as_millis() as u64);
            let effects = sup.lease(now, renewed_ms);
            self.exec.apply(&mut sup, effects);
            if now >= next_reconcile {
                // A pass reads the store and the engine, which can stall for seconds (a
                // partition, failover across endpoints): it never holds up the fence.
                let due = sup.fence_due_ms(renewed_ms).map(|t| t.saturating_sub(now));
                let pass = self.exec.reconcile(&mut sup, &self.cfg, now);
                let done = match due {
                    Some(ms) => bounded(&*self.exec.clock, Duration::from_millis(ms.max(1)), pass)
                        .await
                        .is_some(),
                    None => {
                        pass.await;
                        true
                    }
                };
                if !done {
                    // Cut short at the fence: fence first (at the top), then pass again.
                    next_reconcile = now;
                    continue;
                }
                next_reconcile = now + self.cfg.reconcile_ms;
            }
            let effects = [sup.decide(now), sup.clean_up(), sup.publish(now)].concat();
            self.exec.apply(&mut sup, effects);
            let wait = sup.next_wake_ms(now, next_reconcile);
            let msg = tokio::select! {
                biased;
                m = self.rx.recv() => m,
                _ = self.exec.clock.sleep(Duration::from_millis(wait)) => None,
            };
            let now = now_ms(&*self.exec.clock);
            let effects = match msg {
                Some(Msg::Wake) => {
                    next_reconcile = now;
                    vec![]
                }
                Some(Msg::Input(i)) => sup.input(i, now),
                None => sup.tick(now),
            };
            self.exec.apply(&mut sup, effects);
            // Take whatever else is queued before deciding again.
            while let Ok(m) = self.rx.try_recv() {
                match m {
                    Msg::Wake => next_reconcile = now,
                    Msg::Input(i) => {
                        let effects = sup.input(i, now);
                        self.exec.apply(&mut sup, effects);
                    }
                }
            }
        }
    }
}

impl Executor {
    /// Schedule changes under this machine's prefix, and container exits, become inputs.
    fn spawn_watchers(&self, me: &str) {
        self.spawn_schedule_watch(me);
        self.spawn_exit_watch();
    }

    /// Wakes the loop whenever this machine's schedule changes.
    fn spawn_schedule_watch(&self, me: &str) {
        let (kv, tx, clock) = (self.seams.kv.clone(), self.tx.clone(), self.clock.clone());
        let (dir, view) = (registry::schedule_dir(me), self.view.clone());
        let retry = Duration::from_millis(WATCH_RETRY_MS);
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
                                clock.sleep(retry).await;
                                continue;
                            }
                        };
                    }
                    match kv.watch(&dir, true, since).await {
                        Ok(ev) => {
                            since = ev.index + 1;
                            view.schedule_wakeups
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if tx.send(Msg::Wake).await.is_err() {
                                return;
                            }
                        }
                        // The window moved past us: re-read everything, watch from now.
                        Err(e) if e.code() == Some(crate::kv::error::EVENT_INDEX_CLEARED) => {
                            since = 0;
                            let _ = tx.send(Msg::Wake).await;
                        }
                        Err(_) => clock.sleep(retry).await,
                    }
                }
            }),
        );
    }

    /// Feeds every container exit the engine reports back as an input.
    fn spawn_exit_watch(&self) {
        let (containers, tx, clock) = (
            self.seams.containers.clone(),
            self.tx.clone(),
            self.clock.clone(),
        );
        self.spawn.spawn(
            "agent-exits",
            Box::pin(async move {
                let mut backoff = EXITS_RETRY_MS;
                loop {
                    match containers.next_exit().await {
                        Ok(e) => {
                            backoff = EXITS_RETRY_MS;
                            let input = Input::Exit {
                                id: e.id,
                                name: e.name,
                                code: e.code,
                                oom_killed: e.oom_killed,
                            };
                            if tx.send(Msg::Input(input)).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => {
                            clock.sleep(Duration::from_millis(backoff)).await;
                            backoff = (backoff * 2).min(EXITS_RETRY_MAX_MS);
                        }
                    }
                }
            }),
        );
    }

    /// Runs `fut` on its own task and feeds what it yields (if anything) back as an input.
    fn spawn_back(
        &self,
        name: &'static str,
        fut: impl Future<Output = Option<Input>> + Send + 'static,
    ) {
        let tx = self.tx.clone();
        self.spawn.spawn(
            name,
            Box::pin(async move {
                if let Some(i) = fut.await {
                    let _ = tx.send(Msg::Input(i)).await;
                }
            }),
        );
    }

    /// Carries out `effects`, then shows the supervisor's changed reports.
    fn apply(&self, sup: &mut Supervisor, effects: Vec<Effect>) {
        for e in effects {
            self.effect(e);
        }
        let mut units = self.view.units.lock().expect("view lock");
        for (name, r) in sup.take_reports() {
            match r {
                Some(r) => units.insert(name, r),
                None => units.remove(&name),
            };
        }
    }

    fn effect(&self, e: Effect) {
        let seams = self.seams.clone();
        match e {
            Effect::Exec {
                unit,
                gen,
                id,
                stage,
                step,
                ctx,
            } => self.spawn_back("agent-step", async move {
                let outcome = run_step(&seams, &ctx, stage, &step).await;
                Some(Input::Step {
                    unit,
                    gen,
                    id,
                    outcome,
                })
            }),
            Effect::EndMain {
                unit,
                gen,
                main,
                grace_ms,
            } => self.end_main(unit, gen, main, grace_ms),
            Effect::WaitProcess { unit, gen, handle } => {
                self.spawn_back("agent-process-wait", async move {
                    let code = seams.procs.wait(handle).await.ok()?;
                    Some(Input::MainGone { unit, gen, code })
                })
            }
            Effect::FetchLogs {
                unit,
                gen,
                container,
            } => self.spawn_back("agent-exit-logs", async move {
                let c = &seams.containers;
                let lines = c.logs(&container, EXIT_LOG_LINES).await.unwrap_or_default();
                Some(Input::Logs {
                    unit,
                    gen,
                    container,
                    lines,
                })
            }),
            Effect::Remove { container, force } => self.spawn_back("agent-remove", async move {
                let _ = seams.containers.remove(&container, force).await;
                None
            }),
            Effect::KillUnmanaged { keep_ids } => {
                let me = self.me.clone();
                self.spawn_back("agent-fence", async move {
                    kill_unmanaged(&*seams.containers, &me, &keep_ids).await;
                    None
                })
            }
            Effect::Publish { ttl_s, writes } => self.publish(ttl_s, writes),
            Effect::Unpublish { keys } => self.unpublish(keys),
        }
    }

    /// Stops (with a grace period) or kills the main process; its end comes back as an
    /// input whether or not the engine's event stream reports it.
    fn end_main(&self, unit: String, gen: u64, main: Main, grace_ms: Option<u64>) {
        match main {
            Main::Container { name, .. } => {
                let c = self.seams.containers.clone();
                self.spawn_back("agent-end-main", async move {
                    let r = match grace_ms {
                        Some(ms) => {
                            let grace_s = (ms / 1000).clamp(1, u64::from(u32::MAX)) as u32;
                            c.stop(&name, grace_s).await
                        }
                        None => c.kill(&name, "KILL").await,
                    };
                    let code = exit_code(&*c, &name).await;
                    match (code, r.is_ok() || code.is_some()) {
                        (Some(code), true) => Some(Input::MainGone { unit, gen, code }),
                        _ => None,
                    }
                });
            }
            Main::Process(h) => {
                let sig = if grace_ms.is_some() {
                    Signal::Term
                } else {
                    Signal::Kill
                };
                let _ = self.seams.procs.signal(h, sig);
            }
            Main::None => {}
        }
    }

    /// Writes states in the background: a store that does not answer (this machine cut
    /// off) must not hold up the loop, which has units to fence.
    fn publish(&self, ttl_s: u64, writes: Vec<Publish>) {
        let (kv, clock, bound) = (self.seams.kv.clone(), self.clock.clone(), self.store_bound);
        self.spawn_back("agent-publish", async move {
            let mut failed = vec![];
            for w in writes {
                let opts = SetOpts {
                    ttl_s: Some(ttl_s),
                    ..Default::default()
                };
                let done = bounded(&*clock, bound, kv.set(&w.key, &w.value, opts)).await;
                if !matches!(done, Some(Ok(_))) {
                    failed.push(w.unit);
                }
            }
            Some(Input::Published { failed })
        });
    }

    fn unpublish(&self, keys: Vec<String>) {
        let (kv, clock, bound) = (self.seams.kv.clone(), self.clock.clone(), self.store_bound);
        self.spawn_back("agent-forget", async move {
            let mut failed = vec![];
            for key in keys {
                let gone = kv.delete(&key, false, Precondition::default());
                match bounded(&*clock, bound, gone).await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) if e.code() == Some(crate::kv::error::KEY_NOT_FOUND) => {}
                    _ => failed.push(key),
                }
            }
            Some(Input::Unpublished { failed })
        });
    }

    /// The units the store holds a state of for machine `me` (`None`: not read).
    async fn stated_here(&self, me: &str) -> Option<Vec<String>> {
        let read = self.seams.kv.get(registry::STATES, true, false);
        let got = match bounded(&*self.clock, self.store_bound, read).await? {
            Ok(got) => got,
            Err(_) => return None,
        };
        let units = got.and_then(|g| g.node.nodes).unwrap_or_default();
        let mine = units.iter().filter(|u| {
            let here = u.nodes.as_deref().unwrap_or_default();
            here.iter().any(|m| m.key.rsplit('/').next() == Some(me))
        });
        Some(
            mine.filter_map(|u| Some(u.key.rsplit('/').next()?.to_string()))
                .collect(),
        )
    }

    /// Reads this machine's schedule and containers, loads the units new here, removes
    /// strays, and looks at main containers whose exit the event stream may have missed.
    async fn reconcile(&self, sup: &mut Supervisor, cfg: &AgentConfig, now: u64) {
        let me = cfg.machine.id.as_str();
        // First, and whether or not the store answers: a main container that ended while
        // its exit event was lost is noticed even on a machine cut off from the store.
        self.look_at_mains(sup, now).await;
        let Some(desired) = self.read_schedule(me).await else {
            return;
        };
        let (effects, new) = sup.schedule(&desired);
        self.apply(sup, effects);
        let mut found = self.containers_by_unit(me).await;
        for (name, e) in new {
            let Some((rec, files)) = self.read_unit(&name, &e, cfg).await else {
                continue;
            };
            let here = found.get(&name).map(Vec::as_slice).unwrap_or_default();
            let effects = sup.load(&name, &e, &rec, &files, here);
            self.apply(sup, effects);
        }
        if sup.needs_sweep(now) {
            if let Some(stated) = self.stated_here(me).await {
                sup.sweep(&stated, &desired);
            }
        }
        found.retain(|unit, _| sup.is_stray(unit, &desired));
        for (unit, cs) in found {
            for Found { name, .. } in cs {
                tracing::info!(container = %name, unit = %unit, "agent: removing a stray container");
                let _ = self.seams.containers.remove(&name, true).await;
            }
        }
    }

    async fn look_at_mains(&self, sup: &mut Supervisor, now: u64) {
        for (unit, gen, cname) in sup.main_containers() {
            if let Some(code) = exit_code(&*self.seams.containers, &cname).await {
                let effects = sup.input(Input::MainGone { unit, gen, code }, now);
                self.apply(sup, effects);
            }
        }
    }

    /// This machine's entries of the schedule, or `None` if it cannot be read now.
    async fn read_schedule(&self, me: &str) -> Option<BTreeMap<String, Entry>> {
        let dir = registry::schedule_dir(me);
        // A linearizable read: a replica that restarted and has not applied its log yet
        // must not make this machine stop (or remove) what it runs.
        let read = bounded(
            &*self.clock,
            self.store_bound,
            self.seams.kv.get(&dir, true, true),
        );
        let timed_out = || Err(ClientError::Unavailable("timed out".into()));
        match read.await.unwrap_or_else(timed_out) {
            Ok(Some(g)) => Some(
                registry::schedule(Some(&crate::kv::NodeView {
                    nodes: Some(vec![g.node]),
                    ..empty_dir()
                }))
                .into_iter()
                .filter_map(|(u, mut by_m)| by_m.remove(me).map(|e| (u, e)))
                .collect(),
            ),
            Ok(None) => Some(BTreeMap::new()),
            Err(e) => {
                tracing::debug!(error = %e, "agent: cannot read the schedule");
                None
            }
        }
    }

    /// `name`'s stored file (if it still is the one scheduled) and its environment files.
    async fn read_unit(
        &self,
        name: &str,
        e: &Entry,
        cfg: &AgentConfig,
    ) -> Option<(StoredUnit, BTreeMap<String, Option<String>>)> {
        let got = self
            .seams
            .kv
            .get(&registry::unit_key(name), false, false)
            .await;
        let rec = match got {
            Ok(Some(g)) => g
                .node
                .value
                .as_deref()
                .and_then(|v| StoredUnit::parse(v, g.node.modified_index)),
            _ => None,
        };
        // The unit changed or vanished since the schedule entry: the engine will update
        // the entry; look again then.
        let rec = rec.filter(|r| r.hash == e.hash)?;
        let mut files = BTreeMap::new();
        for (path, _) in env_files(name, &rec.record.options, &cfg.host) {
            let text = self.seams.files.read(&path).await.ok().flatten();
            files.insert(path, text.map(|t| String::from_utf8_lossy(&t).into_owned()));
        }
        Some((rec, files))
    }

    /// Containers with this machine's label, by unit.
    async fn containers_by_unit(&self, me: &str) -> BTreeMap<String, Vec<Found>> {
        let mut out: BTreeMap<String, Vec<Found>> = BTreeMap::new();
        let list = self.seams.containers.list_by_label(LABEL_MACHINE, me).await;
        for c in list.unwrap_or_default() {
            let unit = c.labels.get(LABEL_UNIT).cloned().unwrap_or_default();
            out.entry(unit).or_default().push(Found {
                hash: c.labels.get(LABEL_HASH).cloned().unwrap_or_default(),
                main: c.labels.get(LABEL_ROLE).map(String::as_str) == Some("main"),
                running: c.state == ContainerState::Running,
                reach: super::run_step::reach_of(&c, &self.seams.network),
                name: c.name,
                id: c.id,
            });
        }
        out
    }
}

/// Kills every running container with `me`'s label whose id is not in `keep_ids`.
async fn kill_unmanaged(c: &dyn Containers, me: &str, keep_ids: &[String]) {
    for f in c.list_by_label(LABEL_MACHINE, me).await.unwrap_or_default() {
        if f.state == ContainerState::Running && !keep_ids.contains(&f.id) {
            let _ = c.kill(&f.name, "KILL").await;
        }
    }
}

/// A container's exit code if it has ended (gone counts as ended cleanly), `None` if it
/// runs or the runtime cannot say.
async fn exit_code(c: &dyn Containers, name: &str) -> Option<i64> {
    match c.inspect(name).await {
        Ok(info) => match info.state {
            ContainerState::Exited { code, .. } => Some(code),
            _ => None,
        },
        Err(ContainerError::NotFound(_)) => Some(0),
        Err(_) => None,
    }
}

/// `fut`, or `None` if it takes longer than `bound`.
async fn bounded<T>(clock: &dyn Clock, bound: Duration, fut: impl Future<Output = T>) -> Option<T> {
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
