//! Snapshots for lagging followers, encoded off the event loop.
//!
//! The store's tree is persistent (see `kv::node`), so cloning the state on the loop
//! costs about a millisecond at any size; the clone is encoded by a blocking task and
//! the result waits here until raft-rs asks for the snapshot again (see
//! [`LogStore`](super::LogStore)'s `snapshot`).

use super::handle::Shared;
use super::storage::SnapshotSource;
use flotilla_shims::Spawn;
use std::sync::{Arc, Mutex};

/// An encoding: `(applied index, data)`.
type Encoded = (u64, Vec<u8>);

pub struct BackgroundSnapshots {
    shared: Arc<Shared>,
    spawn: Arc<dyn Spawn>,
    /// The finished encoding, until raft-rs asks again. ([`LogStore`](super::LogStore)
    /// starts one encoding at a time.)
    done: Arc<Mutex<Option<Encoded>>>,
}

impl BackgroundSnapshots {
    pub fn new(shared: Arc<Shared>, spawn: Arc<dyn Spawn>) -> Self {
        Self {
            shared,
            spawn,
            done: Arc::default(),
        }
    }
}

impl SnapshotSource for BackgroundSnapshots {
    fn applied(&self) -> u64 {
        self.shared.machine().applied
    }

    fn start(&self) {
        let machine = self.shared.machine().clone();
        let done = self.done.clone();
        self.spawn.spawn_blocking(
            "follower-snapshot",
            Box::new(move || {
                let encoded = (machine.applied, machine.encode());
                drop(machine);
                *done.lock().expect("snapshot slot lock poisoned") = Some(encoded);
            }),
        );
    }

    fn take(&self) -> Option<Encoded> {
        self.done
            .lock()
            .expect("snapshot slot lock poisoned")
            .take()
    }
}
