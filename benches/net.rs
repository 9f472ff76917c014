//! Network benchmark, per backend (host-gw, vxlan, wireguard), on machines that are
//! network namespaces on a bridge (as `tests/net.rs` makes them), each running
//! `flotilla agent --network`, one member on the bridge's address:
//!
//! 1. TCP throughput subnet → subnet across two machines (iperf3, 5 s, from an address of
//!    one machine's lease to one of the other's), beside host → host on the same
//!    underlay; the agents' CPU (user + system) over the run, per Gbit/s carried — the
//!    WireGuard data path runs inside the agent (userspace).
//! 2. Lease and routes: from the second machine's start until it holds a lease and both
//!    machines route to each other's subnet.
//! 3. Expiry: a machine killed; from its lease's expiry in the store (polled every 10 ms)
//!    until the other machine's route to it is gone.
//!
//! Run (root; installs iperf3 with apt if missing):
//!
//!     cargo bench --bench net       # BENCH_SECONDS=5
#![allow(clippy::disallowed_methods, clippy::disallowed_types, dead_code)]

#[path = "../tests/common/netns.rs"]
mod netns;

use netns::{tag, Bridge, Netns};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LEASE_TTL: &str = "3s";

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn out(cmd: &mut Command) -> String {
    let o = cmd.output().expect("command runs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) a process has used.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn agent(ns: &Netns, member: &str, dir: &std::path::Path) -> Kill {
    let name = &ns.name;
    let child = ns
        .command(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "agent",
            "--network",
            "--docker-network=none",
            "--agent-ttl=5s",
        ])
        .arg(format!("--endpoints={member}"))
        .arg(format!("--listen=http://{}:2391", ns.addr))
        .arg(format!("--machine-id={name}"))
        .arg(format!("--data-dir={}", dir.join(name).display()))
        .arg(format!(
            "--subnet-file={}",
            dir.join(format!("{name}.env")).display()
        ))
        .arg(format!("--subnet-lease-ttl={LEASE_TTL}"))
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flotilla agent starts");
    Kill(child)
}

/// (subnet `10.x.y.0/24`, its first address) from a machine's subnet file.
fn lease(dir: &std::path::Path, ns: &Netns) -> Option<(String, String)> {
    netns::lease_in(&dir.join(format!("{}.env", ns.name)))
}

fn routes(ns: &Netns) -> String {
    out(Command::new("ip").args(["-n", &ns.name, "route"]))
}

fn wait(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// iperf3 from `from` (bound to `src`) to `dst` on `to`: Gbit/s.
fn iperf(from: &Netns, src: &str, to: &Netns, dst: &str, secs: u64) -> f64 {
    let _server = Kill(
        to.command("iperf3")
            .args(["-s", "-1", "-B", dst])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let json =
        out(from
            .command("iperf3")
            .args(["-J", "-c", dst, "-B", src, "-t", &secs.to_string()]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

struct Row {
    backend: &'static str,
    gbps: f64,
    cpu_per_gbps: f64,
    lease_routes_ms: u128,
    expiry_ms: u128,
}

fn backend_run(i: usize, backend: &'static str, secs: u64, baseline: &mut Option<f64>) -> Row {
    let t = format!("b{i}{}", tag());
    let octet = 1 + std::process::id() % 250;
    let mut bridge = Bridge::new(&format!("flb{t}"), &format!("10.9{i}.{octet}.1/24"));
    bridge.allow_forwarding();
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (port(), port());
    let member = format!("http://{}:{c}", bridge.addr);
    let _node = Kill(
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["node", "--no-agent"])
            .arg(format!(
                "--data-dir={}",
                dir.path().join("member").display()
            ))
            .arg(format!("--listen-client-urls={member}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{p}"))
            .env("FLOTILLA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("member"),
    );
    wait("the member", Duration::from_secs(20), || {
        out(Command::new("curl").args(["-s", &format!("{member}/health")])).contains("true")
    });
    let init = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "net",
            &format!("--endpoints={member}"),
            "init",
            &format!("10.21{i}.0.0/16"),
            "--backend",
            backend,
        ])
        .output()
        .unwrap();
    assert!(init.status.success(), "net init: {init:?}");
    let a = Netns::new(
        &format!("flb{i}a{t}"),
        &bridge,
        &format!("10.9{i}.{octet}.10/24"),
    );
    let b = Netns::new(
        &format!("flb{i}b{t}"),
        &bridge,
        &format!("10.9{i}.{octet}.11/24"),
    );
    if baseline.is_none() {
        *baseline = Some(iperf(&a, &a.addr, &b, &b.addr, secs));
    }
    let ag_a = agent(&a, &member, dir.path());
    wait("a's lease", Duration::from_secs(20), || {
        lease(dir.path(), &a).is_some()
    });
    let started = Instant::now();
    let mut ag_b = agent(&b, &member, dir.path());
    wait("lease and routes", Duration::from_secs(20), || {
        let (Some(la), Some(lb)) = (lease(dir.path(), &a), lease(dir.path(), &b)) else {
            return false;
        };
        routes(&a).contains(&format!("{} via", lb.0))
            && routes(&b).contains(&format!("{} via", la.0))
    });
    let lease_routes_ms = started.elapsed().as_millis();
    let (la, lb) = (
        lease(dir.path(), &a).unwrap(),
        lease(dir.path(), &b).unwrap(),
    );
    for (ns, (net, gw)) in [(&a, &la), (&b, &lb)] {
        let len = net.split('/').nth(1).unwrap();
        ns.hold_address(&format!("{gw}/{len}"));
    }
    let cpu0 = cpu_s(ag_a.0.id()) + cpu_s(ag_b.0.id());
    let gbps = iperf(&a, &la.1, &b, &lb.1, secs);
    let cpu = cpu_s(ag_a.0.id()) + cpu_s(ag_b.0.id()) - cpu0;
    // Expiry: b dies; its lease leaves the store after the TTL; then a's route to it.
    let _ = ag_b.0.kill();
    let _ = ag_b.0.wait();
    let key = format!(
        "{member}/v2/keys/coreos.com/network/subnets/{}",
        lb.0.replace('/', "-")
    );
    wait("b's lease expires", Duration::from_secs(30), || {
        out(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &key]))
            == "404"
    });
    let expired = Instant::now();
    wait("a's route to b leaves", Duration::from_secs(30), || {
        !routes(&a).contains(&format!("{} via", lb.0))
    });
    let expiry_ms = expired.elapsed().as_millis();
    drop(ag_a);
    Row {
        backend,
        gbps,
        cpu_per_gbps: if gbps > 0.0 {
            cpu / secs as f64 / gbps
        } else {
            0.0
        },
        lease_routes_ms,
        expiry_ms,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if Command::new("iperf3").arg("-v").output().is_err() {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-qq", "iperf3"])
            .status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "iperf3 is needed (apt-get install iperf3)"
        );
    }
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut baseline = None;
    let rows: Vec<Row> = ["host-gw", "vxlan", "wireguard"]
        .iter()
        .enumerate()
        .map(|(i, b)| backend_run(i, b, secs, &mut baseline))
        .collect();
    let base = baseline.unwrap_or(0.0);
    println!("host -> host on the underlay: {base:.2} Gbit/s ({secs} s)");
    println!("backend     Gbit/s  x host  agents' CPU s per s per Gbit/s  lease+routes ms  expiry->route gone ms");
    for r in rows {
        println!(
            "{:<10} {:>7.2} {:>7.2} {:>31.3} {:>16} {:>22}",
            r.backend,
            r.gbps,
            if base > 0.0 { r.gbps / base } else { 0.0 },
            r.cpu_per_gbps,
            r.lease_routes_ms,
            r.expiry_ms
        );
    }
}
