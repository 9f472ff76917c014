//! etcd's v2 auth API, request by request against a real etcd 3.4 (`--enable-v2`) and a
//! flotilla node: users, roles, grants, revokes, enable/disable, denied reads and writes,
//! guest access — the same status and the same bytes. Then what etcd has no counterpart
//! for: Debian's `etcdctl user|role|auth` against flotilla, and a unit submission refused
//! for a user whose role does not reach the units.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use std::process::Command;
use std::time::Duration;

/// One request: method, path, body, credentials (`user:password`).
struct Step {
    method: &'static str,
    path: String,
    body: Option<String>,
    auth: Option<&'static str>,
    /// Compare the whole body (auth endpoints, key errors) or only the status (key
    /// successes carry indexes that differ between the two stores).
    whole: bool,
    /// The body's content type; by default a form for keys and JSON elsewhere.
    content_type: Option<&'static str>,
}

fn step(method: &'static str, path: &str, body: Option<&str>, auth: Option<&'static str>) -> Step {
    Step {
        method,
        path: path.to_string(),
        body: body.map(String::from),
        auth,
        whole: true,
        content_type: None,
    }
}

fn key_step(
    method: &'static str,
    path: &str,
    body: Option<&str>,
    auth: Option<&'static str>,
) -> Step {
    Step {
        whole: false,
        ..step(method, path, body, auth)
    }
}

async fn send(c: &Http, base: &str, s: &Step) -> (u16, String) {
    use base64::Engine;
    let mut b = http::Request::builder()
        .method(s.method)
        .uri(format!("{base}{}", s.path));
    if let Some(a) = s.auth {
        let token = base64::engine::general_purpose::STANDARD.encode(a);
        b = b.header("authorization", format!("Basic {token}"));
    }
    if s.body.is_some() {
        let form = s.path.starts_with("/v2/keys");
        let default = if form {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        b = b.header("content-type", s.content_type.unwrap_or(default));
    }
    let req = b
        .body(Full::new(Bytes::from(s.body.clone().unwrap_or_default())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .expect("answer within 20 s")
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const ROOT: Option<&str> = Some("root:rootpw");
const ALICE: Option<&str> = Some("alice:alicepw");
const BAD: Option<&str> = Some("alice:wrong");
/// A member that would never start: adding it takes a one-member cluster's quorum.
const PHANTOM: &str = r#"{"peerURLs":["http://127.0.0.1:23799"]}"#;

fn script() -> Vec<Step> {
    let user =
        |name: &str, pw: &str| format!(r#"{{"user":"{name}","password":"{pw}","roles":null}}"#);
    let grant_read = |p: &str| {
        format!(
            r#"{{"role":"reader","permissions":{{"kv":{{"read":null,"write":null}}}},"grant":{{"kv":{{"read":["{p}"],"write":null}}}}}}"#
        )
    };
    vec![
        step("GET", "/v2/auth/enable", None, None),
        step("GET", "/v2/auth/users", None, None),
        step("GET", "/v2/auth/roles", None, None),
        step("PUT", "/v2/auth/enable", None, None),
        step("POST", "/v2/auth/users", None, None),
        step("GET", "/v2/auth/users/a/b", None, None),
        step(
            "PUT",
            "/v2/auth/users/root",
            Some(&user("root", "rootpw")),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/users/alice",
            Some(&user("alice", "first")),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/users/alice",
            Some(&user("alice", "alicepw")),
            None,
        ),
        step("PUT", "/v2/auth/users/alice", Some(&user("bob", "x")), None),
        step("PUT", "/v2/auth/users/alice", Some("{not json"), None),
        step(
            "PUT",
            "/v2/auth/users/carol",
            Some(&user("carol", "")),
            None,
        ),
        step("GET", "/v2/auth/users/nobody", None, None),
        step(
            "PUT",
            "/v2/auth/roles/reader",
            Some(r#"{"role":"reader","permissions":{"kv":{"read":null,"write":null}}}"#),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/roles/reader",
            Some(r#"{"role":"reader"}"#),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/roles/reader",
            Some(&grant_read("/pub/*")),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/roles/reader",
            Some(&grant_read("/pub/*")),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/roles/reader",
            Some(&grant_read("/exact")),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/roles/reader",
            Some(
                r#"{"role":"reader","permissions":{"kv":{"read":null,"write":null}},"revoke":{"kv":{"read":["/nope"],"write":null}}}"#,
            ),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/roles/root",
            Some(r#"{"role":"root"}"#),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/roles/reader",
            Some(
                r#"{"role":"reader","permissions":{"kv":{"read":["/x"],"write":null}},"grant":{"kv":{"read":["/y"],"write":null}}}"#,
            ),
            None,
        ),
        step("GET", "/v2/auth/roles/reader", None, None),
        step("GET", "/v2/auth/roles/nobody", None, None),
        step("GET", "/v2/auth/roles/root", None, None),
        step(
            "PUT",
            "/v2/auth/users/alice",
            Some(r#"{"user":"alice","roles":null,"grant":["reader"]}"#),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/users/alice",
            Some(r#"{"user":"alice","roles":null,"grant":["reader"]}"#),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/users/alice",
            Some(r#"{"user":"alice","roles":null,"revoke":["writer"]}"#),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/users/alice",
            Some(r#"{"user":"alice","roles":["x"],"grant":["y"]}"#),
            None,
        ),
        step(
            "PUT",
            "/v2/auth/users/nobody",
            Some(r#"{"user":"nobody","roles":null,"grant":["reader"]}"#),
            None,
        ),
        step("GET", "/v2/auth/users/alice", None, None),
        step("GET", "/v2/auth/users", None, None),
        step("GET", "/v2/auth/roles", None, None),
        step("DELETE", "/v2/auth/users/nobody", None, None),
        step("DELETE", "/v2/auth/roles/nobody", None, None),
        step("DELETE", "/v2/auth/roles/root", None, None),
        key_step("PUT", "/v2/keys/pub/a", Some("value=1"), None),
        key_step("PUT", "/v2/keys/secret", Some("value=s"), None),
        // Enabled: guest (all keys) for the anonymous, roles for users, root for admin.
        step("PUT", "/v2/auth/enable", None, None),
        step("GET", "/v2/auth/enable", None, None),
        step("GET", "/v2/auth/users", None, None),
        step("GET", "/v2/auth/users", None, ALICE),
        step("GET", "/v2/auth/users", None, BAD),
        step("GET", "/v2/auth/users", None, ROOT),
        step("GET", "/v2/auth/roles", None, ROOT),
        step("PUT", "/v2/auth/enable", None, ROOT),
        // Membership: listing stays open, changing it is root's (etcd's
        // hasWriteRootAccess). A member added here would cost both single-member
        // clusters their quorum, so root's changes name members that do not exist.
        key_step("GET", "/v2/members", None, None),
        step("POST", "/v2/members", Some(PHANTOM), None),
        step("POST", "/v2/members", Some(PHANTOM), ALICE),
        step("POST", "/v2/members", Some(PHANTOM), BAD),
        step("PUT", "/v2/members/abc", Some(PHANTOM), None),
        step("PUT", "/v2/members/abc", Some(PHANTOM), ALICE),
        step("DELETE", "/v2/members/abc", None, None),
        step("DELETE", "/v2/members/abc", None, ALICE),
        step("PATCH", "/v2/members", None, None),
        step("GET", "/v2/members/nothing", None, None),
        step("DELETE", "/v2/members/abc", None, ROOT),
        step("DELETE", "/v2/members/zz", None, ROOT),
        step("PUT", "/v2/members/abc", Some(PHANTOM), ROOT),
        step("DELETE", "/v2/members", None, ROOT),
        Step {
            content_type: Some("application/x-www-form-urlencoded"),
            ..step("POST", "/v2/members", Some(PHANTOM), ROOT)
        },
        key_step("GET", "/v2/keys/secret", None, None),
        key_step("PUT", "/v2/keys/pub/b", Some("value=2"), None),
        step(
            "PUT",
            "/v2/auth/roles/guest",
            Some(
                r#"{"role":"guest","permissions":{"kv":{"read":null,"write":null}},"revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#,
            ),
            ROOT,
        ),
        step(
            "PUT",
            "/v2/auth/roles/guest",
            Some(
                r#"{"role":"guest","permissions":{"kv":{"read":null,"write":null}},"grant":{"kv":{"read":["/pub/*"],"write":null}}}"#,
            ),
            ROOT,
        ),
        step("GET", "/v2/keys/secret", None, None),
        step("PUT", "/v2/keys/pub/c", Some("value=3"), None),
        // The admin and health paths stay open to anyone once the guest role reaches
        // nothing but /pub: etcd checks no credentials there (bodies hold counters and
        // ids that differ between the two stores, so the status is compared).
        key_step("GET", "/v2/stats/self", None, None),
        key_step("GET", "/v2/stats/store", None, None),
        key_step("GET", "/v2/stats/leader", None, None),
        key_step("GET", "/v2/machines", None, None),
        key_step("GET", "/v2/members/leader", None, None),
        key_step("GET", "/version", None, None),
        key_step("GET", "/health", None, None),
        key_step("GET", "/metrics", None, None),
        key_step("GET", "/v2/stats/self", None, BAD),
        key_step("OPTIONS", "/v2/keys/secret", None, None),
        key_step("GET", "/v2/keys/pub/a", None, None),
        key_step("GET", "/v2/keys/pub/a", None, ALICE),
        step("GET", "/v2/keys/pub/a", None, BAD),
        step("PUT", "/v2/keys/pub/a", Some("value=9"), ALICE),
        step("GET", "/v2/keys/secret", None, ALICE),
        key_step("GET", "/v2/keys/exact", None, ALICE),
        step("GET", "/v2/keys/pub?recursive=true", None, ALICE),
        key_step("GET", "/v2/keys/pub/?recursive=true", None, ALICE),
        key_step("GET", "/v2/keys/secret", None, ROOT),
        key_step("PUT", "/v2/keys/secret", Some("value=t"), ROOT),
        step("DELETE", "/v2/auth/users/root", None, ROOT),
        step("DELETE", "/v2/auth/enable", None, ALICE),
        step("DELETE", "/v2/auth/enable", None, ROOT),
        step("DELETE", "/v2/auth/enable", None, None),
        step("GET", "/v2/auth/enable", None, None),
        step("DELETE", "/v2/auth/users/alice", None, None),
        step("DELETE", "/v2/auth/roles/reader", None, None),
        step("GET", "/v2/auth/users", None, None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_auth_matches_etcd_request_by_request() {
    let c = client();
    let etcd = start_etcd(&c).await;
    let mut cl = Cluster::new(1, &[]);
    cl.start_all();
    let ours = cl.nodes[0].client_url.clone();
    wait_healthy(&c, &ours).await;
    let mut diffs = vec![];
    for (i, s) in script().iter().enumerate() {
        let theirs = send(&c, &etcd.url, s).await;
        let mine = send(&c, &ours, s).await;
        let same = if s.whole {
            theirs == mine
        } else {
            theirs.0 == mine.0
        };
        if !same {
            diffs.push(format!(
                "#{i} {} {} (as {:?}):\n  etcd:     {} {:?}\n  flotilla: {} {:?}",
                s.method, s.path, s.auth, theirs.0, theirs.1, mine.0, mine.1
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    // Nothing the script refused was half-applied: one member each, still.
    for base in [&etcd.url, &ours] {
        let r = call(&c, "GET", &format!("{base}/v2/members"), None)
            .await
            .unwrap();
        let n = r.body["members"].as_array().map(Vec::len);
        assert_eq!(n, Some(1), "{base}: {}", r.text);
    }
}

fn etcdctl(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg(format!("--endpoints={url}"))
        .args(args)
        .output()
        .expect("etcdctl must be installed (scripts/test-all installs etcd-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_manages_auth_and_units_are_guarded() {
    let c = client();
    let mut cl = Cluster::new(1, &[]);
    cl.start_all();
    let url = cl.nodes[0].client_url.clone();
    wait_healthy(&c, &url).await;
    // Members publish their client URLs through Raft; etcdctl needs them.
    let mut ready = false;
    for _ in 0..50 {
        if etcdctl(&url, &["user", "list"]).0 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "etcdctl never got an answer");
    let root = ["--username", "root:rootpw"];
    let ok = |args: &[&str]| {
        let (ok, text) = etcdctl(&url, args);
        assert!(ok, "etcdctl {args:?}: {text}");
        text
    };
    ok(&["user", "add", "root:rootpw"]);
    // The records (password hashes) are never keys, not even with auth off.
    for path in [
        "/v2/keys/_flotilla/auth/users/root",
        "/v2/keys/_flotilla/auth?recursive=true",
        "/v2/keys/_flotilla?recursive=true",
    ] {
        let r = call(&c, "GET", &format!("{url}{path}"), None)
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{path}: {}", r.text);
    }
    let r = call(&c, "GET", &format!("{url}/v2/keys/?recursive=true"), None)
        .await
        .unwrap();
    assert!(
        r.status == 200 && !r.text.contains("rootpw") && !r.text.contains("$2a$"),
        "{}",
        r.text
    );
    ok(&["auth", "enable"]);
    let with = |who: &[&'static str], rest: &[&'static str]| -> Vec<&'static str> {
        who.iter().chain(rest).copied().collect()
    };
    ok(&with(&root, &["role", "add", "viewer"]));
    ok(&with(
        &root,
        &[
            "role",
            "grant",
            "viewer",
            "--path",
            "/_flotilla/*",
            "--read",
        ],
    ));
    ok(&with(&root, &["role", "add", "deployer"]));
    ok(&with(
        &root,
        &[
            "role",
            "grant",
            "deployer",
            "--path",
            "/_flotilla/*",
            "--readwrite",
        ],
    ));
    ok(&with(
        &root,
        &["role", "revoke", "guest", "--path", "/*", "--readwrite"],
    ));
    ok(&with(&root, &["user", "add", "vera:verapw"]));
    ok(&with(
        &root,
        &["user", "grant", "vera", "--roles", "viewer"],
    ));
    ok(&with(&root, &["user", "add", "dan:danpw"]));
    ok(&with(
        &root,
        &["user", "grant", "dan", "--roles", "deployer"],
    ));
    let text = ok(&with(&root, &["role", "get", "viewer"]));
    assert!(text.contains("/_flotilla/*"), "{text}");
    let text = ok(&with(&root, &["user", "get", "vera"]));
    assert!(text.contains("viewer"), "{text}");
    // Without credentials, etcdctl is refused now.
    let (ok_anon, text) = etcdctl(&url, &["get", "/anything"]);
    assert!(!ok_anon, "{text}");

    // Every fleet verb, and what tells what runs where, as nobody, a viewer (read on
    // /_flotilla/*) and a deployer (read and write there). Submitting a unit is
    // writing it.
    let status = |method: &'static str, path: &str, body: &'static str, who: Option<&str>| {
        use base64::Engine;
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("{url}{path}"))
            .header("content-type", "application/json");
        if let Some(who) = who {
            let token = base64::engine::general_purpose::STANDARD.encode(who);
            b = b.header("authorization", format!("Basic {token}"));
        }
        let req = b.body(Full::new(Bytes::from(body))).unwrap();
        let c = c.clone();
        async move { c.request(req).await.unwrap().status().as_u16() }
    };
    let unit = r#"{"desiredState":"inactive","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#;
    let (vera, dan) = (Some("vera:verapw"), Some("dan:danpw"));
    let web = "/fleet/v1/units/web.service";
    let start = r#"{"desiredState":"launched"}"#;
    let stop = r#"{"desiredState":"loaded"}"#;
    let meta = r#"[{"op":"add","path":"/m1/metadata/disk","value":{"value":"ssd"}}]"#;
    // (verb, method, path, body, the deployer's success)
    let writes: [(&str, &'static str, &str, &'static str, u16); 4] = [
        ("submit", "PUT", web, unit, 201),
        ("start", "PUT", web, start, 204),
        ("stop", "PUT", web, stop, 204),
        ("set metadata", "PATCH", "/fleet/v1/machines", meta, 204),
    ];
    for (verb, method, path, body, ok) in writes {
        assert_eq!(
            status(method, path, body, None).await,
            401,
            "anonymous {verb}"
        );
        assert_eq!(
            status(method, path, body, vera).await,
            401,
            "a viewer could {verb}"
        );
        assert_eq!(
            status(method, path, body, dan).await,
            ok,
            "a deployer could not {verb}"
        );
    }
    let reads = [
        "/fleet/v1/units",
        "/fleet/v1/units/web.service",
        "/fleet/v1/state",
        "/fleet/v1/machines",
        "/flotilla/v1/placement/web.service",
    ];
    for path in reads {
        assert_eq!(
            status("GET", path, "", None).await,
            401,
            "anonymous GET {path}"
        );
        assert_eq!(
            status("GET", path, "", vera).await,
            200,
            "a viewer's GET {path}"
        );
    }
    // A journal is as private as what runs where (no machine runs the unit here: 404).
    let journal = "/flotilla/v1/journal/web.service";
    assert_eq!(
        status("GET", journal, "", None).await,
        401,
        "anonymous journal"
    );
    assert_eq!(
        status("GET", journal, "", vera).await,
        404,
        "a viewer's journal: past auth, to the unit that runs nowhere"
    );
    assert_eq!(
        status("DELETE", web, "", None).await,
        401,
        "anonymous destroy"
    );
    assert_eq!(
        status("DELETE", web, "", vera).await,
        401,
        "a viewer destroyed"
    );
    assert_eq!(
        status("DELETE", web, "", dan).await,
        204,
        "a deployer's destroy"
    );
    assert_eq!(status("PUT", web, unit, dan).await, 201, "submitted again");
    // `flotilla units` with etcdctl's --username.
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "units",
            &format!("--endpoint={url}"),
            "--username=vera:verapw",
            "list-unit-files",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("web.service"),
        "{listed}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["units", &format!("--endpoint={url}"), "list-unit-files"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "anonymous listing after guest lost everything"
    );
}
