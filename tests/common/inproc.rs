//! A one-member cluster in this process, reached through [`InProc`] (no HTTP): for tests
//! that drive the node's parts by hand.

use bytes::Bytes;
use flotilla::client::inproc::InProc;
use flotilla::node::{start, ClusterState, Env, NodeConfig};
use flotilla::raft::RaftConfig;
use flotilla::sched::engine::EngineConfig;
use flotilla_shims::mem_disk::MemDiskHandle;
use flotilla_shims::{PeerNet, TokioClock, TokioSpawn};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

struct NoPeers;

impl PeerNet for NoPeers {
    fn send(&self, _: u64, _: Bytes) {}
    fn set_peer(&self, _: u64, _: &str) {}
    fn remove_peer(&self, _: u64) {}
}

/// A leader of one, its scheduling engine off, on an in-memory disk.
pub async fn one_member() -> InProc {
    let cfg = NodeConfig {
        name: "n0".into(),
        peer_urls: vec!["http://127.0.0.1:1".into()],
        client_urls: vec![],
        initial_cluster: vec![("n0".into(), "http://127.0.0.1:1".into())],
        cluster_state: ClusterState::New,
        raft: RaftConfig::default(),
        request_timeout_ms: 5_000,
        value_bytes_max: 1 << 20,
        inbox_inputs_max: 1024,
        cors: Default::default(),
        ui: Default::default(),
        engine: EngineConfig {
            enabled: false,
            ..Default::default()
        },
        agent: None,
        render: None,
    };
    let clock = Arc::new(TokioClock::new());
    let env = Env {
        clock: clock.clone(),
        spawn: Arc::new(TokioSpawn),
        seed: 11,
        agent: None,
        render: None,
    };
    let (_tx, peer_in) = mpsc::channel(16);
    std::mem::forget(_tx);
    let node = start(
        &cfg,
        &env,
        Box::new(MemDiskHandle::new().open(None)),
        Arc::new(NoPeers),
        peer_in,
    )
    .await
    .expect("node starts");
    tokio::spawn(node.driver.run());
    let kv = InProc::new(node.handle, clock);
    let end = Instant::now() + Duration::from_secs(10);
    while !kv.raft.shared.status().is_leader {
        assert!(Instant::now() < end, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kv
}
