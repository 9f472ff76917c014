//! Where watches wait: each on its own key, woken only by an applied event that concerns
//! it (etcd's watcher hub). A node with 300 agents long-polling used to wake all 300 on
//! every applied entry — presence refreshes included, which wake no watch at all.
//!
//! A watch registers before it first looks at the history and is woken through its own
//! `Notify` (`notify_one` keeps a permit), so an event between its look and its wait is
//! never missed. Wake order follows the key map: deterministic in the simulator.

use crate::kv::event::{Action, Event};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

type Waiting = BTreeMap<u64, (bool, Arc<Notify>)>;

#[derive(Default)]
struct Hub {
    next_id: u64,
    /// Watched key → (watch id → (recursive, its wake-up)).
    by_key: BTreeMap<String, Waiting>,
}

#[derive(Default, Clone)]
pub struct Watchers {
    hub: Arc<Mutex<Hub>>,
}

/// One registered watch; dropping it unregisters.
pub struct KeyWatch {
    hub: Arc<Mutex<Hub>>,
    key: String,
    id: u64,
    notify: Arc<Notify>,
}

impl Watchers {
    pub fn register(&self, key: &str, recursive: bool) -> KeyWatch {
        let mut hub = self.hub.lock().expect("watchers lock");
        hub.next_id += 1;
        let id = hub.next_id;
        let notify = Arc::new(Notify::new());
        hub.by_key
            .entry(key.to_string())
            .or_default()
            .insert(id, (recursive, notify.clone()));
        KeyWatch {
            hub: self.hub.clone(),
            key: key.to_string(),
            id,
            notify,
        }
    }

    /// Wakes the watches these applied events concern (a superset of what their scan
    /// will find; a woken watch that finds nothing waits again).
    pub fn wake(&self, events: &[Event]) {
        let hub = self.hub.lock().expect("watchers lock");
        for e in events.iter().filter(|e| !e.refresh) {
            let key = e.node.key.as_str();
            if let Some(w) = hub.by_key.get(key) {
                wake_all(w);
            }
            // Ancestors: their recursive watches.
            let mut at = key;
            while let Some(cut) = at.rfind('/') {
                at = if cut == 0 { "/" } else { &at[..cut] };
                if let Some(w) = hub.by_key.get(at) {
                    w.values()
                        .filter(|(rec, _)| *rec)
                        .for_each(|(_, n)| n.notify_one());
                }
                if at == "/" {
                    break;
                }
            }
            // A directory deleted or expired takes the keys below it with it.
            let dir_gone = matches!(e.action, Action::Delete | Action::Expire)
                && e.prev_node.as_ref().is_some_and(|p| p.dir);
            if dir_gone {
                let below = format!("{}/", key.trim_end_matches('/'));
                hub.by_key
                    .range(below.clone()..)
                    .take_while(|(k, _)| k.starts_with(&below))
                    .for_each(|(_, w)| wake_all(w));
            }
        }
    }

    /// Every watch looks again (a snapshot replaced the whole store).
    pub fn wake_everyone(&self) {
        let hub = self.hub.lock().expect("watchers lock");
        hub.by_key.values().for_each(wake_all);
    }

    /// Watches registered now (a gauge for tests and stats).
    pub fn registered(&self) -> usize {
        let hub = self.hub.lock().expect("watchers lock");
        hub.by_key.values().map(BTreeMap::len).sum()
    }
}

fn wake_all(w: &Waiting) {
    w.values().for_each(|(_, n)| n.notify_one());
}

impl KeyWatch {
    /// Resolves once an event that may concern this watch was applied since the last
    /// call (or since registering).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let mut hub = self.hub.lock().expect("watchers lock");
        if let Some(w) = hub.by_key.get_mut(&self.key) {
            w.remove(&self.id);
            if w.is_empty() {
                hub.by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::event::NodeView;
    use futures_util::FutureExt;

    fn event(action: Action, key: &str, prev_dir: bool, refresh: bool) -> Event {
        let view = |k: &str, dir: bool| NodeView {
            key: k.into(),
            value: None,
            dir,
            expire_ms: None,
            nodes: None,
            modified_index: 1,
            created_index: 1,
        };
        Event {
            action,
            node: view(key, false),
            prev_node: Some(view(key, prev_dir)),
            index: 1,
            refresh,
        }
    }

    fn woken(w: &KeyWatch) -> bool {
        w.changed().now_or_never().is_some()
    }

    #[test]
    fn only_the_watches_an_event_concerns_are_woken() {
        let hub = Watchers::default();
        let root = hub.register("/", true);
        let a_rec = hub.register("/a", true);
        let a_flat = hub.register("/a", false);
        let exact = hub.register("/a/b/c", false);
        let below = hub.register("/a/b/c/d", false);
        let other = hub.register("/x", true);
        hub.wake(&[event(Action::Set, "/a/b/c", false, false)]);
        assert!(woken(&root) && woken(&a_rec) && woken(&exact));
        assert!(!woken(&a_flat) && !woken(&below) && !woken(&other));
        // A refresh wakes nobody; a directory's deletion wakes what was below it.
        hub.wake(&[event(Action::Update, "/a/b/c", false, true)]);
        assert!(!woken(&root) && !woken(&exact));
        hub.wake(&[event(Action::Delete, "/a/b", true, false)]);
        assert!(woken(&below) && woken(&exact) && !woken(&other));
        // A wake before the wait is kept; a dropped watch leaves the hub.
        assert_eq!(hub.registered(), 6);
        drop((root, a_rec, a_flat, exact, below));
        assert_eq!(hub.registered(), 1);
        hub.wake_everyone();
        assert!(woken(&other));
    }
}
