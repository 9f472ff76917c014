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
use flotilla_shims::Clock;
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
    cfg: EngineConfig,
    units: BTreeMap<String, StoredUnit>,
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
    pub fn new(kv: InProc, clock: Arc<dyn Clock>, cfg: EngineConfig) -> Self {
        Self {
            kv,
            clock,
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
            let tick = self.clock.sleep(Duration::from_millis(wait_ms));
            tokio::select! {
                biased;
                _ = wait_relevant(&shared, &mut changes, seen) => {
                    self.clock.sleep(Duration::from_millis(self.cfg.debounce_ms)).await;
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
        let mut view = self.read().await?;
        let mut plan = place::plan_with(&view.machines, &view.units, &view.schedule, self.cfg.bugs);
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
                view = self.read().await?;
                plan = place::plan_with(&view.machines, &view.units, &view.schedule, self.cfg.bugs);
                index
            }
        };
        let mut report = PassReport {
            leader: true,
            unplaced: plan.unplaced.len(),
            ..Default::default()
        };
        for chunk in plan.decisions.chunks(self.cfg.txn_ops_max.max(1)) {
            let (guards, ops) = self.transaction(lease_index, chunk);
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

    /// Reads units (parsing only those that changed), live machines and the schedule.
    pub async fn read(&mut self) -> Result<View, ClientError> {
        let get = |k: &'static str| self.kv.get(k, true, false);
        let (units_dir, machines_dir, meta_dir, sched_dir) = (
            get(registry::UNITS).await?,
            get(registry::MACHINES).await?,
            get(registry::METADATA).await?,
            get(registry::SCHEDULE).await?,
        );
        let index = [&units_dir, &machines_dir, &meta_dir, &sched_dir]
            .iter()
            .filter_map(|g| g.as_ref().map(|g| g.index))
            .max()
            .unwrap_or(0);
        let mut fresh = BTreeMap::new();
        for n in units_dir.iter().flat_map(|g| g.node.nodes.iter().flatten()) {
            let name = registry::base(&n.key);
            let cached = self.units.remove(name);
            let unit = match cached {
                Some(u) if u.modified_index == n.modified_index => Some(u),
                _ => n
                    .value
                    .as_deref()
                    .and_then(|v| StoredUnit::parse(v, n.modified_index)),
            };
            if let Some(u) = unit {
                fresh.insert(name.to_string(), u);
            }
        }
        self.units = fresh;
        let machines = registry::machines(
            machines_dir.as_ref().map(|g| &g.node),
            meta_dir.as_ref().map(|g| &g.node),
        );
        Ok(View {
            units: self
                .units
                .iter()
                .map(|(k, u)| (k.clone(), u.placement()))
                .collect(),
            machines: machines
                .into_iter()
                .map(|(k, m)| (k, m.placement()))
                .collect(),
            schedule: registry::schedule(sched_dir.as_ref().map(|g| &g.node)),
            index,
        })
    }

    /// The guards and ops that commit `decisions`, fenced by the lease.
    fn transaction(&self, lease_index: u64, decisions: &[Decision]) -> (Vec<Guard>, Vec<Command>) {
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
            match self.units.get(unit) {
                Some(u) => guard(registry::unit_key(unit), Some(true), u.modified_index),
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
    changes: &mut tokio::sync::watch::Receiver<u64>,
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
