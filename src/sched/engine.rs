//! The scheduling engine: runs on every member, acts only on the Raft leader.
//!
//! A pass reads the registry from the local replica, asks [`place::plan`] what to do and
//! commits the decisions as [`Command::Txn`]s. Three guards make that safe:
//! - **the lease**: before its first commit in a new term the engine writes the lease
//!   key, and every commit requires that key unchanged since. A deposed leader's commits fail
//!   once its successor has taken the lease; before that, its commits are ones the
//!   successor reads anyway (it reads only after its own lease write has applied).
//! - **each unit's index**: a decision about a unit holds only if the unit record is
//!   still the one the pass read (a concurrent `PUT` or `DELETE` voids it).
//! - **the machine's presence**: nothing is placed on a machine whose key has expired.
//!
//! The engine keeps nothing between passes but a cache of parsed unit records (keyed by
//! their modified index); everything else is re-read each pass, so a new leader decides
//! from the store alone — and, since placement never moves what is correctly placed,
//! decides nothing about units that are fine.

use super::place::{self, Decision, Schedule};
use super::registry::{self, Lease, StoredUnit};
use crate::client::{inproc::InProc, ClientError, KvClient, SetOpts};
use crate::kv::{Command, Guard, Precondition};
use flotilla_shims::{Clock, Spawn};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A pass at least this often, whatever happens (fleet's reconcile interval).
    pub reconcile_ms: u64,
    /// Changes arriving within this window after a wake-up are taken in the same pass.
    pub debounce_ms: u64,
    /// Ops per transaction; a pass with more decisions commits several.
    pub txn_ops_max: usize,
    /// This member's id, for the lease record.
    pub member: String,
    /// Planted bugs (simulation only).
    pub bugs: place::Bugs,
    /// `false`: the node starts no engine (tests that drive passes by hand).
    pub enabled: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            reconcile_ms: 2_000,
            debounce_ms: 20,
            txn_ops_max: 1_000,
            member: String::new(),
            bugs: place::Bugs::default(),
            enabled: true,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub leader: bool,
    pub committed: usize,
    pub unplaced: usize,
    /// A commit failed on a changed unit: run again soon.
    pub retry: bool,
}

pub struct Engine {
    kv: InProc,
    clock: Arc<dyn Clock>,
    spawn: Arc<dyn Spawn>,
    cfg: EngineConfig,
    /// Parsed unit records (and their placement view), by name, reused while their
    /// modified index is unchanged.
    units: BTreeMap<String, (StoredUnit, place::Unit)>,
    /// (term, index of our lease write) while we hold the lease.
    lease: Option<(u64, u64)>,
}

/// The registry as one pass sees it.
pub struct View {
    pub units: BTreeMap<String, place::Unit>,
    pub machines: BTreeMap<String, place::Machine>,
    pub schedule: Schedule,
    pub index: u64,
}

impl Engine {
    pub fn new(
        kv: InProc,
        clock: Arc<dyn Clock>,
        spawn: Arc<dyn Spawn>,
        cfg: EngineConfig,
    ) -> Self {
        Self {
            kv,
            clock,
            spawn,
            cfg,
            units: BTreeMap::new(),
            lease: None,
        }
    }

    /// Passes forever: on every relevant change (debounced) and at least every
    /// `reconcile_ms`.
    pub async fn run(mut self) {
        let shared = self.kv.raft.shared.clone();
        let mut changes = shared.subscribe();
        let mut seen = 0;
        loop {
            let t0 = self.clock.now_mono();
            let report = match self.pass().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "scheduling pass failed");
                    PassReport {
                        retry: true,
                        ..Default::default()
                    }
                }
            };
            if report.committed > 0 {
                tracing::debug!(?report, "scheduling pass");
            }
            let wait_ms = if report.retry {
                self.cfg.debounce_ms.max(1) * 5
            } else {
                self.cfg.reconcile_ms
            };
            // A pass over many units takes a while: pause twice as long before the next,
            // so that the engine takes at most a third of a core however busy the API is.
            let took = self.clock.now_mono().saturating_sub(t0);
            let debounce = Duration::from_millis(self.cfg.debounce_ms).max(took * 2);
            let tick = self.clock.sleep(Duration::from_millis(wait_ms));
            tokio::select! {
                biased;
                _ = wait_relevant(&shared, &mut changes, seen) => {
                    self.clock.sleep(debounce).await;
                }
                _ = tick => {}
            }
            seen = shared.machine().store.index();
        }
    }

    /// One pass: take the lease if this member leads in a new term, read, plan, commit.
    pub async fn pass(&mut self) -> Result<PassReport, ClientError> {
        let status = self.kv.raft.shared.status().clone();
        if !status.is_leader {
            self.lease = None;
            return Ok(PassReport::default());
        }
        let view = self.read();
        let mut plan = self.plan(view).await?;
        if plan.decisions.is_empty() {
            return Ok(PassReport {
                leader: true,
                unplaced: plan.unplaced.len(),
                ..Default::default()
            });
        }
        // The lease is taken only when there is something to commit (a cluster without
        // units writes nothing). Taking it, then reading again, is what makes the read
        // include every commit of any earlier engine.
        let lease_index = match self.lease {
            Some((term, index)) if term == status.term => index,
            _ => {
                let index = self.claim(status.term).await?;
                let view = self.read();
                if self.cfg.bugs.forget_schedule_on_takeover {
                    plan.decisions = unscheduled(&view.schedule);
                } else {
                    plan = self.plan(view).await?;
                }
                index
            }
        };
        let mut report = PassReport {
            leader: true,
            unplaced: plan.unplaced.len(),
            ..Default::default()
        };
        for chunk in plan.decisions.chunks(self.cfg.txn_ops_max.max(1)) {
            let (guards, ops) = transaction(&self.units, lease_index, chunk);
            match self.kv.txn(guards, ops).await {
                Ok(()) => report.committed += chunk.len(),
                Err(ClientError::Store(e)) if e.cause.starts_with(registry::LEASE) => {
                    tracing::info!("scheduling lease lost: {}", e.cause);
                    self.lease = None;
                    return Ok(report);
                }
                Err(ClientError::Store(e)) => {
                    tracing::debug!(cause = %e.cause, "decisions voided by a concurrent change");
                    report.retry = true;
                    return Ok(report);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    async fn claim(&mut self, term: u64) -> Result<u64, ClientError> {
        let lease = Lease {
            member: self.cfg.member.clone(),
            term,
        };
        let value = serde_json::to_string(&lease).expect("lease serializes");
        let ev = self
            .kv
            .set(registry::LEASE, &value, SetOpts::default())
            .await?;
        tracing::info!(term, "took the scheduling lease");
        self.lease = Some((term, ev.node.modified_index));
        Ok(ev.node.modified_index)
    }

    /// Plans on a blocking thread: a pass over many units must not hold up the node's
    /// event loop (Raft, the API).
    async fn plan(&self, view: View) -> Result<place::Plan, ClientError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let bugs = self.cfg.bugs;
        self.spawn.spawn_blocking(
            "sched-plan",
            Box::new(move || {
                let plan = place::plan_with(&view.machines, &view.units, &view.schedule, bugs);
                let _ = tx.send(plan);
            }),
        );
        rx.await
            .map_err(|_| ClientError::Unavailable("planning was dropped".into()))
    }

    /// Reads the registry from the local replica in one go: units (parsing only those
    /// that changed since the last pass), live machines and the schedule.
    pub fn read(&mut self) -> View {
        let mut cache = std::mem::take(&mut self.units);
        let (fresh, machines, schedule, index) = self.kv.read(|store| {
            let mut fresh = BTreeMap::new();
            let children = store.node(registry::UNITS).and_then(|n| n.children());
            for (name, n) in children.into_iter().flatten() {
                let name = name.as_str();
                let entry = match cache.remove(name) {
                    Some(c) if c.0.modified_index == n.modified_index => Some(c),
                    _ => StoredUnit::parse(n.value(), n.modified_index).map(|u| {
                        let p = u.placement();
                        (u, p)
                    }),
                };
                if let Some(e) = entry {
                    fresh.insert(name.to_string(), e);
                }
            }
            let dir = |k: &str| store.get(k, true).ok().map(|e| e.node);
            let machines = registry::machines(
                dir(registry::MACHINES).as_ref(),
                dir(registry::METADATA).as_ref(),
            );
            let schedule = registry::schedule(dir(registry::SCHEDULE).as_ref());
            (fresh, machines, schedule, store.index())
        });
        self.units = fresh;
        View {
            units: self
                .units
                .iter()
                .map(|(k, (_, p))| (k.clone(), p.clone()))
                .collect(),
            machines: machines
                .into_iter()
                .map(|(k, m)| (k, m.placement()))
                .collect(),
            schedule,
            index,
        }
    }
}

/// The guards and ops that commit `decisions`: fenced by the lease (its key unchanged
/// since `lease_index`), each unit's record as read (`units`, by modified index; absent
/// stays absent), each target machine still registered.
fn transaction(
    units: &BTreeMap<String, (StoredUnit, place::Unit)>,
    lease_index: u64,
    decisions: &[Decision],
) -> (Vec<Guard>, Vec<Command>) {
    let mut guards: BTreeMap<String, Guard> = BTreeMap::new();
    let mut guard = |key: String, exist: Option<bool>, index: u64| {
        guards.insert(key.clone(), Guard { key, exist, index });
    };
    guard(registry::LEASE.into(), Some(true), lease_index);
    let mut ops = Vec::with_capacity(decisions.len());
    for d in decisions {
        let unit = match d {
            Decision::Schedule { unit, .. }
            | Decision::Update { unit, .. }
            | Decision::Unschedule { unit, .. } => unit,
        };
        match units.get(unit) {
            Some((u, _)) => guard(registry::unit_key(unit), Some(true), u.modified_index),
            None => guard(registry::unit_key(unit), Some(false), 0),
        }
        match d {
            Decision::Schedule {
                unit,
                machine,
                entry,
            }
            | Decision::Update {
                unit,
                machine,
                entry,
            } => {
                guard(registry::machine_key(machine), Some(true), 0);
                ops.push(put(
                    registry::schedule_key(machine, unit),
                    serde_json::to_string(entry).expect("entry serializes"),
                ));
            }
            Decision::Unschedule {
                unit,
                machine,
                reason,
            } => {
                tracing::info!(unit, machine, reason, "unscheduling");
                ops.push(Command::Delete {
                    key: registry::schedule_key(machine, unit),
                    dir: false,
                    recursive: false,
                    prev: Precondition::default(),
                });
            }
        }
    }
    (guards.into_values().collect(), ops)
}

/// The planted takeover bug: every plain unit taken off its machine, to be placed
/// afresh by the next pass (a restart at the least).
fn unscheduled(placed: &place::Schedule) -> Vec<Decision> {
    let plain = placed.iter().filter(|(_, on)| on.len() == 1);
    plain
        .flat_map(|(unit, on)| {
            on.keys().map(|machine| Decision::Unschedule {
                unit: unit.clone(),
                machine: machine.clone(),
                reason: "planted bug: unscheduled on takeover".into(),
            })
        })
        .collect()
}

fn put(key: String, value: String) -> Command {
    Command::Put {
        key,
        value,
        dir: false,
        expire_ms: None,
        refresh: false,
        prev: Precondition::default(),
    }
}

/// Resolves when the store has an event after `seen` that can change a placement: a unit,
/// machine presence or metadata change (not the engine's own schedule writes, nor agents'
/// state reports), or when the history no longer reaches back to `seen`.
async fn wait_relevant(
    shared: &crate::raft::Shared,
    changes: &mut crate::raft::signal::Changes,
    seen: u64,
) {
    loop {
        {
            let m = shared.machine();
            let (h, index) = (m.store.history(), m.store.index());
            if index > seen {
                for prefix in [registry::UNITS, registry::MACHINES, registry::METADATA] {
                    match h.scan(prefix, true, seen + 1, index) {
                        Ok(None) => {}
                        Ok(Some(_)) | Err(_) => return,
                    }
                }
            }
        }
        if changes.changed().await.is_err() {
            // The node is stopping: never resolve, the tick ends the wait.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::error::{KEY_NOT_FOUND, TEST_FAILED};
    use crate::kv::Store;
    use crate::sched::place::{Desired, Entry};
    use crate::sched::registry::UnitRecord;

    fn record(options: &str) -> String {
        let r = UnitRecord {
            name: "u.service".into(),
            options: crate::unitfile::file::parse(options).expect("parses"),
            desired_state: Desired::Launched,
        };
        serde_json::to_string(&r).expect("serializes")
    }

    /// A store with the lease, machine m1 and unit u; the engine's view of u as read.
    fn setup() -> (Store, BTreeMap<String, (StoredUnit, place::Unit)>, u64) {
        let mut s = Store::new();
        s.apply(&put(registry::LEASE.into(), "{}".into()));
        let lease_index = s.index();
        s.apply(&put(registry::machine_key("m1"), "{}".into()));
        s.apply(&put(
            registry::unit_key("u.service"),
            record("[Service]\nExecStart=/bin/true\n"),
        ));
        let rec = StoredUnit::parse(&record("[Service]\nExecStart=/bin/true\n"), s.index())
            .expect("parses");
        let units = [("u.service".to_string(), (rec.clone(), rec.placement()))].into();
        (s, units, lease_index)
    }

    fn schedule_u(units: &BTreeMap<String, (StoredUnit, place::Unit)>) -> Decision {
        Decision::Schedule {
            unit: "u.service".into(),
            machine: "m1".into(),
            entry: Entry {
                desired: Desired::Launched,
                hash: units["u.service"].0.hash.clone(),
            },
        }
    }

    fn commit(s: &mut Store, txn: (Vec<Guard>, Vec<Command>)) -> Result<(), String> {
        let (guards, ops) = txn;
        let r = s.apply(&Command::Txn { guards, ops });
        r.result.map(|_| ()).map_err(|e| {
            // A changed guard fails the compare; a vanished one is not found.
            assert!([TEST_FAILED, KEY_NOT_FOUND].contains(&e.code), "{e:?}");
            e.cause
        })
    }

    #[test]
    fn decisions_commit_while_everything_is_as_read() {
        let (mut s, units, lease) = setup();
        commit(&mut s, transaction(&units, lease, &[schedule_u(&units)])).expect("commits");
        assert!(s
            .get(&registry::schedule_key("m1", "u.service"), false)
            .is_ok());
    }

    #[test]
    fn a_unit_changed_since_the_read_voids_the_decisions() {
        let (mut s, units, lease) = setup();
        let d = schedule_u(&units);
        s.apply(&put(
            registry::unit_key("u.service"),
            record("[Service]\nExecStart=/bin/false\n"),
        ));
        let cause = commit(&mut s, transaction(&units, lease, &[d])).expect_err("voided");
        assert!(cause.contains(&registry::unit_key("u.service")), "{cause}");
        assert!(s
            .get(&registry::schedule_key("m1", "u.service"), false)
            .is_err());
    }

    #[test]
    fn a_machine_gone_since_the_read_voids_the_decisions() {
        let (mut s, units, lease) = setup();
        let d = schedule_u(&units);
        let gone = Command::Delete {
            key: registry::machine_key("m1"),
            dir: false,
            recursive: false,
            prev: Precondition::default(),
        };
        s.apply(&gone);
        let cause = commit(&mut s, transaction(&units, lease, &[d])).expect_err("voided");
        assert!(cause.contains(&registry::machine_key("m1")), "{cause}");
    }

    #[test]
    fn a_lease_taken_since_voids_the_decisions() {
        let (mut s, units, lease) = setup();
        let d = schedule_u(&units);
        s.apply(&put(
            registry::LEASE.into(),
            "{\"member\":\"other\"}".into(),
        ));
        let cause = commit(&mut s, transaction(&units, lease, &[d])).expect_err("voided");
        assert!(cause.starts_with(registry::LEASE), "{cause}");
    }
}
