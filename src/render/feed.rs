//! Watch mode's event feed: one task per resource long-polls a recursive watch on the
//! resource's root, from the index its first read saw, and queues every event in order.
//! The render loop applies what is queued to its copy of the keys (pure: [`apply`]), so a
//! change costs a render, not a re-read of every key.

use super::memkv::MemKv;
use super::resource::Resource;
use crate::client::{ClientError, KvClient};
use crate::kv::{Action, Event};
use flotilla_shims::Clock;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events queued before the feed waits for the renderer (then the store's history may
/// move past it: a `Reset` and a full re-read follow).
pub const FEED_EVENTS_MAX: usize = 10_000;

#[derive(Debug)]
pub enum Feed {
    Event(Box<Event>),
    /// The store's history no longer reaches back to the feed's index (etcd's 401): the
    /// keys must be read again, and a new feed started. This feed has ended.
    Reset,
}

/// Where a feed starts.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// The first index wanted: one past what the render read.
    pub since: u64,
    /// Planted bug (test-only): start past whatever the store holds when the feed
    /// starts, missing changes made since the render's read.
    pub from_now: bool,
}

/// Watches `root` from `start` on, queueing events into `tx` until the receiver is gone.
pub async fn run(
    kv: Arc<dyn KvClient>,
    clock: Arc<dyn Clock>,
    root: String,
    start: Start,
    tx: mpsc::Sender<Feed>,
    retry_ms: u64,
) {
    let mut since = start.since;
    if start.from_now {
        if let Ok(Some(got)) = kv.get(&root, false, false).await {
            since = got.index + 1;
        }
    }
    loop {
        match kv.watch(&root, true, since).await {
            Ok(ev) => {
                since = ev.index + 1;
                if tx.send(Feed::Event(Box::new(ev))).await.is_err() {
                    return;
                }
            }
            Err(ClientError::Store(e)) if e.code == 401 => {
                tracing::info!("{root}: watch history cleared past {since}: reading again");
                let _ = tx.send(Feed::Reset).await;
                return;
            }
            Err(e) => {
                tracing::warn!("{root}: watch: {e}");
                if tx.is_closed() {
                    return;
                }
                clock.sleep(Duration::from_millis(retry_ms)).await;
            }
        }
    }
}

/// What an event did to a resource's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Not under any of the resource's keys.
    Ignored,
    Changed,
    /// One of the resource's own keys was deleted or expired: read everything again (the
    /// read fails the resource, as confd's would).
    Reread,
}

fn under(key: &str, dir: &str) -> bool {
    dir == "/"
        || key
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Applies `ev` to `kv`, the resource's keys as its template sees them.
pub fn apply(kv: &mut MemKv, r: &Resource, ev: &Event) -> Applied {
    let key = ev.node.key.as_str();
    let inside = r.keys.iter().any(|rk| key == rk || under(key, rk));
    let above = r.keys.iter().any(|rk| under(rk, key));
    match ev.action {
        Action::Delete | Action::Expire | Action::CompareAndDelete => {
            if above || r.keys.iter().any(|rk| rk == key) {
                Applied::Reread
            } else if inside {
                kv.remove_tree(&r.strip(key));
                Applied::Changed
            } else {
                Applied::Ignored
            }
        }
        Action::Set | Action::Create | Action::Update | Action::CompareAndSwap => {
            match (&ev.node.value, inside && !ev.node.dir) {
                (Some(v), true) => {
                    kv.insert(r.strip(key), v.clone());
                    Applied::Changed
                }
                _ => Applied::Ignored,
            }
        }
        Action::Get => Applied::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::NodeView;

    fn ev(action: Action, key: &str, value: Option<&str>) -> Event {
        Event {
            action,
            node: NodeView {
                key: key.into(),
                value: value.map(String::from),
                dir: false,
                expire_ms: None,
                nodes: None,
                modified_index: 7,
                created_index: 7,
            },
            prev_node: None,
            index: 7,
            refresh: false,
        }
    }

    fn resource(prefix: &str, keys: &[&str]) -> Resource {
        Resource {
            file: "r.toml".into(),
            src: "t".into(),
            dest: "/d".into(),
            keys: keys
                .iter()
                .map(|k| super::super::resource::join(prefix, k))
                .collect(),
            prefix: super::super::resource::join(prefix, ""),
            mode: None,
            uid: None,
            gid: None,
            check_cmd: None,
            reload_cmd: None,
        }
    }

    /// A store whose watch answers one event, then etcd's 401 (history cleared).
    struct Cleared {
        watched: std::sync::Mutex<Vec<u64>>,
    }

    impl KvClient for Cleared {
        fn get(
            &self,
            _: &str,
            _: bool,
            _: bool,
        ) -> flotilla_shims::BoxFuture<'_, Result<Option<crate::client::Got>, ClientError>>
        {
            Box::pin(async { Err(ClientError::Unavailable("not asked".into())) })
        }
        fn set(
            &self,
            _: &str,
            _: &str,
            _: crate::client::SetOpts,
        ) -> flotilla_shims::BoxFuture<'_, Result<Event, ClientError>> {
            Box::pin(async { Err(ClientError::Unavailable("not asked".into())) })
        }
        fn delete(
            &self,
            _: &str,
            _: bool,
            _: crate::kv::Precondition,
        ) -> flotilla_shims::BoxFuture<'_, Result<Event, ClientError>> {
            Box::pin(async { Err(ClientError::Unavailable("not asked".into())) })
        }
        fn watch(
            &self,
            _: &str,
            _: bool,
            since: u64,
        ) -> flotilla_shims::BoxFuture<'_, Result<Event, ClientError>> {
            self.watched.lock().unwrap().push(since);
            Box::pin(async move {
                match since {
                    5 => Ok(Event {
                        index: 7,
                        ..ev(Action::Set, "/app/web/a", Some("1"))
                    }),
                    _ => Err(ClientError::Store(crate::kv::StoreError::new(
                        crate::kv::error::EVENT_INDEX_CLEARED,
                        "the requested history has been cleared [1008/8]",
                        2000,
                    ))),
                }
            })
        }
    }

    /// etcd's `401 index cleared` ends the feed with a `Reset` (the renderer reads every
    /// key again and starts a new feed), after the events it did get, in order.
    #[tokio::test]
    async fn a_cleared_history_ends_the_feed_with_a_reset() {
        let kv = Arc::new(Cleared {
            watched: Default::default(),
        });
        let (tx, mut rx) = mpsc::channel(8);
        let start = Start {
            since: 5,
            from_now: false,
        };
        let clock = Arc::new(flotilla_shims::TokioClock::new());
        run(kv.clone(), clock, "/app".into(), start, tx, 10).await;
        assert!(matches!(rx.recv().await, Some(Feed::Event(e)) if e.index == 7));
        assert!(matches!(rx.recv().await, Some(Feed::Reset)));
        assert!(rx.recv().await.is_none(), "the feed has ended");
        assert_eq!(*kv.watched.lock().unwrap(), [5, 8]);
    }

    #[test]
    fn events_change_exactly_what_a_reread_would() {
        let r = resource("/app", &["/web", "/db"]);
        let mut kv = MemKv::new();
        kv.set("/web/a", "1");
        kv.set("/web/dir/b", "2");
        let set = ev(Action::Set, "/app/web/c", Some("3"));
        assert_eq!(apply(&mut kv, &r, &set), Applied::Changed);
        assert_eq!(kv.getv("/web/c", None).unwrap(), "3");
        let other = ev(Action::Set, "/app/webby", Some("x"));
        assert_eq!(
            apply(&mut kv, &r, &other),
            Applied::Ignored,
            "a sibling prefix"
        );
        let del_dir = ev(Action::Delete, "/app/web/dir", None);
        assert_eq!(apply(&mut kv, &r, &del_dir), Applied::Changed);
        assert!(!kv.exists("/web/dir/b") && kv.exists("/web/a"));
        let expire = ev(Action::Expire, "/app/web/a", None);
        assert_eq!(apply(&mut kv, &r, &expire), Applied::Changed);
        assert!(!kv.exists("/web/a"));
        for gone in ["/app/db", "/app", "/"] {
            assert_eq!(
                apply(&mut kv, &r, &ev(Action::Delete, gone, None)),
                Applied::Reread
            );
        }
    }
}
