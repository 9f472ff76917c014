//! What clients did and saw: one record per operation, with simulated times.

use serde::{Deserialize, Serialize};

/// An operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `quorum`: through ReadIndex (checked for linearizability). Local reads are only
    /// checked for returning a value that was written.
    Get {
        quorum: bool,
    },
    Set {
        value: String,
        ttl: bool,
    },
    Cas {
        prev: String,
        value: String,
    },
    Cad {
        prev: String,
    },
    Delete,
}

impl Op {
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Success; for reads, the value (`None`: key not found).
    Ok(Option<String>),
    /// Compare failed (etcd 101).
    CompareFailed,
    /// Key not found (etcd 100) on a write.
    NotFound,
    /// Timed out, response lost, node died mid-request: may or may not have taken effect.
    Unknown,
    /// Definitely had no effect: the request never reached a node, or Raft refused to
    /// propose it. Checkers ignore these.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub client: u64,
    pub node: u64,
    pub key: String,
    pub op: Op,
    pub invoke_ns: u64,
    /// `None` while in flight.
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
}

#[derive(Debug, Default, Clone)]
pub struct History {
    pub records: Vec<Record>,
}

impl History {
    pub fn invoke(&mut self, client: u64, node: u64, key: &str, op: Op, now_ns: u64) -> usize {
        self.records.push(Record {
            client,
            node,
            key: key.to_string(),
            op,
            invoke_ns: now_ns,
            complete_ns: None,
            outcome: Outcome::Unknown,
        });
        self.records.len() - 1
    }

    pub fn complete(&mut self, id: usize, outcome: Outcome, now_ns: u64) {
        let r = &mut self.records[id];
        assert!(r.complete_ns.is_none(), "an operation completes once");
        r.outcome = outcome;
        r.complete_ns = Some(now_ns);
    }
}
