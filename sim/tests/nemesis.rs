//! A real cluster of containers under a nemesis on real sockets: three members, each in
//! its own container from the locally built image (`scripts/build-image`), on two Docker
//! networks this test creates — one for peers, one for clients — so a partition
//! (disconnecting a member from the peer network) leaves it answering clients. Faults:
//! partitions, `docker kill` + restart, `docker pause`/`unpause`, then a rolling restart. Clients record every
//! operation's invocation and completion; the history goes through the simulator's own
//! checker (`flotilla_sim::linearizability`). The same harness against three etcd 3.4
//! containers (Debian's binary) passes with quorum reads and must fail when its local
//! reads are taken as linearizable: the checker has teeth on real histories.
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use flotilla_sim::history::{History, Op, Outcome};
use flotilla_sim::linearizability;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEYS: usize = 3;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker").args(args).output();
}

fn build_images() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let bin = format!("{root}/target/debug/flotilla");
    if !std::path::Path::new(&bin).exists() {
        let ok = Command::new("cargo")
            .args(["build", "--bin", "flotilla"])
            .current_dir(root)
            .status()
            .expect("cargo build");
        assert!(ok.success(), "building flotilla for the image");
    }
    let out = Command::new(format!("{root}/scripts/build-image"))
        .arg("--etcd")
        .env("FLOTILLA", &bin)
        .output()
        .expect("scripts/build-image");
    assert!(
        out.status.success(),
        "scripts/build-image failed (Docker and etcd-server are needed): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three members in containers on a peer network and a client network.
struct Cluster {
    names: Vec<String>,
    peer_net: String,
    peer_ips: Vec<String>,
    client_ips: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &self.names {
            docker_quiet(&["rm", "-f", n]);
        }
        docker_quiet(&["network", "rm", &self.peer_net]);
        docker_quiet(&["network", "rm", &self.peer_net.replace("peers", "clients")]);
    }
}

fn start(kind: &str, tag: u32) -> Cluster {
    let id = std::process::id();
    let peer_net = format!("nem-{kind}-peers-{id}");
    let client_net = format!("nem-{kind}-clients-{id}");
    let (p, c) = (format!("10.{}.{tag}", 200), format!("10.{}.{tag}", 201));
    docker(&[
        "network",
        "create",
        "--subnet",
        &format!("{p}.0/24"),
        &peer_net,
    ]);
    docker(&[
        "network",
        "create",
        "--subnet",
        &format!("{c}.0/24"),
        &client_net,
    ]);
    let peer_ips: Vec<String> = (0..3).map(|i| format!("{p}.{}", 10 + i)).collect();
    let client_ips: Vec<String> = (0..3).map(|i| format!("{c}.{}", 10 + i)).collect();
    let cluster = (0..3)
        .map(|i| format!("n{i}=http://{}:2380", peer_ips[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut names = vec![];
    for i in 0..3 {
        let name = format!("nem-{kind}-{id}-n{i}");
        let peer = format!("http://{}:2380", peer_ips[i]);
        let client = format!("http://{}:2379", client_ips[i]);
        let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", &peer_net]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--ip".into(), peer_ips[i].clone()]);
        if kind == "etcd" {
            args.extend([
                "flotilla/etcd:3.4".into(),
                format!("--name=n{i}"),
                "--data-dir=/data/etcd".into(),
                "--enable-v2=true".into(),
                "--listen-client-urls=http://0.0.0.0:2379".into(),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={cluster}"),
            ]);
        } else {
            args.extend([
                "flotilla:local".into(),
                "node".into(),
                format!("--name=n{i}"),
                "--data-dir=/data/flotilla".into(),
                "--listen-client-urls=http://0.0.0.0:2379".into(),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-cluster={cluster}"),
                "--no-agent".into(),
            ]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&argv);
        docker(&[
            "network",
            "connect",
            "--ip",
            &client_ips[i],
            &client_net,
            &name,
        ]);
        names.push(name);
    }
    Cluster {
        names,
        peer_net,
        peer_ips,
        client_ips,
    }
}

/// One HTTP/1.1 request on a fresh connection. `Err(true)`: it may have reached the
/// node (unknown); `Err(false)`: it certainly did not.
fn http(ip: &str, method: &str, path: &str, form: Option<&str>) -> Result<(u16, String), bool> {
    let addr: SocketAddr = format!("{ip}:2379").parse().expect("address");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|_| false)?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let body = form.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|_| true)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|_| true)?;
    let status: u16 = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(true)?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked bodies: the JSON object is all we need.
    let json = body
        .find('{')
        .and_then(|a| body.rfind('}').map(|b| body[a..=b].to_string()))
        .unwrap_or_default();
    Ok((status, json))
}

fn outcome(op: &Op, r: Result<(u16, String), bool>) -> Outcome {
    let Ok((status, body)) = r else {
        return if r == Err(false) {
            Outcome::Failed
        } else {
            Outcome::Unknown
        };
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match (status, v["errorCode"].as_u64()) {
        (200 | 201, _) => match op {
            Op::Get { .. } => Outcome::Ok(v["node"]["value"].as_str().map(String::from)),
            _ => Outcome::Ok(None),
        },
        (404, Some(100)) if matches!(op, Op::Get { .. }) => Outcome::Ok(None),
        (404, Some(100)) => Outcome::NotFound,
        (412, Some(101)) => Outcome::CompareFailed,
        _ => Outcome::Unknown,
    }
}

/// Clients (one per member) issuing reads, writes and compare-and-swaps until `stop`.
/// `local_as_linearizable`: local reads are recorded as if they were quorum reads (the
/// control run that must fail).
fn clients(
    c: &Cluster,
    t0: Instant,
    stop: Arc<AtomicBool>,
    local_as_linearizable: bool,
    quorum_reads: bool,
) -> Arc<Mutex<History>> {
    let history = Arc::new(Mutex::new(History::default()));
    let mut threads = vec![];
    for (ci, ip) in c.client_ips.iter().enumerate() {
        let (ip, stop, history) = (ip.clone(), stop.clone(), history.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(ci as u64);
            let mut n = 0u64;
            let mut last: Vec<Option<String>> = vec![None; KEYS];
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let k = rng.gen_range(0..KEYS);
                let key = format!("/nem/k{k}");
                let (op, method, path, form) = match rng.gen_range(0..10) {
                    0..=3 => {
                        let quorum = quorum_reads && rng.gen_bool(0.5);
                        let q = if quorum { "?quorum=true" } else { "" };
                        let recorded = Op::Get {
                            quorum: quorum || local_as_linearizable,
                        };
                        (recorded, "GET", format!("/v2/keys{key}{q}"), None)
                    }
                    4..=7 => {
                        let value = format!("c{ci}.{n}");
                        let form = format!("value={value}");
                        let op = Op::Set { value, ttl: false };
                        (op, "PUT", format!("/v2/keys{key}"), Some(form))
                    }
                    _ => {
                        let prev = last[k].clone().unwrap_or_else(|| "none".into());
                        let value = format!("c{ci}.{n}");
                        let form = format!("value={value}&prevValue={prev}");
                        let op = Op::Cas { prev, value };
                        (op, "PUT", format!("/v2/keys{key}"), Some(form))
                    }
                };
                let now = || t0.elapsed().as_nanos() as u64;
                let id =
                    history
                        .lock()
                        .unwrap()
                        .invoke(ci as u64, ci as u64, &key, op.clone(), now());
                let r = http(&ip, method, &path, form.as_deref());
                let out = outcome(&op, r);
                if let Outcome::Ok(Some(v)) = &out {
                    last[k] = Some(v.clone());
                }
                history.lock().unwrap().complete(id, out, now());
                std::thread::sleep(Duration::from_millis(rng.gen_range(5..40)));
            }
        }));
    }
    // The threads are joined by the caller through the history's Arc count.
    std::mem::forget(threads);
    history
}

#[derive(Debug, Default)]
struct Faults {
    partitions: u32,
    kills: u32,
    pauses: u32,
    /// Members restarted one after another (`docker restart`), each back before the next.
    rolling_restarts: u32,
}

/// Every member restarted in turn, the next only once the last answers again.
fn rolling_restart(c: &Cluster, f: &mut Faults) {
    for (i, name) in c.names.iter().enumerate() {
        docker(&["restart", "-t", "2", name]);
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if matches!(
                http(&c.client_ips[i], "GET", "/v2/keys/nem?quorum=true", None),
                Ok((200 | 404, _))
            ) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        f.rolling_restarts += 1;
    }
}

/// Faults for `secs`: a member cut off from its peers, killed and restarted, or paused.
fn nemesis(c: &Cluster, secs: u64, seed: u64, kinds: &[&str]) -> Faults {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = Faults::default();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut round = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..1500)));
        let i = rng.gen_range(0..3);
        let name = &c.names[i];
        // Every kind in turn, on a member drawn from the seed.
        round += 1;
        match kinds[round % kinds.len()] {
            "partition" => {
                docker(&["network", "disconnect", &c.peer_net, name]);
                std::thread::sleep(Duration::from_millis(rng.gen_range(2000..4000)));
                docker(&[
                    "network",
                    "connect",
                    "--ip",
                    &c.peer_ips[i],
                    &c.peer_net,
                    name,
                ]);
                f.partitions += 1;
            }
            "kill" => {
                docker(&["kill", name]);
                std::thread::sleep(Duration::from_millis(rng.gen_range(500..2000)));
                docker(&["start", name]);
                f.kills += 1;
            }
            _ => {
                docker(&["pause", name]);
                std::thread::sleep(Duration::from_millis(rng.gen_range(500..2500)));
                docker(&["unpause", name]);
                f.pauses += 1;
            }
        }
    }
    f
}

fn wait_ready(c: &Cluster) {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        let ok = c.client_ips.iter().all(|ip| {
            matches!(
                http(ip, "PUT", "/v2/keys/nem/ready", Some("value=1")),
                Ok((200 | 201, _))
            )
        });
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("cluster did not become ready");
}

/// Runs clients under the nemesis, heals, reads every key once more through a quorum
/// read, and returns the history and the faults.
fn campaign(
    c: &Cluster,
    secs: u64,
    kinds: &[&str],
    local_as_linearizable: bool,
    quorum_reads: bool,
) -> (History, Faults) {
    wait_ready(c);
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = clients(c, t0, stop.clone(), local_as_linearizable, quorum_reads);
    let mut faults = nemesis(c, secs, 7, kinds);
    if kinds.contains(&"kill") {
        rolling_restart(c, &mut faults);
    }
    stop.store(true, Ordering::Relaxed);
    while Arc::strong_count(&history) > 1 {
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_ready(c);
    let mut h = Arc::try_unwrap(history).ok().unwrap().into_inner().unwrap();
    for k in 0..KEYS {
        let key = format!("/nem/k{k}");
        let op = Op::Get { quorum: true };
        let now = || t0.elapsed().as_nanos() as u64;
        let id = h.invoke(99, 0, &key, op.clone(), now());
        let r = http(
            &c.client_ips[0],
            "GET",
            &format!("/v2/keys{key}?quorum=true"),
            None,
        );
        h.complete(id, outcome(&op, r), now());
    }
    (h, faults)
}

/// Every member holds the same values once healed.
fn converged(c: &Cluster) -> bool {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let views: Vec<Vec<String>> = c
            .client_ips
            .iter()
            .map(|ip| {
                (0..KEYS)
                    .map(|k| {
                        http(ip, "GET", &format!("/v2/keys/nem/k{k}"), None)
                            .map(|(_, b)| b)
                            .unwrap_or_default()
                    })
                    .map(|b| {
                        let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
                        v["node"]["value"].as_str().unwrap_or("-").to_string()
                    })
                    .collect()
            })
            .collect();
        if views.windows(2).all(|w| w[0] == w[1]) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    false
}

fn summary(name: &str, h: &History, f: &Faults, verdict: &Result<(), String>) {
    let ok = h
        .records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ok(_)))
        .count();
    println!(
        "{name}: {} operations ({ok} ok), faults {f:?}, linearizability: {}",
        h.records.len(),
        match verdict {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("VIOLATION: {}", e.lines().next().unwrap_or("")),
        }
    );
}

#[test]
fn a_container_cluster_under_a_nemesis_stays_linearizable_and_etcds_local_reads_do_not() {
    build_images();
    // flotilla: every fault kind, local and quorum reads (local ones are not claimed
    // linearizable, as in etcd).
    let fl = start("flotilla", 10 + std::process::id() % 100);
    let (h, f) = campaign(&fl, 20, &["partition", "kill", "pause"], false, true);
    let verdict = linearizability::check(&h.records);
    summary("flotilla", &h, &f, &verdict);
    assert!(verdict.is_ok(), "flotilla's history: {verdict:?}");
    assert!(converged(&fl), "flotilla's members did not converge");
    assert!(
        f.partitions >= 1 && f.kills >= 1 && f.pauses >= 1 && f.rolling_restarts == 3,
        "every fault kind at least once: {f:?}"
    );
    drop(fl);

    // etcd with quorum reads: passes the same checker.
    let et = start("etcd", 110 + std::process::id() % 100);
    let (h, f) = campaign(&et, 12, &["partition", "kill"], false, true);
    let verdict = linearizability::check(&h.records);
    summary("etcd (quorum reads)", &h, &f, &verdict);
    assert!(verdict.is_ok(), "etcd's quorum history: {verdict:?}");
    drop(et);

    // etcd with local reads taken as linearizable: a member cut off from its peers keeps
    // answering old values, and the checker must say so.
    let et = start("etcd", 210 + std::process::id() % 40);
    let (h, f) = campaign(&et, 15, &["partition"], true, false);
    let verdict = linearizability::check(&h.records);
    summary("etcd (local reads)", &h, &f, &verdict);
    assert!(
        verdict.is_err(),
        "the checker found nothing wrong with etcd's local reads under partitions: no teeth"
    );
}
