//! A subtree of the store kept in memory: the keys under one root with their values and
//! expirations, loaded from a recursive read and moved on by the watch's events — pure.

use crate::kv::{Action, Event, NodeView};
use std::collections::BTreeMap;

/// A key's value and when it expires (the store's wall-clock ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub value: String,
    pub expire_ms: Option<u64>,
}

/// The leaves under `root`, by full key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirror {
    pub root: String,
    pub leaves: BTreeMap<String, Leaf>,
}

/// Keys under `dir` (not `dir` itself) sort after `dir/` and before `dir0` ('/' + 1).
fn subtree_end(dir: &str) -> String {
    format!("{dir}0")
}

impl Mirror {
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_end_matches('/').to_string(),
            leaves: BTreeMap::new(),
        }
    }

    /// Replaces everything with what a recursive read of the root returned.
    pub fn load(&mut self, node: Option<&NodeView>) {
        self.leaves.clear();
        if let Some(n) = node {
            self.add(n);
        }
    }

    fn add(&mut self, n: &NodeView) {
        match (&n.value, &n.nodes) {
            (Some(v), _) if !n.dir => {
                let leaf = Leaf {
                    value: v.clone(),
                    expire_ms: n.expire_ms,
                };
                self.leaves.insert(n.key.clone(), leaf);
            }
            (_, Some(children)) => children.iter().for_each(|c| self.add(c)),
            _ => {}
        }
    }

    /// Applies one watch event on the root.
    pub fn apply(&mut self, ev: &Event) {
        let n = &ev.node;
        match ev.action {
            Action::Delete | Action::Expire | Action::CompareAndDelete => self.remove_tree(&n.key),
            Action::Set | Action::Create | Action::Update | Action::CompareAndSwap => {
                if let (Some(v), false) = (&n.value, n.dir) {
                    let leaf = Leaf {
                        value: v.clone(),
                        expire_ms: n.expire_ms,
                    };
                    self.leaves.insert(n.key.clone(), leaf);
                }
            }
            Action::Get => {}
        }
    }

    fn remove_tree(&mut self, key: &str) {
        self.leaves.remove(key);
        let dir = format!("{}/", key.trim_end_matches('/'));
        let doomed: Vec<String> = self.under(&dir).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.leaves.remove(&k);
        }
    }

    /// The leaves whose keys start with `prefix` (a directory ends it with '/').
    pub fn under<'a>(&'a self, prefix: &str) -> impl Iterator<Item = (&'a String, &'a Leaf)> {
        let end = match prefix.strip_suffix('/') {
            Some(dir) => subtree_end(dir),
            None => format!("{prefix}\u{10ffff}"),
        };
        self.leaves.range(prefix.to_string()..end)
    }
}

impl Leaf {
    /// Whole seconds left before the key expires (at least 1: a key is here until the
    /// store's expire event removes it, and a refresh moves its expiry without telling
    /// watchers, as in etcd).
    pub fn ttl_s(&self, now_ms: u64) -> Option<u32> {
        let left_ms = self.expire_ms?.saturating_sub(now_ms);
        Some(left_ms.div_ceil(1000).clamp(1, u32::MAX as u64) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, value: Option<&str>, nodes: Option<Vec<NodeView>>) -> NodeView {
        NodeView {
            key: key.into(),
            value: value.map(String::from),
            dir: value.is_none(),
            expire_ms: None,
            nodes,
            modified_index: 1,
            created_index: 1,
        }
    }

    fn ev(action: Action, key: &str, value: Option<&str>) -> Event {
        Event {
            action,
            node: node(key, value, None),
            prev_node: None,
            index: 2,
            refresh: false,
        }
    }

    #[test]
    fn a_read_then_events_keep_the_leaves() {
        let mut m = Mirror::new("/skydns");
        let tree = node(
            "/skydns",
            None,
            Some(vec![node(
                "/skydns/local",
                None,
                Some(vec![
                    node("/skydns/local/a", Some("1"), None),
                    node("/skydns/local/a0", Some("x"), None),
                    node(
                        "/skydns/local/b",
                        None,
                        Some(vec![node("/skydns/local/b/1", Some("2"), None)]),
                    ),
                ]),
            )]),
        );
        m.load(Some(&tree));
        assert_eq!(m.leaves.len(), 3);
        m.apply(&ev(Action::Set, "/skydns/local/c", Some("3")));
        m.apply(&ev(Action::Delete, "/skydns/local/b", None));
        m.apply(&ev(Action::Expire, "/skydns/local/a", None));
        let keys: Vec<&str> = m.leaves.keys().map(String::as_str).collect();
        // Deleting `a` leaves `a0`, a sibling whose name only starts the same.
        assert_eq!(keys, ["/skydns/local/a0", "/skydns/local/c"]);
        let under: Vec<&String> = m.under("/skydns/local/").map(|(k, _)| k).collect();
        assert_eq!(under.len(), 2);
        m.load(None);
        assert!(m.leaves.is_empty());
    }

    #[test]
    fn a_leaf_counts_its_ttl_down_to_one_second_until_the_store_expires_it() {
        let leaf = |expire_ms| Leaf {
            value: "v".into(),
            expire_ms,
        };
        assert_eq!(leaf(Some(10_500)).ttl_s(5_000), Some(6));
        assert_eq!(leaf(Some(1_000)).ttl_s(9_000), Some(1));
        assert_eq!(leaf(None).ttl_s(9_000), None);
    }
}
