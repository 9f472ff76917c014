//! Renderer benchmark, beside the confd 0.16 figures in issue 13 (confd itself needs a Go
//! toolchain this machine does not have): 10,000 keys under one prefix and a
//! `range getvs` template, against a flotilla node and against etcd 3.4.
//!
//! 1. `flotilla confd --onetime`, end to end (process start to exit, the file written):
//!    p50 and max over `BENCH_RUNS` runs (default 10), and its peak resident memory.
//! 2. The render alone (template + 10,000 values → text), in process.
//! 3. `--watch`: from a key's change (the PUT's answer) to the rewritten file, p50 and max
//!    over `BENCH_RUNS` × 5 changes; the watcher's resident memory after them.
//!
//! Run:
//!
//!     cargo bench --bench confd
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use flotilla::render::funcs::Ctx;
use flotilla::render::memkv::MemKv;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 10_000;
const TMPL: &str =
    "upstream app {\n{{range getvs \"/services/bench/*\"}}  server {{.}};\n{{end}}}\n";
const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn value(i: usize, gen: usize) -> String {
    format!("10.{}.{}.{}:{}", gen % 250, i / 250, i % 250, 8000 + gen)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn load(c: &Http, url: &str) {
    let mut futs = Vec::new();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(KEYS / 16) {
        let (c, url, chunk) = (c.clone(), url.to_string(), chunk.to_vec());
        futs.push(tokio::spawn(async move {
            for i in chunk {
                let form = format!("value={}", value(i, 0));
                let key = format!("{url}/v2/keys/services/bench/k{i:05}");
                let r = call(&c, "PUT", &key, Some(&form)).await.unwrap();
                assert!(r.status < 300, "{}", r.text);
            }
        }));
    }
    for f in futs {
        f.await.unwrap();
    }
}

fn confdir(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("templates/bench.tmpl"), TMPL).unwrap();
    let res = format!(
        "[template]\nsrc = \"bench.tmpl\"\ndest = {:?}\nkeys = [\"/services/bench\"]\n",
        dir.join("bench.conf").display().to_string()
    );
    std::fs::write(dir.join("conf.d/bench.toml"), res).unwrap();
    dir.display().to_string()
}

/// Runs `flotilla confd --onetime`; wall time (ms) and peak resident memory (KiB).
/// (`wait4` reaps the child, which clippy cannot see.)
#[allow(clippy::zombie_processes)]
fn onetime(dir: &str, url: &str) -> (f64, i64) {
    let t0 = Instant::now();
    let child = Command::new(BIN)
        .args([
            "confd",
            "--onetime",
            "--log-level",
            "error",
            "--confdir",
            dir,
            "--node",
            url,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as i32;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    assert!(r == pid && status == 0, "confd --onetime failed ({status})");
    (ms, usage.ru_maxrss)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn bench(name: &str, url: &str, runs: usize) {
    let c = client();
    let t = Instant::now();
    load(&c, url).await;
    println!(
        "{name}: {KEYS} keys loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let cd = confdir(dir.path());
    let dest = dir.path().join("bench.conf");
    let (mut times, mut peak) = (vec![], 0);
    for _ in 0..runs {
        let _ = std::fs::remove_file(&dest);
        let (ms, kib) = onetime(&cd, url);
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap().lines().count(),
            KEYS + 2
        );
        times.push(ms);
        peak = peak.max(kib);
    }
    println!(
        "{name}: --onetime p50 {:.1} ms, max {:.1} ms, peak RSS {:.1} MiB",
        pct(&mut times, 0.5),
        pct(&mut times, 1.0),
        peak as f64 / 1024.0
    );

    let mut child = Command::new(BIN)
        .args([
            "confd",
            "--watch",
            "--log-level",
            "error",
            "--confdir",
            &cd,
            "--node",
            url,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut lat = vec![];
    for n in 0..runs * 5 {
        let i = (n * 7919) % KEYS;
        let v = value(i, n + 1);
        let form = format!("value={v}");
        let key = format!("{url}/v2/keys/services/bench/k{i:05}");
        let r = call(&c, "PUT", &key, Some(&form)).await.unwrap();
        let t0 = Instant::now();
        assert!(r.status < 300);
        let needle = format!("server {v};");
        while !std::fs::read_to_string(&dest)
            .unwrap_or_default()
            .contains(&needle)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "change never rendered"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{name}: --watch change → file p50 {:.1} ms, max {:.1} ms (n={}), watcher RSS {:.1} MiB",
        pct(&mut lat, 0.5),
        pct(&mut lat, 1.0),
        lat.len(),
        rss as f64 / 1024.0
    );
}

fn render_alone(runs: usize) {
    let mut kv = MemKv::new();
    for i in 0..KEYS {
        kv.set(&format!("/services/bench/k{i:05}"), &value(i, 0));
    }
    let kv = Arc::new(kv);
    let host = Arc::new(flotilla_shims::host::FixedHost::default());
    let mut times = vec![];
    for _ in 0..runs * 2 {
        let ctx = Arc::new(Ctx {
            kv: kv.clone(),
            host: host.clone(),
            now_ms: 0,
        });
        let t0 = Instant::now();
        let out = flotilla::render::template::render("bench.tmpl", TMPL, ctx).unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out.lines().count(), KEYS + 2);
    }
    println!(
        "render alone ({KEYS} values): p50 {:.2} ms, max {:.2} ms",
        pct(&mut times, 0.5),
        pct(&mut times, 1.0)
    );
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    render_alone(runs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client();
        let mut cluster = Cluster::new(1, &[]);
        cluster.start_all();
        let url = cluster.nodes[0].client_url.clone();
        wait_healthy(&c, &url).await;
        bench("flotilla", &url, runs).await;
        drop(cluster);
        if Command::new("etcd").arg("--version").output().is_ok() {
            let etcd = start_etcd(&c).await;
            bench("etcd 3.4", &etcd.url.clone(), runs).await;
        } else {
            println!("etcd not installed: the etcd half skipped (apt install etcd-server)");
        }
    });
}
