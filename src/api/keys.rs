//! `/v2/keys`: turns HTTP requests into store reads and Raft writes.

use super::params::Params;
use super::{render, Api, Reply};
use crate::kv::error::*;
use crate::kv::{Action, Command, Event, Precondition, StoreError};
use crate::raft::ProposeError;
use bytes::Bytes;
use http::{Method, Request, StatusCode};

impl Api {
    pub(super) async fn keys(&self, req: &Request<Bytes>, key: &str) -> Reply {
        let body = matches!(*req.method(), Method::PUT | Method::POST).then(|| req.body().as_ref());
        let params = Params::parse(req.uri().query(), body);
        let r = match *req.method() {
            Method::GET | Method::HEAD => self.get(key, &params).await,
            Method::PUT => self.put(key, &params).await,
            Method::POST => self.post(key, &params).await,
            Method::DELETE => self.delete(key, &params).await,
            _ => {
                return self.reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    b"Method Not Allowed\n".to_vec(),
                    None,
                )
            }
        };
        match r {
            Ok(reply) => reply,
            Err(e) => self.error_reply(&e),
        }
    }

    async fn get(&self, key: &str, p: &Params) -> Result<Reply, StoreError> {
        let recursive = p.bool("recursive")?;
        let _sorted = p.bool("sorted")?; // children are always kept sorted
        let quorum = p.bool("quorum")?;
        if p.bool("wait")? {
            let since = p.index("waitIndex")?;
            return self.watch(key, recursive, since).await;
        }
        if quorum {
            self.raft
                .read_barrier()
                .await
                .map_err(|e| self.propose_error(e))?;
        }
        let ev = self.raft.shared.machine().store.get(key, recursive)?;
        Ok(self.event_reply(StatusCode::OK, &ev, false))
    }

    async fn watch(
        &self,
        key: &str,
        recursive: bool,
        since: Option<u64>,
    ) -> Result<Reply, StoreError> {
        let key = crate::kv::path::clean(key);
        let mut changes = self.raft.shared.subscribe();
        let since = match since {
            Some(i) => i,
            None => self.raft.shared.machine().store.index() + 1,
        };
        loop {
            {
                let m = self.raft.shared.machine();
                if let Some(ev) = m
                    .store
                    .history()
                    .scan(&key, recursive, since, m.store.index())?
                {
                    let ev = ev.clone();
                    drop(m);
                    return Ok(self.event_reply(StatusCode::OK, &ev, false));
                }
            }
            if changes.changed().await.is_err() {
                return Err(StoreError::new(RAFT_INTERNAL, "node is stopping", 0));
            }
        }
    }

    fn expiry(&self, p: &Params) -> Result<(Option<u64>, bool), StoreError> {
        let ttl = p.ttl()?;
        let expire_ms = match ttl {
            Some(Some(s)) if s > 0 => Some(
                self.clock
                    .now_wall_ms()
                    .saturating_add(s.saturating_mul(1000)),
            ),
            _ => None,
        };
        Ok((expire_ms, ttl.is_some()))
    }

    fn precondition(&self, p: &Params) -> Result<Precondition, StoreError> {
        if p.get("prevValue") == Some("") {
            return Err(StoreError::new(
                PREV_VALUE_REQUIRED,
                "prevValue cannot be empty",
                0,
            ));
        }
        Ok(Precondition {
            exist: p.opt_bool("prevExist")?,
            value: p.get("prevValue").unwrap_or_default().to_string(),
            index: p.index("prevIndex")?.unwrap_or(0),
        })
    }

    fn check_value(&self, value: &str) -> Result<(), StoreError> {
        if value.len() > self.value_bytes_max {
            return Err(StoreError::new(
                VALUE_TOO_LARGE,
                format!(
                    "value is {} bytes; the limit is {}",
                    value.len(),
                    self.value_bytes_max
                ),
                0,
            ));
        }
        Ok(())
    }

    async fn put(&self, key: &str, p: &Params) -> Result<Reply, StoreError> {
        let refresh = p.bool("refresh")?;
        let dir = p.bool("dir")?;
        let (expire_ms, ttl_given) = self.expiry(p)?;
        let prev = self.precondition(p)?;
        let no_value = p.bool("noValueOnSuccess")?;
        if refresh {
            if p.has("value") {
                return Err(StoreError::new(
                    REFRESH_VALUE,
                    "A value was provided on a refresh",
                    0,
                ));
            }
            if !ttl_given {
                return Err(StoreError::new(REFRESH_TTL_REQUIRED, "No TTL value set", 0));
            }
        }
        let value = p.get("value").unwrap_or_default().to_string();
        self.check_value(&value)?;
        let cmd = Command::Put {
            key: key.to_string(),
            value,
            dir,
            expire_ms,
            refresh,
            prev,
        };
        self.write(cmd, no_value).await
    }

    async fn post(&self, key: &str, p: &Params) -> Result<Reply, StoreError> {
        let (expire_ms, _) = self.expiry(p)?;
        let no_value = p.bool("noValueOnSuccess")?;
        let value = p.get("value").unwrap_or_default().to_string();
        self.check_value(&value)?;
        let cmd = Command::CreateInOrder {
            dir: key.to_string(),
            value,
            expire_ms,
        };
        self.write(cmd, no_value).await
    }

    async fn delete(&self, key: &str, p: &Params) -> Result<Reply, StoreError> {
        let cmd = Command::Delete {
            key: key.to_string(),
            dir: p.bool("dir")?,
            recursive: p.bool("recursive")?,
            prev: self.precondition(p)?,
        };
        self.write(cmd, false).await
    }

    async fn write(&self, cmd: Command, no_value: bool) -> Result<Reply, StoreError> {
        let out = self
            .raft
            .write(cmd)
            .await
            .map_err(|e| self.propose_error(e))?;
        let ev = out.result?.expect("client commands produce an event");
        let created =
            ev.action == Action::Create || (ev.action == Action::Set && ev.prev_node.is_none());
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(self.event_reply(status, &ev, no_value))
    }

    fn propose_error(&self, e: ProposeError) -> StoreError {
        let index = self.raft.shared.machine().store.index();
        match e {
            ProposeError::NoLeader => StoreError::new(LEADER_ELECT, "no leader", index),
            ProposeError::Timeout => {
                StoreError::new(RAFT_INTERNAL, "etcdserver: request timed out", index)
            }
            other => StoreError::new(RAFT_INTERNAL, other.to_string(), index),
        }
    }

    fn event_reply(&self, status: StatusCode, ev: &Event, no_value: bool) -> Reply {
        let body = render::event(ev, self.clock.now_wall_ms(), no_value);
        self.reply(status, body, Some(ev.index))
    }

    pub(super) fn error_reply(&self, e: &StoreError) -> Reply {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let idx = self.raft.shared.machine().store.index();
        self.reply(status, render::error(e), Some(idx))
    }
}
