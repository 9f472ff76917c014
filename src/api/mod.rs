//! The client HTTP API (etcd v2 shapes).
//!
//! # Layout
//! - [`params`]: query/form parsing and validation (etcd's 2xx error codes).
//! - [`render`]: etcd's JSON shapes, `ttl` from the reader's clock.
//! - [`keys`]: `/v2/keys` — reads from the local store (or after a ReadIndex barrier with
//!   `quorum=true`), writes through Raft, watches from the store's history.
//! - this file: routing, `/health`, `/version`, `/v2/members`, common headers.
//!
//! Handlers take whole requests and return whole responses; the server that moves the
//! bytes lives in `flotilla_shims::http`.

pub mod keys;
pub mod members;
pub mod params;
pub mod render;

use crate::raft::RaftHandle;
use bytes::Bytes;
use flotilla_shims::http::{full, Body, Handler};
use flotilla_shims::Clock;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;
use std::sync::Arc;

pub type Reply = Response<Body>;

pub const VERSION_SERVER: &str = "3.4.23";
pub const VERSION_CLUSTER: &str = "3.4.0";

pub struct Api {
    pub raft: RaftHandle,
    pub clock: Arc<dyn Clock>,
    pub cluster_id: u64,
    pub value_bytes_max: usize,
}

impl Api {
    pub fn into_handler(self) -> Handler {
        let api = Arc::new(self);
        Arc::new(move |req| {
            let api = api.clone();
            Box::pin(async move { api.route(req).await })
        })
    }

    async fn route(&self, req: Request<Bytes>) -> Reply {
        let raw_path = req.uri().path().to_string();
        let path = percent_encoding::percent_decode_str(&raw_path)
            .decode_utf8_lossy()
            .into_owned();
        if let Some(key) = path.strip_prefix("/v2/keys") {
            if key.is_empty() || key.starts_with('/') {
                let key = if key.is_empty() { "/" } else { key };
                return self.keys(&req, key).await;
            }
        }
        if let Some(rest) = path.strip_prefix("/v2/members") {
            if rest.is_empty() || rest.starts_with('/') {
                return self.members(&req, rest).await;
            }
        }
        match (req.method(), path.as_str()) {
            (&Method::GET, "/health") => self.health(),
            (&Method::GET, "/version") => {
                let body = format!(
                    r#"{{"etcdserver":"{VERSION_SERVER}","etcdcluster":"{VERSION_CLUSTER}"}}"#
                );
                self.reply(StatusCode::OK, body.into_bytes(), None)
            }
            (&Method::GET, "/v2/stats/self") => self.stats_self(),
            _ => self.reply(
                StatusCode::NOT_FOUND,
                b"404 page not found\n".to_vec(),
                None,
            ),
        }
    }

    fn health(&self) -> Reply {
        // etcd 3.4 writes these bodies without a trailing newline.
        if self.raft.shared.status().leader != 0 {
            self.reply(StatusCode::OK, br#"{"health":"true"}"#.to_vec(), None)
        } else {
            self.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"health":"false"}"#.to_vec(),
                None,
            )
        }
    }

    fn stats_self(&self) -> Reply {
        let st = self.raft.shared.status().clone();
        let name = self
            .raft
            .shared
            .machine()
            .members
            .get(&st.id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let state = if st.is_leader {
            "StateLeader"
        } else {
            "StateFollower"
        };
        self.json(
            StatusCode::OK,
            json!({
                "name": name,
                "id": format!("{:x}", st.id),
                "state": state,
                "leaderInfo": { "leader": format!("{:x}", st.leader) },
                "raftTerm": st.term,
                "raftCommit": st.commit,
                "snapshotIndex": st.snapshot_index,
            }),
        )
    }

    fn json(&self, status: StatusCode, v: serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec(&v).expect("json serializes");
        body.push(b'\n');
        self.reply(status, body, None)
    }

    /// A response with etcd's headers. `etcd_index` adds the keys-API headers.
    fn reply(&self, status: StatusCode, body: Vec<u8>, etcd_index: Option<u64>) -> Reply {
        let mut r = full(status, body);
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("X-Etcd-Cluster-Id", hv(format!("{:x}", self.cluster_id)));
        if let Some(i) = etcd_index {
            let st = self.raft.shared.status().clone();
            h.insert("X-Etcd-Index", hv(i.to_string()));
            h.insert("X-Raft-Index", hv(st.commit.to_string()));
            h.insert("X-Raft-Term", hv(st.term.to_string()));
        }
        r
    }
}

fn hv(s: String) -> HeaderValue {
    HeaderValue::from_str(&s).expect("header values here are ASCII digits")
}
