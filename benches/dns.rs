//! DNS benchmark: questions per second and latency of a node's DNS (`--dns-addr`) over
//! SkyDNS records in the store.
//!
//! A single member (`--no-agent`) answers on 127.0.0.1; `BENCH_NAMES` names (default 100)
//! under `/skydns/local/bench/`, three records each, are written over the HTTP API; then
//! `BENCH_CLIENTS` (default 32) UDP clients, each with one question in flight, ask A
//! questions round-robin over the names for `BENCH_SECONDS` (default 5). Every reply is
//! checked (NOERROR, three answers). The load generator shares the machine's cores with
//! the node, so the figures are a floor.
//!
//! Run:
//!
//!     cargo bench --bench dns
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use flotilla_shims::dns::proto::op::{Message, Query};
use flotilla_shims::dns::proto::rr::{Name, RecordType};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn port() -> u16 {
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// The node's process and its data dir (removed when dropped).
struct Node(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(dns_port: u16) -> (Node, String) {
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (port(), port());
    let url = format!("http://127.0.0.1:{c}");
    let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "node",
            "--no-agent",
            &format!("--data-dir={}", dir.path().display()),
            &format!("--listen-client-urls={url}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{p}"),
            &format!("--initial-cluster=default=http://127.0.0.1:{p}"),
            &format!("--dns-addr=127.0.0.1:{dns_port}"),
        ])
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flotilla");
    let end = Instant::now() + Duration::from_secs(20);
    while !curl(&["-s", &format!("{url}/health")]).contains("true") {
        assert!(Instant::now() < end, "the node did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Node(child, dir), url)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(args).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn question(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// One client: one question in flight; its latencies (µs) and bad replies.
async fn client(
    server: String,
    names: Arc<Vec<String>>,
    first: usize,
    until: Instant,
) -> (Vec<u32>, u64) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(&server).await.unwrap();
    let (mut lat, mut bad, mut buf) = (vec![], 0u64, vec![0u8; 1500]);
    let mut i = first;
    while Instant::now() < until {
        let q = question(&names[i % names.len()], i as u16);
        i += 1;
        let t = Instant::now();
        sock.send(&q).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await;
        match got {
            Ok(Ok(n)) => {
                lat.push(t.elapsed().as_micros() as u32);
                let ok = Message::from_vec(&buf[..n])
                    .map(|m| m.answers().len() == 3 && m.id() == q_id(&q))
                    .unwrap_or(false);
                bad += u64::from(!ok);
            }
            _ => bad += 1,
        }
    }
    (lat, bad)
}

fn q_id(q: &[u8]) -> u16 {
    u16::from_be_bytes([q[0], q[1]])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let names_n = env_or("BENCH_NAMES", 100) as usize;
    let clients = env_or("BENCH_CLIENTS", 32) as usize;
    let secs = env_or("BENCH_SECONDS", 5);
    let dns_port = port();
    let (_node, url) = start_node(dns_port);
    let mut names = vec![];
    for i in 0..names_n {
        for j in 1..=3 {
            let v = format!(
                "value={{\"host\":\"10.{}.{}.{j}\",\"port\":80}}",
                i / 250,
                i % 250
            );
            curl(&[
                "-s",
                "-X",
                "PUT",
                &format!("{url}/v2/keys/skydns/local/bench/svc{i}/{j}"),
                "-d",
                &v,
            ]);
        }
        names.push(format!("svc{i}.bench.local."));
    }
    let names = Arc::new(names);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = format!("127.0.0.1:{dns_port}");
    // Warm up, and wait until the node's mirror holds every record.
    rt.block_on(async {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, bad) = client(
                server.clone(),
                names.clone(),
                0,
                Instant::now() + Duration::from_millis(300),
            )
            .await;
            if bad == 0 || Instant::now() > end {
                break;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| tokio::spawn(client(server.clone(), names.clone(), c * 7, until)))
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64();
    let bad: u64 = results.iter().map(|r| r.1).sum();
    let mut lat: Vec<u32> = results.into_iter().flat_map(|r| r.0).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!("dns: {names_n} names x 3 records, {clients} clients, {secs} s");
    println!(
        "  {:.0} questions/s, p50 {:.2} ms, p99 {:.2} ms, {} answered, {bad} bad or lost",
        lat.len() as f64 / elapsed,
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        lat.len()
    );
}
