//! "Something new was applied": a broadcast signal that wakes its waiters in the order
//! they started waiting.
//!
//! tokio's `watch` would do, but it parks each waiter on one of eight notifiers picked at
//! random, from a generator tokio seeds with a process-wide counter: in the simulator the
//! wake-up order of two waiters then depended on which simulations ran earlier in the
//! same process, and a seed no longer replayed alone. `Notify` keeps its waiters in a
//! list, and this is built on it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

struct Inner {
    version: AtomicU64,
    closed: AtomicBool,
    notify: Notify,
}

/// The sending side; dropping it closes the signal.
pub struct Signal {
    inner: Arc<Inner>,
}

/// A waiter; [`Changes::changed`] resolves once per change since it last looked.
pub struct Changes {
    inner: Arc<Inner>,
    seen: u64,
}

/// The signal's sender is gone (the node is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Signal {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                version: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                notify: Notify::new(),
            }),
        }
    }

    /// Wakes every waiter.
    pub fn send(&self) {
        self.inner.version.fetch_add(1, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    pub fn subscribe(&self) -> Changes {
        Changes {
            seen: self.inner.version.load(Ordering::SeqCst),
            inner: self.inner.clone(),
        }
    }
}

impl Default for Signal {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }
}

impl Changes {
    /// Resolves when something changed since the last call (or since subscribing).
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a send in between is not missed.
            notified.as_mut().enable();
            let v = self.inner.version.load(Ordering::SeqCst);
            if v != self.seen {
                self.seen = v;
                return Ok(());
            }
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(Closed);
            }
            notified.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_on_each_change_and_closes() {
        let s = Signal::new();
        let mut a = s.subscribe();
        s.send();
        assert_eq!(a.changed().await, Ok(()));
        let t = tokio::spawn(async move {
            let r1 = a.changed().await;
            let r2 = a.changed().await;
            (r1, r2)
        });
        tokio::task::yield_now().await;
        s.send();
        tokio::task::yield_now().await;
        drop(s);
        assert_eq!(t.await.unwrap(), (Ok(()), Err(Closed)));
    }
}
