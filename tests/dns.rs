//! DNS from the store on real processes: SkyDNS's records (A, SRV, wildcards, TTLs that
//! follow the keys), a unit's running instances and machines by name, names outside the
//! domain forwarded (or refused without upstreams), on a member and on an agent-only
//! machine; bad DNS flags refused by name.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use flotilla_shims::dns::proto::op::ResponseCode;
use flotilla_shims::dns::proto::rr::RData;
use flotilla_shims::dns::{self, Data, QType, Question, Record, Reply, Resolve, WireType};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An upstream that answers every A question with 10.99.99.99.
struct Upstream;

impl Resolve for Upstream {
    fn resolve(&self, q: &Question) -> Reply {
        let answers = match q.qtype {
            QType::A => vec![Record {
                name: q.name.clone(),
                ttl_s: 60,
                data: Data::A([10, 99, 99, 99].into()),
            }],
            _ => vec![],
        };
        Reply::Answer {
            answers,
            additional: vec![],
        }
    }
}

async fn upstream() -> SocketAddr {
    let (addr, run) = dns::bind("127.0.0.1:0".parse().unwrap(), Arc::new(Upstream), vec![])
        .await
        .expect("bind the upstream");
    tokio::spawn(run);
    addr
}

/// A free port for both UDP and TCP on 127.0.0.1.
fn dns_port() -> u16 {
    loop {
        let p = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// (rcode, each answer as text, each additional as text).
async fn ask(
    server: SocketAddr,
    name: &str,
    t: WireType,
) -> (ResponseCode, Vec<String>, Vec<String>) {
    let text = |r: &flotilla_shims::dns::proto::rr::Record| match r.data() {
        RData::A(a) => format!("A {} ttl={}", a.0, r.ttl()),
        RData::SRV(s) => format!(
            "SRV {} {} {} {}",
            s.priority(),
            s.weight(),
            s.port(),
            s.target()
        ),
        other => format!("{other:?}"),
    };
    match dns::query(server, name, t).await {
        Ok(m) => (
            m.response_code(),
            m.answers().iter().map(text).collect(),
            m.additionals().iter().map(text).collect(),
        ),
        // No server yet (or no reply): nothing answered, the error beside.
        Err(e) => (
            ResponseCode::ServFail,
            vec![],
            vec![format!("no answer: {e}")],
        ),
    }
}

/// Asks until `ok` holds of the answer (or `within` passes); the last answer.
async fn ask_until<F>(
    server: SocketAddr,
    name: &str,
    t: WireType,
    within: Duration,
    ok: F,
) -> (ResponseCode, Vec<String>, Vec<String>)
where
    F: Fn(&(ResponseCode, Vec<String>, Vec<String>)) -> bool,
{
    let end = Instant::now() + within;
    loop {
        let got = ask(server, name, t).await;
        if ok(&got) || Instant::now() > end {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ips(answers: &[String]) -> Vec<String> {
    let mut v: Vec<String> = answers
        .iter()
        .map(|a| a.split(' ').nth(1).unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

async fn put(c: &Http, base: &str, key: &str, value: &str, ttl: Option<u64>) {
    let mut form = format!("value={}", urlencode(value));
    if let Some(t) = ttl {
        form.push_str(&format!("&ttl={t}"));
    }
    let r = call(c, "PUT", &format!("{base}/v2/keys{key}"), Some(&form))
        .await
        .unwrap();
    assert!(r.status == 200 || r.status == 201, "{key}: {}", r.text);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_answers_skydns_records_units_and_machines_and_forwards_the_rest() {
    let up = upstream().await;
    let port = dns_port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cl = Cluster::with_machines(
        1,
        &[
            "--allow-host-commands",
            "--machine-id=m0",
            "--public-ip=127.0.0.1",
            "--agent-ttl=3s",
            &format!("--dns-addr=127.0.0.1:{port}"),
            &format!("--dns-forward={up}"),
        ],
    );
    cl.start_all();
    let c = client();
    cl.leader(&c, Duration::from_secs(20)).await;
    let base = cl.nodes[0].client_url.clone();

    // SkyDNS's layout: the first record's key expires in 3 s, the second's never.
    let rails = "/skydns/local/skydns/east/production/rails";
    put(
        &c,
        &base,
        &format!("{rails}/1"),
        r#"{"host":"10.0.0.1","port":8080,"ttl":30}"#,
        Some(3),
    )
    .await;
    put(
        &c,
        &base,
        &format!("{rails}/2"),
        r#"{"host":"10.0.0.2","port":8081}"#,
        None,
    )
    .await;
    let name = "rails.production.east.skydns.local";
    let (rc, a, _) = ask_until(server, name, WireType::A, Duration::from_secs(5), |g| {
        g.1.len() == 2
    })
    .await;
    assert_eq!(
        (rc, ips(&a)),
        (
            ResponseCode::NoError,
            vec!["10.0.0.1".into(), "10.0.0.2".into()]
        ),
        "{a:?}\n{}",
        cl.logs()
    );
    let ttl1: u32 = a
        .iter()
        .find(|x| x.contains("10.0.0.1"))
        .unwrap()
        .rsplit('=')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl1 <= 3, "the key's TTL bounds the record's: {a:?}");
    assert!(
        a.iter().any(|x| x == "A 10.0.0.2 ttl=3600"),
        "SkyDNS's default TTL: {a:?}"
    );
    let (_, srv, extra) = ask(server, name, WireType::SRV).await;
    assert!(
        srv.contains(&"SRV 10 10 8081 2.rails.production.east.skydns.local.".to_string()),
        "{srv:?}"
    );
    assert!(
        extra.iter().any(|x| x.starts_with("A 10.0.0.2")),
        "the target's address beside: {extra:?}"
    );
    let (_, wild, _) = ask(server, "rails.production.*.skydns.local", WireType::A).await;
    assert_eq!(ips(&wild).len(), 2, "{wild:?}");

    // The first key expires: its record goes with it.
    let (_, a, _) = ask_until(server, name, WireType::A, Duration::from_secs(8), |g| {
        g.1.len() == 1
    })
    .await;
    assert_eq!(ips(&a), ["10.0.0.2"]);
    // Gone altogether: not ours any more, so the upstream answers.
    let r = call(
        &c,
        "DELETE",
        &format!("{base}/v2/keys{rails}?recursive=true"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let (_, a, _) = ask_until(server, name, WireType::A, Duration::from_secs(5), |g| {
        ips(&g.1) == ["10.99.99.99"]
    })
    .await;
    assert_eq!(ips(&a), ["10.99.99.99"], "forwarded");
    let (_, a, _) = ask(server, "www.example.com", WireType::A).await;
    assert_eq!(ips(&a), ["10.99.99.99"], "forwarded");

    // Machines by id; names under the domain that name nothing do not exist.
    let (rc, a, _) = answered(server, "m0.machine.flotilla.local", Duration::from_secs(5)).await;
    assert_eq!(
        (rc, ips(&a)),
        (ResponseCode::NoError, vec!["127.0.0.1".to_string()])
    );
    let (rc, _, _) = ask(server, "nothing.flotilla.local", WireType::A).await;
    assert_eq!(rc, ResponseCode::NXDomain);
    // A label as a unit instance has it ('@' is not an escape), in any case.
    put(
        &c,
        &base,
        "/skydns/local/flotilla/x@1",
        r#"{"host":"10.0.0.9"}"#,
        None,
    )
    .await;
    let (_, a, _) = answered(server, "X@1.flotilla.local", Duration::from_secs(5)).await;
    assert_eq!(ips(&a), ["10.0.0.9"]);

    // A unit's name answers while it runs (a host process: its machine's address), and
    // stops answering when it stops.
    let unit = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 1000"}]}"#;
    let units = format!("{base}/fleet/v1/units");
    let r = call_json(&c, "PUT", &format!("{units}/web.service"), unit)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let (rc, a, _) = answered(server, "web.flotilla.local", Duration::from_secs(15)).await;
    assert_eq!(
        (rc, ips(&a)),
        (ResponseCode::NoError, vec!["127.0.0.1".to_string()]),
        "{}",
        cl.logs()
    );
    let r = call_json(
        &c,
        "PUT",
        &format!("{units}/web.service"),
        r#"{"desiredState":"inactive"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    let (rc, _, _) = ask_until(
        server,
        "web.flotilla.local",
        WireType::A,
        Duration::from_secs(15),
        |g| g.0 == ResponseCode::NXDomain,
    )
    .await;
    assert_eq!(rc, ResponseCode::NXDomain, "a stopped unit's name is gone");
}

/// `flotilla agent` a1 answering DNS on 127.0.0.1:`port`, its log in `dir/agent.log`.
fn dns_agent(base: &str, dir: &std::path::Path, port: u16, extra: &[&str]) -> std::process::Child {
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "agent",
            &format!("--endpoints={base}"),
            &format!("--listen=http://127.0.0.1:{}", free_port()),
            "--machine-id=a1",
            &format!("--dns-addr=127.0.0.1:{port}"),
            &format!("--data-dir={}", dir.join("agent").display()),
        ])
        .args(extra)
        .stderr(log)
        .spawn()
        .expect("start flotilla agent")
}

/// The first answer to `name` (A) that has records, or the last after `within`.
async fn answered(
    server: SocketAddr,
    name: &str,
    within: Duration,
) -> (ResponseCode, Vec<String>, Vec<String>) {
    ask_until(server, name, WireType::A, within, |g| !g.1.is_empty()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_only_machine_answers_with_ttls_counted_from_the_keys_expiration() {
    let mut cl = Cluster::new(1, &[]);
    cl.start_all();
    let c = client();
    cl.leader(&c, Duration::from_secs(20)).await;
    let base = cl.nodes[0].client_url.clone();
    let port = dns_port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let agent_dir = cl.dir.path().to_path_buf();
    let mut agent = dns_agent(&base, &agent_dir, port, &["--dns-domain=cluster.example"]);
    put(
        &c,
        &base,
        "/skydns/example/cluster/db",
        r#"{"host":"10.0.0.7","ttl":600}"#,
        Some(60),
    )
    .await;
    let (rc, a, _) = answered(server, "db.cluster.example", Duration::from_secs(10)).await;
    let _ = agent.kill();
    let _ = agent.wait();
    let agent_log = std::fs::read_to_string(agent_dir.join("agent.log")).unwrap_or_default();
    assert_eq!(
        (rc, ips(&a)),
        (ResponseCode::NoError, vec!["10.0.0.7".to_string()]),
        "{agent_log}"
    );
    let ttl: u32 = a[0].rsplit('=').next().unwrap().parse().unwrap();
    assert!(
        (50..=60).contains(&ttl),
        "the key's 60 s, counted down, not the record's 600: {a:?}"
    );
    // Restarted without upstreams: a name outside the domain is refused.
    let mut agent = dns_agent(&base, &agent_dir, port, &[]);
    let got = ask_until(
        server,
        "www.example.com",
        WireType::A,
        Duration::from_secs(10),
        |g| g.0 == ResponseCode::Refused,
    )
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(got.0, ResponseCode::Refused, "{got:?}");
}

#[test]
fn bad_dns_flags_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, names) in [
        ("--dns-addr=not-an-address", "--dns-addr"),
        ("--dns-domain=bad..domain", "--dns-domain"),
        ("--dns-forward=10.0.0.1:99999", "--dns-forward"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([
                "node",
                &format!("--data-dir={}", dir.path().display()),
                flag,
            ])
            .args((!flag.starts_with("--dns-addr")).then_some("--dns-addr=127.0.0.1:0"))
            .output()
            .expect("run flotilla");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(names),
            "{flag}: {err}"
        );
    }
}
