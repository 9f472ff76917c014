//! The runtime seam on madsim: clock and tasks.

use flotilla_shims::{BoxFuture, Clock, Spawn};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Wall time at the simulation's start (2026-01-01T00:00:00Z): fixed, so runs replay.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// A node's clock: madsim time, plus a per-node wall-clock offset the harness can jump.
#[derive(Clone, Default)]
pub struct SimClock {
    pub skew_ms: Arc<AtomicI64>,
}

pub fn elapsed() -> Duration {
    madsim::time::TimeHandle::current().elapsed()
}

impl Clock for SimClock {
    fn now_mono(&self) -> Duration {
        elapsed()
    }

    fn now_wall_ms(&self) -> u64 {
        let ms =
            EPOCH_MS as i64 + elapsed().as_millis() as i64 + self.skew_ms.load(Ordering::Relaxed);
        ms.max(0) as u64
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(madsim::time::sleep(d))
    }
}

/// Spawns onto the current simulated node, so a crash of the node ends its tasks.
pub struct SimSpawn;

impl Spawn for SimSpawn {
    fn spawn(&self, _name: &'static str, fut: BoxFuture<'static, ()>) {
        madsim::task::spawn(fut);
    }
}
