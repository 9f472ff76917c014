//! Agent benchmark, on the local Docker Engine (images from `scripts/build-test-images`).
//!
//! 1. Start latency: from the API request that launches a unit (`PUT
//!    /fleet/v1/units/NAME` with `desiredState: launched`, what `flotilla units start`
//!    sends) until its container is running — beside the same container created and
//!    started straight through the engine's API, and beside `docker run -d`. p50 and p90
//!    over `BENCH_RUNS` runs (default 20).
//! 2. Memory: the resident memory of a `flotilla agent` (a machine that is not a member) at
//!    idle and with 100 units running.
//!
//! Run:
//!
//!     cargo bench --bench agent
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use flotilla_shims::containers::{ContainerSpec, ContainerState, Containers};
use flotilla_shims::docker::DockerEngine;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Procs(Vec<Child>, String);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("name=^{}", self.1)])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

fn flotilla(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flotilla")
}

fn curl(method: &str, url: &str, json: Option<&str>) -> String {
    let mut c = Command::new("curl");
    c.args(["-s", "-X", method, url]);
    if let Some(j) = json {
        c.args(["-H", "Content-Type: application/json", "-d", j]);
    }
    String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
}

async fn running(e: &DockerEngine, name: &str) -> bool {
    matches!(e.inspect(name).await, Ok(i) if i.state == ContainerState::Running)
}

/// Polls until `name` runs; how long since `t0`.
async fn until_running(e: &DockerEngine, name: &str, t0: Instant) -> Duration {
    while !running(e, name).await {
        assert!(t0.elapsed() < Duration::from_secs(60), "{name} never ran");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t0.elapsed()
}

/// Milliseconds from `since` to the container's `Created` time, as the engine recorded it.
fn created_after(name: &str, since: std::time::SystemTime) -> f64 {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.Created}}", name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let created =
        humantime::parse_rfc3339_weak(text.trim_end_matches('Z').split('.').next().unwrap_or(""))
            .map(|t| {
                let frac: f64 = text
                    .split('.')
                    .nth(1)
                    .map(|f| f.trim_end_matches('Z'))
                    .and_then(|f| format!("0.{f}").parse().ok())
                    .unwrap_or(0.0);
                t + Duration::from_secs_f64(frac)
            })
            .unwrap_or(since);
    created
        .duration_since(since)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

async fn wait_http(url: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    while !curl("GET", &format!("{url}/health"), None).contains("true") {
        assert!(Instant::now() < end, "{url} not healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn latency(runs: usize) {
    let prefix = format!("bl{}-", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (port(), port());
    let url = format!("http://127.0.0.1:{c}");
    let node = flotilla(&[
        "node",
        &format!("--data-dir={}", dir.path().join("d").display()),
        &format!("--listen-client-urls={url}"),
        &format!("--listen-peer-urls=http://127.0.0.1:{p}"),
        "--machine-id=bench",
        &format!("--container-name-prefix={prefix}"),
    ]);
    let _guard = Procs(vec![node], prefix.clone());
    wait_http(&url).await;
    // The machine registers itself.
    while !curl("GET", &format!("{url}/fleet/v1/machines"), None).contains("bench") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = DockerEngine::new(None, "flotilla.machine", "bench-baseline");
    let (mut fl, mut api, mut cli, mut to_create): (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        // flotilla: one PUT, then the engine places it, the agent runs it.
        let unit = format!("lat{i}.service");
        let body = format!(
            r#"{{"desiredState":"launched","options":[{{"section":"Service","name":"ExecStart","value":"/usr/bin/docker run --name lat{i} coreos/apache /usr/sbin/httpd"}}]}}"#
        );
        let (t0, wall0) = (Instant::now(), std::time::SystemTime::now());
        curl("PUT", &format!("{url}/fleet/v1/units/{unit}"), Some(&body));
        fl.push(
            until_running(&e, &format!("{prefix}lat{i}"), t0)
                .await
                .as_secs_f64()
                * 1e3,
        );
        // flotilla's own share: from the request to the engine creating the container.
        to_create.push(created_after(&format!("{prefix}lat{i}"), wall0));
        curl("DELETE", &format!("{url}/fleet/v1/units/{unit}"), None);
        // The engine's API directly: create + start.
        let name = format!("{prefix}api{i}");
        let t0 = Instant::now();
        e.create(ContainerSpec {
            name: name.clone(),
            image: "coreos/apache".into(),
            cmd: vec!["/usr/sbin/httpd".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        e.start(&name).await.unwrap();
        api.push(until_running(&e, &name, t0).await.as_secs_f64() * 1e3);
        // The docker CLI.
        let name = format!("{prefix}cli{i}");
        let t0 = Instant::now();
        let ok = Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "coreos/apache",
                "/usr/sbin/httpd",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        cli.push(until_running(&e, &name, t0).await.as_secs_f64() * 1e3);
    }
    println!("== start latency, {runs} runs (ms): p50 / p90");
    let (f50, f90) = (pct(&mut fl, 0.5), pct(&mut fl, 0.9));
    let (a50, a90) = (pct(&mut api, 0.5), pct(&mut api, 0.9));
    let (c50, c90) = (pct(&mut cli, 0.5), pct(&mut cli, 0.9));
    println!("flotilla (PUT launched -> running): {f50:.1} / {f90:.1}");
    println!("engine API create + start:          {a50:.1} / {a90:.1}");
    println!("docker run -d:                      {c50:.1} / {c90:.1}");
    println!(
        "flotilla's overhead at p50: {:.1} ms over the engine API, {:.1} ms over docker run",
        f50 - a50,
        f50 - c50
    );
    let (o50, o90) = (pct(&mut to_create, 0.5), pct(&mut to_create, 0.9));
    println!("from the PUT to the container's creation (API, engine, agent): {o50:.1} / {o90:.1}");
}

async fn memory() {
    let prefix = format!("bm{}-", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (port(), port());
    let url = format!("http://127.0.0.1:{c}");
    let node = flotilla(&[
        "node",
        &format!("--data-dir={}", dir.path().join("d").display()),
        &format!("--listen-client-urls={url}"),
        &format!("--listen-peer-urls=http://127.0.0.1:{p}"),
        "--no-agent",
    ]);
    let listen = format!("http://127.0.0.1:{}", port());
    let agent = flotilla(&[
        "agent",
        &format!("--endpoints={url}"),
        &format!("--listen={listen}"),
        "--machine-id=membench",
        &format!("--container-name-prefix={prefix}"),
        &format!("--data-dir={}", dir.path().join("a").display()),
    ]);
    let pid = agent.id();
    let _guard = Procs(vec![agent, node], prefix.clone());
    wait_http(&url).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib(pid);
    for i in 0..100 {
        let body = format!(
            r#"{{"desiredState":"launched","options":[{{"section":"Service","name":"ExecStart","value":"/usr/bin/docker run --name m{i} coreos/apache /usr/sbin/httpd"}},{{"section":"Service","name":"ExecStop","value":"/usr/bin/docker stop m{i}"}}]}}"#
        );
        curl(
            "PUT",
            &format!("{url}/fleet/v1/units/m{i}.service"),
            Some(&body),
        );
    }
    let end = Instant::now() + Duration::from_secs(180);
    loop {
        let states = curl(
            "GET",
            &format!("{url}/fleet/v1/state?machineID=membench"),
            None,
        );
        let active = states.matches("\"systemdActiveState\":\"active\"").count();
        if active >= 100 {
            break;
        }
        assert!(Instant::now() < end, "only {active} of 100 units active");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = rss_kib(pid);
    println!("== flotilla agent resident memory");
    println!(
        "idle: {:.1} MiB; with 100 units running: {:.1} MiB",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0
    );
}

fn main() {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-test-images"
    ))
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        latency(runs).await;
        memory().await;
    });
}
