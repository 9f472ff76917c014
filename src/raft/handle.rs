//! The node's side of the Ready loop: how API handlers submit writes and reads, and the
//! state they share with the loop.

use super::driver::Request;
use super::machine::{Machine, Member};
use crate::kv::{Command, Event, StoreError};
use flotilla_shims::Clock;
use raft::prelude::{ConfChange, ConfChangeType};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProposeError {
    #[error("no leader (election in progress)")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("too many requests in flight")]
    Busy,
    #[error("node is stopping")]
    Stopped,
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    NotFound(String),
}

/// A committed write's result and where it landed in the log.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub result: Result<Option<Event>, StoreError>,
    pub raft_index: u64,
    pub raft_term: u64,
}

pub type Reply = oneshot::Sender<Result<Outcome, ProposeError>>;

pub enum Input {
    Propose {
        req: Request,
        reply: Reply,
    },
    ReadIndex {
        reply: Reply,
    },
    ConfChange {
        cc: ConfChange,
        member: Member,
        reply: Reply,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub is_leader: bool,
    pub commit: u64,
    pub first_index: u64,
    pub snapshot_index: u64,
}

/// State the loop writes and handlers read.
pub struct Shared {
    machine: Mutex<Machine>,
    status: Mutex<Status>,
    events: watch::Sender<u64>,
}

impl Shared {
    pub fn new(machine: Machine, id: u64) -> Self {
        let status = Status {
            id,
            ..Default::default()
        };
        Self {
            machine: Mutex::new(machine),
            status: Mutex::new(status),
            events: watch::Sender::new(0),
        }
    }

    pub fn machine(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().expect("machine lock poisoned")
    }

    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().expect("status lock poisoned")
    }

    pub(crate) fn notify_events(&self) {
        let idx = self.machine().store.index();
        self.events.send_replace(idx);
    }

    /// Changes whenever new events reach the store's history.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }
}

/// A cheap, cloneable way into the Ready loop.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Input>,
    pub shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    timeout: Duration,
}

impl RaftHandle {
    pub fn new(
        tx: mpsc::Sender<Input>,
        shared: Arc<Shared>,
        clock: Arc<dyn Clock>,
        timeout: Duration,
    ) -> Self {
        Self {
            tx,
            shared,
            clock,
            timeout,
        }
    }

    async fn call(&self, make: impl FnOnce(Reply) -> Input) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let deadline = self.clock.sleep(self.timeout);
        tokio::select! {
            biased;
            r = async {
                self.tx.send(make(reply)).await.map_err(|_| ProposeError::Stopped)?;
                rx.await.map_err(|_| ProposeError::Stopped)?
            } => r,
            _ = deadline => Err(ProposeError::Timeout),
        }
    }

    /// Proposes a write and waits until it is committed and applied here.
    pub async fn write(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let req = Request::Kv(cmd);
        self.call(|reply| Input::Propose { req, reply }).await
    }

    /// Announces this member's name and client URLs through Raft.
    pub async fn publish(
        &self,
        id: u64,
        name: String,
        client_urls: Vec<String>,
    ) -> Result<Outcome, ProposeError> {
        let req = Request::Publish {
            id,
            name,
            client_urls,
        };
        self.call(|reply| Input::Propose { req, reply }).await
    }

    /// Waits until this node has applied everything committed when the read began
    /// (Raft ReadIndex): a read after this is linearizable.
    pub async fn read_barrier(&self) -> Result<Outcome, ProposeError> {
        self.call(|reply| Input::ReadIndex { reply }).await
    }

    pub async fn add_member(&self, member: Member) -> Result<Outcome, ProposeError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = member.id;
        self.call(|reply| Input::ConfChange { cc, member, reply })
            .await
    }

    pub async fn remove_member(&self, member: Member) -> Result<Outcome, ProposeError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = member.id;
        self.call(|reply| Input::ConfChange { cc, member, reply })
            .await
    }
}
