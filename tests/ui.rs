//! The dashboard (`/ui/`) in a real browser: headless Chromium over WebDriver against a
//! real three-member cluster with an agent-only machine that runs host processes.
//! Screenshots of every page land in `target/ui-screens/`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::browser::Browser;
use common::{call, call_json, client, free_port, Cluster, Http};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// The agent process and the URL it serves its journals and the dashboard on.
struct Agent(Child, String);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `flotilla agent` m1, running host processes, registered with a 10 s TTL.
fn agent(base: &str, dir: &std::path::Path) -> Agent {
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    let url = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "agent",
            &format!("--endpoints={base}"),
            &format!("--listen={url}"),
            "--machine-id=m1",
            "--public-ip=127.0.0.1",
            "--metadata=role=web",
            "--agent-ttl=10s",
            "--allow-host-commands",
            &format!("--data-dir={}", dir.join("agent").display()),
        ])
        .stderr(log)
        .spawn()
        .expect("start flotilla agent");
    Agent(child, url)
}

async fn started(c: &Http) -> (Cluster, Agent) {
    let mut cl = Cluster::new(3, &[]);
    cl.start_all();
    let leader = cl.leader(c, WAIT).await;
    let base = cl.nodes[leader].client_url.clone();
    let a = agent(&base, cl.dir.path());
    let end = Instant::now() + WAIT;
    loop {
        let r = call(c, "GET", &format!("{base}/fleet/v1/machines"), None).await;
        if r.is_ok_and(|r| r.body["machines"].as_array().is_some_and(|m| !m.is_empty())) {
            break;
        }
        assert!(
            Instant::now() < end,
            "agent m1 never registered\n{}",
            cl.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (cl, a)
}

async fn put_unit(c: &Http, base: &str, name: &str, file: &str) {
    let options: Vec<serde_json::Value> = file
        .lines()
        .scan(String::new(), |section, line| {
            if let Some(s) = line.strip_prefix('[') {
                *section = s.trim_end_matches(']').to_string();
                return Some(None);
            }
            let (k, v) = line.split_once('=')?;
            Some(Some(
                serde_json::json!({"section": section, "name": k, "value": v}),
            ))
        })
        .flatten()
        .collect();
    let body = serde_json::json!({"desiredState": "launched", "options": options}).to_string();
    let r = call_json(c, "PUT", &format!("{base}/fleet/v1/units/{name}"), &body)
        .await
        .expect("submit");
    assert_eq!(r.status, 201, "{}", r.text);
}

async fn value(c: &Http, base: &str, key: &str) -> String {
    let r = call(c, "GET", &format!("{base}/v2/keys{key}"), None)
        .await
        .expect("get");
    r.body["node"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_from_the_units_page_run_stop_and_go_and_a_journal_line_appears() {
    let c = client();
    let (cl, _agent) = started(&c).await;
    let base = cl.nodes[0].client_url.clone();
    let b = Browser::start().await;
    b.goto(&format!("{base}/ui/")).await;
    // Overview: three members, one leader, the machine counted.
    b.until_count("#members tr[data-member]", 3, WAIT).await;
    b.until_count("#members td.ok", 1, WAIT).await;
    b.until_text("#machine-count", WAIT, |t| t == "1").await;
    b.screenshot("overview").await;

    // Submit a unit from the Units page and see it reach active/running.
    b.goto(&format!("{base}/ui/#/units")).await;
    b.fill("#submit-unit input[name=name]", "hello.service")
        .await;
    b.fill(
        "#submit-unit textarea",
        "[Service]\nExecStart=/bin/sh -c \"echo hello-from-the-dashboard; exec sleep 600\"\n",
    )
    .await;
    b.click("#submit-unit button[type=submit]").await;
    let row = r#"tr[data-unit="hello.service"]"#;
    b.until_text(&format!("{row} td.active"), WAIT, |t| t == "active")
        .await;
    b.until_text(&format!("{row} td.sub"), WAIT, |t| t == "running")
        .await;
    b.screenshot("units").await;

    // Its page: the file, where it runs, and the journal line the process printed.
    b.goto(&format!("{base}/ui/#/units/hello.service")).await;
    b.until_text("#journal", WAIT, |t| t.contains("hello-from-the-dashboard"))
        .await;
    let file = b.until_text("#unit-file", WAIT, |t| !t.is_empty()).await;
    assert!(
        file.contains("[Service]") && file.contains("ExecStart=/bin/sh"),
        "{file}"
    );
    b.screenshot("unit").await;

    // A unit no machine can take says why.
    put_unit(
        &c,
        &base,
        "lonely.service",
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetadata=disk=ssd",
    )
    .await;
    b.goto(&format!("{base}/ui/#/units/lonely.service")).await;
    let why = b
        .until_text("#why-not-placed", WAIT, |t| t.contains("MachineMetadata"))
        .await;
    assert!(why.starts_with("not placed:"), "{why}");
    b.goto(&format!("{base}/ui/")).await;
    b.until_count(r#"#problems li[data-kind="unplaceable"]"#, 1, WAIT)
        .await;

    // Stop it, then destroy it, with the buttons.
    b.goto(&format!("{base}/ui/#/units")).await;
    b.click(&format!(r#"{row} button[data-action="stop"]"#))
        .await;
    b.until_text(&format!("{row} td.current"), WAIT, |t| t != "launched")
        .await;
    let r = call(
        &c,
        "GET",
        &format!("{base}/fleet/v1/units/hello.service"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.body["desiredState"], "loaded");
    b.click(&format!(r#"{row} button[data-action="destroy"]"#))
        .await;
    b.client
        .accept_alert()
        .await
        .expect("the destroy confirmation");
    b.until_count(row, 0, WAIT).await;
    let r = call(
        &c,
        "GET",
        &format!("{base}/fleet/v1/units/hello.service"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "destroyed: {}", r.text);

    // Machines: m1 with its metadata, and its page.
    b.goto(&format!("{base}/ui/#/machines")).await;
    b.until_text(r#"tr[data-machine="m1"]"#, WAIT, |t| t.contains("role=web"))
        .await;
    b.screenshot("machines").await;
    // Every page stayed live through its stream, never through a re-read after a loss.
    assert_eq!(b.live_lost().await, "never");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_edited_safely_counted_down_and_shown_as_text() {
    let c = client();
    let (cl, _agent) = started(&c).await;
    let base = cl.nodes[1].client_url.clone();
    let set = |key: &'static str, form: String| {
        let c = c.clone();
        let url = format!("{base}/v2/keys{key}");
        async move {
            let r = call(&c, "PUT", &url, Some(&form)).await.expect("put");
            assert!(r.status < 300, "{}", r.text);
        }
    };
    set("/app/xss", "value=<script>window.pwned=1</script>".into()).await;
    let b = Browser::start().await;
    b.goto(&format!("{base}/ui/#/keys/app")).await;

    // A value that is markup is shown as its characters, and nothing ran.
    let xss = r#"tr[data-key="/app/xss"] td.value"#;
    let shown = b.until_text(xss, WAIT, |t| !t.is_empty()).await;
    assert_eq!(shown, "<script>window.pwned=1</script>");
    let ran = b
        .client
        .execute(
            "return window.pwned === undefined && document.scripts.length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        ran,
        serde_json::json!(1),
        "only app.js is a script; the value never ran"
    );

    // A key with a TTL, written while the page is open (so a slow browser start cannot
    // outlast it): it appears, its TTL counts down, and it leaves when it expires.
    set("/app/short", "value=lives&ttl=8".into()).await;
    let ttl = r#"tr[data-key="/app/short"] td.ttl"#;
    let first: u64 = b
        .until_text(ttl, WAIT, |t| t.ends_with(" s"))
        .await
        .trim_end_matches(" s")
        .parse()
        .unwrap();
    b.until_text(ttl, WAIT, |t| {
        t.trim_end_matches(" s")
            .parse::<u64>()
            .is_ok_and(|n| n < first)
    })
    .await;
    b.screenshot("keys").await;
    b.until_count(r#"tr[data-key="/app/short"]"#, 0, WAIT).await;

    // Create a key with the form; it is in the store.
    b.fill("#new-key input[name=name]", "greeting").await;
    b.fill("#new-key input[name=value]", "hello").await;
    b.click("#new-key button[type=submit]").await;
    b.until_count(r#"tr[data-key="/app/greeting"]"#, 1, WAIT)
        .await;
    assert_eq!(value(&c, &base, "/app/greeting").await, "hello");

    // Edit it while someone else changes it: the dashboard's save is refused, theirs stays.
    b.click(r#"tr[data-key="/app/greeting"] button[data-action="edit"]"#)
        .await;
    set("/app/greeting", "value=changed-elsewhere".into()).await;
    b.fill(r#"form.editor[data-key="/app/greeting"] textarea"#, "mine")
        .await;
    b.click(r#"form.editor[data-key="/app/greeting"] button[type=submit]"#)
        .await;
    let refused = b.until_text("#edit-error", WAIT, |t| !t.is_empty()).await;
    assert!(refused.contains("changed since you opened it"), "{refused}");
    assert_eq!(value(&c, &base, "/app/greeting").await, "changed-elsewhere");
    b.screenshot("key-conflict").await;

    // An edit without a concurrent change lands.
    b.goto(&format!("{base}/ui/#/keys/app")).await;
    b.click(r#"tr[data-key="/app/greeting"] button[data-action="edit"]"#)
        .await;
    b.fill(r#"form.editor[data-key="/app/greeting"] textarea"#, "mine")
        .await;
    b.click(r#"form.editor[data-key="/app/greeting"] button[type=submit]"#)
        .await;
    b.until_text(r#"tr[data-key="/app/greeting"] td.value"#, WAIT, |t| {
        t == "mine"
    })
    .await;
    assert_eq!(value(&c, &base, "/app/greeting").await, "mine");

    // Live: a key written elsewhere appears without a reload.
    set("/app/later", "value=arrived".into()).await;
    b.until_text(r#"tr[data-key="/app/later"] td.value"#, WAIT, |t| {
        t == "arrived"
    })
    .await;

    // Search by name below a directory, and export it as JSON.
    set("/app/deep/er/needle", "value=found".into()).await;
    b.fill("#key-search", "needle").await;
    b.until_count(r#"tr[data-key="/app/deep/er/needle"]"#, 1, WAIT)
        .await;
    b.until_count("#keys tr[data-key]", 1, WAIT).await;
    b.fill("#key-search", "").await;
    b.click(r#"button[data-action="export json"]"#).await;
    let exported = b
        .until_text(".toolbar .msg", WAIT, |t| t.starts_with("exported"))
        .await;
    assert!(exported.starts_with("exported 4 keys"), "{exported}");

    // Delete from the page.
    b.click(r#"tr[data-key="/app/later"] button[data-action="delete"]"#)
        .await;
    b.until_count(r#"tr[data-key="/app/later"]"#, 0, WAIT).await;
    let r = call(&c, "GET", &format!("{base}/v2/keys/app/later"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    // The network page lists the leases in flannel's layout.
    set(
        "/coreos.com/network/config",
        r#"value={"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#.into(),
    )
    .await;
    set(
        "/coreos.com/network/subnets/10.5.3.0-24",
        r#"value={"PublicIP":"127.0.0.1","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#.into(),
    )
    .await;
    b.goto(&format!("{base}/ui/#/network")).await;
    let lease = b
        .until_text(r#"tr[data-subnet="10.5.3.0-24"]"#, WAIT, |t| {
            t.contains("m1")
        })
        .await;
    assert!(
        lease.contains("10.5.3.0/24") && lease.contains("vxlan"),
        "{lease}"
    );
    // SkyDNS's records are among the names DNS answers.
    set(
        "/skydns/local/flotilla/db",
        r#"value={"host":"10.5.3.7","port":5432}"#.into(),
    )
    .await;
    let names = b
        .until_text("#dns-names", WAIT, |t| t.contains("db.flotilla.local"))
        .await;
    assert!(names.contains("10.5.3.7"), "{names}");
    b.screenshot("network").await;
    assert_eq!(b.live_lost().await, "never");
}

/// Fills the login form and sends it.
async fn log_in(b: &Browser, user: &str, password: &str) {
    b.fill("#login input[name=user]", user).await;
    b.fill("#login input[name=password]", password).await;
    b.click("#login button[type=submit]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_it_logs_in_and_a_read_only_user_has_no_buttons() {
    let c = client();
    let (cl, _agent) = started(&c).await;
    let base = cl.nodes[2].client_url.clone();
    let auth = format!("{base}/v2/auth");
    for (path, body) in [
        ("/users/root", r#"{"user":"root","password":"rootpw"}"#),
        (
            "/roles/viewer",
            r#"{"role":"viewer","permissions":{"kv":{"read":["/*"],"write":[]}}}"#,
        ),
        (
            "/users/vera",
            r#"{"user":"vera","password":"verapw","roles":["viewer"]}"#,
        ),
    ] {
        let r = call_json(&c, "PUT", &format!("{auth}{path}"), body)
            .await
            .unwrap();
        assert!(r.status < 300, "{path}: {}", r.text);
    }
    put_unit(
        &c,
        &base,
        "web.service",
        "[Service]\nExecStart=/bin/sleep 600",
    )
    .await;
    let r = call(&c, "PUT", &format!("{auth}/enable"), None)
        .await
        .unwrap();
    assert!(r.status < 300, "{}", r.text);
    // Guests may read nothing, so the first page asks to log in.
    let rootauth = "Basic cm9vdDpyb290cHc="; // root:rootpw
    let guest = r#"{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#;
    let req = http::Request::put(format!("{auth}/roles/guest"))
        .header("content-type", "application/json")
        .header("authorization", rootauth)
        .body(http_body_util::Full::new(bytes::Bytes::from(guest)))
        .unwrap();
    let status = c.request(req).await.expect("revoke guest").status();
    assert!(status.is_success(), "{status}");

    let b = Browser::start().await;
    b.goto(&format!("{base}/ui/")).await;
    b.until_text("#denied", WAIT, |t| t.contains("Not allowed"))
        .await;
    b.until_count("#login-link", 1, WAIT).await;

    // A wrong password is told, and nothing is kept.
    b.goto(&format!("{base}/ui/#/login")).await;
    log_in(&b, "vera", "wrong").await;
    b.until_text("#login-error", WAIT, |t| t.contains("wrong"))
        .await;

    // The read-only user sees units and keys but no button that changes them.
    log_in(&b, "vera", "verapw").await;
    b.until_text("#user", WAIT, |t| t == "vera").await;
    b.goto(&format!("{base}/ui/#/units")).await;
    b.until_count(r#"tr[data-unit="web.service"]"#, 1, WAIT)
        .await;
    assert_eq!(
        b.count("#submit-unit").await,
        0,
        "no submit form for a reader"
    );
    assert_eq!(
        b.count("button[data-action=start]").await,
        0,
        "no start button for a reader"
    );
    b.screenshot("units-read-only").await;
    b.goto(&format!("{base}/ui/#/keys/")).await;
    b.until_count("#keys", 1, WAIT).await;
    assert_eq!(
        b.count("#new-key").await + b.count("button[data-action=delete]").await,
        0
    );
    // And what the page could send anyway is refused by the API.
    let status = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/v2/keys/forbidden', {method: 'PUT',
               headers: {'Authorization': 'Basic ' + sessionStorage.getItem('flotilla.auth'),
                         'Content-Type': 'application/x-www-form-urlencoded'},
               body: 'value=x'}).then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, serde_json::json!(401));

    // Log out: back to a guest who is asked to log in; root gets the buttons.
    b.click(r#"button[data-action="log out"]"#).await;
    b.until_count("#login-link", 1, WAIT).await;
    b.goto(&format!("{base}/ui/#/login")).await;
    log_in(&b, "root", "rootpw").await;
    b.until_text("#user", WAIT, |t| t == "root").await;
    b.goto(&format!("{base}/ui/#/units")).await;
    b.until_count("#submit-unit", 1, WAIT).await;
    b.until_count(
        r#"tr[data-unit="web.service"] button[data-action=start]"#,
        1,
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_only_machine_serves_the_dashboard_through_the_members() {
    let c = client();
    let (cl, agent) = started(&c).await;
    let base = cl.nodes[0].client_url.clone();
    let b = Browser::start().await;
    b.goto(&format!("{}/ui/", agent.1)).await;
    b.until_count("#members tr[data-member]", 3, WAIT).await;
    b.goto(&format!("{}/ui/#/keys/", agent.1)).await;
    b.fill("#new-key input[name=name]", "via-agent").await;
    b.fill("#new-key input[name=value]", "relayed").await;
    b.click("#new-key button[type=submit]").await;
    b.until_count(r#"tr[data-key="/via-agent"]"#, 1, WAIT).await;
    assert_eq!(value(&c, &base, "/via-agent").await, "relayed");
    // The page's watch stream runs through the agent too.
    let r = call(
        &c,
        "PUT",
        &format!("{base}/v2/keys/elsewhere"),
        Some("value=seen"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    b.until_text(r#"tr[data-key="/elsewhere"] td.value"#, WAIT, |t| {
        t == "seen"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_site_cannot_change_the_cluster() {
    let c = client();
    let mut cl = Cluster::new(1, &[]);
    cl.start_all();
    cl.leader(&c, WAIT).await;
    let base = cl.nodes[0].client_url.clone();
    let host = base.trim_start_matches("http://").to_string();
    let put = |origin: Option<String>| {
        let c = c.clone();
        let url = format!("{base}/v2/keys/target");
        let host = host.clone();
        async move {
            let mut req = http::Request::put(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("host", host);
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            let req = req
                .body(http_body_util::Full::new(bytes::Bytes::from("value=x")))
                .unwrap();
            c.request(req).await.expect("put").status().as_u16()
        }
    };
    assert_eq!(put(Some("http://evil.example".into())).await, 403);
    let r = call(&c, "GET", &format!("{base}/v2/keys/target"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 404, "the refused write left nothing");
    assert_eq!(
        put(Some(base.clone())).await,
        201,
        "the dashboard's own origin writes"
    );
    assert_eq!(
        put(None).await,
        200,
        "a client that is not a browser writes"
    );
    // The page itself: no inline script may run, whatever a value holds.
    let r = call(&c, "GET", &format!("{base}/ui/"), None).await.unwrap();
    assert_eq!(r.status, 200);
    let csp = r.headers["content-security-policy"]
        .to_str()
        .unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
}
