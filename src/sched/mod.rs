//! The scheduler: fleet's cluster-level init system, on the replicated store.
//!
//! # Layout
//! - [`model`]: what placement works on — units as it sees them, machines, the schedule.
//! - [`require`]: what `[X-Fleet]` asks of a machine; fleet's option validation.
//! - [`replace`]: which unit `Replaces` which, rings of them ignored.
//! - [`place`]: placement, a pure function of (machines, units, schedule) → decisions.
//! - [`registry`]: where units, machines and the schedule live in the store, and their
//!   JSON records.
//! - [`engine`]: the leader's reconcile loop: read the registry, [`place::plan`], commit
//!   the decisions in fenced transactions.
//!
//! Data flow: `PUT /fleet/v1/units/X` → unit record in the store → engine (on the Raft
//! leader) wakes → `plan` → `Txn` (guarded by the engine's lease and each unit's index)
//! → schedule entries under the machine's own prefix → that machine's agent wakes.

pub mod engine;
pub mod model;
pub mod place;
pub mod registry;
pub mod replace;
pub mod require;
