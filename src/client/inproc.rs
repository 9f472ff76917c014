//! [`KvClient`] on a member: reads from the local replica, writes through Raft.

use super::{ClientError, Got, KvClient, SetOpts};
use crate::kv::{Command, Event, Guard, Precondition, StoreError};
use crate::raft::{ProposeError, RaftHandle};
use flotilla_shims::{BoxFuture, Clock};
use std::sync::Arc;

#[derive(Clone)]
pub struct InProc {
    pub raft: RaftHandle,
    pub clock: Arc<dyn Clock>,
}

impl InProc {
    pub fn new(raft: RaftHandle, clock: Arc<dyn Clock>) -> Self {
        Self { raft, clock }
    }

    async fn write(&self, cmd: Command) -> Result<Option<Event>, ClientError> {
        match self.raft.write(cmd).await {
            Ok(out) => out.result.map_err(ClientError::Store),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// All-or-nothing guarded puts and deletes ([`Command::Txn`]); `Ok(())` once
    /// committed and applied here.
    pub async fn txn(&self, guards: Vec<Guard>, ops: Vec<Command>) -> Result<(), ClientError> {
        self.write(Command::Txn { guards, ops }).await.map(|_| ())
    }

    /// Runs `f` on the local replica's store, under its lock: keep `f` short.
    pub fn read<R>(&self, f: impl FnOnce(&crate::kv::Store) -> R) -> R {
        f(&self.raft.shared.machine().store)
    }

    /// The store index this replica has applied.
    pub fn index(&self) -> u64 {
        self.raft.shared.machine().store.index()
    }

    /// The absolute expiry the API would give a `ttl` written now (the leader commits
    /// it; every replica applies the same number).
    pub fn expire_ms(&self, ttl_s: u64) -> u64 {
        self.clock
            .now_wall_ms()
            .saturating_add(ttl_s.saturating_mul(1000))
    }
}

fn unavailable(e: ProposeError) -> ClientError {
    ClientError::Unavailable(e.to_string())
}

impl KvClient for InProc {
    fn get(
        &self,
        key: &str,
        recursive: bool,
        quorum: bool,
    ) -> BoxFuture<'_, Result<Option<Got>, ClientError>> {
        let key = key.to_string();
        Box::pin(async move {
            if quorum {
                self.raft.read_barrier().await.map_err(unavailable)?;
            }
            let got = self.raft.shared.machine().store.get(&key, recursive);
            match got {
                Ok(ev) => Ok(Some(Got {
                    node: ev.node,
                    index: ev.index,
                })),
                Err(e) if e.code == crate::kv::error::KEY_NOT_FOUND => Ok(None),
                Err(e) => Err(ClientError::Store(e)),
            }
        })
    }

    fn set(
        &self,
        key: &str,
        value: &str,
        opts: SetOpts,
    ) -> BoxFuture<'_, Result<Event, ClientError>> {
        let cmd = Command::Put {
            key: key.to_string(),
            value: value.to_string(),
            dir: opts.dir,
            expire_ms: opts.ttl_s.map(|t| self.expire_ms(t)),
            refresh: opts.refresh,
            prev: opts.prev,
        };
        Box::pin(async move {
            self.write(cmd)
                .await?
                .ok_or_else(|| ClientError::Unavailable("write produced no event".into()))
        })
    }

    fn delete(
        &self,
        key: &str,
        recursive: bool,
        prev: Precondition,
    ) -> BoxFuture<'_, Result<Event, ClientError>> {
        let cmd = Command::Delete {
            key: key.to_string(),
            dir: recursive,
            recursive,
            prev,
        };
        Box::pin(async move {
            self.write(cmd)
                .await?
                .ok_or_else(|| ClientError::Unavailable("write produced no event".into()))
        })
    }

    fn watch(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
    ) -> BoxFuture<'_, Result<Event, ClientError>> {
        let key = crate::kv::path::clean(key);
        Box::pin(async move {
            self.raft
                .shared
                .next_event(&key, recursive, since)
                .await
                .map_err(|e: StoreError| ClientError::Store(e))
        })
    }
}
