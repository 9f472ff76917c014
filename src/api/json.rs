//! etcd's JSON shapes. `ttl` is computed here, from the reader's wall clock.

use crate::kv::{Event, NodeView, StoreError};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonNode {
    #[serde(skip_serializing_if = "String::is_empty")]
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dir: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<Vec<JsonNode>>,
    #[serde(skip_serializing_if = "is_zero")]
    modified_index: u64,
    #[serde(skip_serializing_if = "is_zero")]
    created_index: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonEvent {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<JsonNode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_node: Option<JsonNode>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonError<'a> {
    error_code: u32,
    message: &'a str,
    cause: &'a str,
    index: u64,
}

/// Go's `time.RFC3339Nano`: UTC, fractional seconds without trailing zeros.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let s = humantime::format_rfc3339_nanos(t).to_string();
    match s.split_once('.') {
        Some((secs, frac)) => {
            let frac = frac.trim_end_matches('Z').trim_end_matches('0');
            if frac.is_empty() {
                format!("{secs}Z")
            } else {
                format!("{secs}.{frac}Z")
            }
        }
        None => s,
    }
}

/// Seconds left, rounded up, as etcd computes it.
pub fn ttl_secs(expire_ms: u64, now_ms: u64) -> i64 {
    let left = expire_ms as i64 - now_ms as i64;
    left.div_euclid(1000) + i64::from(left.rem_euclid(1000) > 0)
}

fn node(v: &NodeView, now_ms: u64) -> JsonNode {
    JsonNode {
        // etcd shows the root without a key.
        key: if v.key == "/" {
            String::new()
        } else {
            v.key.clone()
        },
        value: v.value.clone(),
        dir: v.dir,
        expiration: v.expire_ms.map(rfc3339),
        // etcd omits a ttl that has run down to zero (or past it).
        ttl: v.expire_ms.map(|e| ttl_secs(e, now_ms)).filter(|t| *t > 0),
        nodes: v
            .nodes
            .as_ref()
            .filter(|n| !n.is_empty())
            .map(|ns| ns.iter().map(|n| node(n, now_ms)).collect()),
        modified_index: v.modified_index,
        created_index: v.created_index,
    }
}

pub fn event(e: &Event, now_ms: u64, no_value: bool) -> Vec<u8> {
    let j = JsonEvent {
        action: e.action.as_str(),
        node: (!no_value).then(|| node(&e.node, now_ms)),
        prev_node: e
            .prev_node
            .as_ref()
            .filter(|_| !no_value)
            .map(|p| node(p, now_ms)),
    };
    let mut out = serde_json::to_vec(&j).expect("event serializes");
    out.push(b'\n');
    out
}

pub fn error(e: &StoreError) -> Vec<u8> {
    let j = JsonError {
        error_code: e.code,
        message: e.message(),
        cause: &e.cause,
        index: e.index,
    };
    let mut out = serde_json::to_vec(&j).expect("error serializes");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ttls_match_go() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.5Z");
        assert_eq!(ttl_secs(10_000, 0), 10);
        assert_eq!(ttl_secs(10_001, 0), 11);
        assert_eq!(ttl_secs(10_000, 9_999), 1);
    }
}
