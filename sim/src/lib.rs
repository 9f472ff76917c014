//! flotilla's deterministic simulated world.
//!
//! # Layout
//! - [`scenario`]: a run's inputs (seed, shape, workload, explicit fault schedule);
//!   generated per seed ("swarm"), stored in failure-seed files, shrunk.
//! - [`history`]: client operations with simulated invoke/complete times.
//! - [`linearizability`]: per-key Wing–Gong–Lowe checker with memoisation.
//! - [`trace`]: the trace hash (same seed → same hash).
//! - [`sched_check`]: the scheduler's safety invariants on a replica's schedule.
//! - `env`, `fabric`, `docker`, `world` (only with `--cfg madsim`): the runtime seam on
//!   madsim — clock/tasks, the message fabric (latency, loss, duplication, reordering,
//!   partitions), the container engine with seeded failures, the renderer's checked
//!   files and commands (`render`), each machine's kernel tables (`links`) — and [`world::run`], which
//!   builds a cluster of real flotilla nodes on it, drives the workload and the fault
//!   schedule, heals, and runs every checker.
//!
//! Data flow: `Scenario` → `world::run` → (history, samples, trace) → checkers → `Report`.

pub mod history;
pub mod linearizability;
pub mod scenario;
pub mod sched_check;
pub mod trace;

#[cfg(madsim)]
pub mod docker;
#[cfg(madsim)]
pub mod env;
#[cfg(madsim)]
pub mod fabric;
#[cfg(madsim)]
pub mod links;
#[cfg(madsim)]
pub mod processes;
#[cfg(madsim)]
pub mod render;
#[cfg(madsim)]
pub mod world;
