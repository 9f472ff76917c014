//! Time, as node logic is allowed to see it.

use crate::BoxFuture;
use std::time::Duration;

/// Monotonic time for timeouts and ticks, wall time for TTLs, and sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn now_mono(&self) -> Duration;
    /// Milliseconds since the Unix epoch. May jump (the simulator makes it).
    fn now_wall_ms(&self) -> u64;
    /// Resolves after `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// Production clock on Tokio time and the system wall clock.
#[derive(Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_mono(&self) -> Duration {
        tokio::time::Instant::now().duration_since(self.origin)
    }

    fn now_wall_ms(&self) -> u64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since.as_millis() as u64
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}
