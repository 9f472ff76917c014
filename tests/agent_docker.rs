//! The agent on a real Docker Engine: the seed's apache unit as written, its presence
//! sidekick (`BindsTo` + `MachineOf`), failures behind the agent's back, a bad Exec line,
//! and three members plus one `flotilla agent` sharing one engine. Images come from
//! `scripts/build-test-images` (no registry); every container a test makes is removed.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn units(ep: &str, dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("units")
        .arg(format!("--endpoint={ep}"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("flotilla units");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `ok()`; `false` if it never was within `within`.
async fn wait_for_or<F: Fn() -> bool>(within: Duration, ok: F) -> bool {
    let end = Instant::now() + within;
    while !ok() {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

async fn wait_for<F: Fn() -> bool>(what: &str, within: Duration, ok: F) {
    let end = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_of(ep: &str, dir: &std::path::Path, unit: &str) -> String {
    let (_, out, _) = units(
        ep,
        dir,
        &["list-units", "--no-legend", "--fields", "unit,active,sub"],
    );
    out.lines()
        .find(|l| l.starts_with(unit))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join("/"))
        .unwrap_or_default()
}

fn http_get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "-m", "2", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_apache_unit_runs_as_written() {
    ensure_images();
    let prefix = format!("fa{}-", std::process::id());
    let containers = Containers::new(&prefix);
    let mut cl = Cluster::with_machines(
        1,
        &[
            "--agent-ttl=3s",
            &format!("--container-name-prefix={prefix}"),
            "--publish-ip=127.0.0.51",
        ],
    );
    cl.start_all();
    let c = client();
    let ep = cl.nodes[0].client_url.clone();
    wait_healthy(&c, &ep).await;
    let dir = cl.dir.path().to_path_buf();
    std::fs::write(dir.join("apache@.service"), APACHE).unwrap();

    let (code, _, err) = units(&ep, &dir, &["start", "apache@.service"]);
    assert_ne!(code, 0, "a template is not started");
    assert!(err.contains("is a template"), "{err}");
    let (code, out, err) = units(&ep, &dir, &["submit", "apache@.service"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = units(
        &ep,
        &dir,
        &["start", "--block-attempts=15", "apache@1.service"],
    );
    let journal = || units(&ep, &dir, &["journal", "-n", "40", "apache@1.service"]).1;
    assert_eq!(code, 0, "{out}{err}\njournal:\n{}", journal());
    assert!(out.contains("Unit apache@1.service launched on"), "{out}");
    // The page answers on the publish IP; the ExecStartPost key is there.
    let page = http_get("http://127.0.0.51:8081/").expect("apache answers on 127.0.0.51:8081");
    assert!(page.contains("It works!"), "{page}");
    let key = call(
        &c,
        "GET",
        &format!("{ep}/v2/keys/domains/example.com/10.10.10.123:8081"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(key.body["node"]["value"], "run", "{}", key.text);
    assert_eq!(state_of(&ep, &dir, "apache@1.service"), "active/running");
    assert!(containers
        .names()
        .iter()
        .any(|n| n == &format!("{prefix}apache1 running")));
    let (_, journal, _) = units(&ep, &dir, &["journal", "-n", "50", "apache@1.service"]);
    assert!(
        journal.contains("docker pull coreos/apache: ok"),
        "{journal}"
    );

    // stop: ExecStop, then ExecStopPost removes the key; the container is gone.
    let (code, _, err) = units(
        &ep,
        &dir,
        &["stop", "--block-attempts=10", "apache@1.service"],
    );
    assert_eq!(code, 0, "{err}");
    let key = call(
        &c,
        "GET",
        &format!("{ep}/v2/keys/domains/example.com/10.10.10.123:8081"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        key.status, 404,
        "ExecStopPost removes the key: {}",
        key.text
    );
    wait_for(
        "the stopped unit's container removed",
        Duration::from_secs(10),
        || containers.names().is_empty(),
    )
    .await;

    // A container killed behind the agent's back: the unit fails (Restart=no), and its
    // ExecStopPost still runs.
    let (code, _, err) = units(
        &ep,
        &dir,
        &["start", "--block-attempts=15", "apache@1.service"],
    );
    assert_eq!(code, 0, "{err}");
    Command::new("docker")
        .args(["kill", &format!("{prefix}apache1")])
        .output()
        .unwrap();
    wait_for("the unit reported failed", Duration::from_secs(10), || {
        state_of(&ep, &dir, "apache@1.service") == "failed/failed"
    })
    .await;
    let (_, journal, _) = units(&ep, &dir, &["journal", "-n", "50", "apache@1.service"]);
    assert!(
        journal.contains("main process ended: exit code 137"),
        "{journal}"
    );

    // Restart=always: a killed container is replaced.
    let always = APACHE.replace(
        "TimeoutStartSec=0",
        "TimeoutStartSec=0\nRestart=always\nRestartSec=1",
    );
    std::fs::write(
        dir.join("apache@2.service"),
        always.replace("apache1", "apache2").replace("8081", "8082"),
    )
    .unwrap();
    units(&ep, &dir, &["destroy", "apache@1.service"]);
    let (code, _, err) = units(
        &ep,
        &dir,
        &["start", "--block-attempts=15", "apache@2.service"],
    );
    assert_eq!(code, 0, "{err}\n{}", cl.logs());
    let id = |n: &str| {
        String::from_utf8_lossy(
            &Command::new("docker")
                .args(["inspect", "-f", "{{.Id}}", n])
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .to_string()
    };
    let first = id(&format!("{prefix}apache2"));
    Command::new("docker")
        .args(["kill", &format!("{prefix}apache2")])
        .output()
        .unwrap();
    wait_for(
        "a new container under Restart=always",
        Duration::from_secs(20),
        || {
            let now = id(&format!("{prefix}apache2"));
            !now.is_empty()
                && now != first
                && state_of(&ep, &dir, "apache@2.service") == "active/running"
        },
    )
    .await;
    assert!(
        http_get("http://127.0.0.51:8082/").is_some(),
        "the restarted apache answers"
    );
    units(&ep, &dir, &["destroy", "apache@2.service"]);

    // An unknown docker run flag fails the unit, naming the flag.
    std::fs::write(
        dir.join("bad.service"),
        "[Service]\nExecStart=/usr/bin/docker run --frobnicate 3 coreos/apache\n",
    )
    .unwrap();
    let (code, _, err) = units(&ep, &dir, &["start", "--block-attempts=10", "bad.service"]);
    assert_ne!(code, 0, "a unit with an unknown flag must not start");
    assert!(err.contains("failed"), "{err}");
    let (_, journal, _) = units(&ep, &dir, &["journal", "bad.service"]);
    assert!(journal.contains("unknown flag --frobnicate"), "{journal}");

    // Host commands are refused without --allow-host-commands, naming the flag.
    std::fs::write(
        dir.join("host.service"),
        "[Service]\nExecStart=/bin/sleep 100\n",
    )
    .unwrap();
    let (code, _, _) = units(&ep, &dir, &["start", "--block-attempts=10", "host.service"]);
    assert_ne!(code, 0);
    let (_, journal, _) = units(&ep, &dir, &["journal", "host.service"]);
    assert!(journal.contains("--allow-host-commands"), "{journal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_sidekick_runs_beside_its_app_and_stops_with_it() {
    ensure_images();
    let prefix = format!("fp{}-", std::process::id());
    let containers = Containers::new(&prefix);
    let mut cl = Cluster::with_machines(
        1,
        &[
            "--agent-ttl=3s",
            &format!("--container-name-prefix={prefix}"),
            "--publish-ip=127.0.0.52",
        ],
    );
    cl.start_all();
    let c = client();
    let ep = cl.nodes[0].client_url.clone();
    wait_healthy(&c, &ep).await;
    let dir = cl.dir.path().to_path_buf();
    std::fs::write(
        dir.join("nginx-1.0.0@.service"),
        "[Service]\nExecStartPre=-/usr/bin/docker rm -f nginx-%i\nExecStart=/usr/bin/docker run --name nginx-%i -p 8090:80 coreos/apache /usr/sbin/httpd\nExecStop=/usr/bin/docker stop nginx-%i\n[X-Fleet]\nConflicts=nginx-1.0.0@*.service\n",
    )
    .unwrap();
    // The seed's sidekick, its MachineOf pointed at the app it binds to.
    std::fs::write(
        dir.join("nginx-presence@.service"),
        "[Unit]\nBindsTo=nginx-1.0.0@%i.service\n\n[Service]\nEnvironmentFile=-/etc/environment\nExecStartPre=-/usr/bin/docker kill nginx-presence-%i\nExecStartPre=-/usr/bin/docker rm nginx-presence-%i\nExecStart=/usr/bin/docker run --rm --name nginx-presence-%i -e AWS_ACCESS_KEY=foo -e AWS_SECRET_KEY=bar -e AWS_REGION=us-east-1 -e ELB_NAME=coreos-appname -e PROXY_HOST=10.10.11.11 -e PROXY_PORT=3128 jpweb/nginx-presence\nExecStop=/usr/bin/docker stop nginx-presence-%i\n\n[X-Fleet]\nMachineOf=nginx-1.0.0@%i.service\n",
    )
    .unwrap();
    let (code, out, err) = units(
        &ep,
        &dir,
        &[
            "start",
            "--block-attempts=15",
            "nginx-presence@1.service",
            "nginx-1.0.0@1.service",
        ],
    );
    assert_eq!(code, 0, "{out}{err}\n{}", cl.logs());
    let running = |n: &str| {
        containers
            .names()
            .iter()
            .any(|l| l == &format!("{prefix}{n} running"))
    };
    assert!(
        running("nginx-1") && running("nginx-presence-1"),
        "{:?}",
        containers.names()
    );
    // Stopping the app stops the sidekick bound to it.
    let (code, _, err) = units(
        &ep,
        &dir,
        &["stop", "--block-attempts=10", "nginx-1.0.0@1.service"],
    );
    assert_eq!(code, 0, "{err}");
    wait_for(
        "the sidekick stopped with its app",
        Duration::from_secs(15),
        || {
            state_of(&ep, &dir, "nginx-presence@1.service") == "inactive/dead"
                && !running("nginx-presence-1")
        },
    )
    .await;
    // Started again, the app brings its sidekick back.
    let (code, _, err) = units(
        &ep,
        &dir,
        &["start", "--block-attempts=15", "nginx-1.0.0@1.service"],
    );
    assert_eq!(code, 0, "{err}");
    wait_for(
        "the sidekick back beside its app",
        Duration::from_secs(15),
        || running("nginx-presence-1"),
    )
    .await;
    wait_for("both units active", Duration::from_secs(15), || {
        state_of(&ep, &dir, "nginx-presence@1.service") == "active/running"
            && state_of(&ep, &dir, "nginx-1.0.0@1.service") == "active/running"
    })
    .await;

    // The node's process is killed and comes back: its agent adopts the running
    // containers instead of restarting them.
    let id = |n: &str| {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.Id}} {{.State.StartedAt}}",
                &format!("{prefix}{n}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = (id("nginx-1"), id("nginx-presence-1"));
    cl.nodes[0].kill9();
    cl.nodes[0].start();
    wait_healthy(&c, &ep).await;
    wait_for(
        "the adopted units reported active",
        Duration::from_secs(15),
        || {
            state_of(&ep, &dir, "nginx-1.0.0@1.service") == "active/running"
                && state_of(&ep, &dir, "nginx-presence@1.service") == "active/running"
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, journal, _) = units(&ep, &dir, &["journal", "-n", "30", "nginx-1.0.0@1.service"]);
    assert_eq!(
        (id("nginx-1"), id("nginx-presence-1")),
        before,
        "a restarted agent restarted healthy containers; journal:\n{journal}\n{}",
        cl.logs()
    );
    let (_, journal, _) = units(&ep, &dir, &["journal", "nginx-1.0.0@1.service"]);
    assert!(
        journal.contains("adopted its running main process"),
        "{journal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_and_an_agent_share_one_engine() {
    ensure_images();
    let prefix = format!("fm{}-", std::process::id());
    let containers = Containers::new(&prefix);
    let mut cl = Cluster::with_machines(3, &["--agent-ttl=3s", "--engine-reconcile-interval=0.5"]);
    for (i, n) in cl.nodes.iter_mut().enumerate() {
        n.extra.push(format!("--machine-id=m{i}"));
        n.extra
            .push(format!("--container-name-prefix={prefix}m{i}-"));
        n.extra.push(format!("--publish-ip=127.0.0.{}", 61 + i));
    }
    cl.start_all();
    let c = client();
    cl.leader(&c, Duration::from_secs(20)).await;
    let eps: Vec<String> = cl.nodes.iter().map(|n| n.client_url.clone()).collect();
    let listen = format!("http://127.0.0.1:{}", free_port());
    let agent_log = std::fs::File::create(cl.dir.path().join("agent.log")).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "agent",
            &format!("--endpoints={}", eps.join(",")),
            &format!("--listen={listen}"),
            "--machine-id=m3",
            "--agent-ttl=3s",
            &format!("--container-name-prefix={prefix}m3-"),
            "--publish-ip=127.0.0.64",
            &format!("--data-dir={}", cl.dir.path().join("agent").display()),
        ])
        .env("FLOTILLA_LOG", "info")
        .stderr(agent_log)
        .spawn()
        .expect("start flotilla agent");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Kill(&mut agent);
    let ep = eps.join(",");
    let dir = cl.dir.path().to_path_buf();
    wait_for("four machines", Duration::from_secs(20), || {
        units(&ep, &dir, &["list-machines", "--no-legend"])
            .1
            .lines()
            .count()
            == 4
    })
    .await;
    for i in 0..8 {
        std::fs::write(
            dir.join(format!("w{i}.service")),
            format!("[Service]\nExecStart=/usr/bin/docker run --name w{i} coreos/apache /usr/sbin/httpd\nExecStop=/usr/bin/docker stop w{i}\n"),
        )
        .unwrap();
    }
    let names: Vec<String> = (0..8).map(|i| format!("w{i}.service")).collect();
    let mut args: Vec<&str> = vec!["start", "--block-attempts=20"];
    args.extend(names.iter().map(String::as_str));
    let (code, out, err) = units(&ep, &dir, &args);
    assert_eq!(code, 0, "{out}{err}\n{}", cl.logs());
    // Two per machine, the agent-only one included.
    for m in 0..4 {
        let n = containers
            .names()
            .iter()
            .filter(|l| l.starts_with(&format!("{prefix}m{m}-")) && l.ends_with("running"))
            .count();
        assert_eq!(n, 2, "machine m{m}: {:?}", containers.names());
    }
    // A journal from the agent-only machine, through a member.
    let on_m3 = (0..8)
        .find(|i| {
            containers
                .names()
                .iter()
                .any(|l| l.starts_with(&format!("{prefix}m3-w{i} ")))
        })
        .expect("a unit on m3");
    let (code, journal, err) = units(&eps[0], &dir, &["journal", &format!("w{on_m3}.service")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        journal.contains("state: loaded/active/running"),
        "{journal}"
    );

    // Kill member 2's process: its units are re-placed and run elsewhere within 2 x TTL
    // (plus the time their containers take to start).
    let killed_at = Instant::now();
    cl.nodes[2].kill9();
    let ep01 = format!("{},{}", eps[0], eps[1]);
    let last = std::sync::Mutex::new(String::new());
    let watched = wait_for_or(Duration::from_secs(20), || {
        let (_, out, _) = units(
            &ep01,
            &dir,
            &[
                "list-units",
                "--no-legend",
                "--fields",
                "unit,machine,active",
            ],
        );
        *last.lock().unwrap() = out.clone();
        names.iter().all(|u| {
            out.lines()
                .any(|l| l.starts_with(u.as_str()) && !l.contains("m2...") && l.ends_with("active"))
        })
    })
    .await;
    assert!(
        watched,
        "m2's units not running elsewhere within 20 s; last list-units:\n{}\n{}",
        last.lock().unwrap(),
        cl.logs()
    );
    eprintln!(
        "re-placed and running {:?} after the kill",
        killed_at.elapsed()
    );
    // m2's own containers were left running (nobody was there to stop them) ...
    let left = || {
        containers
            .names()
            .iter()
            .filter(|l| l.starts_with(&format!("{prefix}m2-")) && l.ends_with("running"))
            .count()
    };
    assert_eq!(left(), 2, "{:?}", containers.names());
    // ... until it comes back: its agent removes the strays.
    cl.nodes[2].start();
    wait_for(
        "m2's stray containers removed",
        Duration::from_secs(20),
        || {
            containers
                .names()
                .iter()
                .all(|l| !l.starts_with(&format!("{prefix}m2-")))
        },
    )
    .await;
}
