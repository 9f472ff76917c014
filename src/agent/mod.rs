//! The agent: what runs on every machine.
//!
//! # Layout
//! - [`presence`]: the machine's TTL key — announced at start, refreshed every third of the TTL,
//!   and the lease the agent fences its units by (it knows when it last renewed).
//! - [`exec`]: Exec lines interpreted — systemd's splitting and expansion, then `docker`
//!   and `etcdctl` commands as operations (pure).
//! - [`spec`]: a unit's options → its lifecycle spec and dependencies (pure).
//! - [`lifecycle`]: one unit's systemd semantics as a state machine: events in, commands
//!   out (pure).
//! - [`execute`]: one step carried out through the seams (containers, store, processes).
//! - [`run`]: the loop — watch this machine's schedule, load units, start and stop them
//!   in dependency order, fence on a lost lease, adopt and clean up containers, publish
//!   states.
//! - [`start`]: the one wiring of all this ([`start::start`]), its configuration and the
//!   handle journals are read through.
//!
//! Data flow: schedule entry (store) → [`run`] loads the unit → [`spec::prepare`] →
//! [`lifecycle::Unit`] → `Cmd::Exec` → [`execute::run_step`] → `Event` back → state
//! published under `/_flotilla/states`.

pub mod exec;
pub mod execute;
pub mod lifecycle;
pub mod presence;
pub mod run;
pub mod spec;
pub mod start;

pub use start::{start, AgentConfig, AgentHandle};
