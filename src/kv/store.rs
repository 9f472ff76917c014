//! The store: a pure function from commands to results and events.

use super::command::{Command, Guard, Precondition};
use super::error::*;
use super::event::{Action, Event, History, NodeView};
use super::node::{Children, Kind, Node};
use super::path::{self, clean};
use super::HISTORY_EVENTS_MAX;
use imbl::ordmap::Entry;
use serde::{Deserialize, Serialize};

/// What applying one command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The client's answer: the event, or the etcd error. `Ok(None)` for commands no
    /// client waits on (expiry).
    pub result: Result<Option<Event>, StoreError>,
    /// Every event appended to the history, in order (watchers are woken by these).
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    root: Node,
    index: u64,
    history: History,
    /// (expiration ms, path) of every node with a TTL. Persistent, like the tree, so a
    /// transaction can keep the state it may have to return to at the cost of a pointer.
    #[serde(deserialize_with = "super::node::grown::ttls")]
    ttls: imbl::OrdSet<(u64, String)>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn split_parent(key: &str) -> (&str, &str) {
    let at = key.rfind('/').expect("cleaned keys are absolute");
    let parent = if at == 0 { "/" } else { &key[..at] };
    (parent, &key[at + 1..])
}

impl Store {
    pub fn new() -> Self {
        Self {
            root: Node::dir(0, None),
            index: 0,
            history: History::new(HISTORY_EVENTS_MAX),
            ttls: imbl::OrdSet::new(),
        }
    }

    /// The store index: the number of successful writes so far.
    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// The earliest expiration of any node, if some node has a TTL.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.ttls.get_min().map(|(t, _)| *t)
    }

    pub fn get(&self, key: &str, recursive: bool) -> Result<Event, StoreError> {
        let key = clean(key);
        let n = self.lookup(&key)?;
        Ok(Event {
            action: Action::Get,
            node: NodeView::listing(&key, n, recursive),
            prev_node: None,
            index: self.index,
            refresh: false,
        })
    }

    /// The node at `key`, if there is one: for in-process readers (the scheduler) that
    /// would otherwise copy a large directory into a view only to skip most of it.
    pub fn node(&self, key: &str) -> Option<&Node> {
        self.lookup(&clean(key)).ok()
    }

    pub fn apply(&mut self, cmd: &Command) -> Applied {
        let result = match cmd {
            Command::Put {
                key,
                value,
                dir,
                expire_ms,
                refresh,
                prev,
            } => self
                .put(&clean(key), value, *dir, *expire_ms, *refresh, prev)
                .map(Some),
            Command::CreateInOrder {
                dir,
                value,
                expire_ms,
            } => {
                let key = clean(&format!("{}/{:020}", clean(dir), self.index + 1));
                self.create(&key, false, value, *expire_ms, Action::Create, false)
                    .map(Some)
            }
            Command::Delete {
                key,
                dir,
                recursive,
                prev,
            } => self.delete(&clean(key), *dir, *recursive, prev).map(Some),
            Command::Expire { now_ms } => {
                return Applied {
                    result: Ok(None),
                    events: self.expire(*now_ms),
                };
            }
            Command::Txn { guards, ops } => {
                return match self.txn(guards, ops) {
                    Ok(events) => {
                        for e in &events {
                            self.history.push(e.clone());
                        }
                        Applied {
                            result: Ok(None),
                            events,
                        }
                    }
                    Err(e) => Applied {
                        result: Err(e),
                        events: vec![],
                    },
                };
            }
        };
        let events = match &result {
            Ok(Some(e)) => {
                self.history.push(e.clone());
                vec![e.clone()]
            }
            _ => vec![],
        };
        Applied { result, events }
    }

    /// Checks every guard, then applies every op; on any failure the state is put back
    /// as it was (the tree and the TTL index are persistent, so keeping it is cheap).
    fn txn(&mut self, guards: &[Guard], ops: &[Command]) -> Result<Vec<Event>, StoreError> {
        for g in guards {
            self.check_guard(g)?;
        }
        let saved = (self.root.clone(), self.index, self.ttls.clone());
        let mut events = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match op {
                Command::Put {
                    key,
                    value,
                    dir,
                    expire_ms,
                    refresh,
                    prev,
                } => self.put(&clean(key), value, *dir, *expire_ms, *refresh, prev),
                Command::Delete {
                    key,
                    dir,
                    recursive,
                    prev,
                } => self.delete(&clean(key), *dir, *recursive, prev),
                _ => Err(self.err(INVALID_FIELD, "a transaction holds only puts and deletes")),
            };
            match r {
                Ok(e) => events.push(e),
                Err(e) => {
                    (self.root, self.index, self.ttls) = saved;
                    return Err(e);
                }
            }
        }
        Ok(events)
    }

    fn check_guard(&self, g: &Guard) -> Result<(), StoreError> {
        let key = clean(&g.key);
        let found = match self.lookup(&key) {
            Ok(n) => Some(n.modified_index),
            Err(e) if e.code == KEY_NOT_FOUND => None,
            Err(e) => return Err(e),
        };
        match (g.exist, found) {
            (Some(true), None) => Err(self.err(KEY_NOT_FOUND, key)),
            (Some(false), Some(_)) => Err(self.err(NODE_EXIST, key)),
            (_, Some(i)) if g.index != 0 && i != g.index => {
                Err(self.err(TEST_FAILED, format!("{key} [{} != {i}]", g.index)))
            }
            (None, None) if g.index != 0 => Err(self.err(KEY_NOT_FOUND, key)),
            _ => Ok(()),
        }
    }

    fn err(&self, code: u32, cause: impl Into<String>) -> StoreError {
        StoreError::new(code, cause, self.index)
    }

    fn lookup(&self, key: &str) -> Result<&Node, StoreError> {
        let mut cur = &self.root;
        // The error's cause is the path walked so far: `key[..end]` (cleaned keys only).
        let mut end = 0;
        for seg in path::segments(key) {
            let Some(children) = cur.children() else {
                return Err(self.err(NOT_DIR, &key[..end]));
            };
            end += 1 + seg.len();
            match children.get(seg) {
                Some(c) => cur = c,
                None => return Err(self.err(KEY_NOT_FOUND, &key[..end])),
            }
        }
        Ok(cur)
    }

    fn lookup_mut(&mut self, key: &str) -> Result<&mut Node, StoreError> {
        // Check first (immutably) so errors carry the right cause, then walk mutably.
        self.lookup(key)?;
        Ok(self.walk_mut(key))
    }

    /// The node at `key`, which must exist.
    fn walk_mut(&mut self, key: &str) -> &mut Node {
        let mut cur = &mut self.root;
        for seg in path::segments(key) {
            cur = cur
                .children_mut()
                .and_then(|c| c.get_mut(seg))
                .expect("the node exists");
        }
        cur
    }

    /// The children of directory `dir`, creating missing directories with `index`.
    fn ensure_dir(&mut self, dir: &str, index: u64) -> Result<&mut Children, StoreError> {
        let current = self.index;
        let mut cur = &mut self.root;
        let mut end = 0;
        for seg in path::segments(dir) {
            end += 1 + seg.len();
            let children = cur.children_mut().expect("walk stays in directories");
            // Look up before inserting: the common case (the directory exists) then
            // allocates nothing.
            if !children.contains_key(seg) {
                children.insert(seg.into(), Node::dir(index, None));
            }
            let child = children.get_mut(seg).expect("just ensured");
            if !child.is_dir() {
                return Err(StoreError::new(NOT_DIR, &dir[..end], current));
            }
            cur = child;
        }
        Ok(cur.children_mut().expect("walk stays in directories"))
    }

    fn untrack_ttls(&mut self, key: &str, n: &Node) {
        n.for_each_ttl(key, &mut |p, e| {
            self.ttls.remove(&(e, p.to_string()));
        });
    }

    fn put(
        &mut self,
        key: &str,
        value: &str,
        dir: bool,
        expire_ms: Option<u64>,
        refresh: bool,
        prev: &Precondition,
    ) -> Result<Event, StoreError> {
        if key == "/" {
            return Err(self.err(ROOT_READ_ONLY, "/"));
        }
        match prev.exist {
            Some(true) if !prev.is_compare() => {
                self.update(key, value, expire_ms, refresh, Action::Update, prev)
            }
            Some(true) => self.update(key, value, expire_ms, refresh, Action::CompareAndSwap, prev),
            Some(false) => self.create(key, dir, value, expire_ms, Action::Create, false),
            None if prev.is_compare() => {
                self.update(key, value, expire_ms, refresh, Action::CompareAndSwap, prev)
            }
            None => {
                // Without refresh no lookup first: `create` meets the same "not a
                // directory" errors on the way down, with the same cause.
                let kept;
                let value = if refresh {
                    kept = self.lookup(key)?.value().to_string();
                    &kept
                } else {
                    value
                };
                let mut e = self.create(key, dir, value, expire_ms, Action::Set, true)?;
                e.refresh = refresh;
                Ok(e)
            }
        }
    }

    fn create(
        &mut self,
        key: &str,
        dir: bool,
        value: &str,
        expire_ms: Option<u64>,
        action: Action,
        replace: bool,
    ) -> Result<Event, StoreError> {
        if key == "/" {
            return Err(self.err(ROOT_READ_ONLY, "/"));
        }
        let next = self.index + 1;
        let current = self.index;
        let (parent, name) = split_parent(key);
        let children = self.ensure_dir(parent, next)?;
        let node = |dir| {
            if dir {
                Node::dir(next, expire_ms)
            } else {
                Node::file(value.to_string(), next, expire_ms)
            }
        };
        // One search of the (possibly huge) directory: entry, not get + remove + insert.
        let (view, replaced) = match children.entry(name.into()) {
            Entry::Vacant(v) => (NodeView::shallow(key, v.insert(node(dir))), None),
            Entry::Occupied(mut o) => {
                if !replace {
                    return Err(StoreError::new(NODE_EXIST, key, current));
                }
                if o.get().is_dir() {
                    return Err(StoreError::new(NOT_FILE, key, current));
                }
                let old = o.insert(node(dir));
                (NodeView::shallow(key, o.get()), Some(old))
            }
        };
        let prev_node = replaced.map(|old| {
            self.untrack_ttls(key, &old);
            NodeView::shallow(key, &old)
        });
        if let Some(e) = expire_ms {
            self.ttls.insert((e, key.to_string()));
        }
        self.index = next;
        Ok(Event {
            action,
            node: view,
            prev_node,
            index: next,
            refresh: false,
        })
    }

    fn update(
        &mut self,
        key: &str,
        value: &str,
        expire_ms: Option<u64>,
        refresh: bool,
        action: Action,
        prev: &Precondition,
    ) -> Result<Event, StoreError> {
        let n = self.lookup(key)?;
        if action == Action::CompareAndSwap {
            if n.is_dir() {
                return Err(self.err(NOT_FILE, key));
            }
            compare(n, prev).map_err(|cause| self.err(TEST_FAILED, cause))?;
        } else if n.is_dir() && !value.is_empty() {
            return Err(self.err(NOT_FILE, key));
        }
        let next = self.index + 1;
        let n = self.walk_mut(key);
        let prev_node = NodeView::shallow(key, n);
        // As etcd: a directory's stored modifiedIndex does not move on update (its TTL
        // does); the event still reports the new index.
        if let Kind::File(v) = &mut n.kind {
            if !refresh {
                *v = value.into();
            }
            n.modified_index = next;
        }
        let old_expire = std::mem::replace(&mut n.expire_ms, expire_ms);
        let mut view = NodeView::shallow(key, n);
        view.modified_index = next;
        if let Some(e) = old_expire {
            self.ttls.remove(&(e, key.to_string()));
        }
        if let Some(e) = expire_ms {
            self.ttls.insert((e, key.to_string()));
        }
        self.index = next;
        Ok(Event {
            action,
            node: view,
            prev_node: Some(prev_node),
            index: next,
            refresh,
        })
    }

    fn delete(
        &mut self,
        key: &str,
        dir: bool,
        recursive: bool,
        prev: &Precondition,
    ) -> Result<Event, StoreError> {
        if key == "/" {
            return Err(self.err(ROOT_READ_ONLY, "/"));
        }
        let n = self.lookup(key)?;
        let action = if prev.is_compare() {
            if n.is_dir() {
                return Err(self.err(NOT_FILE, key));
            }
            compare(n, prev).map_err(|cause| self.err(TEST_FAILED, cause))?;
            Action::CompareAndDelete
        } else {
            let dir = dir || recursive;
            if let Some(children) = n.children() {
                if !dir {
                    return Err(self.err(NOT_FILE, key));
                }
                if !children.is_empty() && !recursive {
                    return Err(self.err(DIR_NOT_EMPTY, key));
                }
            }
            Action::Delete
        };
        Ok(self.remove(key, action))
    }

    /// Removes an existing node and records the event.
    fn remove(&mut self, key: &str, action: Action) -> Event {
        let (parent, name) = split_parent(key);
        let parent = self.lookup_mut(parent).expect("parent of an existing node");
        let old = parent
            .children_mut()
            .and_then(|c| c.remove(name))
            .expect("node exists");
        self.untrack_ttls(key, &old);
        let next = self.index + 1;
        self.index = next;
        Event {
            action,
            node: NodeView {
                key: key.to_string(),
                value: None,
                dir: old.is_dir(),
                expire_ms: None,
                nodes: None,
                modified_index: next,
                created_index: old.created_index,
            },
            prev_node: Some(NodeView::shallow(key, &old)),
            index: next,
            refresh: false,
        }
    }

    fn expire(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = vec![];
        while let Some((t, key)) = self.ttls.get_min().cloned() {
            if t > now_ms {
                break;
            }
            assert!(
                self.lookup(&key).is_ok(),
                "ttl index names a missing node {key}"
            );
            let e = self.remove(&key, Action::Expire);
            self.history.push(e.clone());
            events.push(e);
        }
        events
    }
}

/// etcd's compare: empty value and zero index always match. The error is the cause.
fn compare(n: &Node, prev: &Precondition) -> Result<(), String> {
    let index_ok = prev.index == 0 || n.modified_index == prev.index;
    let value_ok = prev.value.is_empty() || n.value() == prev.value;
    match (value_ok, index_ok) {
        (true, true) => Ok(()),
        (true, false) => Err(format!("[{} != {}]", prev.index, n.modified_index)),
        (false, true) => Err(format!("[{} != {}]", prev.value, n.value())),
        (false, false) => Err(format!(
            "[{} != {}] [{} != {}]",
            prev.value,
            n.value(),
            prev.index,
            n.modified_index
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: value.into(),
            dir: false,
            expire_ms: None,
            refresh: false,
            prev: Precondition::default(),
        }
    }

    fn del(key: &str) -> Command {
        Command::Delete {
            key: key.into(),
            dir: false,
            recursive: false,
            prev: Precondition::default(),
        }
    }

    fn guard(key: &str, exist: Option<bool>, index: u64) -> Guard {
        Guard {
            key: key.into(),
            exist,
            index,
        }
    }

    /// A machine's heartbeat is a TTL refresh (`refresh=true`): it moves the index and
    /// the expiry, but a watcher of the key (or its directory) is not woken by it.
    #[test]
    fn a_ttl_refresh_wakes_no_watcher() {
        let mut s = Store::new();
        let ttl = |value: &str, refresh, exist| Command::Put {
            key: "/_flotilla/machines/m1".into(),
            value: value.into(),
            dir: false,
            expire_ms: Some(30_000),
            refresh,
            prev: Precondition {
                exist,
                ..Default::default()
            },
        };
        s.apply(&ttl("m1", false, None));
        let since = s.index() + 1;
        let r = s.apply(&ttl("", true, Some(true)));
        assert!(r.result.is_ok(), "{:?}", r.result);
        assert_eq!(s.index(), since, "a refresh moves the index");
        let h = s.history();
        for (key, recursive) in [("/_flotilla/machines/m1", false), ("/_flotilla", true)] {
            let woken = h
                .scan(key, recursive, since, s.index())
                .expect("in the window");
            assert!(woken.is_none(), "{key}: woken by a refresh: {woken:?}");
        }
        // A real change does wake them.
        s.apply(&ttl("m1-changed", false, None));
        let woken = h_scan(&s, since);
        assert_eq!(
            woken.map(|e| e.node.value.clone()),
            Some(Some("m1-changed".into()))
        );
    }

    #[test]
    fn recursive_watches_see_no_hidden_names_below_them_and_never_auth_records() {
        let mut s = Store::new();
        let since = s.index() + 1;
        s.apply(&put("/app/_secret", "x"));
        s.apply(&put("/_flotilla/auth/users/alice", "hash"));
        s.apply(&put("/_flotilla/states/u/m1", "running"));
        let h = s.history();
        let first = |key: &str, recursive| {
            h.scan(key, recursive, since, s.index())
                .expect("in the window")
                .map(|e| e.node.key.clone())
        };
        // As etcd's isHidden: `/` recursively sees neither `_`-named path.
        assert_eq!(first("/", true), None);
        assert_eq!(first("/app", true), None);
        // Watching the hidden directory itself sees what is below it, but not users.
        assert_eq!(
            first("/_flotilla", true).as_deref(),
            Some("/_flotilla/states/u/m1")
        );
        assert_eq!(
            first("/app/_secret", false).as_deref(),
            Some("/app/_secret")
        );
    }

    fn h_scan(s: &Store, since: u64) -> Option<&Event> {
        s.history()
            .scan("/_flotilla", true, since, s.index())
            .expect("in the window")
    }

    #[test]
    fn txn_applies_every_op_or_none() {
        let mut s = Store::new();
        s.apply(&put("/lease", "a"));
        s.apply(&put("/sched/m1/u", "x"));
        let mv = |g| Command::Txn {
            guards: vec![g],
            ops: vec![del("/sched/m1/u"), put("/sched/m2/u", "x")],
        };
        // A stale fence: nothing changes, not even the index.
        let before = s.clone();
        let r = s.apply(&mv(guard("/lease", Some(true), 99)));
        assert_eq!(r.result.unwrap_err().code, TEST_FAILED);
        assert_eq!(s, before);
        // The right fence: both ops, two events, two indexes.
        let r = s.apply(&mv(guard("/lease", Some(true), 1)));
        assert_eq!(r.result, Ok(None));
        assert_eq!(r.events.len(), 2);
        assert_eq!(s.index(), 4);
        assert!(s.get("/sched/m1/u", false).is_err());
        assert_eq!(
            s.get("/sched/m2/u", false).unwrap().node.value.as_deref(),
            Some("x")
        );
    }

    #[test]
    fn txn_rolls_back_a_failing_op() {
        let mut s = Store::new();
        s.apply(&Command::Put {
            key: "/t".into(),
            value: "v".into(),
            dir: false,
            expire_ms: Some(50),
            refresh: false,
            prev: Precondition::default(),
        });
        let before = s.clone();
        // The first op lands (and drops a TTL), the second fails: all of it is undone.
        let r = s.apply(&Command::Txn {
            guards: vec![],
            ops: vec![put("/t", "w"), del("/missing")],
        });
        assert_eq!(r.result.unwrap_err().code, KEY_NOT_FOUND);
        assert!(r.events.is_empty());
        assert_eq!(s, before);
        assert_eq!(s.next_expiry_ms(), Some(50));
    }

    #[test]
    fn txn_guards_on_absence_and_refuses_nesting() {
        let mut s = Store::new();
        s.apply(&put("/a", "1"));
        let r = s.apply(&Command::Txn {
            guards: vec![guard("/a", Some(false), 0)],
            ops: vec![put("/b", "1")],
        });
        assert_eq!(r.result.unwrap_err().code, NODE_EXIST);
        let r = s.apply(&Command::Txn {
            guards: vec![guard("/zz", None, 3)],
            ops: vec![],
        });
        assert_eq!(r.result.unwrap_err().code, KEY_NOT_FOUND);
        let r = s.apply(&Command::Txn {
            guards: vec![],
            ops: vec![Command::Expire { now_ms: 1 }],
        });
        assert_eq!(r.result.unwrap_err().code, INVALID_FIELD);
        assert_eq!(s.index(), 1);
    }
}
