//! The tree of files and directories.
//!
//! Laid out for memory, since the whole store is resident: child names are inline
//! strings (no heap allocation up to 24 bytes), a file's value is a boxed `str` and a
//! directory's children sit behind a box, so a [`Node`] is 48 bytes. Measured with 300,000
//! keys of 100-byte values: ~300 -> ~240 bytes per key (resident).
//!
//! A directory's children are a persistent B+tree ([`imbl::OrdMap`]): cloning the whole
//! tree costs one allocation, and the clone shares every node until one side writes to
//! it. That is what lets a snapshot be encoded off the event loop from a clone taken
//! on it (see the Raft driver), instead of holding the loop for time in proportion to
//! the store. It serializes exactly as a `BTreeMap` does (a map, in key order).

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// A directory's children by name.
pub type Children = imbl::OrdMap<CompactString, Node>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File(Box<str>),
    Dir(#[serde(deserialize_with = "grown::children")] Box<Children>),
}

/// Decoding imbl's collections one entry at a time. imbl's own visitors reserve the
/// length a snapshot claims before reading a single entry, so a corrupt length aborted
/// the process (found by the snapshot fuzz target); these grow with what is really there.
pub mod grown {
    use super::{Children, CompactString, Node};
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    struct ChildrenVisitor;

    impl<'de> Visitor<'de> for ChildrenVisitor {
        type Value = Box<Children>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a directory's children")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut m = Children::new();
            while let Some((k, v)) = a.next_entry::<CompactString, Node>()? {
                m.insert(k, v);
            }
            Ok(Box::new(m))
        }
    }

    pub fn children<'de, D: Deserializer<'de>>(d: D) -> Result<Box<Children>, D::Error> {
        d.deserialize_map(ChildrenVisitor)
    }

    struct SetVisitor;

    impl<'de> Visitor<'de> for SetVisitor {
        type Value = imbl::OrdSet<(u64, String)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a set of expirations")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut s = imbl::OrdSet::new();
            while let Some(v) = a.next_element::<(u64, String)>()? {
                s.insert(v);
            }
            Ok(s)
        }
    }

    pub fn ttls<'de, D: Deserializer<'de>>(d: D) -> Result<imbl::OrdSet<(u64, String)>, D::Error> {
        d.deserialize_seq(SetVisitor)
    }
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
            kind: Kind::File(value.into_boxed_str()),
        }
    }

    pub fn dir(index: u64, expire_ms: Option<u64>) -> Self {
        Self {
            created_index: index,
            modified_index: index,
            expire_ms,
            kind: Kind::Dir(Box::default()),
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

    pub fn children(&self) -> Option<&Children> {
        match &self.kind {
            Kind::Dir(c) => Some(c),
            Kind::File(_) => None,
        }
    }

    pub fn children_mut(&mut self) -> Option<&mut Children> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_stay_small() {
        // Every key costs one of these (plus its name and value): keep it compact.
        assert_eq!(std::mem::size_of::<Node>(), 48);
        assert_eq!(std::mem::size_of::<CompactString>(), 24);
    }
}
