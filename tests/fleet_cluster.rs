//! The scheduler across three real `flotilla node` processes: the seed's template unit
//! spread by `Conflicts`, a fourth instance refused with its reason, a `MachineOf`
//! sidekick, `MachineMetadata`, a machine killed (its units re-placed within 2 × TTL,
//! nobody else's moved), and a leader killed (nothing correctly placed moves).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const TTL_S: u64 = 3;

fn units(endpoints: &str, args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("units")
        .arg(format!("--endpoint={endpoints}"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run flotilla units");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// unit → machines, from the schedule in the store (read at any live member).
async fn schedule(c: &Http, cl: &Cluster) -> BTreeMap<String, Vec<String>> {
    for n in cl.nodes.iter().filter(|n| n.child.is_some()) {
        let url = format!(
            "{}/v2/keys/_flotilla/schedule?recursive=true&quorum=true",
            n.client_url
        );
        let Ok(r) = call(c, "GET", &url, None).await else {
            continue;
        };
        if r.status == 404 {
            return BTreeMap::new();
        }
        if r.status != 200 {
            continue;
        }
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in r.body["node"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let machine = m["key"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            for u in m["nodes"].as_array().cloned().unwrap_or_default() {
                let unit = u["key"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string();
                out.entry(unit).or_default().push(machine.clone());
            }
        }
        for (u, ms) in &out {
            assert!(ms.len() <= 1, "{u} is scheduled on {ms:?} at once");
        }
        return out;
    }
    panic!("no member answered\n{}", cl.logs());
}

async fn wait_until<F>(
    c: &Http,
    cl: &Cluster,
    within: Duration,
    what: &str,
    ok: F,
) -> BTreeMap<String, Vec<String>>
where
    F: Fn(&BTreeMap<String, Vec<String>>) -> bool,
{
    let end = Instant::now() + within;
    loop {
        let s = schedule(c, cl).await;
        if ok(&s) {
            return s;
        }
        if Instant::now() > end {
            panic!(
                "{what}: not within {within:?}; schedule {s:?}\n{}",
                cl.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn on(s: &BTreeMap<String, Vec<String>>, u: &str) -> Option<String> {
    s.get(u).and_then(|m| m.first().cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_machines_schedule_like_fleet_and_survive_failures() {
    let ttl = format!("--agent-ttl={TTL_S}s");
    let mut cl = Cluster::with_machines(3, &[&ttl, "--engine-reconcile-interval=0.5"]);
    let disks = ["ssd", "hdd", "ssd"];
    // The seed's unit runs on the real engine: its containers are named and published
    // apart from other tests' (the seed's fixed name and port), and removed at the end.
    let prefix = format!("fc{}-", std::process::id());
    let _containers = Containers::new(&prefix);
    for (i, n) in cl.nodes.iter_mut().enumerate() {
        n.extra
            .push(format!("--container-name-prefix={prefix}m{i}-"));
        n.extra.push(format!("--publish-ip=127.0.0.{}", 81 + i));
        n.extra.push(format!("--machine-id=m{i}"));
        n.extra
            .push(format!("--metadata=disk={},rack=r{i}", disks[i]));
    }
    cl.start_all();
    let c = client();
    let leader = cl.leader(&c, Duration::from_secs(20)).await;
    let eps: String = cl
        .nodes
        .iter()
        .map(|n| n.client_url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let dir = cl.dir.path().to_path_buf();
    std::fs::write(dir.join("apache@.service"), APACHE).unwrap();
    std::fs::write(
        dir.join("side@.service"),
        "[Unit]\nBindsTo=apache@%i.service\n[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOf=apache@%i.service\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("db.service"),
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetadata=disk=ssd\n",
    )
    .unwrap();
    for i in 0..3 {
        std::fs::write(
            dir.join(format!("x{i}.service")),
            "[Service]\nExecStart=/bin/true\n",
        )
        .unwrap();
    }

    // All three machines register.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, out, _) = units(&eps, &["list-machines", "--no-legend"], &dir);
        if code == 0 && out.lines().count() == 3 {
            assert!(out.contains("disk=hdd,rack=r1"), "{out}");
            break;
        }
        assert!(
            Instant::now() < end,
            "machines did not register: {out}\n{}",
            cl.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The seed's template, three instances: one per machine.
    let (code, _, err) = units(&eps, &["submit", "apache@.service"], &dir);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = units(
        &eps,
        &[
            "start",
            "--no-block",
            "apache@1.service",
            "apache@2.service",
            "apache@3.service",
        ],
        &dir,
    );
    assert_eq!(code, 0, "{out}{err}");
    let s = wait_until(
        &c,
        &cl,
        Duration::from_secs(10),
        "three instances placed",
        |s| (1..=3).all(|i| on(s, &format!("apache@{i}.service")).is_some()),
    )
    .await;
    let mut used: Vec<String> = (1..=3)
        .map(|i| on(&s, &format!("apache@{i}.service")).unwrap())
        .collect();
    used.sort();
    assert_eq!(
        used,
        ["m0", "m1", "m2"],
        "Conflicts=%p@*.service spreads them"
    );

    // A fourth cannot be placed, and says why.
    let (code, _, err) = units(
        &eps,
        &["start", "--block-attempts=2", "apache@4.service"],
        &dir,
    );
    assert_ne!(code, 0, "an unplaceable start must fail");
    assert!(
        err.contains("Conflicts with apache@"),
        "reason missing: {err}"
    );
    assert!(err.contains("3 machine(s)"), "{err}");

    // A MachineOf sidekick lands beside its app; MachineMetadata is honoured.
    let (code, _, err) = units(
        &eps,
        &[
            "start",
            "--no-block",
            "side@2.service",
            "db.service",
            "x0.service",
            "x1.service",
            "x2.service",
        ],
        &dir,
    );
    assert_eq!(code, 0, "{err}");
    let s = wait_until(
        &c,
        &cl,
        Duration::from_secs(10),
        "sidekick, db and plain units placed",
        |s| {
            [
                "side@2.service",
                "db.service",
                "x0.service",
                "x1.service",
                "x2.service",
            ]
            .iter()
            .all(|u| on(s, u).is_some())
        },
    )
    .await;
    assert_eq!(on(&s, "side@2.service"), on(&s, "apache@2.service"));
    let db_on = on(&s, "db.service").unwrap();
    assert!(
        db_on == "m0" || db_on == "m2",
        "db needs disk=ssd, went to {db_on}"
    );
    let (_, out, _) = units(&eps, &["list-unit-files", "--no-legend"], &dir);
    assert!(
        out.lines().any(|l| l.starts_with("db.service")
            && l.contains("launched")
            && l.contains(&format!("{db_on}..."))),
        "{out}"
    );

    // Kill -9 the machine running db: within 2 x TTL its units are elsewhere; nothing
    // else moved. Keep the leader alive (two of three members must stay up).
    let victim: usize = db_on[1..].parse().unwrap();
    let victim = if victim == leader {
        // Move the leader role off the victim by killing the other ssd machine instead.
        if victim == 0 {
            2
        } else {
            0
        }
    } else {
        victim
    };
    let victim_id = format!("m{victim}");
    let before = schedule(&c, &cl).await;
    let killed_at = Instant::now();
    cl.nodes[victim].kill9();
    let moved = |s: &BTreeMap<String, Vec<String>>| {
        before
            .iter()
            .filter(|(_, m)| m[0] == victim_id)
            .all(|(u, _)| {
                // apache@N on the victim has nowhere to go (Conflicts): it waits unscheduled.
                let placeable = !u.starts_with("apache@") && !u.starts_with("side@");
                on(s, u).map_or(!placeable, |m| m != victim_id)
            })
    };
    let after = wait_until(
        &c,
        &cl,
        Duration::from_secs(2 * TTL_S),
        "victim's units re-placed",
        moved,
    )
    .await;
    assert!(killed_at.elapsed() <= Duration::from_secs(2 * TTL_S));
    for (u, m) in &before {
        if m[0] != victim_id {
            assert_eq!(
                on(&after, u).as_ref(),
                Some(&m[0]),
                "{u} moved though its machine lived"
            );
        }
    }
    if before.get("db.service").map(|m| &m[0]) == Some(&victim_id) {
        assert!(
            on(&after, "db.service").is_some_and(|m| m != victim_id && m != "m1"),
            "db needs the other ssd machine"
        );
    }

    // The victim comes back: it gets nothing back by force.
    cl.nodes[victim].start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = schedule(&c, &cl).await;
    for (u, m) in &after {
        assert_eq!(back.get(u), Some(m), "{u} moved when a machine rejoined");
    }

    // Kill the leader: while its machine's key lives, the new leader moves nothing.
    let leader = cl.leader(&c, Duration::from_secs(10)).await;
    let leader_id = format!("m{leader}");
    let before = schedule(&c, &cl).await;
    cl.nodes[leader].kill9();
    let new_leader = cl.leader(&c, Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    let s = schedule(&c, &cl).await;
    assert_eq!(s, before, "a leader change moved units");
    // After its key expires only the dead leader's units move.
    let after = wait_until(
        &c,
        &cl,
        Duration::from_secs(2 * TTL_S + 5),
        "dead leader's units re-placed",
        |s| s.values().all(|m| m[0] != leader_id),
    )
    .await;
    for (u, m) in &before {
        if m[0] != leader_id {
            assert_eq!(
                on(&after, u).as_ref(),
                Some(&m[0]),
                "{u} moved after the leader died"
            );
        }
    }
}
