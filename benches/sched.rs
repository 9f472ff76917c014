//! Scheduling benchmark.
//!
//! 1. The engine's pure placement rate: `place::plan` over 1,000 machines and 10,000
//!    units from an empty schedule, and the cost of a pass over a settled schedule as
//!    the number of units grows (it must grow no worse than linearly).
//! 2. A real 3-member cluster (release binary, fsync on): 1,000 machines registered
//!    (presence keys), then 10,000 units submitted through fleet's API over 64 keep-alive
//!    connections; the time until every one is placed and committed, and placements/s.
//!
//! Run:
//!
//!     cargo bench --bench sched
//!     BENCH_UNITS=20000 BENCH_MACHINES=2000 cargo bench --bench sched
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use bytes::Bytes;
use flotilla::sched::place::{plan, Desired, Machine, Schedule, Unit};
use flotilla::sched::require::Requirements;
use flotilla::unitfile::file::UnitOption;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Unit `k`: instance of one of 20 templates (Conflicts spread each over machines); every
/// other template also asks for a region.
fn unit_options(k: usize) -> (String, Vec<UnitOption>) {
    let group = k % 20;
    let name = format!("app{group}@{k}.service");
    let mut o = vec![
        UnitOption::new("Unit", "Description", "benchmark unit"),
        UnitOption::new(
            "Service",
            "ExecStart",
            "/usr/bin/docker run --rm busybox sleep 1000",
        ),
        UnitOption::new("X-Fleet", "Conflicts", "%p@*.service"),
    ];
    if group.is_multiple_of(2) {
        let region = if group.is_multiple_of(4) { "a" } else { "b" };
        o.push(UnitOption::new(
            "X-Fleet",
            "MachineMetadata",
            &format!("region={region}"),
        ));
    }
    (name, o)
}

fn machine_id(i: usize) -> String {
    format!("{i:04x}{:028x}", i * 7919)
}

fn machines(n: usize) -> BTreeMap<String, Machine> {
    (0..n)
        .map(|i| {
            let id = machine_id(i);
            let region = if i.is_multiple_of(2) { "a" } else { "b" };
            let m = Machine {
                id: id.clone(),
                metadata: [("region".to_string(), region.to_string())].into(),
            };
            (id, m)
        })
        .collect()
}

fn units(n: usize) -> BTreeMap<String, Unit> {
    (0..n)
        .map(|k| {
            let (name, opts) = unit_options(k);
            let u = Unit {
                req: Requirements::of(&name, &opts),
                name: name.clone(),
                desired: Desired::Launched,
                hash: "h".into(),
                template: false,
            };
            (name, u)
        })
        .collect()
}

fn apply(p: &flotilla::sched::place::Plan) -> Schedule {
    let mut s = Schedule::new();
    for d in &p.decisions {
        if let flotilla::sched::place::Decision::Schedule {
            unit,
            machine,
            entry,
        } = d
        {
            s.entry(unit.clone())
                .or_default()
                .insert(machine.clone(), entry.clone());
        }
    }
    s
}

fn pure(machines_n: usize, units_n: usize) {
    println!("== placement alone (place::plan, one thread)");
    let ms = machines(machines_n);
    let us = units(units_n);
    let t = Instant::now();
    let p = plan(&ms, &us, &Schedule::new());
    let dt = t.elapsed().as_secs_f64();
    println!(
        "{machines_n} machines, {units_n} units from nothing: {} placed in {:.1} ms = {:.0} placements/s ({} unplaced)",
        p.decisions.len(),
        dt * 1e3,
        p.decisions.len() as f64 / dt,
        p.unplaced.len()
    );
    println!("pass over a settled schedule (decides nothing), by units:");
    for n in [units_n / 4, units_n / 2, units_n, units_n * 2] {
        let us = units(n);
        let s = apply(&plan(&ms, &us, &Schedule::new()));
        let t = Instant::now();
        let reps = 5;
        for _ in 0..reps {
            let p = plan(&ms, &us, &s);
            assert!(p.decisions.is_empty());
        }
        let per = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "  {n:>6} units: {:.1} ms per pass, {:.2} us per unit",
            per * 1e3,
            per * 1e6 / n as f64
        );
    }
}

struct Cluster {
    children: Vec<Child>,
    urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (port(), port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("n{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = vec![];
    let mut urls = vec![];
    for (i, (c, p)) in ports.iter().enumerate() {
        let url = format!("http://127.0.0.1:{c}");
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([
                "node",
                &format!("--name=n{i}"),
                &format!("--data-dir={}", dir.path().join(format!("n{i}")).display()),
                &format!("--listen-client-urls={url}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{p}"),
                &format!("--initial-cluster={cluster}"),
                "--no-agent",
            ])
            .env("FLOTILLA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start flotilla");
        children.push(child);
        urls.push(url);
    }
    Cluster {
        children,
        urls,
        _dir: dir,
    }
}

async fn send(c: &Http, method: &str, url: &str, ctype: &str, body: String) -> (u16, Bytes) {
    loop {
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        match c.request(req).await {
            Ok(r) => {
                let status = r.status().as_u16();
                let b = r
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return (status, b);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// `n` requests made by `f(k)`, over `conns` concurrent keep-alive connections.
async fn drive<F>(c: &Http, n: usize, conns: usize, f: F)
where
    F: Fn(usize) -> (String, String, String, String) + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut tasks = vec![];
    for _ in 0..conns {
        let (c, next, f) = (c.clone(), next.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n {
                    return;
                }
                let (method, url, ctype, body) = f(k);
                let (status, b) = send(&c, &method, &url, &ctype, body).await;
                assert!(
                    status / 100 == 2,
                    "{method} {url}: {status} {}",
                    String::from_utf8_lossy(&b)
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn placed(c: &Http, url: &str) -> usize {
    let (status, b) = send(
        c,
        "GET",
        &format!("{url}/v2/keys/_flotilla/schedule?recursive=true"),
        "text/plain",
        String::new(),
    )
    .await;
    if status != 200 {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
    v["node"]["nodes"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| m["nodes"].as_array().map_or(0, |u| u.len()))
                .sum()
        })
        .unwrap_or(0)
}

async fn cluster(machines_n: usize, units_n: usize) {
    println!("== 3-member cluster, {machines_n} machines, {units_n} units through the fleet API");
    let cl = start();
    let c: Http = Client::builder(TokioExecutor::new()).build_http();
    let end = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let mut found = None;
        for u in &cl.urls {
            let (s, b) = send(
                &c,
                "GET",
                &format!("{u}/v2/stats/self"),
                "text/plain",
                String::new(),
            )
            .await;
            if s == 200 && String::from_utf8_lossy(&b).contains("StateLeader") {
                found = Some(u.clone());
            }
        }
        if let Some(l) = found {
            break l;
        }
        assert!(Instant::now() < end, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let urls = cl.urls.clone();
    let t = Instant::now();
    drive(&c, machines_n, 32, move |i| {
        let id = machine_id(i);
        let region = if i.is_multiple_of(2) { "a" } else { "b" };
        let rec = serde_json::json!({"id": id, "primaryIP": format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255), "metadata": {"region": region}});
        let body = format!("value={}&ttl=3600", percent_encoding::utf8_percent_encode(&rec.to_string(), percent_encoding::NON_ALPHANUMERIC));
        ("PUT".into(), format!("{}/v2/keys/_flotilla/machines/{id}", urls[i % urls.len()]), "application/x-www-form-urlencoded".into(), body)
    })
    .await;
    println!(
        "registered {machines_n} machines in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let urls = cl.urls.clone();
    let t0 = Instant::now();
    let submit = tokio::spawn({
        let c = c.clone();
        async move {
            drive(&c, units_n, 64, move |k| {
                let (name, opts) = unit_options(k);
                let body =
                    serde_json::json!({"desiredState": "launched", "options": opts}).to_string();
                (
                    "PUT".into(),
                    format!("{}/fleet/v1/units/{name}", urls[k % urls.len()]),
                    "application/json".into(),
                    body,
                )
            })
            .await;
            Instant::now()
        }
    });
    let mut samples = vec![];
    let done = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = placed(&c, &leader).await;
        samples.push((t0.elapsed().as_secs_f64(), n));
        if n >= units_n {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "not all placed in 10 minutes: {n}"
        );
    };
    let submitted = submit.await.unwrap().duration_since(t0);
    println!(
        "submitted {units_n} units in {:.2} s ({:.0} PUTs/s)",
        submitted.as_secs_f64(),
        units_n as f64 / submitted.as_secs_f64()
    );
    println!(
        "all {units_n} placed and committed {:.2} s after the first PUT: {:.0} committed placements/s",
        done.as_secs_f64(),
        units_n as f64 / done.as_secs_f64()
    );
    let lag = done.saturating_sub(submitted);
    println!(
        "last placement committed {:.2} s after the last PUT",
        lag.as_secs_f64()
    );
    let trail: Vec<String> = samples
        .iter()
        .step_by((samples.len() / 8).max(1))
        .map(|(t, n)| format!("{t:.1}s:{n}"))
        .collect();
    println!("placed over time: {}", trail.join(" "));
}

fn main() {
    let machines_n = env_usize("BENCH_MACHINES", 1_000);
    let units_n = env_usize("BENCH_UNITS", 10_000);
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model()
    );
    pure(machines_n, units_n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(cluster(machines_n, units_n));
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}
