//! Spawning tasks and drawing randomness, through the seam.

use crate::BoxFuture;
use rand::{RngCore, SeedableRng};

/// Starts background tasks. In the simulator these belong to the simulated node, so a
/// crash takes them down with it.
pub trait Spawn: Send + Sync + 'static {
    fn spawn(&self, name: &'static str, fut: BoxFuture<'static, ()>);
    /// Runs CPU-bound work (an encoding of the whole state) where it cannot hold up the
    /// event loop. This default runs it as a task of its own: in the simulator, where
    /// time does not pass while code runs, that is enough.
    fn spawn_blocking(&self, name: &'static str, f: Box<dyn FnOnce() + Send>) {
        self.spawn(name, Box::pin(async move { f() }));
    }
}

/// Production spawner on the ambient Tokio runtime.
#[derive(Clone, Default)]
pub struct TokioSpawn;

impl Spawn for TokioSpawn {
    fn spawn(&self, name: &'static str, fut: BoxFuture<'static, ()>) {
        tracing::trace!(task = name, "spawn");
        tokio::spawn(fut);
    }

    fn spawn_blocking(&self, name: &'static str, f: Box<dyn FnOnce() + Send>) {
        tracing::trace!(task = name, "spawn_blocking");
        tokio::task::spawn_blocking(f);
    }
}

/// The only RNG node logic may use: seeded, so a simulated run replays exactly.
pub struct SeededRng(rand::rngs::StdRng);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self(rand::rngs::StdRng::seed_from_u64(seed))
    }

    /// A seed from the operating system, for production nodes.
    pub fn from_entropy() -> Self {
        Self(rand::rngs::StdRng::from_entropy())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, n)`; `n` must be non-zero.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.0.next_u64() % n
    }
}

/// Resolves when the process is asked to stop (SIGTERM, as `docker stop` and systemd send
/// it, or SIGINT); what was set up on the host can be taken down first.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No handler could be installed: the default action (exit) stays, so never resolve.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
