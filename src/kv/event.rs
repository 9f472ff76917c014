//! What writes produce, and the bounded history watches read.

use super::error::{StoreError, EVENT_INDEX_CLEARED};
use super::node::Node;
use super::path;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Get,
    Set,
    Create,
    Update,
    Delete,
    CompareAndSwap,
    CompareAndDelete,
    Expire,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::Set => "set",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::CompareAndSwap => "compareAndSwap",
            Action::CompareAndDelete => "compareAndDelete",
            Action::Expire => "expire",
        }
    }
}

/// A node as a response shows it. `ttl` is not stored: it depends on the reader's clock
/// and is computed when the response is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub key: String,
    pub value: Option<String>,
    pub dir: bool,
    pub expire_ms: Option<u64>,
    pub nodes: Option<Vec<NodeView>>,
    pub modified_index: u64,
    pub created_index: u64,
}

impl NodeView {
    /// A view without children (etcd's `Repr(false, false)`, used for `prevNode`).
    pub fn shallow(key: &str, n: &Node) -> Self {
        Self {
            key: key.to_string(),
            value: (!n.is_dir()).then(|| n.value().to_string()),
            dir: n.is_dir(),
            expire_ms: n.expire_ms,
            nodes: None,
            modified_index: n.modified_index,
            created_index: n.created_index,
        }
    }

    /// A view listing children: one level, or all of them with `recursive`. Hidden
    /// children are left out; children come sorted by key.
    pub fn listing(key: &str, n: &Node, recursive: bool) -> Self {
        let mut v = Self::shallow(key, n);
        if let Some(children) = n.children() {
            let nodes = children
                .iter()
                .filter(|(name, _)| !path::is_hidden(name))
                .map(|(name, child)| {
                    let k = path::join(key, name);
                    if recursive {
                        Self::listing(&k, child, true)
                    } else {
                        Self::shallow(&k, child)
                    }
                })
                .collect();
            v.nodes = Some(nodes);
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub action: Action,
    pub node: NodeView,
    pub prev_node: Option<NodeView>,
    /// The store index after this event (etcd's `X-Etcd-Index`).
    pub index: u64,
    /// Refresh events are kept in history but wake no watcher.
    pub refresh: bool,
}

/// Does `k`, below the watched `key`, pass through a hidden (`_`) name on the way?
fn hidden_below(key: &str, k: &str) -> bool {
    let rest = if key == "/" { k } else { &k[key.len()..] };
    rest.contains("/_")
}

/// The last `cap` events, indexed by store index. Every store index from `start` on has
/// exactly one event, so lookups are arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    cap: usize,
    events: VecDeque<Event>,
}

impl History {
    pub fn new(cap: usize) -> Self {
        assert!(cap > 0);
        Self {
            cap,
            events: VecDeque::with_capacity(cap),
        }
    }

    pub fn push(&mut self, e: Event) {
        if let Some(last) = self.events.back() {
            assert_eq!(last.index + 1, e.index, "history must be gapless");
        }
        if self.events.len() == self.cap {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    pub fn oldest_index(&self) -> Option<u64> {
        self.events.front().map(|e| e.index)
    }

    /// The first event at or after `since` that concerns `key` (its subtree with
    /// `recursive`). `Ok(None)` means none yet: wait. Error 401 when `since` has been
    /// pushed out of the window.
    pub fn scan(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
        current: u64,
    ) -> Result<Option<&Event>, StoreError> {
        let Some(start) = self.oldest_index() else {
            return Ok(None);
        };
        if since < start {
            let cause = format!("the requested history has been cleared [{start}/{since}]");
            return Err(StoreError::new(EVENT_INDEX_CLEARED, cause, current));
        }
        let prefix = if key == "/" {
            "/".to_string()
        } else {
            format!("{key}/")
        };
        let skip = (since - start) as usize;
        let sealed = format!("{}/", crate::auth::PREFIX);
        let watching_sealed = key.starts_with(&sealed) || key == crate::auth::PREFIX;
        Ok(self.events.iter().skip(skip).find(|e| {
            if e.refresh {
                return false;
            }
            let k = &e.node.key;
            // Users and roles are records, not keys: no watch above them sees them.
            if !watching_sealed && k.starts_with(&sealed) {
                return false;
            }
            // etcd's isHidden: a recursive watch does not see `_` names below it.
            let below = recursive && k.starts_with(&prefix) && !hidden_below(key, k);
            let mut ok = k == key || below;
            if matches!(e.action, Action::Delete | Action::Expire) {
                if let Some(p) = &e.prev_node {
                    ok |= p.dir && key.starts_with(&format!("{}/", p.key));
                }
            }
            ok
        }))
    }
}
