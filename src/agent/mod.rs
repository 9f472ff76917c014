//! The agent: what runs on every machine.
//!
//! # Layout
//! - [`presence`]: the machine's TTL key — announced at start, refreshed every third of the TTL,
//!   and the lease the agent fences its units by (it knows when it last renewed).
//! - [`exec_line`]: Exec lines interpreted — systemd's splitting and expansion, then `docker`
//!   and `etcdctl` commands as operations (pure).
//! - [`spec`]: a unit's options → its lifecycle spec and dependencies (pure).
//! - [`lifecycle`]: one unit's systemd semantics as a state machine: events in, commands
//!   out (pure).
//! - [`run_step`]: one step carried out through the seams (containers, store, processes).
//! - [`supervisor`]: the machine's set of units as a state machine (pure): the schedule,
//!   the lease, step results and exits in; effects out — start and stop units in
//!   dependency order, fence on a lost lease, retry what was not the unit's fault, adopt
//!   and clean up containers, publish states.
//! - [`executor`]: the loop — reads the schedule and containers, carries out the
//!   supervisor's effects through the seams and feeds their results back.
//! - [`start`]: the one wiring of all this ([`start::start`]), its configuration and the
//!   handle journals are read through.
//!
//! Data flow: schedule entry (store) → [`executor`] reads the unit → [`supervisor`] prepares
//! it ([`spec::prepare`]) into a [`lifecycle::Unit`] → `Cmd::Exec` → `Effect::Exec` →
//! [`run_step::run_step`] → `Input::Step` back → state published under
//! `/_flotilla/states`.

pub mod exec_line;
pub mod executor;
pub mod lifecycle;
pub mod presence;
pub mod run_step;
pub mod spec;
pub mod start;
pub mod supervisor;

pub use start::{start, AgentConfig, AgentHandle};
