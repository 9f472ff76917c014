//! The production wire code under turmoil's simulated TCP: three hosts each run a real
//! flotilla node with the production peer transport (`StreamTransport`) and the
//! production hyper API server (`serve_conn`), over turmoil's `TcpStream`. Clients speak
//! HTTP to them while the network is partitioned (whole and one-way) and a host crashes
//! (losing unsynced writes) and comes back. The client history must be linearizable
//! (the simulator's checker). Seeded (`rng` and `epoch`), so a seed reproduces a run.
#![cfg(not(madsim))]

use bytes::Bytes;
use flotilla::node::{initial_members, start, ClusterState, Env, NodeConfig};
use flotilla::raft::RaftConfig;
use flotilla_shims::mem_disk::MemDiskHandle;
use flotilla_shims::tcp::{serve_inbound, Connect, StreamTransport};
use flotilla_shims::{BoxFuture, Clock, Spawn, TokioSpawn};
use flotilla_sim::history::{History, Op, Outcome};
use flotilla_sim::linearizability;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;
use turmoil::net::{TcpListener, TcpStream};

const EPOCH_MS: u64 = 1_767_225_600_000;
const NODES: usize = 3;

/// Turmoil's simulated time, as the node's clock.
struct TurmoilClock {
    origin: tokio::time::Instant,
}

impl Clock for TurmoilClock {
    fn now_mono(&self) -> Duration {
        self.origin.elapsed()
    }
    fn now_wall_ms(&self) -> u64 {
        EPOCH_MS + turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

struct TurmoilConnect;

impl Connect for TurmoilConnect {
    type Stream = TcpStream;
    fn connect(&self, addr: String) -> BoxFuture<'static, std::io::Result<TcpStream>> {
        Box::pin(async move { TcpStream::connect(addr).await })
    }
}

fn config(i: usize) -> NodeConfig {
    NodeConfig {
        name: format!("n{i}"),
        peer_urls: vec![format!("http://n{i}:2380")],
        client_urls: vec![format!("http://n{i}:2379")],
        initial_cluster: (0..NODES)
            .map(|j| (format!("n{j}"), format!("http://n{j}:2380")))
            .collect(),
        cluster_state: ClusterState::New,
        raft: RaftConfig {
            tick_ms: 100,
            election_ticks: 10,
            snapshot_entries: 200,
            catchup_entries: 20,
            ..RaftConfig::default()
        },
        request_timeout_ms: 2_000,
        value_bytes_max: 1 << 20,
        inbox_inputs_max: 4096,
        cors: Default::default(),
        ui: Default::default(),
        engine: Default::default(),
        agent: None,
        render: None,
    }
}

async fn node(i: usize, disk: MemDiskHandle) -> turmoil::Result {
    let cfg = config(i);
    let clock: Arc<dyn Clock> = Arc::new(TurmoilClock {
        origin: tokio::time::Instant::now(),
    });
    let spawn: Arc<dyn Spawn> = Arc::new(TokioSpawn);
    let id = initial_members(&cfg)?
        .iter()
        .find(|m| m.name == cfg.name)
        .map(|m| m.id)
        .unwrap_or(0);
    let net = Arc::new(StreamTransport::new(
        id,
        TurmoilConnect,
        clock.clone(),
        spawn.clone(),
    ));
    let (peer_tx, peer_rx) = mpsc::channel(4096);
    let peers = TcpListener::bind("0.0.0.0:2380").await?;
    tokio::spawn(async move {
        while let Ok((s, _)) = peers.accept().await {
            tokio::spawn(serve_inbound(s, peer_tx.clone()));
        }
    });
    let env = Env {
        clock,
        spawn,
        seed: i as u64,
        agent: None,
        render: None,
    };
    let started = start(&cfg, &env, Box::new(disk.open(None)), net, peer_rx).await?;
    let api = TcpListener::bind("0.0.0.0:2379").await?;
    let handler = started.handler.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = api.accept().await {
            tokio::spawn(flotilla_shims::http::serve_conn(
                s,
                handler.clone(),
                1 << 20,
            ));
        }
    });
    started.driver.run().await?;
    Ok(())
}

/// One HTTP request over turmoil TCP. `Err(false)`: nothing was sent (no effect);
/// `Err(true)`: the request may have arrived.
async fn http(
    node: usize,
    method: &str,
    path: &str,
    form: Option<String>,
) -> Result<(u16, serde_json::Value), bool> {
    let stream = TcpStream::connect(format!("n{node}:2379"))
        .await
        .map_err(|_| false)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| false)?;
    tokio::spawn(conn);
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("n{node}"));
    if form.is_some() {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = b
        .body(Full::new(Bytes::from(form.unwrap_or_default())))
        .map_err(|_| false)?;
    let resp = send.send_request(req).await.map_err(|_| true)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| true)?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}

fn outcome(op: &Op, r: Result<(u16, serde_json::Value), bool>) -> Outcome {
    match r {
        Err(false) => Outcome::Failed,
        Err(true) => Outcome::Unknown,
        Ok((status, v)) => match (op, status, v["errorCode"].as_u64()) {
            (Op::Get { .. }, 200, _) => Outcome::Ok(v["node"]["value"].as_str().map(String::from)),
            (Op::Get { .. }, 404, Some(100)) => Outcome::Ok(None),
            (_, 200 | 201, _) => Outcome::Ok(None),
            (_, _, Some(101)) => Outcome::CompareFailed,
            (_, _, Some(100)) => Outcome::NotFound,
            _ => Outcome::Unknown,
        },
    }
}

async fn perform(history: &Mutex<History>, client: u64, node: usize, key: &str, op: Op) -> Outcome {
    let now = || turmoil::sim_elapsed().unwrap_or_default().as_nanos() as u64;
    let id = history
        .lock()
        .unwrap()
        .invoke(client, node as u64, key, op.clone(), now());
    let path = format!("/v2/keys{key}");
    let (method, url, form) = match &op {
        Op::Get { .. } => ("GET", format!("{path}?quorum=true"), None),
        Op::Set { value, .. } => ("PUT", path.clone(), Some(format!("value={value}"))),
        Op::Cas { prev, value } => (
            "PUT",
            format!("{path}?prevValue={prev}"),
            Some(format!("value={value}")),
        ),
        Op::Cad { prev } => ("DELETE", format!("{path}?prevValue={prev}"), None),
        Op::Delete => ("DELETE", path.clone(), None),
    };
    let req = http(node, method, &url, form);
    let out = match tokio::time::timeout(Duration::from_secs(3), req).await {
        Ok(r) => outcome(&op, r),
        Err(_) => Outcome::Unknown,
    };
    history.lock().unwrap().complete(id, out.clone(), now());
    out
}

/// Runs one seeded simulation on a fresh thread whose entropy (raft-rs's election
/// jitter) follows the seed.
fn run(seed: u64) -> History {
    std::thread::spawn(move || {
        getrandom::seed_thread(Some(seed));
        simulate(seed)
    })
    .join()
    .expect("simulation thread")
}

fn simulate(seed: u64) -> History {
    let mut sim = turmoil::Builder::new()
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(Duration::from_secs(120))
        .build_with_rng(Box::new(rand::rngs::StdRng::seed_from_u64(seed)));
    let disks: Vec<MemDiskHandle> = (0..NODES).map(|_| MemDiskHandle::new()).collect();
    for (i, disk) in disks.iter().enumerate() {
        let disk = disk.clone();
        sim.host(format!("n{i}"), move || node(i, disk.clone()));
    }
    let history = Arc::new(Mutex::new(History::default()));
    for c in 0..3u64 {
        let h = history.clone();
        sim.client(format!("c{c}"), async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + c);
            tokio::time::sleep(Duration::from_secs(2)).await;
            for n in 0..120u64 {
                let key = format!("/k{}", rng.gen_range(0..2));
                let node = rng.gen_range(0..NODES);
                let value = format!("c{c}.{n}");
                let op = match rng.gen_range(0..10) {
                    0..=3 => Op::Get { quorum: true },
                    4..=6 => Op::Set { value, ttl: false },
                    7..=8 => Op::Cas {
                        prev: format!(
                            "c{}.{}",
                            rng.gen_range(0..3),
                            n.saturating_sub(rng.gen_range(1..4))
                        ),
                        value,
                    },
                    _ => Op::Delete,
                };
                perform(&h, c, node, &key, op).await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..120))).await;
            }
            Ok(())
        });
    }
    let h = history.clone();
    sim.client("checker", async move {
        tokio::time::sleep(Duration::from_secs(40)).await;
        for k in 0..2 {
            for attempt in 0..9 {
                if let Outcome::Ok(_) = perform(
                    &h,
                    99,
                    attempt % NODES,
                    &format!("/k{k}"),
                    Op::Get { quorum: true },
                )
                .await
                {
                    break;
                }
            }
        }
        Ok(())
    });
    // Faults, at fixed simulated times.
    let mut done = [false; 6];
    loop {
        let t = sim.elapsed().as_secs_f64();
        let mut at = |i: usize, when: f64| {
            let due = !done[i] && t >= when;
            if due {
                done[i] = true;
            }
            due
        };
        if at(0, 4.0) {
            sim.partition("n0", "n1");
            sim.partition("n0", "n2");
        }
        if at(1, 8.0) {
            sim.repair("n0", "n1");
            sim.repair("n0", "n2");
            sim.partition_oneway("n1", "n2");
        }
        if at(2, 12.0) {
            sim.repair_oneway("n1", "n2");
            let victim = (seed % NODES as u64) as usize;
            sim.crash(format!("n{victim}"));
            disks[victim].crash(0);
        }
        if at(3, 15.0) {
            sim.bounce(format!("n{}", seed % NODES as u64));
        }
        if at(4, 18.0) {
            sim.partition("c0", "n1");
        }
        if at(5, 22.0) {
            sim.repair("c0", "n1");
        }
        if sim.step().expect("simulation step") {
            break;
        }
    }
    let out = history.lock().unwrap().clone();
    out
}

#[test]
fn wire_code_under_partitions_and_crashes_is_linearizable() {
    for seed in [1, 2] {
        let h = run(seed);
        let ok = h
            .records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Ok(_)))
            .count();
        assert!(
            ok > 150,
            "seed {seed}: only {ok} of {} operations succeeded",
            h.records.len()
        );
        let finals = h
            .records
            .iter()
            .filter(|r| r.client == 99 && matches!(r.outcome, Outcome::Ok(_)))
            .count();
        assert_eq!(
            finals, 2,
            "seed {seed}: final reads must succeed after healing"
        );
        let verdict = linearizability::check(&h.records);
        assert_eq!(
            verdict,
            linearizability::Verdict::Linearizable,
            "seed {seed} (reproduce: cargo test -p flotilla-sim --test turmoil)"
        );
    }
}

#[test]
fn same_seed_same_history() {
    let strip = |h: History| {
        h.records
            .into_iter()
            .map(|r| (r.client, r.key, r.op, r.outcome, r.invoke_ns))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(run(5)), strip(run(5)));
}
