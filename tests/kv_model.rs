//! Model test: random operation sequences against the store and a naive model (a flat
//! map of full paths, written independently), requiring identical results and identical
//! state after every step.

use flotilla::kv::error::*;
use flotilla::kv::{Action, Command, Event, NodeView, Precondition, Store, StoreError};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
struct MNode {
    dir: bool,
    value: String,
    created: u64,
    modified: u64,
    expire: Option<u64>,
}

#[derive(Default)]
struct Model {
    nodes: BTreeMap<String, MNode>,
    index: u64,
}

/// (action, key, value, dir, created, modified, expire) — or an error (code, cause, index).
type Flat = (String, String, Option<String>, bool, u64, u64, Option<u64>);
type Out = Result<(Flat, Option<Flat>), (u32, String, u64)>;
/// (key, dir, value, created, modified, expire) of every node.
type Row = (String, bool, String, u64, u64, Option<u64>);

fn prefixes(key: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    for seg in key.split('/').filter(|s| !s.is_empty()) {
        cur = format!("{cur}/{seg}");
        out.push(cur.clone());
    }
    out
}

fn parent(key: &str) -> String {
    let i = key.rfind('/').unwrap();
    if i == 0 {
        "/".into()
    } else {
        key[..i].into()
    }
}

fn flat(action: &str, key: &str, n: &MNode) -> Flat {
    (
        action.into(),
        key.into(),
        (!n.dir).then(|| n.value.clone()),
        n.dir,
        n.created,
        n.modified,
        n.expire,
    )
}

impl Model {
    fn err(&self, code: u32, cause: &str) -> (u32, String, u64) {
        (code, cause.into(), self.index)
    }

    fn lookup(&self, key: &str) -> Result<MNode, (u32, String, u64)> {
        let mut parent_path = "/".to_string();
        for p in prefixes(key) {
            if let Some(par) = self.nodes.get(&parent_path) {
                if !par.dir {
                    return Err(self.err(NOT_DIR, &parent_path));
                }
            }
            if !self.nodes.contains_key(&p) {
                return Err(self.err(KEY_NOT_FOUND, &p));
            }
            parent_path = p;
        }
        Ok(self.nodes.get(key).cloned().unwrap_or(MNode {
            dir: true,
            value: String::new(),
            created: 0,
            modified: 0,
            expire: None,
        }))
    }

    fn children(&self, key: &str) -> Vec<String> {
        let pre = format!("{key}/");
        self.nodes
            .keys()
            .filter(|k| k.starts_with(&pre))
            .cloned()
            .collect()
    }

    fn remove_tree(&mut self, key: &str) -> MNode {
        for c in self.children(key) {
            self.nodes.remove(&c);
        }
        self.nodes.remove(key).unwrap()
    }

    fn create(
        &mut self,
        key: &str,
        dir: bool,
        value: &str,
        expire: Option<u64>,
        action: &str,
        replace: bool,
    ) -> Out {
        if key == "/" {
            return Err(self.err(ROOT_READ_ONLY, "/"));
        }
        let next = self.index + 1;
        let ancestors = prefixes(&parent(key));
        for a in &ancestors {
            if let Some(n) = self.nodes.get(a) {
                if !n.dir {
                    return Err(self.err(NOT_DIR, a));
                }
            }
        }
        let mut prev = None;
        if let Some(existing) = self.nodes.get(key).cloned() {
            if !replace {
                return Err(self.err(NODE_EXIST, key));
            }
            if existing.dir {
                return Err(self.err(NOT_FILE, key));
            }
            prev = Some(flat("", key, &existing));
            self.nodes.remove(key);
        }
        for a in ancestors {
            self.nodes.entry(a).or_insert(MNode {
                dir: true,
                value: String::new(),
                created: next,
                modified: next,
                expire: None,
            });
        }
        let n = MNode {
            dir,
            value: if dir { String::new() } else { value.into() },
            created: next,
            modified: next,
            expire,
        };
        self.nodes.insert(key.into(), n.clone());
        self.index = next;
        Ok((flat(action, key, &n), prev))
    }

    fn compare(&self, n: &MNode, prev: &Precondition) -> Result<(), String> {
        let iok = prev.index == 0 || prev.index == n.modified;
        let vok = prev.value.is_empty() || prev.value == n.value;
        match (vok, iok) {
            (true, true) => Ok(()),
            (true, false) => Err(format!("[{} != {}]", prev.index, n.modified)),
            (false, true) => Err(format!("[{} != {}]", prev.value, n.value)),
            (false, false) => Err(format!(
                "[{} != {}] [{} != {}]",
                prev.value, n.value, prev.index, n.modified
            )),
        }
    }

    fn update(
        &mut self,
        key: &str,
        value: &str,
        expire: Option<u64>,
        action: &str,
        prev: &Precondition,
    ) -> Out {
        if key == "/" {
            return Err(self.err(ROOT_READ_ONLY, "/"));
        }
        let n = self.lookup(key)?;
        if action == "compareAndSwap" {
            if n.dir {
                return Err(self.err(NOT_FILE, key));
            }
            if let Err(c) = self.compare(&n, prev) {
                return Err(self.err(TEST_FAILED, &c));
            }
        } else if n.dir && !value.is_empty() {
            return Err(self.err(NOT_FILE, key));
        }
        let next = self.index + 1;
        let before = flat("", key, &n);
        let m = self.nodes.get_mut(key).unwrap();
        if !m.dir {
            m.value = value.into();
            m.modified = next;
        }
        m.expire = expire;
        let mut after = flat(action, key, m);
        after.5 = next;
        self.index = next;
        Ok((after, Some(before)))
    }

    fn delete(&mut self, key: &str, dir: bool, recursive: bool, prev: &Precondition) -> Out {
        if key == "/" {
            return Err(self.err(ROOT_READ_ONLY, "/"));
        }
        let n = self.lookup(key)?;
        let action = if !prev.value.is_empty() || prev.index != 0 {
            if n.dir {
                return Err(self.err(NOT_FILE, key));
            }
            if let Err(c) = self.compare(&n, prev) {
                return Err(self.err(TEST_FAILED, &c));
            }
            "compareAndDelete"
        } else {
            if n.dir && !(dir || recursive) {
                return Err(self.err(NOT_FILE, key));
            }
            if n.dir && !recursive && !self.children(key).is_empty() {
                return Err(self.err(DIR_NOT_EMPTY, key));
            }
            "delete"
        };
        Ok(self.removed(key, action))
    }

    fn removed(&mut self, key: &str, action: &str) -> (Flat, Option<Flat>) {
        let old = self.remove_tree(key);
        self.index += 1;
        let node = (
            action.to_string(),
            key.to_string(),
            None,
            old.dir,
            old.created,
            self.index,
            None,
        );
        (node, Some(flat("", key, &old)))
    }

    fn apply(&mut self, cmd: &Command) -> Option<Out> {
        Some(match cmd {
            Command::Put {
                key,
                value,
                dir,
                expire_ms,
                prev,
                ..
            } => match prev.exist {
                Some(true) if prev.value.is_empty() && prev.index == 0 => {
                    self.update(key, value, *expire_ms, "update", prev)
                }
                Some(true) => self.update(key, value, *expire_ms, "compareAndSwap", prev),
                Some(false) => self.create(key, *dir, value, *expire_ms, "create", false),
                None if !prev.value.is_empty() || prev.index != 0 => {
                    self.update(key, value, *expire_ms, "compareAndSwap", prev)
                }
                None => match self.lookup(key) {
                    Err(e) if e.0 != KEY_NOT_FOUND => Err(e),
                    _ => self.create(key, *dir, value, *expire_ms, "set", true),
                },
            },
            Command::CreateInOrder {
                dir,
                value,
                expire_ms,
            } => {
                let key = format!(
                    "{}/{:020}",
                    if dir == "/" { "" } else { dir },
                    self.index + 1
                );
                self.create(&key, false, value, *expire_ms, "create", false)
            }
            Command::Delete {
                key,
                dir,
                recursive,
                prev,
            } => self.delete(key, *dir, *recursive, prev),
            Command::Expire { now_ms } => {
                loop {
                    let due = self
                        .nodes
                        .iter()
                        .filter_map(|(k, n)| {
                            n.expire.filter(|e| *e <= *now_ms).map(|e| (e, k.clone()))
                        })
                        .min();
                    let Some((_, k)) = due else { break };
                    self.removed(&k, "expire");
                }
                return None;
            }
            Command::Txn { .. } => unreachable!("the model test draws no transactions"),
        })
    }

    fn listing(&self) -> Vec<Row> {
        self.nodes
            .iter()
            .map(|(k, n)| {
                (
                    k.clone(),
                    n.dir,
                    n.value.clone(),
                    n.created,
                    n.modified,
                    n.expire,
                )
            })
            .collect()
    }
}

fn flat_view(action: &str, v: &NodeView) -> Flat {
    (
        action.into(),
        v.key.clone(),
        v.value.clone(),
        v.dir,
        v.created_index,
        v.modified_index,
        v.expire_ms,
    )
}

fn store_out(r: &Result<Option<Event>, StoreError>) -> Option<Out> {
    match r {
        Ok(None) => None,
        Ok(Some(e)) => Some(Ok((
            flat_view(e.action.as_str(), &e.node),
            e.prev_node.as_ref().map(|p| flat_view("", p)),
        ))),
        Err(e) => Some(Err((e.code, e.cause.clone(), e.index))),
    }
}

fn store_listing(s: &Store) -> Vec<Row> {
    fn walk(v: &NodeView, out: &mut Vec<Row>) {
        for c in v.nodes.iter().flatten() {
            out.push((
                c.key.clone(),
                c.dir,
                c.value.clone().unwrap_or_default(),
                c.created_index,
                c.modified_index,
                c.expire_ms,
            ));
            walk(c, out);
        }
    }
    let mut out = vec![];
    walk(&s.get("/", true).unwrap().node, &mut out);
    out.sort();
    out
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "/a", "/a/b", "/a/b/c", "/b", "/b/x", "/a/y", "/", "/a//b/",
    ])
    .prop_map(String::from)
}

fn prev() -> impl Strategy<Value = Precondition> {
    (
        prop::option::of(any::<bool>()),
        prop::sample::select(vec!["", "1", "2"]),
        prop::sample::select(vec![0u64, 1, 2, 3, 5, 8]),
    )
        .prop_map(|(exist, value, index)| Precondition {
            exist,
            value: value.into(),
            index,
        })
}

fn command() -> impl Strategy<Value = Command> {
    let expire = prop::option::of(prop::sample::select(vec![10u64, 20, 30]));
    prop_oneof![
        4 => (key(), prop::sample::select(vec!["1", "2", ""]), any::<bool>(), expire.clone(), prev())
            .prop_map(|(key, v, dir, expire_ms, prev)| Command::Put { key, value: v.into(), dir: dir && v.is_empty(), expire_ms, refresh: false, prev }),
        1 => (key(), expire.clone()).prop_map(|(dir, expire_ms)| Command::CreateInOrder { dir, value: "q".into(), expire_ms }),
        2 => (key(), any::<bool>(), any::<bool>(), prev()).prop_map(|(key, dir, recursive, mut prev)| {
            prev.exist = None;
            Command::Delete { key, dir, recursive, prev }
        }),
        1 => prop::sample::select(vec![5u64, 15, 25, 35]).prop_map(|now_ms| Command::Expire { now_ms }),
    ]
}

fn clean(cmd: &Command) -> Command {
    let c = |k: &str| flotilla::kv::path::clean(k);
    match cmd.clone() {
        Command::Put {
            key,
            value,
            dir,
            expire_ms,
            refresh,
            prev,
        } => Command::Put {
            key: c(&key),
            value,
            dir,
            expire_ms,
            refresh,
            prev,
        },
        Command::CreateInOrder {
            dir,
            value,
            expire_ms,
        } => Command::CreateInOrder {
            dir: c(&dir),
            value,
            expire_ms,
        },
        Command::Delete {
            key,
            dir,
            recursive,
            prev,
        } => Command::Delete {
            key: c(&key),
            dir,
            recursive,
            prev,
        },
        e => e,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_naive_model(cmds in prop::collection::vec(command(), 1..60)) {
        let mut store = Store::new();
        let mut model = Model::default();
        for cmd in &cmds {
            let applied = store.apply(cmd);
            let want = model.apply(&clean(cmd));
            prop_assert_eq!(store_out(&applied.result), want, "command {:?}", cmd);
            prop_assert_eq!(store.index(), model.index);
            prop_assert_eq!(store_listing(&store), model.listing(), "after {:?}", cmd);
            // Every successful write is one event in the history, gapless.
            if let Ok(Some(e)) = &applied.result {
                prop_assert_eq!(applied.events.len(), 1);
                prop_assert_eq!(e.index, store.index());
            }
            for e in &applied.events {
                prop_assert!(e.action != Action::Get);
            }
        }
        // Same commands, same state: apply is a pure function.
        let mut again = Store::new();
        for cmd in &cmds {
            again.apply(cmd);
        }
        prop_assert_eq!(again, store);
    }
}
