//! Dashboard benchmark: time to first render of each page and live-update latency, in
//! headless Chromium (WebDriver), against a three-member cluster holding
//! `BENCH_MACHINES` machines (default 100), `BENCH_UNITS` units placed on them and
//! running (default 1,000) and `BENCH_KEYS` keys in one directory (default 10,000).
//!
//! Machines and unit states are written as agents would write them (no agent processes:
//! the figures are the dashboard's, not the agents'). First render: from the start of
//! navigation until the page shows its first rows (`BENCH_RENDERS` times, default 5;
//! median and worst). Live update: measured inside the page — from the moment it sends a
//! write until the changed row shows the new value (`BENCH_SAMPLES` times, default 20;
//! p50 and p99), on the keys page (10,000 keys) and on the units page (a unit's state
//! as its machine would report it).
//!
//! Run:
//!
//!     cargo bench --bench ui
#![allow(clippy::disallowed_methods, clippy::disallowed_types, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::browser::Browser;
use common::{call, call_json, client, Cluster, Http};
use futures_util::stream::{self, StreamExt};
use std::time::{Duration, Instant};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

/// Runs `n` requests with 32 in flight.
async fn many<F, Fut>(n: u64, f: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    stream::iter(0..n)
        .map(f)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

fn state(unit: &str, machine: &str, sub: &str) -> String {
    serde_json::json!({
        "name": unit, "hash": "", "machineID": machine, "systemdLoadState": "loaded",
        "systemdActiveState": "active", "systemdSubState": sub,
    })
    .to_string()
}

async fn populate(c: &Http, base: &str, machines: u64, units: u64, keys: u64) {
    many(machines, |i| async move {
        let rec = serde_json::json!({"id": format!("m{i:03}"), "primaryIP": format!("10.0.{}.{}", i / 250, i % 250 + 1), "agentTTL": 3600});
        let form = format!("value={}&ttl=3600", rec);
        let r = call(c, "PUT", &format!("{base}/v2/keys/_flotilla/machines/m{i:03}"), Some(&form)).await.expect("machine");
        assert!(r.status < 300, "{}", r.text);
    })
    .await;
    many(keys, |i| async move {
        let form = format!("value=value-{i}");
        let r = call(
            c,
            "PUT",
            &format!("{base}/v2/keys/bench/k{i:05}"),
            Some(&form),
        )
        .await
        .expect("key");
        assert!(r.status < 300, "{}", r.text);
    })
    .await;
    many(units, |i| async move {
        let body = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 1000"}]}"#;
        let r = call_json(c, "PUT", &format!("{base}/fleet/v1/units/u{i:04}.service"), body).await.expect("unit");
        assert_eq!(r.status, 201, "{}", r.text);
    })
    .await;
    // Wait until the engine placed every unit, then report each running where it is.
    let end = Instant::now() + Duration::from_secs(120);
    let placed = loop {
        let placed = placements(c, base).await;
        if placed.len() as u64 == units {
            break placed;
        }
        assert!(
            Instant::now() < end,
            "{} of {units} units placed",
            placed.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let placed = &placed;
    many(units, |i| async move {
        let (unit, machine) = &placed[i as usize];
        let form = format!("value={}", state(unit, machine, "running"));
        let r = call(
            c,
            "PUT",
            &format!("{base}/v2/keys/_flotilla/states/{unit}/{machine}"),
            Some(&form),
        )
        .await
        .expect("state");
        assert!(r.status < 300, "{}", r.text);
    })
    .await;
}

/// `(unit, machine)` of every placed unit.
async fn placements(c: &Http, base: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut token = String::new();
    loop {
        let q = if token.is_empty() {
            String::new()
        } else {
            format!("?nextPageToken={token}")
        };
        let r = call(c, "GET", &format!("{base}/fleet/v1/units{q}"), None)
            .await
            .expect("units");
        for u in r.body["units"].as_array().into_iter().flatten() {
            if let (Some(n), Some(m)) = (u["name"].as_str(), u["machineID"].as_str()) {
                out.push((n.to_string(), m.to_string()));
            }
        }
        match r.body["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => return out,
        }
    }
}

/// Median and worst of `n` navigations to `url` until `css` matches `rows` elements.
async fn first_render(b: &Browser, url: &str, css: &str, rows: usize, n: u64) -> (f64, f64) {
    let mut ms = vec![];
    for _ in 0..n {
        b.goto("about:blank").await;
        let t0 = Instant::now();
        b.goto(url).await;
        b.until_count(css, rows, Duration::from_secs(60)).await;
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

/// In the page: send `PUT path` with `form` (a fresh value replaces `NEW`), then wait
/// until `css`'s text is that value; milliseconds between.
const LIVE_SCRIPT: &str = r#"
const [path, form, css, done] = arguments;
const fresh = 'v' + Math.random().toString(36).slice(2);
const t0 = performance.now();
fetch(path, {method: 'PUT', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
             body: form.replace('NEW', fresh)});
const check = () => {
  const e = document.querySelector(css);
  if (e && e.textContent === fresh) done(performance.now() - t0);
  else if (performance.now() - t0 > 30000) done(-1);
  else setTimeout(check, 2);
};
check();
"#;

async fn live(b: &Browser, path: &str, form: &str, css: &str, n: u64) -> (f64, f64) {
    let mut ms = vec![];
    for _ in 0..n {
        let args = vec![path.into(), form.into(), css.into()];
        let v = b
            .client
            .execute_async(LIVE_SCRIPT, args)
            .await
            .expect("live script");
        let v = v.as_f64().unwrap_or(-1.0);
        assert!(v >= 0.0, "{css} did not show the new value within 30 s");
        ms.push(v);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ms.sort_by(f64::total_cmp);
    let p99 = ms[((ms.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
    (ms[ms.len() / 2], p99)
}

async fn run() {
    let machines = env_or("BENCH_MACHINES", 100);
    let units = env_or("BENCH_UNITS", 1000);
    let keys = env_or("BENCH_KEYS", 10_000);
    let renders = env_or("BENCH_RENDERS", 5);
    let samples = env_or("BENCH_SAMPLES", 20);
    let c = client();
    let mut cl = Cluster::new(3, &["--agent-ttl=3600s"]);
    cl.start_all();
    let leader = cl.leader(&c, Duration::from_secs(30)).await;
    let base = cl.nodes[leader].client_url.clone();
    let t0 = Instant::now();
    populate(&c, &base, machines, units, keys).await;
    println!(
        "populated {machines} machines, {units} units (placed, running), {keys} keys in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // A few of the overview's 5 s samples, so its charts have lines (for the screenshot).
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(t0.elapsed())).await;
    let b = Browser::start().await;
    let ui = format!("{base}/ui/");
    let pages = [
        ("overview", format!("{ui}#/"), "#members tr[data-member]", 3),
        (
            "machines",
            format!("{ui}#/machines"),
            "#machines tr[data-machine]",
            machines as usize,
        ),
        (
            "units (first 100 of all)",
            format!("{ui}#/units"),
            "#units tr[data-unit]",
            100.min(units as usize),
        ),
        (
            "keys (first 100 of one directory)",
            format!("{ui}#/keys/bench"),
            "#keys tr[data-key]",
            100.min(keys as usize),
        ),
    ];
    println!("\n| page | first render, median (ms) | worst of {renders} (ms) |\n|---|---|---|");
    for (name, url, css, rows) in &pages {
        let (med, worst) = first_render(&b, url, css, *rows, renders).await;
        println!("| {name} | {med:.0} | {worst:.0} |");
        let shot = name.split(' ').next().unwrap_or("page");
        b.screenshot(&format!("bench-{shot}")).await;
    }
    println!("\n| live update | p50 (ms) | p99 (ms) |\n|---|---|---|");
    b.goto(&format!("{ui}#/keys/bench")).await;
    b.until_count(
        "#keys tr[data-key]",
        100.min(keys as usize),
        Duration::from_secs(60),
    )
    .await;
    let (p50, p99) = live(
        &b,
        "/v2/keys/bench/k00000",
        "value=NEW",
        r#"tr[data-key="/bench/k00000"] td.value"#,
        samples,
    )
    .await;
    println!("| keys page ({keys} keys): a value written → shown | {p50:.0} | {p99:.0} |");
    let placed = placements(&c, &base).await;
    let (unit, machine) = placed.iter().min().cloned().expect("a unit");
    b.goto(&format!("{ui}#/units")).await;
    b.until_count(
        "#units tr[data-unit]",
        100.min(units as usize),
        Duration::from_secs(60),
    )
    .await;
    let form = format!("value={}", state(&unit, &machine, "NEW"));
    let path = format!("/v2/keys/_flotilla/states/{unit}/{machine}");
    let css = format!(r#"tr[data-unit="{unit}"] td.sub"#);
    let (p50, p99) = live(&b, &path, &form, &css, samples).await;
    println!("| units page ({units} units): a state reported → shown | {p50:.0} | {p99:.0} |");
    println!(
        "\nmachine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
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
