//! [`KvClient`] over etcd's v2 HTTP API: for machines that are not members (`flotilla
//! agent`), the renderer and the CLIs — against flotilla or a real etcd. Endpoints are
//! tried in turn; a request that gets no answer moves on to the next.

use super::endpoints::{key_path, query_value, Endpoints};
use super::{ClientError, Got, KvClient, SetOpts};
use crate::kv::{Action, Event, NodeView, Precondition, StoreError};
use bytes::Bytes;
use flotilla_shims::http::{ClientResponse, RequestError};
use flotilla_shims::BoxFuture;
use serde_json::Value;
use std::time::Duration;

/// How long a watch waits for an event before asking again.
pub const WATCH_POLL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct HttpKv {
    endpoints: Endpoints,
    timeout: Duration,
}

impl HttpKv {
    pub fn new(endpoints: Endpoints, timeout: Duration) -> Self {
        Self { endpoints, timeout }
    }

    /// One request by the endpoints' failover rule.
    async fn call(
        &self,
        method: &str,
        path_query: &str,
        form: Option<String>,
        timeout: Duration,
    ) -> Result<ClientResponse, RequestError> {
        let body = form.map(|f| ("application/x-www-form-urlencoded", Bytes::from(f)));
        self.endpoints.call(method, path_query, body, timeout).await
    }

    /// [`HttpKv::call`], with no answer as the store being unavailable.
    async fn ask(
        &self,
        method: &str,
        path_query: &str,
        form: Option<String>,
    ) -> Result<ClientResponse, ClientError> {
        self.call(method, path_query, form, self.timeout)
            .await
            .map_err(|e| ClientError::Unavailable(e.to_string()))
    }
}

fn index_header(r: &ClientResponse) -> u64 {
    r.headers
        .get("x-etcd-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn body(r: &ClientResponse) -> Result<Value, ClientError> {
    serde_json::from_slice(&r.body).map_err(|e| {
        ClientError::Unavailable(format!("bad JSON from the store ({}): {e}", r.status))
    })
}

/// An etcd error body as a store error; anything else as unavailable.
fn error_of(r: &ClientResponse) -> ClientError {
    match body(r) {
        Ok(v) if v["errorCode"].is_u64() => ClientError::Store(StoreError::new(
            v["errorCode"].as_u64().unwrap_or(0) as u32,
            v["cause"].as_str().unwrap_or(""),
            v["index"].as_u64().unwrap_or(0),
        )),
        _ => ClientError::Unavailable(format!(
            "HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        )),
    }
}

/// etcd's `expiration` (RFC 3339, UTC) as wall-clock ms; DNS counts TTLs down with it.
fn expire_ms_of(expiration: Option<&str>) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(expiration?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// etcd's node JSON as a [`NodeView`].
pub fn node_of(v: &Value) -> NodeView {
    NodeView {
        key: v["key"].as_str().unwrap_or("/").to_string(),
        value: v["value"].as_str().map(String::from),
        dir: v["dir"].as_bool().unwrap_or(false),
        expire_ms: expire_ms_of(v["expiration"].as_str()),
        nodes: v["nodes"]
            .as_array()
            .map(|a| a.iter().map(node_of).collect()),
        modified_index: v["modifiedIndex"].as_u64().unwrap_or(0),
        created_index: v["createdIndex"].as_u64().unwrap_or(0),
    }
}

/// etcd's node JSON, decoded straight into owned fields: a recursive read of 10,000 keys
/// parses several times faster than through a `serde_json::Value` tree.
#[derive(serde::Deserialize)]
struct WireNode {
    #[serde(default = "root_key")]
    key: String,
    value: Option<String>,
    #[serde(default)]
    dir: bool,
    expiration: Option<String>,
    nodes: Option<Vec<WireNode>>,
    #[serde(rename = "modifiedIndex", default)]
    modified_index: u64,
    #[serde(rename = "createdIndex", default)]
    created_index: u64,
}

fn root_key() -> String {
    "/".into()
}

#[derive(serde::Deserialize)]
struct WireGet {
    node: WireNode,
}

impl From<WireNode> for NodeView {
    fn from(w: WireNode) -> Self {
        NodeView {
            key: w.key,
            value: w.value,
            dir: w.dir,
            expire_ms: expire_ms_of(w.expiration.as_deref()),
            nodes: w.nodes.map(|n| n.into_iter().map(NodeView::from).collect()),
            modified_index: w.modified_index,
            created_index: w.created_index,
        }
    }
}

fn action_of(s: &str) -> Action {
    match s {
        "get" => Action::Get,
        "create" => Action::Create,
        "update" => Action::Update,
        "delete" => Action::Delete,
        "compareAndSwap" => Action::CompareAndSwap,
        "compareAndDelete" => Action::CompareAndDelete,
        "expire" => Action::Expire,
        _ => Action::Set,
    }
}

fn event_of(v: &Value, index: u64) -> Event {
    let node = node_of(&v["node"]);
    Event {
        action: action_of(v["action"].as_str().unwrap_or("")),
        index: if node.modified_index > 0 {
            node.modified_index
        } else {
            index
        },
        prev_node: v.get("prevNode").map(node_of),
        node,
        refresh: false,
    }
}

fn prev_params(p: &Precondition, out: &mut Vec<(String, String)>) {
    if let Some(e) = p.exist {
        out.push(("prevExist".into(), e.to_string()));
    }
    if !p.value.is_empty() {
        out.push(("prevValue".into(), p.value.clone()));
    }
    if p.index != 0 {
        out.push(("prevIndex".into(), p.index.to_string()));
    }
}

fn query(params: &[(String, String)]) -> String {
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", query_value(k), query_value(v)))
        .collect();
    pairs.join("&")
}

impl KvClient for HttpKv {
    fn get(
        &self,
        key: &str,
        recursive: bool,
        quorum: bool,
    ) -> BoxFuture<'_, Result<Option<Got>, ClientError>> {
        let path = format!("{}?recursive={recursive}&quorum={quorum}", key_path(key));
        Box::pin(async move {
            let r = self.ask("GET", &path, None).await?;
            match r.status {
                200 => {
                    let got: WireGet = serde_json::from_slice(&r.body).map_err(|e| {
                        ClientError::Unavailable(format!("bad JSON from the store: {e}"))
                    })?;
                    Ok(Some(Got {
                        node: got.node.into(),
                        index: index_header(&r),
                    }))
                }
                404 => Ok(None),
                _ => Err(error_of(&r)),
            }
        })
    }

    fn set(
        &self,
        key: &str,
        value: &str,
        opts: SetOpts,
    ) -> BoxFuture<'_, Result<Event, ClientError>> {
        let mut params = vec![];
        if !opts.refresh {
            params.push(("value".to_string(), value.to_string()));
        }
        if let Some(t) = opts.ttl_s {
            params.push(("ttl".into(), t.to_string()));
        }
        if opts.dir {
            params.push(("dir".into(), "true".into()));
        }
        if opts.refresh {
            params.push(("refresh".into(), "true".into()));
        }
        prev_params(&opts.prev, &mut params);
        let path = key_path(key);
        Box::pin(async move {
            let r = self.ask("PUT", &path, Some(query(&params))).await?;
            match r.status {
                200 | 201 => Ok(event_of(&body(&r)?, index_header(&r))),
                _ => Err(error_of(&r)),
            }
        })
    }

    fn delete(
        &self,
        key: &str,
        recursive: bool,
        prev: Precondition,
    ) -> BoxFuture<'_, Result<Event, ClientError>> {
        let mut params = vec![];
        if recursive {
            params.push(("recursive".to_string(), "true".to_string()));
            params.push(("dir".into(), "true".into()));
        }
        prev_params(&prev, &mut params);
        let path = format!("{}?{}", key_path(key), query(&params));
        Box::pin(async move {
            let r = self.ask("DELETE", &path, None).await?;
            match r.status {
                200 => Ok(event_of(&body(&r)?, index_header(&r))),
                _ => Err(error_of(&r)),
            }
        })
    }

    fn watch(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
    ) -> BoxFuture<'_, Result<Event, ClientError>> {
        let path = format!(
            "{}?wait=true&recursive={recursive}&waitIndex={since}",
            key_path(key)
        );
        Box::pin(async move {
            loop {
                match self.call("GET", &path, None, WATCH_POLL).await {
                    Ok(r) if r.status == 200 => return Ok(event_of(&body(&r)?, index_header(&r))),
                    Ok(r) => return Err(error_of(&r)),
                    // A long poll that timed out with nothing to say: ask again.
                    Err(RequestError::TimedOut { .. }) => continue,
                    Err(e) => return Err(ClientError::Unavailable(e.to_string())),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_json_to_events() {
        let v: Value = serde_json::from_str(r#"{"action":"set","node":{"key":"/a","value":"1","modifiedIndex":7,"createdIndex":7},"prevNode":{"key":"/a","value":"0","modifiedIndex":3,"createdIndex":3}}"#).unwrap();
        let e = event_of(&v, 9);
        assert_eq!(
            (e.action, e.index, e.node.value.as_deref()),
            (Action::Set, 7, Some("1"))
        );
        assert_eq!(e.prev_node.unwrap().value.as_deref(), Some("0"));
        let d: Value = serde_json::from_str(r#"{"action":"get","node":{"key":"/d","dir":true,"nodes":[{"key":"/d/x","value":"v","modifiedIndex":2,"createdIndex":2}]}}"#).unwrap();
        let n = node_of(&d["node"]);
        assert!(n.dir);
        assert_eq!(n.nodes.unwrap()[0].key, "/d/x");
    }
}
