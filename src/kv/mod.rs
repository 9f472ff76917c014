//! The etcd v2 store as a pure state machine.
//!
//! # Layout
//! - [`path`]: key cleaning (`path.Clean(path.Join("/", key))`, as etcd does).
//! - [`command`]: the write commands that travel through Raft ([`Command`]).
//! - [`node`]: the tree of files and directories.
//! - [`event`]: what a write produced ([`Event`], [`NodeView`]) and the bounded history
//!   that watches read from ([`History`], the last 1000 events).
//! - [`error`]: etcd's error codes ([`StoreError`]).
//! - [`store`]: [`Store::apply`] — `(command) -> (result, events)`, no I/O, no clock: TTL
//!   expiry arrives as a [`Command::Expire`] carrying the leader's time — and reads.

pub mod command;
pub mod error;
pub mod event;
pub mod node;
pub mod path;
pub mod store;

pub use command::{Command, Guard, Precondition};
pub use error::StoreError;
pub use event::{Action, Event, History, NodeView};
pub use store::{Applied, Store};

/// Events kept for watches, as etcd keeps.
pub const HISTORY_EVENTS_MAX: usize = 1000;
