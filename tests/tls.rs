//! TLS on real processes, with certificates made here (rcgen): a three-member cluster with
//! peer and client TLS and client-certificate authentication, used by `flotilla kv` and
//! Debian's `etcdctl`; clients without a certificate, with an expired one or one from
//! another CA refused; plain HTTP to a TLS port answered with a 400; a member with a
//! foreign certificate kept out; a certificate rotated without a restart; unusable TLS
//! flags named at start.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::certs::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A command's (success, trimmed stdout, stderr).
fn outcome(mut cmd: Command, what: &str) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `flotilla kv` with the given TLS flags.
fn kv(endpoint: &str, tls: &[String], args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.arg("kv").arg(format!("--endpoints={endpoint}"));
    cmd.args(tls).args(args);
    outcome(cmd, "run flotilla kv")
}

/// Debian's etcdctl, v2 API.
fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "2")
        .arg(format!("--endpoints={endpoint}"));
    cmd.args(tls).args(args);
    outcome(
        cmd,
        "etcdctl must be installed (scripts/test-all installs etcd-client)",
    )
}

fn client_flags(ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> Vec<String> {
    let mut f = vec![format!("--ca-file={}", s(ca))];
    if let Some((c, k)) = cert {
        f.push(format!("--cert-file={}", s(c)));
        f.push(format!("--key-file={}", s(k)));
    }
    f
}

fn eventually(
    what: &str,
    within: Duration,
    mut ok: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: not within {within:?}\n{}", log());
}

fn logs(nodes: &[NodeProc]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {}:\n{}", n.name, n.log()))
        .collect()
}

#[test]
fn three_members_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = make_ca(d, "cluster");
    let members: Vec<_> = (0..3)
        .map(|i| leaf(d, &ca, &format!("n{i}"), false))
        .collect();
    let mut nodes = tls_cluster(d, 3, |i| {
        member_flags(&ca.path, &members[i].0, &members[i].1)
    });
    for n in &mut nodes {
        n.start();
    }
    let client = leaf(d, &ca, "client", false);
    let good = client_flags(&ca.path, Some(&client));
    let (ep0, ep2) = (nodes[0].client_url.clone(), nodes[2].client_url.clone());
    eventually(
        "a write over TLS",
        Duration::from_secs(30),
        || kv(&ep0, &good, &["set", "/tls/a", "one"]).0,
        || logs(&nodes),
    );
    // Replicated over the peers' TLS: member 2 serves it from its own replica.
    eventually(
        "the write on member 2",
        Duration::from_secs(10),
        || kv(&ep2, &good, &["get", "/tls/a"]).1 == "one",
        || logs(&nodes),
    );

    // The other clients over TLS: confd renders from it, fleetctl's verbs answer.
    let confdir = d.join("confd");
    std::fs::create_dir_all(confdir.join("conf.d")).unwrap();
    std::fs::create_dir_all(confdir.join("templates")).unwrap();
    std::fs::write(confdir.join("templates/a.tmpl"), "a={{getv \"/tls/a\"}}\n").unwrap();
    let dest = d.join("a.conf");
    std::fs::write(
        confdir.join("conf.d/a.toml"),
        format!(
            "[template]\nsrc = \"a.tmpl\"\ndest = \"{}\"\nkeys = [\"/tls\"]\n",
            s(&dest)
        ),
    )
    .unwrap();
    let mut confd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    confd.args(["confd", "--onetime", &format!("--confdir={}", s(&confdir))]);
    confd.arg(format!("--node={ep2}")).args(&good);
    let (ok, _, err) = outcome(confd, "run flotilla confd");
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "a=one\n");
    let mut units = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    units.args(["units", &format!("--endpoint={ep0}"), "list-unit-files"]);
    units.args(&good);
    let (ok, _, err) = outcome(units, "run flotilla units");
    assert!(ok, "{err}");

    // Debian's etcdctl (v2) with etcdctl's flag names.
    let etcd_flags: Vec<String> = vec![
        format!("--ca-file={}", s(&ca.path)),
        format!("--cert-file={}", s(&client.0)),
        format!("--key-file={}", s(&client.1)),
    ];
    // etcdctl first syncs the member list: wait until every member has published its
    // client URLs (members publish them through Raft once they start).
    let last = std::cell::RefCell::new(String::new());
    eventually(
        "etcdctl set over TLS",
        Duration::from_secs(15),
        || {
            let (ok, _, err) = etcdctl(&ep2, &etcd_flags, &["set", "/tls/b", "two"]);
            *last.borrow_mut() = err;
            ok
        },
        || format!("{}\n{}", last.borrow(), logs(&nodes)),
    );
    let (ok, out, err) = etcdctl(&ep0, &etcd_flags, &["get", "/tls/b"]);
    assert!(ok && out == "two", "etcdctl get over TLS: {out} {err}");

    // The dashboard is served over the same TLS listener, with the same client check.
    let page = Command::new("curl")
        .args([
            "-s",
            "-i",
            "--cacert",
            &s(&ca.path),
            "--cert",
            &s(&client.0),
        ])
        .args(["--key", &s(&client.1), &format!("{ep0}/ui/")])
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("<title>flotilla</title>"),
        "the dashboard over TLS: {page}"
    );
    assert!(page
        .to_ascii_lowercase()
        .contains("content-security-policy: default-src 'none'"));

    // No client certificate, an expired one, one from another CA: refused in the handshake.
    let (ok, _, err) = etcdctl(&ep0, &etcd_flags[..1], &["get", "/tls/a"]);
    assert!(!ok, "etcdctl without a certificate got in: {err}");
    let (ok, _, err) = kv(&ep0, &client_flags(&ca.path, None), &["get", "/tls/a"]);
    assert!(!ok, "flotilla kv without a certificate got in: {err}");
    let expired = leaf(d, &ca, "expired", true);
    let (ok, _, err) = kv(
        &ep0,
        &client_flags(&ca.path, Some(&expired)),
        &["get", "/tls/a"],
    );
    assert!(!ok, "an expired certificate got in: {err}");
    let other = make_ca(d, "other");
    let foreign = leaf(d, &other, "foreign", false);
    let (ok, _, err) = kv(
        &ep0,
        &client_flags(&ca.path, Some(&foreign)),
        &["get", "/tls/a"],
    );
    assert!(!ok, "a certificate from another CA got in: {err}");
    // A client that does not trust the cluster's CA refuses the server.
    let (ok, _, err) = kv(
        &ep0,
        &client_flags(&other.path, Some(&client)),
        &["get", "/tls/a"],
    );
    assert!(!ok && err.contains("certificate"), "{err}");

    // Plain HTTP to a TLS port gets a 400 saying so; the member is unaffected.
    let port = ep0.rsplit(':').next().unwrap();
    let mut raw = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    use std::io::{Read, Write};
    raw.write_all(b"GET /v2/keys/tls/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.0 400") && answer.contains("HTTPS server"),
        "{answer}"
    );
    // TLS to a port that speaks plain HTTP (a plain member) is the client's error, named.
    let mut plain = Cluster::new(1, &[]);
    plain.start_all();
    let plain_url = plain.nodes[0].client_url.clone();
    eventually(
        "the plain member serving",
        Duration::from_secs(20),
        || kv(&plain_url, &[], &["set", "/plain", "1"]).0,
        || plain.logs(),
    );
    let as_tls = plain_url.replace("http://", "https://");
    let (ok, _, err) = kv(&as_tls, &good, &["get", "/plain"]);
    assert!(
        !ok && err.contains(&as_tls) && (err.contains("corrupt") || err.contains("TLS")),
        "TLS to a plain port: {err}"
    );
    let (ok, out, err) = kv(&ep0, &good, &["get", "/tls/a"]);
    assert!(
        ok && out == "one",
        "the member after bad clients: {out} {err}"
    );
    assert!(
        nodes[0].log().contains("TLS handshake refused"),
        "refused handshakes are logged:\n{}",
        nodes[0].log()
    );
}

#[test]
fn a_member_with_a_foreign_certificate_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = make_ca(d, "cluster");
    let other = make_ca(d, "intruder");
    let certs = [
        leaf(d, &ca, "n0", false),
        leaf(d, &ca, "n1", false),
        leaf(d, &other, "n2", false),
    ];
    // n2 trusts the cluster's CA but shows a certificate the cluster did not sign.
    let mut nodes = tls_cluster(d, 3, |i| member_flags(&ca.path, &certs[i].0, &certs[i].1));
    for n in &mut nodes {
        n.start();
    }
    let client = leaf(d, &ca, "client", false);
    let good = client_flags(&ca.path, Some(&client));
    let ep0 = nodes[0].client_url.clone();
    eventually(
        "a write with two members of three",
        Duration::from_secs(30),
        || kv(&ep0, &good, &["set", "/tls/kept-out", "yes"]).0,
        || logs(&nodes),
    );
    std::thread::sleep(Duration::from_secs(2));
    // n2 never got a Raft message in, so it never applied its own publish: like an etcd
    // member that cannot join, it serves no client (a client that trusts n2's
    // certificate waits out the request timeout and is told it is not ready).
    let n2_flags = client_flags(&other.path, Some(&client));
    let (ok, out, err) = kv(
        &nodes[2].client_url,
        &n2_flags,
        &["--timeout-s=15", "get", "/tls/kept-out"],
    );
    assert!(
        !ok && out.is_empty() && err.contains("503 not ready"),
        "the intruder answered {out:?} {err}"
    );
    eventually(
        "the members' logs name the refused peer handshakes",
        Duration::from_secs(5),
        || nodes[0].log().contains("peer TLS handshake refused"),
        || logs(&nodes),
    );
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = make_ca(d, "cluster");
    let (cert, key) = leaf(d, &ca, "n0", false);
    let mut nodes = tls_cluster(d, 1, |_| {
        vec![
            format!("--cert-file={}", s(&cert)),
            format!("--key-file={}", s(&key)),
            format!("--peer-cert-file={}", s(&cert)),
            format!("--peer-key-file={}", s(&key)),
            format!("--peer-trusted-ca-file={}", s(&ca.path)),
        ]
    });
    nodes[0].start();
    let ep = nodes[0].client_url.clone();
    let flags = client_flags(&ca.path, None);
    eventually(
        "the member answering",
        Duration::from_secs(20),
        || kv(&ep, &flags, &["set", "/r", "1"]).0,
        || logs(&nodes),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = || -> Vec<u8> {
        rt.block_on(async {
            let cfg = flotilla_shims::tls::ClientTls {
                ca_file: Some(ca.path.clone()),
                ..Default::default()
            }
            .config()
            .unwrap();
            let addr = ep.trim_start_matches("https://").to_string();
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let tls = flotilla_shims::tls::connect_with(Arc::clone(&cfg), "127.0.0.1", tcp)
                .await
                .unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        })
    };
    let before = served();
    // The same paths, a new pair (as a certificate manager rotates them).
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = leaf(d, &ca, "n0-next", false);
    std::fs::copy(&fresh.1, &key).unwrap();
    std::fs::copy(&fresh.0, &cert).unwrap();
    let want = std::fs::read(d.join("n0-next.der")).unwrap();
    assert_ne!(before, want);
    eventually(
        "the new certificate served",
        Duration::from_secs(10),
        || served() == want,
        || logs(&nodes),
    );
    assert!(kv(&ep, &flags, &["get", "/r"]).0, "{}", logs(&nodes));
    // A rotation that cannot be used (the key no longer matches): logged, the pair that
    // works is kept.
    std::thread::sleep(Duration::from_millis(1100));
    let other = leaf(d, &ca, "n0-other", false);
    std::fs::copy(&other.1, &key).unwrap();
    eventually(
        "the unusable pair named in the log",
        Duration::from_secs(10),
        || {
            let _ = served();
            logs(&nodes).contains("new certificate not usable; keeping the old one")
        },
        || logs(&nodes),
    );
    assert_eq!(served(), want, "the working certificate is still served");
    assert!(kv(&ep, &flags, &["get", "/r"]).0, "{}", logs(&nodes));
    // A client that connects and never says hello is cut off (the handshake bound, 10 s).
    let addr = ep.trim_start_matches("https://").to_string();
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = matches!(std::io::Read::read(&mut idle, &mut buf), Ok(0) | Err(_));
    let waited = t0.elapsed();
    assert!(
        closed && waited >= Duration::from_secs(9) && waited < Duration::from_secs(25),
        "a silent client was held {waited:?} (closed: {closed}); the bound is 10 s"
    );
}

#[test]
fn unusable_tls_flags_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = make_ca(d, "cluster");
    let (cert, _) = leaf(d, &ca, "a", false);
    let (_, other_key) = leaf(d, &ca, "b", false);
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let start = |flags: Vec<String>| -> String {
        let port = free_port();
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([
                "node",
                &format!("--data-dir={}", s(&d.join(format!("d{port}")))),
                &format!("--listen-client-urls=https://127.0.0.1:{port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{}", free_port()),
                "--no-agent",
            ])
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with unusable TLS flags");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = start(vec![]);
    assert!(
        err.contains("--cert-file") && err.contains("--key-file"),
        "{err}"
    );
    let err = start(vec![
        format!("--cert-file={}", s(&cert)),
        format!("--key-file={}", s(&other_key)),
    ]);
    assert!(
        err.contains("does not match") && err.contains(&s(&other_key)),
        "{err}"
    );
    let err = start(vec![
        format!("--cert-file={}", s(&garbage)),
        format!("--key-file={}", s(&other_key)),
    ]);
    assert!(err.contains(&s(&garbage)), "{err}");
    let err = start(vec![
        format!("--cert-file={}", s(&cert)),
        format!("--key-file={}", s(&other_key)),
        "--client-cert-auth".into(),
    ]);
    assert!(err.contains("trusted CA"), "{err}");
}

#[test]
fn a_client_certificate_names_its_user_when_auth_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = make_ca(d, "cluster");
    let (cert, key) = leaf(d, &ca, "n0", false);
    let mut nodes = tls_cluster(d, 1, |_| member_flags(&ca.path, &cert, &key));
    nodes[0].start();
    let ep = nodes[0].client_url.clone();
    // Certificates whose common names are user names: root, alice, and nobody.
    let as_cn = |cn: &str| {
        let pair = leaf(d, &ca, cn, false);
        vec![
            format!("--ca-file={}", s(&ca.path)),
            format!("--cert-file={}", s(&pair.0)),
            format!("--key-file={}", s(&pair.1)),
        ]
    };
    let (root, alice, mallory) = (as_cn("root"), as_cn("alice"), as_cn("mallory"));
    eventually(
        "the member answering",
        Duration::from_secs(20),
        || kv(&ep, &root, &["set", "/pub/a", "1"]).0,
        || logs(&nodes),
    );
    let admin = |args: &[&str]| {
        let mut last = String::new();
        for _ in 0..50 {
            let (ok, out, err) = etcdctl(&ep, &root, args);
            if ok {
                return out;
            }
            last = err;
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("etcdctl {args:?}: {last}\n{}", logs(&nodes));
    };
    // Passwords exist, but with certificates the common name is the user (no password).
    admin(&["user", "add", "root:rootpw"]);
    admin(&["auth", "enable"]);
    admin(&["role", "add", "reader"]);
    admin(&["role", "grant", "reader", "--path", "/pub/*", "--read"]);
    admin(&["user", "add", "alice:alicepw"]);
    admin(&["user", "grant", "alice", "--roles", "reader"]);
    admin(&["role", "revoke", "guest", "--path", "/*", "--readwrite"]);
    let (ok, out, err) = kv(&ep, &alice, &["get", "/pub/a"]);
    assert!(
        ok && out == "1",
        "alice reads by her certificate: {out} {err}"
    );
    let (ok, _, err) = kv(&ep, &alice, &["set", "/pub/a", "2"]);
    assert!(!ok && err.contains("110"), "alice may not write: {err}");
    let (ok, _, err) = kv(&ep, &mallory, &["get", "/pub/a"]);
    assert!(
        !ok && err.contains("110"),
        "a certificate naming no user is a guest: {err}"
    );
    // An Authorization header wins over the certificate, as in etcd.
    let mut wrong = alice.clone();
    wrong.push("--username=alice:nope".into());
    let (ok, _, err) = kv(&ep, &wrong, &["get", "/pub/a"]);
    assert!(
        !ok && err.contains("110"),
        "a wrong password is refused: {err}"
    );
    let (ok, out, _) = kv(&ep, &root, &["get", "/pub/a"]);
    assert!(ok && out == "1");
}
