//! The tree of files and directories.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File(String),
    Dir(BTreeMap<String, Node>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub created_index: u64,
    pub modified_index: u64,
    pub expire_ms: Option<u64>,
    pub kind: Kind,
}

impl Node {
    pub fn file(value: String, index: u64, expire_ms: Option<u64>) -> Self {
        Self {
            created_index: index,
            modified_index: index,
            expire_ms,
            kind: Kind::File(value),
        }
    }

    pub fn dir(index: u64, expire_ms: Option<u64>) -> Self {
        Self {
            created_index: index,
            modified_index: index,
            expire_ms,
            kind: Kind::Dir(BTreeMap::new()),
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    pub fn value(&self) -> &str {
        match &self.kind {
            Kind::File(v) => v,
            Kind::Dir(_) => "",
        }
    }

    pub fn children(&self) -> Option<&BTreeMap<String, Node>> {
        match &self.kind {
            Kind::Dir(c) => Some(c),
            Kind::File(_) => None,
        }
    }

    pub fn children_mut(&mut self) -> Option<&mut BTreeMap<String, Node>> {
        match &mut self.kind {
            Kind::Dir(c) => Some(c),
            Kind::File(_) => None,
        }
    }

    /// Calls `f(path, expire_ms)` for this node and every descendant that has a TTL.
    pub fn for_each_ttl(&self, path: &str, f: &mut impl FnMut(&str, u64)) {
        if let Some(e) = self.expire_ms {
            f(path, e);
        }
        if let Some(children) = self.children() {
            for (name, child) in children {
                child.for_each_ttl(&super::path::join(path, name), f);
            }
        }
    }
}
