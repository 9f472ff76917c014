//! Writes-per-second benchmark: a 3-member flotilla cluster on 127.0.0.1 (fsync on),
//! and — when `etcd` is on PATH — a 3-member etcd 3.4 with `--enable-v2` under the same
//! load. `PUT /v2/keys/bench/<unique>` with 100-byte values over N keep-alive
//! connections for a fixed time per N; then reads at 64 connections; then resident
//! memory at idle and after 100,000 keys.
//!
//!     cargo bench --bench writes                       # all of it
//!     BENCH_SECONDS=3 BENCH_CONNS=1,8,64,256 cargo bench --bench writes
//!     BENCH_SVG=bench.svg cargo bench --bench writes   # also draw the plot
//!     BENCH_ETCD=0 cargo bench --bench writes           # flotilla only
//!     BENCH_TLS=1 cargo bench --bench writes            # writes over TLS (below)
//!
//! With `BENCH_TLS=1`: writes at `BENCH_CONNS` (default 64) keep-alive connections to
//! flotilla over plain HTTP, flotilla over TLS and etcd over TLS (peer and client TLS,
//! client certificates required; certificates made here with rcgen), in one run; then
//! the cost of a handshake alone (fresh connections, one after another).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Cluster {
    name: &'static str,
    children: Vec<Child>,
    client_urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Certificates for a TLS run: a CA, one certificate for 127.0.0.1 that every member
/// uses, and a client certificate.
struct Pki {
    _dir: tempfile::TempDir,
    ca: String,
    cert: String,
    key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = p.self_signed(&ca_key).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let leaf = |name: &str| {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (
            write(&format!("{name}.pem"), cert.pem()),
            write(&format!("{name}-key.pem"), key.serialize_pem()),
        )
    };
    let (cert, key) = leaf("member");
    let (ccert, ckey) = leaf("client");
    let ca_path = write("ca.pem", ca.pem());
    Pki {
        _dir: dir,
        ca: ca_path,
        cert,
        key,
        client_cert: ccert,
        client_key: ckey,
    }
}

/// The process's TLS client configuration for https:// URLs (set by a TLS run).
static CLIENT_TLS: std::sync::OnceLock<Arc<flotilla_shims::tls::ClientConfig>> =
    std::sync::OnceLock::new();

fn start(kind: &'static str) -> Cluster {
    start_with(kind, None)
}

/// A 3-member cluster; with `tls`, on https URLs with etcd's TLS flags (flotilla and
/// etcd take the same ones), client certificates required.
fn start_with(kind: &'static str, tls: Option<&Pki>) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (port(), port())).collect();
    let prefix = if kind == "etcd" { "e" } else { "n" };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("{prefix}{i}={scheme}://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = vec![];
    let mut client_urls = vec![];
    for (i, (c, p)) in ports.iter().enumerate() {
        let url = format!("{scheme}://127.0.0.1:{c}");
        let data = dir.path().join(format!("{prefix}{i}"));
        let mut cmd = if kind == "etcd" {
            let mut cmd = Command::new("etcd");
            cmd.args([
                "--enable-v2=true",
                &format!("--advertise-client-urls={url}"),
                &format!("--initial-advertise-peer-urls={scheme}://127.0.0.1:{p}"),
            ]);
            cmd
        } else {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
            cmd.arg("node");
            // Extra node flags for experiments, e.g. BENCH_FLOTILLA_ARGS="--snapshot-count=100000".
            if let Ok(extra) = std::env::var("BENCH_FLOTILLA_ARGS") {
                cmd.args(extra.split_whitespace());
            }
            cmd
        };
        cmd.args([
            format!("--name={prefix}{i}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={url}"),
            format!("--listen-peer-urls={scheme}://127.0.0.1:{p}"),
            format!("--initial-cluster={cluster}"),
        ]);
        if let Some(t) = tls {
            cmd.args([
                format!("--cert-file={}", t.cert),
                format!("--key-file={}", t.key),
                format!("--trusted-ca-file={}", t.ca),
                "--client-cert-auth".into(),
                format!("--peer-cert-file={}", t.cert),
                format!("--peer-key-file={}", t.key),
                format!("--peer-trusted-ca-file={}", t.ca),
                "--peer-client-cert-auth".into(),
            ]);
        }
        children.push(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {kind}: {e}")),
        );
        client_urls.push(url);
    }
    Cluster {
        name: kind,
        children,
        client_urls,
        _dir: dir,
    }
}

type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(url: &str) -> Conn {
    let addr = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    if url.starts_with("https://") {
        let cfg = CLIENT_TLS
            .get()
            .expect("a TLS run sets the client config")
            .clone();
        let tls = flotilla_shims::tls::connect_with(cfg, "127.0.0.1", stream)
            .await
            .unwrap();
        return handshake(tls).await;
    }
    handshake(stream).await
}

async fn handshake<S>(stream: S) -> Conn
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn request(
    conn: &mut Conn,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<u16, String> {
    conn.ready().await.map_err(|e| e.to_string())?;
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench");
    if body.is_some() {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = conn.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

async fn wait_ready(c: &Cluster) {
    let end = Instant::now() + Duration::from_secs(30);
    'outer: while Instant::now() < end {
        for url in &c.client_urls {
            let addr = url.split_once("://").map_or(url.as_str(), |(_, a)| a);
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'outer;
            };
            drop(stream);
            let mut conn = connect(url).await;
            if !matches!(
                request(&mut conn, "PUT", "/v2/keys/warmup", Some("value=x".into())).await,
                Ok(200 | 201)
            ) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'outer;
            }
        }
        return;
    }
    panic!("{} cluster did not become ready", c.name);
}

struct Run {
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    loadgen_cpu: f64,
    /// CPU seconds all members used per operation.
    server_cpu_us_per_op: f64,
}

/// CPU seconds (user + system) a child process has used so far, from /proc.
fn child_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<f64>() / ticks
}

fn servers_cpu_seconds(c: &Cluster) -> f64 {
    c.children.iter().map(|ch| child_cpu_seconds(ch.id())).sum()
}

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// `conns` connections spread over the members, each sending back-to-back requests for
/// `secs`. Writes use unique keys; reads read keys written before.
async fn load(c: &Cluster, conns: usize, secs: f64, write: bool, tag: &str) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let value = "v".repeat(100);
    let cpu0 = cpu_seconds();
    let server0 = servers_cpu_seconds(c);
    let t0 = Instant::now();
    let mut tasks = vec![];
    for i in 0..conns {
        let url = c.client_urls[i % c.client_urls.len()].clone();
        let (stop, errors, value, tag) =
            (stop.clone(), errors.clone(), value.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&url).await;
            let mut lat = Vec::with_capacity(4096);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                let r = if write {
                    request(
                        &mut conn,
                        "PUT",
                        &format!("/v2/keys/bench/{tag}-{i}-{n}"),
                        Some(format!("value={value}")),
                    )
                    .await
                } else {
                    request(
                        &mut conn,
                        "GET",
                        &format!("/v2/keys/bench/read-{}", n % 100),
                        None,
                    )
                    .await
                };
                match r {
                    Ok(200 | 201) => lat.push(s.elapsed().as_micros() as u32),
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = connect(&url).await;
                    }
                }
                n += 1;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let server = servers_cpu_seconds(c) - server0;
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|v| *v as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    };
    Run {
        ops_per_s: all.len() as f64 / wall,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
        loadgen_cpu: cpu / wall,
        server_cpu_us_per_op: server * 1e6 / all.len().max(1) as f64,
    }
}

/// Per member: syncs, mean sync latency and entries per sync, from `/metrics`.
/// `before` holds each member's counters from the previous call: the figures printed
/// are for the run in between.
async fn sync_profile(c: &Cluster, before: &mut Vec<(f64, f64, f64)>) {
    before.resize(c.client_urls.len(), (0.0, 0.0, 0.0));
    for (url, prev) in c.client_urls.iter().zip(before.iter_mut()) {
        let mut conn = connect(url).await;
        conn.ready().await.unwrap();
        let req = http::Request::get("/metrics")
            .header("host", "bench")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let body = conn
            .send_request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        let get = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let now = (
            get("flotilla_disk_syncs_total "),
            get("flotilla_disk_sync_duration_seconds_sum "),
            get("flotilla_raft_applied_entries_total "),
        );
        let (syncs, secs, applied) = (now.0 - prev.0, now.1 - prev.1, now.2 - prev.2);
        *prev = now;
        println!(
            "           {url}: {syncs:.0} syncs, mean {:.2} ms, {:.1} applied entries per sync",
            secs / syncs.max(1.0) * 1000.0,
            applied / syncs.max(1.0)
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn rss(c: &Cluster) -> Vec<u64> {
    c.children
        .iter()
        .map(|ch| rss_kib(ch.id()) / 1024)
        .collect()
}

async fn fill(c: &Cluster, keys: usize) {
    let per = keys / 64;
    let mut tasks = vec![];
    for i in 0..64 {
        let url = c.client_urls[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&url).await;
            let value = "m".repeat(100);
            for n in 0..per {
                while !matches!(
                    request(
                        &mut conn,
                        "PUT",
                        &format!("/v2/keys/mem/{i}-{n}"),
                        Some(format!("value={value}"))
                    )
                    .await,
                    Ok(200 | 201)
                ) {
                    conn = connect(&url).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

struct Report {
    name: &'static str,
    writes: Vec<(usize, Run)>,
    reads: Run,
    rss_idle: Vec<u64>,
    rss_full: Vec<u64>,
    rss_after_run: Vec<u64>,
}

async fn bench(kind: &'static str, conns: &[usize], secs: f64, keys: usize) -> Report {
    let c = start(kind);
    wait_ready(&c).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut writes = vec![];
    let mut sync_counters = vec![];
    for &n in conns {
        let r = load(&c, n, secs, true, &format!("w{n}")).await;
        println!(
            "{kind:>8} writes  conns={n:<4} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:<5} loadgen cpu {:>4.0}%  members {:>4.0} µs cpu/write",
            r.ops_per_s, r.p50_ms, r.p99_ms, r.errors, r.loadgen_cpu * 100.0, r.server_cpu_us_per_op
        );
        writes.push((n, r));
        if kind == "flotilla" {
            sync_profile(&c, &mut sync_counters).await;
        }
    }
    let mut conn = connect(&c.client_urls[0]).await;
    for j in 0..100 {
        request(
            &mut conn,
            "PUT",
            &format!("/v2/keys/bench/read-{j}"),
            Some("value=r".to_string()),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = load(&c, 64, secs, false, "read").await;
    println!(
        "{kind:>8} reads   conns=64   {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:<5} loadgen cpu {:>4.0}%  members {:>4.0} µs cpu/read",
        reads.ops_per_s, reads.p50_ms, reads.p99_ms, reads.errors, reads.loadgen_cpu * 100.0, reads.server_cpu_us_per_op
    );
    fill(&c, keys).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_run = rss(&c);
    drop(c);
    // Memory as specified: a fresh cluster, idle, then after exactly `keys` keys (the
    // runs above write as many keys as each system manages, so they are not comparable).
    let c = start(kind);
    wait_ready(&c).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss(&c);
    fill(&c, keys).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_full = rss(&c);
    println!(
        "{kind:>8} memory  idle {rss_idle:?} MiB per member; after {keys} keys {rss_full:?} MiB; \
         after the runs above and {keys} more keys {rss_after_run:?} MiB"
    );
    Report {
        name: kind,
        writes,
        reads,
        rss_idle,
        rss_full,
        rss_after_run,
    }
}

fn svg(reports: &[Report]) -> String {
    let (w, h, pad) = (640.0, 400.0, 60.0);
    let max = reports
        .iter()
        .flat_map(|r| r.writes.iter().map(|(_, x)| x.ops_per_s))
        .fold(1.0, f64::max)
        * 1.1;
    let xs: Vec<usize> = reports[0].writes.iter().map(|(n, _)| *n).collect();
    let xpos = |i: usize| pad + i as f64 * (w - 2.0 * pad) / (xs.len().max(2) - 1) as f64;
    let ypos = |v: f64| h - pad - v / max * (h - 2.0 * pad);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    s += &format!(
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">writes/s vs connections (3 members, fsync on, 100-byte values)</text>"#,
        w / 2.0
    );
    s += &format!(
        r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>"#,
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    for (i, n) in xs.iter().enumerate() {
        s += &format!(
            r#"<text x="{}" y="{}" text-anchor="middle">{n}</text>"#,
            xpos(i),
            h - pad + 18.0
        );
    }
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        s += &format!(
            r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
            pad - 6.0,
            ypos(v) + 4.0,
            v
        );
    }
    s += &format!(
        r#"<text x="{}" y="{}" text-anchor="middle">connections</text>"#,
        w / 2.0,
        h - 15.0
    );
    for (ri, r) in reports.iter().enumerate() {
        let color = ["#1f77b4", "#d62728"][ri % 2];
        let pts: Vec<String> = r
            .writes
            .iter()
            .enumerate()
            .map(|(i, (_, x))| format!("{:.1},{:.1}", xpos(i), ypos(x.ops_per_s)))
            .collect();
        s += &format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        s += &format!(
            r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
            w - pad - 60.0,
            pad + 16.0 * ri as f64,
            r.name
        );
    }
    s + "</svg>\n"
}

/// One system's writes over its connections, and a fresh connection's cost in ms.
struct TlsRun {
    writes: Vec<(usize, Run)>,
    conn_ms: f64,
}

/// Writes over TLS beside plain HTTP and beside etcd over TLS, then handshakes alone.
fn tls_main(rt: &tokio::runtime::Runtime, conns: &[usize], secs: f64) {
    let pki = pki();
    let cfg = flotilla_shims::tls::ClientTls {
        ca_file: Some(pki.ca.clone().into()),
        cert_file: Some(pki.client_cert.clone().into()),
        key_file: Some(pki.client_key.clone().into()),
    }
    .config()
    .unwrap();
    let _ = CLIENT_TLS.set(cfg);
    let mut runs: Vec<TlsRun> = vec![];
    let setups: [(&'static str, &'static str, bool); 3] = [
        ("flotilla", "flotilla http", false),
        ("flotilla", "flotilla TLS", true),
        ("etcd", "etcd TLS", true),
    ];
    for (kind, label, tls) in setups {
        if kind == "etcd" && Command::new("etcd").arg("--version").output().is_err() {
            println!("(etcd not on PATH: no etcd TLS run)");
            continue;
        }
        let r = rt.block_on(async {
            let c = start_with(kind, tls.then_some(&pki));
            wait_ready(&c).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut out = vec![];
            for &n in conns {
                let r = load(&c, n, secs, true, &format!("t{n}")).await;
                println!(
                    "{label:>14} writes conns={n:<4} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                    r.ops_per_s, r.p50_ms, r.p99_ms, r.errors
                );
                out.push((n, r));
            }
            // Handshakes alone: fresh connections, one after another, then one request.
            let url = c.client_urls[0].clone();
            let t0 = Instant::now();
            let rounds = 200;
            for _ in 0..rounds {
                let mut conn = connect(&url).await;
                let _ = request(&mut conn, "GET", "/version", None).await;
            }
            let per_conn_ms = t0.elapsed().as_secs_f64() * 1000.0 / rounds as f64;
            println!("{label:>14} a fresh connection and one GET: {per_conn_ms:.3} ms");
            (out, per_conn_ms)
        });
        runs.push(TlsRun {
            writes: r.0,
            conn_ms: r.1,
        });
    }
    if let [plain, ours, etcd] = runs.as_slice() {
        for (i, (n, r)) in ours.writes.iter().enumerate() {
            println!(
                "conns={n}: flotilla TLS / flotilla http {:.2}x, flotilla TLS / etcd TLS {:.2}x",
                r.ops_per_s / plain.writes[i].1.ops_per_s,
                r.ops_per_s / etcd.writes[i].1.ops_per_s
            );
        }
        println!(
            "a fresh connection + one GET: flotilla TLS {:.3} ms, etcd TLS {:.3} ms, flotilla http {:.3} ms (flotilla's handshake ≈ {:.3} ms)",
            ours.conn_ms,
            etcd.conn_ms,
            plain.conn_ms,
            ours.conn_ms - plain.conn_ms
        );
    }
}

fn main() {
    if std::env::var("BENCH_TLS").is_ok_and(|v| v == "1") {
        let secs: f64 = std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5.0);
        let conns: Vec<usize> = std::env::var("BENCH_CONNS")
            .unwrap_or_else(|_| "64".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        tls_main(&rt, &conns, secs);
        return;
    }
    let secs: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let conns: Vec<usize> = std::env::var("BENCH_CONNS")
        .unwrap_or_else(|_| "1,8,64,256".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let keys: usize = std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut reports = vec![rt.block_on(bench("flotilla", &conns, secs, keys))];
    let etcd_wanted = std::env::var("BENCH_ETCD").map_or(true, |v| v != "0");
    if etcd_wanted && Command::new("etcd").arg("--version").output().is_ok() {
        reports.push(rt.block_on(bench("etcd", &conns, secs, keys)));
        let (f, e) = (&reports[0], &reports[1]);
        println!("\nflotilla / etcd");
        for ((n, a), (_, b)) in f.writes.iter().zip(&e.writes) {
            println!(
                "  writes conns={n:<4} {:.2}x   p99 {:.2} ms vs {:.2} ms",
                a.ops_per_s / b.ops_per_s,
                a.p99_ms,
                b.p99_ms
            );
        }
        println!(
            "  reads  conns=64   {:.2}x",
            f.reads.ops_per_s / e.reads.ops_per_s
        );
        let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
        println!(
            "  memory idle {:.2}x, after {keys} keys {:.2}x, after the runs {:.2}x (flotilla/etcd RSS)",
            avg(&f.rss_idle) / avg(&e.rss_idle),
            avg(&f.rss_full) / avg(&e.rss_full),
            avg(&f.rss_after_run) / avg(&e.rss_after_run)
        );
    } else {
        println!("(etcd not on PATH: install Debian's etcd-server for the side-by-side run)");
    }
    if let Ok(path) = std::env::var("BENCH_SVG") {
        std::fs::write(&path, svg(&reports)).unwrap();
        println!("plot written to {path}");
    }
}
