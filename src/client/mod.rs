//! Reaching the replicated store: one [`KvClient`] trait for the scheduler, the agent, the
//! renderer and the CLIs.
//!
//! # Layout
//! - this file: the trait, its options and errors.
//! - [`inproc`]: on a member, straight into the Raft handle (no HTTP). It also offers
//!   [`inproc::InProc::txn`], the scheduler's fenced multi-key commit, which only a
//!   member can make.
//! - [`http`]: over etcd's v2 HTTP API, to flotilla or a real etcd (agent-only machines,
//!   the renderer).
//!
//! Keys and values are etcd's v2 keys; errors carry etcd's codes, so callers treat
//! "compare failed" and "not found" the same whichever way they reached the store.

pub mod endpoints;
pub mod fleet;
pub mod http;
pub mod inproc;

use crate::kv::{Event, NodeView, Precondition, StoreError};
use flotilla_shims::BoxFuture;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ClientError {
    /// The store refused the operation (etcd's error code and cause).
    #[error("{} ({}): {}", .0.message(), .0.code, .0.cause)]
    Store(StoreError),
    /// No answer: no leader, a timeout, the node stopping, the network. Retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl ClientError {
    /// etcd's error code, when the store answered with one.
    pub fn code(&self) -> Option<u32> {
        match self {
            ClientError::Store(e) => Some(e.code),
            ClientError::Unavailable(_) => None,
        }
    }
}

/// A read's answer: the node (with children for a directory) and the store index.
#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    pub node: NodeView,
    pub index: u64,
}

/// How to write a key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetOpts {
    pub ttl_s: Option<u64>,
    pub prev: Precondition,
    pub dir: bool,
    pub refresh: bool,
}

pub trait KvClient: Send + Sync + 'static {
    /// A key (or a directory, one level or `recursive`); `Ok(None)` when absent.
    /// `quorum` makes the read linearizable.
    fn get(
        &self,
        key: &str,
        recursive: bool,
        quorum: bool,
    ) -> BoxFuture<'_, Result<Option<Got>, ClientError>>;
    fn set(
        &self,
        key: &str,
        value: &str,
        opts: SetOpts,
    ) -> BoxFuture<'_, Result<Event, ClientError>>;
    fn delete(
        &self,
        key: &str,
        recursive: bool,
        prev: Precondition,
    ) -> BoxFuture<'_, Result<Event, ClientError>>;
    /// The first change at or after `since` on `key` (under it with `recursive`),
    /// waiting for one. Error 401 when `since` left the store's history window.
    fn watch(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
    ) -> BoxFuture<'_, Result<Event, ClientError>>;
}
