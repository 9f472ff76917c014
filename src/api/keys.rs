//! `/v2/keys`: turns HTTP requests into store reads and Raft writes.

use super::params::{KeyRequest, Params};
use super::{json, Api, Reply};
use crate::kv::error::*;
use crate::kv::{Action, Command, Event, Precondition, StoreError};
use crate::raft::ProposeError;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};

impl Api {
    pub(super) async fn keys(&self, req: &Request<Bytes>, key: &str) -> Reply {
        let method = req.method().clone();
        if !matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::POST | Method::DELETE
        ) {
            return self.not_allowed("HEAD,GET,PUT,POST,DELETE");
        }
        let body = matches!(method, Method::PUT | Method::POST).then(|| req.body().as_ref());
        let params = Params::parse(req.uri().query(), body);
        let r = match KeyRequest::parse(&params, &method) {
            Ok(kr) if !self.may_touch(req, key, kr.recursive, kr.wait) => {
                Err(StoreError::new(UNAUTHORIZED, "Insufficient credentials", 0))
            }
            Ok(kr) => match method {
                Method::PUT => self.put(key, &kr).await,
                Method::POST => self.post(key, &kr).await,
                Method::DELETE => self.delete(key, &kr).await,
                _ => self.get(key, &kr).await,
            },
            Err(e) => Err(e),
        };
        match r {
            Ok(reply) => reply,
            Err(e) => self.error_reply(&e),
        }
    }

    /// Auth records are never keys; with auth enabled, the caller's roles must reach `key`.
    /// (The root's listings skip hidden `_` names, so only a recursive read naming a
    /// hidden directory above the records could reach them; a watch there is fine, its
    /// events never include them — see `History::scan`.)
    fn may_touch(&self, req: &Request<Bytes>, key: &str, recursive: bool, watch: bool) -> bool {
        let clean = crate::kv::path::clean(key);
        let auth_dir = crate::auth::PREFIX;
        let inside = clean == auth_dir || clean.starts_with(&format!("{auth_dir}/"));
        let above = recursive
            && !watch
            && clean != "/"
            && auth_dir
                .strip_prefix(clean.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        !inside && !above && self.key_access(req, key, recursive)
    }

    async fn get(&self, key: &str, kr: &KeyRequest) -> Result<Reply, StoreError> {
        if kr.wait && kr.stream {
            return self.stream_watch(crate::kv::path::clean(key), kr.recursive, kr.wait_index);
        }
        if kr.wait {
            return self.watch(key, kr.recursive, kr.wait_index).await;
        }
        if kr.quorum {
            self.raft
                .read_barrier()
                .await
                .map_err(|e| self.propose_error(e))?;
        }
        // Children are kept sorted, so `sorted` needs no work.
        let got = self.raft.shared.machine().store.get(key, kr.recursive);
        {
            let mut st = self.raft.shared.store_stats();
            match &got {
                Ok(_) => st.gets_success += 1,
                Err(_) => st.gets_fail += 1,
            }
        }
        let ev = got?;
        Ok(self.event_reply(StatusCode::OK, &ev, false, ev.index))
    }

    async fn watch(
        &self,
        key: &str,
        recursive: bool,
        since: Option<u64>,
    ) -> Result<Reply, StoreError> {
        let key = crate::kv::path::clean(key);
        let _watching = WatcherCount::new(&self.raft.shared);
        let start = self.raft.shared.machine().store.index();
        // As etcd: no waitIndex, or 0, watches from the next change.
        let since = since.filter(|i| *i > 0).unwrap_or(start + 1);
        let ev = self.raft.shared.next_event(&key, recursive, since).await?;
        // As etcd: the header carries the index when the watch began.
        Ok(self.event_reply(StatusCode::OK, &ev, false, start))
    }

    fn expiry(&self, kr: &KeyRequest) -> Option<u64> {
        // As etcd: the node taking the request fixes the absolute expiration; ttl=0
        // expires at once.
        kr.ttl.map(|s| {
            self.clock
                .now_wall_ms()
                .saturating_add(s.saturating_mul(1000))
        })
    }

    fn precondition(kr: &KeyRequest) -> Precondition {
        Precondition {
            exist: kr.prev_exist,
            value: kr.prev_value.clone(),
            index: kr.prev_index,
        }
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

    async fn put(&self, key: &str, kr: &KeyRequest) -> Result<Reply, StoreError> {
        let value = kr.value.clone().unwrap_or_default();
        self.check_value(&value)?;
        let cmd = Command::Put {
            key: key.to_string(),
            value,
            dir: kr.dir,
            expire_ms: self.expiry(kr),
            refresh: kr.refresh,
            prev: Self::precondition(kr),
        };
        self.write(cmd, kr.no_value_on_success).await
    }

    async fn post(&self, key: &str, kr: &KeyRequest) -> Result<Reply, StoreError> {
        let value = kr.value.clone().unwrap_or_default();
        self.check_value(&value)?;
        let cmd = Command::CreateInOrder {
            dir: key.to_string(),
            value,
            expire_ms: self.expiry(kr),
        };
        self.write(cmd, kr.no_value_on_success).await
    }

    async fn delete(&self, key: &str, kr: &KeyRequest) -> Result<Reply, StoreError> {
        let cmd = Command::Delete {
            key: key.to_string(),
            dir: kr.dir,
            recursive: kr.recursive,
            prev: Self::precondition(kr),
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
        Ok(self.event_reply(status, &ev, no_value, ev.index))
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

    fn event_reply(
        &self,
        status: StatusCode,
        ev: &Event,
        no_value: bool,
        etcd_index: u64,
    ) -> Reply {
        let body = json::event(ev, self.clock.now_wall_ms(), no_value);
        self.reply(status, body, Some(etcd_index))
    }

    /// etcd writes the error's own index (0 for a bad request) into `X-Etcd-Index`, and
    /// no Raft headers: an error is not a point in the log.
    pub(super) fn error_reply(&self, e: &StoreError) -> Reply {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = self.reply(status, json::error(e), None);
        let index = HeaderValue::from_str(&e.index.to_string()).expect("digits");
        r.headers_mut().insert("X-Etcd-Index", index);
        r
    }
}

/// Counts a waiting watcher for `/v2/stats/store` while it lives.
struct WatcherCount<'a>(&'a crate::raft::Shared);

impl<'a> WatcherCount<'a> {
    fn new(shared: &'a crate::raft::Shared) -> Self {
        shared.store_stats().watchers += 1;
        Self(shared)
    }
}

impl Drop for WatcherCount<'_> {
    fn drop(&mut self) {
        let mut st = self.0.store_stats();
        st.watchers = st.watchers.saturating_sub(1);
    }
}
