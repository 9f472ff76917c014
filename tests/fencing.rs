//! Fencing on real processes: an agent-only machine in its own network namespace runs
//! the seed's unit on the real Docker Engine; its link to the members is cut (its Docker
//! socket is not: a fence has something to stop), and its container must be stopped
//! before its machine key expires in the store — the README's promise that a unit runs
//! on two live machines for at most a bounded lease. Then the unit runs on another
//! machine, and the cut-off one does not start it again when its link comes back.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::netns::{tag, Bridge, Netns};
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const TTL_S: u64 = 6;

/// A `flotilla agent` process, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(mut cmd: Command, log: &std::path::Path) -> Agent {
    let log = std::fs::File::create(log).unwrap();
    let child = cmd
        .env("FLOTILLA_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start flotilla agent");
    Agent(child)
}

/// `flotilla agent` arguments for machine `id` reaching the member at `endpoint`.
fn agent_args(endpoint: &str, id: &str, listen: &str, prefix: &str, ip: &str) -> Vec<String> {
    vec![
        "agent".into(),
        format!("--endpoints={endpoint}"),
        format!("--listen={listen}"),
        format!("--machine-id={id}"),
        format!("--agent-ttl={TTL_S}s"),
        format!("--container-name-prefix={prefix}"),
        format!("--publish-ip={ip}"),
    ]
}

/// Whether a container runs (`None`: there is no such container).
fn running(name: &str) -> Option<bool> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", name])
        .output()
        .expect("docker inspect");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success().then(|| text == "true")
}

/// When the engine says a container died, the first time since `since` (the engine's
/// event log: the container may be gone by now).
fn died_at(name: &str, since: SystemTime) -> Option<SystemTime> {
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let out = Command::new("docker")
        .args(["events", "--format", "{{.TimeNano}}"])
        .arg(format!("--since={}", secs(since)))
        .arg(format!("--until={}", secs(SystemTime::now()) + 1))
        .args([
            "--filter",
            &format!("container={name}"),
            "--filter",
            "event=die",
        ])
        .output()
        .expect("docker events");
    let nanos: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// The unit's state as fleet's API shows it: (machine, active state).
async fn state(c: &Http, url: &str, unit: &str) -> Option<(String, String)> {
    let r = call(c, "GET", &format!("{url}/fleet/v1/state"), None)
        .await
        .ok()?;
    let states = r.body["states"].as_array()?.clone();
    let s = states.iter().find(|s| s["name"] == unit)?;
    Some((
        s["machineID"].as_str()?.to_string(),
        s["systemdActiveState"].as_str()?.to_string(),
    ))
}

async fn eventually<F, Fut>(what: &str, within: Duration, logs: impl Fn() -> String, ok: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    while !ok().await {
        assert!(
            Instant::now() < end,
            "{what}: not within {within:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_machine_stops_its_units_before_its_key_expires() {
    ensure_images();
    let t = tag();
    let net = 1 + std::process::id() % 250;
    let bridge = Bridge::new(&format!("flf{t}"), &format!("10.78.{net}.1/24"));
    let machine_a = Netns::new(&format!("flfa{t}"), &bridge, &format!("10.78.{net}.2/24"));
    let prefix = format!("flf{t}-");
    let _containers = Containers::new(&prefix);
    let c = client();

    // One member (not a machine), listening on the underlay for the cut-off machine.
    let mut cl = Cluster::new(1, &[]);
    let member = format!("http://{}:{}", bridge.addr, free_port());
    cl.nodes[0].client_url = member.clone();
    cl.nodes[0].start();
    wait_healthy(&c, &member).await;
    let dir = cl.dir.path().to_path_buf();
    let logs = || {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!(
            "{}\n--- a:\n{}\n--- b:\n{}",
            cl.logs(),
            read("a.log"),
            read("b.log")
        )
    };

    // Machine a, in its own namespace, runs the seed's unit on the host's engine.
    let mut cmd = machine_a.command(env!("CARGO_BIN_EXE_flotilla"));
    let listen_a = format!("http://{}:2391", machine_a.addr);
    cmd.args(agent_args(
        &member,
        "a",
        &listen_a,
        &format!("{prefix}a-"),
        "127.0.0.41",
    ));
    cmd.arg(format!("--data-dir={}", dir.join("a").display()));
    let _a = agent(cmd, &dir.join("a.log"));
    std::fs::write(dir.join("apache@.service"), APACHE).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["units", &format!("--endpoint={member}"), "start"])
        .args(["--no-block", "apache@1.service"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let unit = "apache@1.service";
    let on = |m: &'static str| {
        let (c, member) = (c.clone(), member.clone());
        move || {
            let (c, member) = (c.clone(), member.clone());
            async move { state(&c, &member, unit).await == Some((m.into(), "active".into())) }
        }
    };
    eventually(
        "the unit active on a",
        Duration::from_secs(30),
        logs,
        on("a"),
    )
    .await;
    let container_a = format!("{prefix}a-apache1");
    assert_eq!(running(&container_a), Some(true));

    // Machine b, on the host's network, where the unit can go.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    let listen_b = format!("http://127.0.0.1:{}", free_port());
    cmd.args(agent_args(
        &member,
        "b",
        &listen_b,
        &format!("{prefix}b-"),
        "127.0.0.42",
    ));
    cmd.arg(format!("--data-dir={}", dir.join("b").display()));
    let _b = agent(cmd, &dir.join("b.log"));
    let key_a = format!("{member}/v2/keys/_flotilla/machines/a");
    let key_b = format!("{member}/v2/keys/_flotilla/machines/b");
    let registered = || {
        let (c, key_b) = (c.clone(), key_b.clone());
        async move { call(&c, "GET", &key_b, None).await.map(|r| r.status) == Ok(200) }
    };
    eventually("b registered", Duration::from_secs(15), logs, registered).await;

    // Cut a off. Once a renewal in flight has landed, its key's expiration is final.
    machine_a.cut();
    let (cut, cut_wall) = (Instant::now(), SystemTime::now());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = call(&c, "GET", &key_a, None).await.unwrap();
    let expires = r.body["node"]["expiration"]
        .as_str()
        .unwrap_or_else(|| panic!("a's key has an expiration: {}", r.text))
        .to_string();
    let expires = humantime::parse_rfc3339_weak(expires.trim_end_matches('Z')).unwrap();
    let stopped = || {
        let name = container_a.clone();
        async move { running(&name) != Some(true) }
    };
    eventually(
        "a's container stopped while cut off",
        Duration::from_secs(TTL_S + 5),
        logs,
        stopped,
    )
    .await;
    let finished = died_at(&container_a, cut_wall)
        .unwrap_or_else(|| panic!("no 'die' event for {container_a}\n{}", logs()));
    let margin = expires.duration_since(finished).unwrap_or_else(|late| {
        panic!(
            "a's container stopped {:?} after a's key expired ({:?} after the cut)\n{}",
            late.duration(),
            cut.elapsed(),
            logs()
        )
    });
    println!("a's container stopped {margin:?} before a's key expired");

    // The key expires; the unit runs on b.
    let gone = || {
        let (c, key_a) = (c.clone(), key_a.clone());
        async move { call(&c, "GET", &key_a, None).await.map(|r| r.status) == Ok(404) }
    };
    eventually(
        "a's key expired",
        Duration::from_secs(TTL_S + 5),
        logs,
        gone,
    )
    .await;
    let within = Duration::from_secs(2 * TTL_S + 10);
    eventually("the unit active on b", within, logs, on("b")).await;
    assert_eq!(running(&format!("{prefix}b-apache1")), Some(true));

    // Back on the network, a does not run what is now b's.
    machine_a.heal();
    let back = || {
        let (c, key_a) = (c.clone(), key_a.clone());
        async move { call(&c, "GET", &key_a, None).await.map(|r| r.status) == Ok(200) }
    };
    eventually("a registered again", Duration::from_secs(15), logs, back).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(
        running(&container_a),
        Some(true),
        "a restarted b's unit\n{}",
        logs()
    );
    assert_eq!(
        state(&c, &member, unit).await,
        Some(("b".into(), "active".into()))
    );
}
