//! The agent: what runs on every machine.
//!
//! # Layout
//! - [`presence`]: the machine's TTL key — announced at start, refreshed at half the TTL,
//!   and the lease the agent fences its units by (it knows when it last renewed).
//!
//! Data flow: presence key (store) → engine sees the machine → schedule entries under
//! `/_flotilla/schedule/<machine>` → this machine's agent.

pub mod exec;
pub mod lifecycle;
pub mod presence;
pub mod spec;
