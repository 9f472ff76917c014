//! A machine's presence: its key under `/_flotilla/machines`, with fleet's agent TTL.
//!
//! The key is written whole once (id, IP, metadata), then kept alive with TTL refreshes,
//! which wake no watcher — a thousand machines heartbeating do not wake the engine. If a
//! refresh finds the key gone (it expired while this machine was cut off), the machine
//! announces itself afresh.
//!
//! Cadence: the agent fences its units once two thirds of the TTL pass without a renewal,
//! so renewals must get through within that. fleet renews at half the TTL, which leaves a
//! sixth of it — less than an election takes with a short TTL, so a change of leader
//! stopped every unit in the cluster (the whole-stack demo showed it). Renewals here come
//! every third of the TTL, each attempt is cut off after a sixth of it (a request stuck
//! on a dead leader must not use up the margin) and a failed one is retried after a
//! thirtieth: a third of the TTL is left for an election.

use crate::client::{ClientError, KvClient, SetOpts};
use crate::kv::Precondition;
use crate::sched::registry::{machine_key, MachineRecord};
use flotilla_shims::Clock;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub id: String,
    pub public_ip: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    /// fleet's `agent_ttl` (30 s by default), whole seconds as etcd's TTLs are.
    pub ttl_s: u64,
    /// Where this machine's agent answers journal requests (`http://host:port`), if
    /// anywhere.
    pub agent_url: String,
}

impl MachineConfig {
    pub fn record(&self) -> MachineRecord {
        MachineRecord {
            id: self.id.clone(),
            primary_ip: self.public_ip.clone(),
            metadata: self.metadata.clone(),
            agent_url: self.agent_url.clone(),
            agent_ttl_s: self.ttl_s,
        }
    }
}

/// The monotonic time (since the clock's origin) of the last renewal the store
/// acknowledged; `None` before the first.
pub type Renewed = watch::Receiver<Option<Duration>>;

/// Keeps the machine's key alive forever; `renewed` learns of every acknowledged renewal.
pub async fn run(
    kv: Arc<dyn KvClient>,
    clock: Arc<dyn Clock>,
    cfg: MachineConfig,
    renewed: watch::Sender<Option<Duration>>,
) {
    let key = machine_key(&cfg.id);
    let value = serde_json::to_string(&cfg.record()).expect("machine record serializes");
    let ttl = Duration::from_secs(cfg.ttl_s.max(1));
    let mut announced = false;
    loop {
        let started = clock.now_mono();
        let attempt = async {
            if announced {
                refresh(&*kv, &key, cfg.ttl_s).await
            } else {
                announce(&*kv, &key, &value, cfg.ttl_s).await
            }
        };
        let result = tokio::select! {
            biased;
            r = attempt => r,
            _ = clock.sleep(ttl / 6) => Err(ClientError::Unavailable("timed out".into())),
        };
        let wait = match result {
            Ok(()) => {
                announced = true;
                renewed.send_replace(Some(started));
                ttl / 3
            }
            Err(ClientError::Store(e)) if e.code == crate::kv::error::KEY_NOT_FOUND => {
                tracing::warn!(machine = %cfg.id, "machine key expired; announcing again");
                announced = false;
                Duration::ZERO
            }
            Err(e) => {
                tracing::debug!(machine = %cfg.id, error = %e, "machine heartbeat failed");
                ttl / 30
            }
        };
        clock.sleep(wait.max(Duration::from_millis(50))).await;
    }
}

async fn announce(
    kv: &dyn KvClient,
    key: &str,
    value: &str,
    ttl_s: u64,
) -> Result<(), ClientError> {
    let opts = SetOpts {
        ttl_s: Some(ttl_s),
        ..Default::default()
    };
    kv.set(key, value, opts).await.map(|_| ())
}

async fn refresh(kv: &dyn KvClient, key: &str, ttl_s: u64) -> Result<(), ClientError> {
    let opts = SetOpts {
        ttl_s: Some(ttl_s),
        refresh: true,
        prev: Precondition {
            exist: Some(true),
            ..Default::default()
        },
        ..Default::default()
    };
    kv.set(key, "", opts).await.map(|_| ())
}
