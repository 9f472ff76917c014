//! Snapshots are written off the event loop: a one-member node goes on committing writes
//! while its snapshot is being written, and the snapshot holds the state at its own
//! index — the clone it was encoded from did not see the writes that followed.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use bytes::Bytes;
use flotilla::kv::{Command, Precondition};
use flotilla::node::{start, ClusterState, Env, NodeConfig};
use flotilla::raft::boot::{read_snapshot_record, META_SNAPSHOT};
use flotilla::raft::{Machine, RaftConfig, RaftHandle};
use flotilla_shims::mem_disk::{MemDisk, MemDiskHandle};
use flotilla_shims::{
    Blob, BoxFuture, Disk, DiskError, Loaded, PeerNet, Producer, TokioClock, TokioSpawn,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

struct NoPeers;

impl PeerNet for NoPeers {
    fn send(&self, _: u64, _: Bytes) {}
    fn set_peer(&self, _: u64, _: &str) {}
    fn remove_peer(&self, _: u64) {}
}

/// A memory disk whose background (blob) writes start producing only when the test
/// lets them, and which counts how many were started and committed.
struct GatedDisk {
    inner: MemDisk,
    gate: Arc<Semaphore>,
    started: Arc<AtomicUsize>,
    committed: Arc<AtomicUsize>,
}

impl Disk for GatedDisk {
    fn log_put(&mut self, index: u64, data: &[u8]) -> Result<(), DiskError> {
        self.inner.log_put(index, data)
    }
    fn log_truncate_from(&mut self, index: u64) -> Result<(), DiskError> {
        self.inner.log_truncate_from(index)
    }
    fn log_truncate_before(&mut self, index: u64) -> Result<(), DiskError> {
        self.inner.log_truncate_before(index)
    }
    fn meta_put(&mut self, key: &str, data: &[u8]) -> Result<(), DiskError> {
        self.inner.meta_put(key, data)
    }
    fn blob_write(
        &mut self,
        key: &str,
        produce: Producer,
    ) -> BoxFuture<'static, Result<Blob, DiskError>> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let (gate, key) = (self.gate.clone(), key.to_string());
        Box::pin(async move {
            let _pass = gate.acquire().await.expect("gate open");
            // Produced only now, after the writes the test made meanwhile.
            MemDiskHandle::new()
                .open(None)
                .blob_write(&key, produce)
                .await
        })
    }
    fn blob_commit(&mut self, blob: Blob) -> Result<(), DiskError> {
        self.committed.fetch_add(1, Ordering::SeqCst);
        self.inner.blob_commit(blob)
    }
    fn sync(&mut self) -> BoxFuture<'_, Result<(), DiskError>> {
        self.inner.sync()
    }
    fn load(&mut self) -> Result<Loaded, DiskError> {
        self.inner.load()
    }
}

fn put(key: String) -> Command {
    Command::Put {
        key,
        value: "v".into(),
        dir: false,
        expire_ms: None,
        refresh: false,
        prev: Precondition::default(),
    }
}

async fn write_keys(h: &RaftHandle, range: std::ops::Range<u32>) {
    for i in range {
        h.write(put(format!("/k/{i}")))
            .await
            .unwrap_or_else(|e| panic!("write /k/{i}: {e}"));
    }
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn writes_commit_while_a_snapshot_is_written_and_the_snapshot_is_of_its_index() {
    let cfg = NodeConfig {
        name: "n0".into(),
        peer_urls: vec!["http://127.0.0.1:1".into()],
        client_urls: vec![],
        initial_cluster: vec![("n0".into(), "http://127.0.0.1:1".into())],
        cluster_state: ClusterState::New,
        raft: RaftConfig {
            snapshot_entries: 20,
            snapshot_log_percent: 0,
            catchup_entries: 5,
            ..RaftConfig::default()
        },
        request_timeout_ms: 5_000,
        value_bytes_max: 1 << 20,
        inbox_inputs_max: 1024,
        cors: Default::default(),
        ui: Default::default(),
        engine: Default::default(),
        agent: None,
        render: None,
    };
    let env = Env {
        clock: Arc::new(TokioClock::new()),
        spawn: Arc::new(TokioSpawn),
        seed: 7,
        agent: None,
        render: None,
    };
    let mem = MemDiskHandle::new();
    let (gate, started, committed) = (
        Arc::new(Semaphore::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let disk = GatedDisk {
        inner: mem.open(None),
        gate: gate.clone(),
        started: started.clone(),
        committed: committed.clone(),
    };
    let (_peer_tx, peer_in) = mpsc::channel(16);
    let node = start(&cfg, &env, Box::new(disk), Arc::new(NoPeers), peer_in)
        .await
        .expect("node starts");
    let driver = tokio::spawn(node.driver.run());
    let h = node.handle;
    // A one-member cluster elects itself after an election timeout.
    let end = Instant::now() + Duration::from_secs(10);
    while h.write(put("/warmup".into())).await.is_err() {
        assert!(Instant::now() < end, "no leader after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    write_keys(&h, 0..30).await;
    until("a snapshot write to start", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    // The snapshot's write is held: the loop must not be.
    write_keys(&h, 30..60).await;
    assert_eq!(
        committed.load(Ordering::SeqCst),
        0,
        "the gate is still shut"
    );
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "one snapshot write at a time"
    );

    gate.add_permits(1);
    until("the snapshot to be committed", || {
        committed.load(Ordering::SeqCst) == 1
    })
    .await;
    // The commit is followed by a sync: wait for it to be durable, then read it back.
    let loaded = {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let l = mem.open(None).load().expect("disk loads");
            if l.meta.contains_key(META_SNAPSHOT) || Instant::now() > end {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let record = loaded.meta.get(META_SNAPSHOT).expect("a snapshot on disk");
    let (meta, data) = read_snapshot_record(record).expect("snapshot record parses");
    let snap = Machine::decode(data).expect("snapshot decodes");
    assert_eq!(
        snap.applied, meta.index,
        "the state is the state at its index"
    );
    assert!(
        snap.store.get("/k/0", false).is_ok(),
        "written before: in it"
    );
    for i in 30..60 {
        assert!(
            snap.store.get(&format!("/k/{i}"), false).is_err(),
            "/k/{i} was written after the snapshot began, yet is in it"
        );
    }
    assert!(
        h.shared.machine().store.get("/k/59", false).is_ok(),
        "the live state has every write"
    );
    let first_kept = loaded.log.keys().next().copied().expect("log entries kept");
    assert_eq!(
        first_kept,
        meta.index - 5 + 1,
        "the log is compacted behind the snapshot, keeping the catch-up entries"
    );
    drop(h);
    driver.abort();
}
