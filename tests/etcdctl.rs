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
    let members_url = format!("{}/v2/members", cl.nodes[0].client_url);
    for _ in 0..200 {
        let r = call(&c, "GET", &members_url, None).await.unwrap();
        let published = r.body["members"].as_array().map(|m| {
            m.iter()
                .all(|x| x["clientURLs"].as_array().is_some_and(|u| !u.is_empty()))
        });
        if published == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
