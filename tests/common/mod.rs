//! Test harness: real `flotilla node` processes on 127.0.0.1 and a small HTTP client.
#![allow(clippy::disallowed_methods, clippy::disallowed_types, dead_code)]

pub mod browser;
pub mod certs;
pub mod inproc;
pub mod netns;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> Http {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

/// A free port on 127.0.0.1. Ports come from a per-process counter below the kernel's
/// ephemeral range (so a port just handed out cannot be handed out again, nor picked by
/// the kernel for an outgoing connection), each checked by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 10_000 + (std::process::id() * 7919) % 20_000;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        if std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok() {
            return p as u16;
        }
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

pub async fn call(c: &Http, method: &str, url: &str, form: Option<&str>) -> Result<Resp, String> {
    let body = form.map(|f| ("application/x-www-form-urlencoded", f));
    call_typed(c, method, url, body).await
}

/// [`call`] with a JSON body (`/v2/members` takes nothing else, as etcd).
pub async fn call_json(c: &Http, method: &str, url: &str, json: &str) -> Result<Resp, String> {
    call_typed(c, method, url, Some(("application/json", json))).await
}

/// A request with an optional `(content type, body)`.
pub async fn call_typed(
    c: &Http,
    method: &str,
    url: &str,
    body: Option<(&str, &str)>,
) -> Result<Resp, String> {
    let mut b = http::Request::builder().method(method).uri(url);
    if let Some((ct, _)) = body {
        b = b.header("content-type", ct);
    }
    let text = body.map(|(_, t)| t).unwrap_or("").to_string();
    let req = b
        .body(Full::new(Bytes::from(text)))
        .map_err(|e| e.to_string())?;
    let fut = c.request(req);
    let resp = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok(Resp {
        status,
        headers,
        body,
        text,
    })
}

pub struct NodeProc {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub extra: Vec<String>,
    pub cluster: String,
    pub child: Option<Child>,
}

impl NodeProc {
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "node".to_string(),
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={}", self.client_url),
            format!("--listen-peer-urls={}", self.peer_url),
            format!("--initial-cluster={}", self.cluster),
            "--heartbeat-interval=50".to_string(),
            "--election-timeout=500".to_string(),
        ];
        a.extend(self.extra.iter().cloned());
        a
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(self.args())
            .env("FLOTILLA_LOG", "info,raft=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn flotilla");
        self.child = Some(child);
    }

    /// SIGKILL, like `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
}

impl Cluster {
    /// A KV cluster: members that are not machines (`--no-agent`), so nothing but the
    /// test writes to the store and indexes stay predictable.
    pub fn new(n: usize, extra: &[&str]) -> Self {
        let mut e = vec!["--no-agent"];
        e.extend_from_slice(extra);
        Self::with_machines(n, &e)
    }

    /// A cluster whose members are machines too (scheduler tests); `extra` gives each
    /// member the same flags.
    pub fn with_machines(n: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = vec![];
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("n{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        for (i, (c, p)) in ports.iter().enumerate() {
            nodes.push(NodeProc {
                name: format!("n{i}"),
                client_url: format!("http://127.0.0.1:{c}"),
                peer_url: format!("http://127.0.0.1:{p}"),
                data_dir: dir.path().join(format!("n{i}")),
                log_path: dir.path().join(format!("n{i}.log")),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                cluster: cluster.clone(),
                child: None,
            });
        }
        Self { dir, nodes }
    }

    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Index of the node that says it leads, waiting up to `within`.
    pub async fn leader(&self, c: &Http, within: Duration) -> usize {
        let end = Instant::now() + within;
        while Instant::now() < end {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child.is_none() {
                    continue;
                }
                let url = format!("{}/v2/stats/self", n.client_url);
                if let Ok(r) = call(c, "GET", &url, None).await {
                    if r.body["state"] == "StateLeader" {
                        return i;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within {within:?}\n{}", self.logs());
    }
}

pub fn dir_digest(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// A real etcd 3.4 with the v2 API on, in a temp dir, killed on drop.
pub struct Etcd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts etcd and waits until it is healthy, retrying on fresh ports if it dies at
/// start; its log is shown if it never comes up.
pub async fn start_etcd(c: &Http) -> Etcd {
    start_etcd_with(c, &[]).await
}

/// [`start_etcd`] with more flags (`--cors=…`).
pub async fn start_etcd_with(c: &Http, extra: &[&str]) -> Etcd {
    let mut last_log = String::new();
    for _attempt in 0..3 {
        let mut cluster = start_etcd_members(1, extra);
        match wait_etcd_healthy(c, &mut cluster).await {
            Ok(()) => return cluster.pop().expect("one member"),
            Err(log) => last_log = log,
        }
    }
    panic!("etcd did not become healthy in 3 attempts; its log:\n{last_log}");
}

/// A real `n`-member etcd 3.4 cluster on 127.0.0.1, every member healthy.
pub async fn start_etcd_cluster(c: &Http, n: usize) -> Vec<Etcd> {
    let mut cluster = start_etcd_members(n, &[]);
    if let Err(log) = wait_etcd_healthy(c, &mut cluster).await {
        panic!("an etcd member did not become healthy; its log:\n{log}");
    }
    cluster
}

fn start_etcd_members(n: usize, extra: &[&str]) -> Vec<Etcd> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = vec![];
    for (i, (cp, pp)) in ports.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args([
                &format!("--name=e{i}"),
                &format!("--data-dir={}", dir.path().join("data").display()),
                "--enable-v2=true",
                &format!("--listen-client-urls={url}"),
                &format!("--advertise-client-urls={url}"),
                &format!("--listen-peer-urls={peer}"),
                &format!("--initial-advertise-peer-urls={peer}"),
                &format!("--initial-cluster={initial}"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}); install Debian's etcd-server (scripts/test-all does)"
                )
            });
        members.push(Etcd {
            child,
            url,
            _dir: dir,
        });
    }
    members
}

/// Waits up to 30 s for every member's `/health`; the first stuck member's log if not.
async fn wait_etcd_healthy(c: &Http, members: &mut [Etcd]) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(30);
    for m in members.iter_mut() {
        loop {
            let dead = m.child.try_wait().unwrap().is_some();
            if let Ok(r) = call(c, "GET", &format!("{}/health", m.url), None).await {
                if r.status == 200 {
                    break;
                }
            }
            if dead || Instant::now() > end {
                let log = m._dir.path().join("etcd.log");
                return Err(std::fs::read_to_string(log).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub async fn wait_healthy(c: &Http, url: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if let Ok(r) = call(c, "GET", &format!("{url}/health"), None).await {
            if r.status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not become healthy");
}

/// Removes every container whose name starts with `prefix`, now and when dropped.
pub struct Containers(String);

impl Containers {
    pub fn new(prefix: &str) -> Self {
        let c = Self(prefix.to_string());
        c.clean();
        c
    }

    pub fn names(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-a", "--format", "{{.Names}} {{.State}}"])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&self.0))
            .map(String::from)
            .collect()
    }

    pub fn clean(&self) {
        for l in self.names() {
            let name = l.split_whitespace().next().unwrap_or_default().to_string();
            let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        self.clean();
    }
}

/// The seed talk's unit, as written there.
pub const APACHE: &str = "[Unit]
Description=My Advanced Service
After=etcd.service
After=docker.service

[Service]
TimeoutStartSec=0
ExecStartPre=-/usr/bin/docker kill apache1
ExecStartPre=-/usr/bin/docker rm apache1
ExecStartPre=/usr/bin/docker pull coreos/apache
ExecStart=/usr/bin/docker run --name apache1 -p 8081:80 coreos/apache /usr/sbin/httpd -D FOREGROUND
ExecStartPost=/usr/bin/etcdctl set /domains/example.com/10.10.10.123:8081 run
ExecStop=/usr/bin/docker stop apache1
ExecStopPost=/usr/bin/etcdctl rm /domains/example.com/10.10.10.123:8081

[X-Fleet]
Conflicts=%p@*.service
";

/// Builds the seed's images on the local engine if they are missing (no registry).
pub fn ensure_images() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-test-images");
    let out = Command::new(script)
        .output()
        .expect("run scripts/build-test-images");
    assert!(
        out.status.success(),
        "building the test images failed (Docker and busybox-static are needed):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
