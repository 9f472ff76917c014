//! Raft, driven through raft-rs `RawNode`.
//!
//! # Layout
//! - [`storage`]: [`LogStore`], the in-memory log raft-rs reads (mirrors the disk).
//! - [`machine`]: [`Machine`], the replicated state (KV store + members); snapshots are it.
//! - [`boot`]: bootstrap or recovery from a [`flotilla_shims::Disk`], validating every record.
//! - [`driver`]: the Ready loop — persist + one sync per Ready (applying meanwhile), then
//!   send, apply, reply.
//! - [`apply`]: [`apply::Applier`] — committed entries into the [`Machine`], replies to the
//!   waiting handlers (borrows no disk, so it runs while a sync is in flight).
//! - [`forward`]: a follower sending client proposals to the leader itself, at once.
//! - [`handle`]: [`RaftHandle`] — how the API submits writes, ReadIndex reads and
//!   membership changes, and the [`Shared`] state it reads.
//! - [`signal`]: "something was applied", waking waiters in a deterministic order.
//! - [`watchers`]: watches wait on their own keys; an applied event wakes only those it
//!   concerns.
//! - [`logger`]: raft-rs's slog records into `tracing`.
//!
//! Data flow: API → `RaftHandle` → driver inbox → `RawNode::propose` → Ready → disk sync →
//! peers → commit → `Store::apply` → reply to the waiting handler.

pub mod apply;
pub mod boot;
pub mod driver;
pub mod follower_snapshot;
pub mod forward;
pub mod handle;
pub mod logger;
pub mod machine;
pub mod signal;
pub mod storage;
pub mod watchers;

pub use boot::{
    recover, BootError, Identity, Recovered, META_HARD_STATE, META_IDENTITY, META_SNAPSHOT,
};
pub use driver::{peer_addr, Driver, DriverParts, Fatal, RaftConfig, Request};
pub use handle::{Outcome, ProposeError, RaftHandle, Shared, Status};
pub use machine::{cluster_id, member_id, Machine, Member};
pub use storage::LogStore;
