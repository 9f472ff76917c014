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
use tokio::sync::{mpsc, oneshot};

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
}

/// etcd's `/v2/stats/store` counters (per member, like etcd's).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    pub gets_success: u64,
    pub gets_fail: u64,
    pub sets_success: u64,
    pub sets_fail: u64,
    pub delete_success: u64,
    pub delete_fail: u64,
    pub update_success: u64,
    pub update_fail: u64,
    pub create_success: u64,
    pub create_fail: u64,
    pub compare_and_swap_success: u64,
    pub compare_and_swap_fail: u64,
    pub compare_and_delete_success: u64,
    pub compare_and_delete_fail: u64,
    pub expire_count: u64,
    pub watchers: u64,
}

/// A follower as the leader sees it: append outcomes and heartbeat round trips.
#[derive(Debug, Clone, Default)]
pub struct FollowerStats {
    pub success: u64,
    pub fail: u64,
    pub heartbeat_sent: Option<Duration>,
    pub rtt_current_s: f64,
    pub rtt_min_s: f64,
    pub rtt_max_s: f64,
    pub rtt_sum_s: f64,
    pub rtt_sum_sq: f64,
    pub rtt_count: u64,
}

impl FollowerStats {
    pub fn record_rtt(&mut self, s: f64) {
        self.rtt_current_s = s;
        self.rtt_min_s = if self.rtt_count == 0 {
            s
        } else {
            self.rtt_min_s.min(s)
        };
        self.rtt_max_s = self.rtt_max_s.max(s);
        self.rtt_sum_s += s;
        self.rtt_sum_sq += s * s;
        self.rtt_count += 1;
    }
}

/// `/v2/stats/self` and `/v2/stats/leader` counters.
#[derive(Debug, Clone, Default)]
pub struct RaftStats {
    pub start_wall_ms: u64,
    pub leader_since_wall_ms: u64,
    pub recv_append: u64,
    pub send_append: u64,
    pub followers: std::collections::BTreeMap<u64, FollowerStats>,
}

/// State the loop writes and handlers read.
pub struct Shared {
    machine: Mutex<Machine>,
    status: Mutex<Status>,
    events: super::signal::Signal,
    pub store_stats: Mutex<StoreStats>,
    pub raft_stats: Mutex<RaftStats>,
    pub metrics: crate::metrics::Metrics,
    /// Long-poll and streamed watches, by key.
    pub watchers: super::watchers::Watchers,
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
            events: super::signal::Signal::new(),
            store_stats: Mutex::new(StoreStats::default()),
            raft_stats: Mutex::new(RaftStats::default()),
            metrics: crate::metrics::Metrics::new(),
            watchers: Default::default(),
        }
    }

    pub fn machine(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().expect("machine lock poisoned")
    }

    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().expect("status lock poisoned")
    }

    pub fn store_stats(&self) -> MutexGuard<'_, StoreStats> {
        self.store_stats.lock().expect("stats lock poisoned")
    }

    pub fn raft_stats(&self) -> MutexGuard<'_, RaftStats> {
        self.raft_stats.lock().expect("stats lock poisoned")
    }

    pub(crate) fn notify_events(&self) {
        self.events.send();
    }

    /// Changes whenever new events reach the store's history.
    pub fn subscribe(&self) -> super::signal::Changes {
        self.events.subscribe()
    }

    /// The first event at or after index `since` on `key` (or under it, with
    /// `recursive`), waiting for one if need be: etcd's long-poll watch. An index older
    /// than the history window is etcd's error 401.
    pub async fn next_event(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
    ) -> Result<Event, StoreError> {
        // Registered before the first look, so nothing applied in between is missed.
        let watch = self.watchers.register(key, recursive);
        loop {
            {
                let m = self.machine();
                if let Some(ev) = m
                    .store
                    .history()
                    .scan(key, recursive, since, m.store.index())?
                {
                    return Ok(ev.clone());
                }
            }
            watch.changed().await;
        }
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

    /// Replaces a member's peer URLs (replicated).
    pub async fn update_peers(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<Outcome, ProposeError> {
        let req = Request::UpdatePeers { id, peer_urls };
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
