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

pub struct BackgroundSnapshots {
    shared: Arc<Shared>,
    spawn: Arc<dyn Spawn>,
    slot: Arc<Mutex<Slot>>,
}

#[derive(Default)]
struct Slot {
    running: bool,
    done: Option<(u64, Vec<u8>)>,
}

impl BackgroundSnapshots {
    pub fn new(shared: Arc<Shared>, spawn: Arc<dyn Spawn>) -> Self {
        Self {
            shared,
            spawn,
            slot: Arc::default(),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().expect("snapshot slot lock poisoned")
    }
}

impl SnapshotSource for BackgroundSnapshots {
    fn applied(&self) -> u64 {
        self.shared.machine().applied
    }

    fn start(&self) {
        {
            let mut slot = self.slot();
            if slot.running {
                return;
            }
            slot.running = true;
            slot.done = None;
        }
        let machine = self.shared.machine().clone();
        let slot = self.slot.clone();
        self.spawn.spawn_blocking(
            "follower-snapshot",
            Box::new(move || {
                let done = (machine.applied, machine.encode());
                drop(machine);
                let mut slot = slot.lock().expect("snapshot slot lock poisoned");
                slot.running = false;
                slot.done = Some(done);
            }),
        );
    }

    fn take(&self) -> Option<(u64, Vec<u8>)> {
        self.slot().done.take()
    }
}
