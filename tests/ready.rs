//! A member answers clients only once its own publish (name and client URLs) is
//! committed and applied on it, as etcd's `ReadyNotify`: a three-member cluster started
//! from nothing, plain and over TLS with client certificates, and the instant the first
//! member's `/health` says `true`, Debian's `etcdctl` (v2) sets and gets a key through
//! every member. etcdctl syncs the member list first and gives up on a list without
//! client URLs, so a member that answered before publishing fails this.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::certs::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Fresh clusters per flavour: the race lasted about a second in every start before
/// members waited for their publish, so a few starts catch it every time.
const ROUNDS_PLAIN: usize = 5;
const ROUNDS_TLS: usize = 3;

/// `curl`'s status code for `url` (0 when nothing answered), with `tls` flags.
fn status(url: &str, tls: &[String]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "3", "-w", "\n%{http_code}"])
        .args(tls)
        .arg(url)
        .output()
        .expect("curl must be installed (scripts/test-all installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    match code.trim().parse() {
        Ok(code) if code > 0 => (code, body.to_string()),
        _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg(format!("--endpoints={endpoint}"))
        .args(tls)
        .args(args)
        .output()
        .expect("etcdctl must be installed (scripts/test-all installs etcd-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

fn logs(nodes: &[NodeProc]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {}:\n{}", n.name, n.log()))
        .collect()
}

/// Starts `nodes`, waits for the first member's `/health` to say true, then uses every
/// member at once with etcdctl; panics naming the member and etcdctl's words.
/// `curl_tls` and `etcd_tls` are the same client certificate in each tool's flag names.
fn first_health_then_every_member(
    round: usize,
    nodes: &mut [NodeProc],
    curl_tls: &[String],
    etcd_tls: &[String],
) {
    for n in nodes.iter_mut() {
        n.start();
    }
    let health = format!("{}/health", nodes[0].client_url);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = status(&health, curl_tls);
        if code == 200 {
            assert_eq!(body, r#"{"health":"true"}"#);
            break;
        }
        assert!(
            Instant::now() < end,
            "round {round}: no health (last: {code} {body})\n{}",
            logs(nodes)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Healthy means published: the member lists itself with the URL it was reached on.
    let (_, members) = status(&format!("{}/v2/members", nodes[0].client_url), curl_tls);
    assert!(
        members.contains(&format!(r#""clientURLs":["{}"]"#, nodes[0].client_url)),
        "round {round}: member 0 healthy but unpublished: {members}"
    );
    let eps: Vec<String> = nodes.iter().map(|n| n.client_url.clone()).collect();
    let outcomes: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = eps
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                s.spawn(move || {
                    let key = format!("/ready/{round}/{i}");
                    let (ok, out) = etcdctl(ep, etcd_tls, &["set", &key, "v"]);
                    if !ok {
                        return (false, format!("set through member {i}: {out}"));
                    }
                    let (ok, out) = etcdctl(ep, etcd_tls, &["get", &key]);
                    (ok && out == "v", format!("get through member {i}: {out}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<&String> = outcomes.iter().filter(|o| !o.0).map(|o| &o.1).collect();
    assert!(
        failed.is_empty(),
        "round {round}: {failed:?}\n{}",
        logs(nodes)
    );
}

#[test]
fn etcdctl_works_through_every_member_the_moment_the_first_is_healthy() {
    for round in 0..ROUNDS_PLAIN {
        let mut cl = Cluster::new(3, &[]);
        first_health_then_every_member(round, &mut cl.nodes, &[], &[]);
    }
}

#[test]
fn and_over_tls_with_client_certificates() {
    for round in 0..ROUNDS_TLS {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = make_ca(d, "cluster");
        let certs: Vec<_> = (0..3)
            .map(|i| leaf(d, &ca, &format!("n{i}"), false))
            .collect();
        let mut nodes = tls_cluster(d, 3, |i| member_flags(&ca.path, &certs[i].0, &certs[i].1));
        let client = leaf(d, &ca, "client", false);
        let curl_tls = vec![
            "--cacert".to_string(),
            s(&ca.path),
            "--cert".to_string(),
            s(&client.0),
            "--key".to_string(),
            s(&client.1),
        ];
        let etcd_tls = vec![
            format!("--ca-file={}", s(&ca.path)),
            format!("--cert-file={}", s(&client.0)),
            format!("--key-file={}", s(&client.1)),
        ];
        first_health_then_every_member(round, &mut nodes, &curl_tls, &etcd_tls);
    }
}
