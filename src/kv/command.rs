//! Write commands: what a Raft entry carries to every replica's store.

use serde::{Deserialize, Serialize};

/// Conditions on a write (`prevExist`, `prevValue`, `prevIndex`). Empty value and zero
/// index mean "no condition", as in etcd.
/// (Encoded with bincode inside Raft entries: no serde attributes that skip fields.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precondition {
    pub exist: Option<bool>,
    pub value: String,
    pub index: u64,
}

impl Precondition {
    pub fn is_compare(&self) -> bool {
        !self.value.is_empty() || self.index != 0
    }
}

/// A write. Expirations are absolute wall-clock milliseconds, fixed by the node that took
/// the request, so applying a command never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// PUT: set / create / update / compareAndSwap, chosen by `prev` as etcd does.
    Put {
        key: String,
        value: String,
        dir: bool,
        expire_ms: Option<u64>,
        refresh: bool,
        prev: Precondition,
    },
    /// POST: create `dir/<20-digit index>`.
    CreateInOrder {
        dir: String,
        value: String,
        expire_ms: Option<u64>,
    },
    /// DELETE: delete / compareAndDelete.
    Delete {
        key: String,
        dir: bool,
        recursive: bool,
        prev: Precondition,
    },
    /// Removes every node whose expiration is at or before `now_ms` (the leader's time).
    Expire { now_ms: u64 },
    /// All or nothing: every guard holds and then every op (a `Put` or `Delete`) applies,
    /// or nothing changes. Not part of etcd's API: the scheduler commits a pass's
    /// decisions with it, fenced by a guard on its lease key, so that a unit's move is
    /// one step and a deposed engine commits nothing.
    Txn {
        guards: Vec<Guard>,
        ops: Vec<Command>,
    },
}

/// A condition on one key for [`Command::Txn`]: it exists (or not), and, when `index` is
/// non-zero, was last modified at that index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub key: String,
    pub exist: Option<bool>,
    pub index: u64,
}
