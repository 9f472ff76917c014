//! Debian's `etcdctl` (ETCDCTL_API=2) against a three-member flotilla cluster, as the
//! seed talk uses it. Needs `etcd-client` (`scripts/test-all` installs it); fails loudly
//! without.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run etcdctl ({e}); install Debian's etcd-client (scripts/test-all does)")
        })
}

fn ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

fn fails(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    assert!(!out.status.success(), "etcdctl {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_v2_works_against_a_cluster() {
    let mut cl = Cluster::new(3, &[]);
    cl.start_all();
    let c = client();
    cl.leader(&c, Duration::from_secs(20)).await;
    // Members publish their client URLs through Raft; etcdctl syncs endpoints from them.
    let eps = cl
        .nodes
        .iter()
        .map(|n| n.client_url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let e = eps.as_str();
    await_published(&c, &cl).await;
    let mut health = String::new();
    for _ in 0..100 {
        let out = etcdctl(e, &["cluster-health"]);
        health = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && health.matches("got healthy result").count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(health.contains("cluster is healthy"), "{health}");
    for n in &cl.nodes {
        assert!(
            health.contains(&format!("got healthy result from {}", n.client_url)),
            "{health}"
        );
    }

    let list = ok(e, &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert_eq!(list.matches("isLeader=true").count(), 1, "{list}");
    for n in &cl.nodes {
        assert!(
            list.contains(&format!(
                "name={} peerURLs={} clientURLs={}",
                n.name, n.peer_url, n.client_url
            )),
            "{list}"
        );
    }

    // The seed talk's lines.
    assert_eq!(
        ok(e, &["set", "/domains/example.com/10.10.10.123:8081", "run"]),
        "run\n"
    );
    ok(
        e,
        &[
            "set",
            "/services/quad/10.253.156.164",
            "10.253.156.164:8810",
        ],
    );
    ok(
        e,
        &[
            "set",
            "/services/quad/10.253.156.165",
            "10.253.156.165:8810",
        ],
    );
    assert_eq!(
        ok(e, &["ls", "/services/quad"]),
        "/services/quad/10.253.156.164\n/services/quad/10.253.156.165\n"
    );
    assert_eq!(
        ok(e, &["get", "/services/quad/10.253.156.165"]),
        "10.253.156.165:8810\n"
    );
    ok(e, &["rm", "/domains/example.com/10.10.10.123:8081"]);
    assert!(
        fails(e, &["get", "/domains/example.com/10.10.10.123:8081"]).contains("100: Key not found")
    );

    assert_eq!(ok(e, &["mk", "/m", "1"]), "1\n");
    assert!(fails(e, &["mk", "/m", "2"]).contains("105: Key already exists (/m)"));
    ok(e, &["mkdir", "/dir"]);
    assert!(fails(e, &["mkdir", "/dir"]).contains("105: Key already exists"));
    assert_eq!(ok(e, &["update", "/m", "2"]), "2\n");
    assert!(fails(e, &["update", "/nope", "2"]).contains("100: Key not found"));
    ok(e, &["set", "/dir/a", "A"]);
    ok(e, &["set", "/dir/sub/b", "B"]);
    assert_eq!(
        ok(e, &["ls", "-r", "--sort", "/dir"]),
        "/dir/a\n/dir/sub\n/dir/sub/b\n"
    );
    assert_eq!(
        ok(e, &["ls", "-p", "--sort", "/dir"]),
        "/dir/a\n/dir/sub/\n"
    );
    assert!(fails(e, &["rmdir", "/dir"]).contains("108: Directory not empty"));
    ok(e, &["rm", "-r", "/dir"]);
    assert!(fails(e, &["ls", "/dir"]).contains("100: Key not found"));
    let ext = ok(e, &["set", "--ttl", "60", "/t", "x"]);
    assert_eq!(ext, "x\n");
    let ext = ok(e, &["-o", "extended", "get", "/t"]);
    assert!(
        ext.starts_with("Key: /t\n") && ext.contains("TTL: 60\n") && ext.ends_with("\n\nx\n"),
        "{ext}"
    );
    assert!(
        fails(e, &["set", "--swap-with-value", "nope", "/t", "y"]).contains("101: Compare failed")
    );
    ok(e, &["set", "--swap-with-value", "x", "/t", "y"]);
    let json = ok(e, &["-o", "json", "get", "/t"]);
    assert!(
        json.contains(r#""key":"/t""#) && json.contains(r#""value":"y""#),
        "{json}"
    );

    // watch: blocks until the next change, prints it, exits.
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg(format!("--endpoints={e}"))
        .args(["watch", "/w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(status) = watch.try_wait().unwrap() {
        let mut err = String::new();
        use std::io::Read;
        watch
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("watch returned before any change ({status}): {err}");
    }
    ok(e, &["set", "/w", "woke"]);
    let mut out = String::new();
    for _ in 0..100 {
        if watch.try_wait().unwrap().is_some() {
            use std::io::Read;
            watch
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = watch.kill();
    assert_eq!(out, "woke\n");
}

/// `flotilla kv` behaves like etcdctl v2: same stdout, stderr and exit code for the same
/// arguments against the same cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flotilla_kv_matches_etcdctl() {
    let mut cl = Cluster::new(1, &[]);
    cl.start_all();
    let c = client();
    cl.leader(&c, Duration::from_secs(20)).await;
    await_published(&c, &cl).await;
    let e = cl.nodes[0].client_url.clone();
    let run_both = |args: &[&str], setup: Option<&[&str]>| {
        let mut outs = vec![];
        for tool in ["etcdctl", "flotilla"] {
            if let Some(s) = setup {
                // Setup may legitimately fail (removing what is not there yet).
                etcdctl(&e, s);
            }
            let out = if tool == "etcdctl" {
                etcdctl(&e, args)
            } else {
                Command::new(env!("CARGO_BIN_EXE_flotilla"))
                    .args(["kv", &format!("--endpoints={e}")])
                    .args(args)
                    .output()
                    .unwrap()
            };
            let text = |b: &[u8]| normalise_indexes(&String::from_utf8_lossy(b));
            outs.push((out.status.code(), text(&out.stdout), text(&out.stderr)));
        }
        assert_eq!(outs[0], outs[1], "etcdctl vs flotilla kv for {args:?}");
    };
    // Each pair runs the command twice (etcdctl, then flotilla), so writes are set up
    // again before each run, and idempotent checks come after.
    run_both(&["get", "/a"], Some(&["set", "/a", "1"]));
    run_both(&["get", "/missing"], None);
    run_both(&["mk", "/a", "2"], Some(&["set", "/a", "1"]));
    run_both(&["set", "/a", "3"], None);
    run_both(&["update", "/nope", "3"], None);
    run_both(&["update", "/a", "4"], None);
    run_both(&["rm", "/r"], Some(&["set", "/r", "gone"]));
    run_both(&["rm", "/r"], None);
    run_both(&["mkdir", "/d"], Some(&["rm", "-r", "/d"]));
    run_both(&["mkdir", "/d"], None);
    run_both(&["rmdir", "/d"], Some(&["mkdir", "/d"]));
    run_both(&["ls", "--sort", "-r", "/"], Some(&["set", "/d2/x/y", "1"]));
    run_both(&["ls", "--sort", "-p", "/"], None);
    run_both(&["ls", "/nope"], None);
    run_both(&["-o", "extended", "get", "/a"], None);
    run_both(&["-o", "json", "get", "/a"], None);
    run_both(&["set", "--swap-with-value", "wrong", "/a", "5"], None);
    run_both(
        &["set", "--swap-with-value", "4", "/a", "5"],
        Some(&["set", "/a", "4"]),
    );
    run_both(&["rm", "--with-value", "wrong", "/a"], None);
    run_both(&["get", "/d2"], None);
}

/// Store indexes move between the two runs (setup is repeated): blank them out in
/// `[N]` error suffixes, `…Index: N` lines and `"…Index":N` JSON fields.
fn normalise_indexes(s: &str) -> String {
    let mut out = String::new();
    for line in s.lines() {
        let mut l = line.to_string();
        if let Some(p) = l.rfind(" [") {
            if l.ends_with(']') && l[p + 2..l.len() - 1].chars().all(|c| c.is_ascii_digit()) {
                l.truncate(p);
                l.push_str(" [N]");
            }
        }
        if let Some((k, _)) = l.split_once("Index: ") {
            l = format!("{k}Index: N");
        }
        while let Some(p) = l.find("Index\":") {
            let start = p + 7;
            let end = l[start..]
                .find(|c: char| !c.is_ascii_digit())
                .map(|e| start + e)
                .unwrap_or(l.len());
            l.replace_range(p..end, "Index#N");
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// Waits until every member has published its client URLs (etcdctl syncs endpoints
/// from them).
async fn await_published(c: &Http, cl: &Cluster) {
    let url = format!("{}/v2/members", cl.nodes[0].client_url);
    for _ in 0..200 {
        let r = call(c, "GET", &url, None).await.unwrap();
        let all = r.body["members"].as_array().is_some_and(|m| {
            m.len() == cl.nodes.len()
                && m.iter()
                    .all(|x| x["clientURLs"].as_array().is_some_and(|u| !u.is_empty()))
        });
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("members did not publish their client URLs\n{}", cl.logs());
}
