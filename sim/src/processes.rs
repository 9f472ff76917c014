//! Host processes in the simulated world: each runs for a seeded time and exits with a
//! seeded code — except the ones whose command says what they do (`true`, `false`,
//! `sleep N`), so a workload can rely on them.

use flotilla_shims::process::{ProcError, ProcSpec, Processes, Signal};
use flotilla_shims::BoxFuture;
use madsim::rand::Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Default)]
pub struct SimProcesses {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    exits: BTreeMap<u64, watch::Sender<Option<i64>>>,
}

impl SimProcesses {
    pub fn new() -> Self {
        Self::default()
    }

    fn finish(&self, h: u64, code: i64) {
        if let Some(tx) = self.inner.lock().expect("procs lock").exits.get(&h) {
            if tx.borrow().is_none() {
                let _ = tx.send(Some(code));
            }
        }
    }

    /// Ends every process (the machine went down).
    pub fn kill_all(&self) {
        let handles: Vec<u64> = self
            .inner
            .lock()
            .expect("procs lock")
            .exits
            .keys()
            .copied()
            .collect();
        for h in handles {
            self.finish(h, 137);
        }
    }
}

/// How long the command runs and how it ends.
fn behaviour(argv: &[String]) -> (Duration, i64) {
    let prog = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or("");
    let mut rng = madsim::rand::thread_rng();
    match prog {
        "true" => (Duration::from_millis(1), 0),
        "false" => (Duration::from_millis(1), 1),
        "sleep" => {
            let s: f64 = argv.get(1).and_then(|v| v.parse().ok()).unwrap_or(1.0);
            (Duration::from_millis((s * 1000.0) as u64), 0)
        }
        _ => (
            Duration::from_millis(rng.gen_range(10..2_000)),
            if rng.gen_range(0..10) == 0 { 1 } else { 0 },
        ),
    }
}

impl Processes for SimProcesses {
    fn spawn(&self, spec: ProcSpec) -> BoxFuture<'static, Result<u64, ProcError>> {
        let (tx, _rx) = watch::channel(None);
        let h = {
            let mut inner = self.inner.lock().expect("procs lock");
            inner.next += 1;
            let h = inner.next;
            inner.exits.insert(h, tx);
            h
        };
        let (runs, code) = behaviour(&spec.argv);
        let me = self.clone();
        madsim::task::spawn(async move {
            madsim::time::sleep(runs).await;
            me.finish(h, code);
        });
        Box::pin(async move { Ok(h) })
    }

    fn wait(&self, handle: u64) -> BoxFuture<'static, Result<i64, ProcError>> {
        let rx = self
            .inner
            .lock()
            .expect("procs lock")
            .exits
            .get(&handle)
            .map(|tx| tx.subscribe());
        Box::pin(async move {
            let mut rx = rx.ok_or(ProcError::NotFound(handle))?;
            loop {
                if let Some(c) = *rx.borrow_and_update() {
                    return Ok(c);
                }
                if rx.changed().await.is_err() {
                    return Ok(-1);
                }
            }
        })
    }

    fn signal(&self, handle: u64, sig: Signal) -> Result<(), ProcError> {
        let code = match sig {
            Signal::Term => 128 + 15,
            Signal::Kill => 128 + 9,
        };
        self.finish(handle, code);
        Ok(())
    }

    fn output(&self, handle: u64) -> Vec<String> {
        vec![format!("simulated process {handle}")]
    }
}
