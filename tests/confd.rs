//! `flotilla confd` end to end, as its users run it: the 21 cases of confd's own test suite
//! (`tests/confd-corpus`, a copy of `../shared/reference/confd-corpus`) byte for byte against a flotilla node and against a
//! real etcd 3.4; the seed's nginx upstream in watch mode with check and reload commands;
//! failures that leave the destination untouched.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/confd-corpus/cases")
}

async fn put(c: &Http, url: &str, key: &str, value: &str) {
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("value", value)
        .finish();
    let r = call(c, "PUT", &format!("{url}/v2/keys{key}"), Some(&form))
        .await
        .unwrap();
    assert!(r.status < 300, "PUT {key}: {} {}", r.status, r.text);
}

/// Empties the store (every top-level node).
async fn clear(c: &Http, url: &str) {
    let root = call(c, "GET", &format!("{url}/v2/keys/"), None)
        .await
        .unwrap();
    for n in root.body["node"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let key = n["key"].as_str().unwrap();
        let q = if n["dir"] == true {
            "?recursive=true"
        } else {
            ""
        };
        call(c, "DELETE", &format!("{url}/v2/keys{key}{q}"), None)
            .await
            .unwrap();
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Runs `flotilla confd ARGS`, with `env` added; its exit status and stderr.
fn confd(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("confd")
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// A corpus case laid out as a confdir whose resource writes `<dir>/out/dest`.
fn lay_out(case: &Path, dir: &Path) -> PathBuf {
    let res = std::fs::read_to_string(case.join("resource.toml")).unwrap();
    let dest = dir.join("out/dest");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let mut src = String::new();
    let rewritten: Vec<String> = res
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("src") {
                src = t.split('"').nth(1).unwrap().to_string();
            }
            if t.starts_with("dest") {
                format!("dest = {:?}", dest.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect();
    write(&dir.join("conf.d/case.toml"), &rewritten.join("\n"));
    let tmpl = std::fs::read_to_string(case.join("template.tmpl")).unwrap();
    write(&dir.join("templates").join(&src), &tmpl);
    dest
}

fn env_of(case: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(case.join("env.json")) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let obj = v.as_object().unwrap();
    obj.iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// Every corpus case through `flotilla confd --onetime` against the store at `url`.
async fn run_corpus(c: &Http, url: &str) {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("the confd corpus (tests/confd-corpus, copied from ../shared/reference)")
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 21, "the corpus has 21 cases");
    let mut failures = vec![];
    for case in &cases {
        clear(c, url).await;
        let data: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("data.json")).unwrap())
                .unwrap();
        for (k, v) in data.as_object().unwrap() {
            put(c, url, k, v.as_str().unwrap()).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let dest = lay_out(case, dir.path());
        let confdir = dir.path().display().to_string();
        let (ok, _, err) = confd(
            &["--onetime", "--confdir", &confdir, "--node", url],
            &env_of(case),
        );
        let want = std::fs::read(case.join("expected")).unwrap();
        let got = std::fs::read(&dest).unwrap_or_default();
        if !ok || got != want {
            failures.push(format!(
                "{}: ok={ok}\n got {:?}\nwant {:?}\n{err}",
                case.display(),
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_against_flotilla() {
    let c = client();
    let mut cluster = Cluster::new(1, &[]);
    cluster.start_all();
    let url = cluster.nodes[0].client_url.clone();
    wait_healthy(&c, &url).await;
    run_corpus(&c, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_against_etcd() {
    let c = client();
    let etcd = start_etcd(&c).await;
    run_corpus(&c, &etcd.url).await;
}

/// A `flotilla confd --watch` process, killed on drop.
struct Watcher {
    child: Child,
    log: PathBuf,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watcher {
    fn start(confdir: &Path, url: &str, extra: &[&str]) -> Self {
        let log = confdir.join("confd.log");
        let child = Command::new(BIN)
            .args([
                "confd",
                "--watch",
                "--confdir",
                &confdir.display().to_string(),
                "--node",
                url,
            ])
            .args(extra)
            .env("FLOTILLA_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits until `f` holds, up to `within`; panics with `what` and the renderer's log.
async fn until(w: &Watcher, within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} within {within:?}; renderer log:\n{}", w.log());
}

/// The seed's template, verbatim (trailing spaces included).
const SEED_TMPL: &str = "upstream sweetapp_pool {  \n    {{ range getvs \"/services/sweetapp/*\" }}  \n        server {{ . }};  \n    {{ end }}  \n}\n";

/// Lines trimmed, blank ones dropped: the seed's "Becomes This" is shown that way.
fn squeeze(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_nginx_upstream_in_watch_mode() {
    let c = client();
    let mut cluster = Cluster::new(1, &[]);
    cluster.start_all();
    let url = cluster.nodes[0].client_url.clone();
    wait_healthy(&c, &url).await;
    put(&c, &url, "/services/sweetapp/a", "10.253.156.164:8811").await;
    put(&c, &url, "/services/sweetapp/b", "10.253.156.165:8810").await;

    let dir = tempfile::tempdir().unwrap();
    let (dest, reloads) = (dir.path().join("sweetapp.conf"), dir.path().join("reloads"));
    write(&dir.path().join("templates/nginx.tmpl"), SEED_TMPL);
    // The check refuses any server on port 666; the reload appends a line.
    write(
        &dir.path().join("conf.d/sweetapp.toml"),
        &format!(
            "[template]\nsrc = \"nginx.tmpl\"\ndest = {:?}\nkeys = [\"/services/sweetapp\"]\nmode = \"0640\"\n\
             check_cmd = \"! grep -q ':666;' {{{{.src}}}}\"\nreload_cmd = \"echo reloaded >> {}\"\n",
            dest.display().to_string(),
            reloads.display()
        ),
    );
    let w = Watcher::start(dir.path(), &url, &[]);
    let becomes = squeeze(
        "upstream sweetapp_pool {\n    server 10.253.156.164:8811;\n    server 10.253.156.165:8810;\n}",
    );
    until(&w, Duration::from_secs(10), "the first render", || {
        dest.exists()
    })
    .await;
    // Added right after the first render: confd 0.16 missed exactly this one.
    put(&c, &url, "/services/sweetapp/c", "10.253.156.166:8812").await;
    let first = std::fs::read_to_string(&dest).unwrap();
    assert!(
        squeeze(&first) == becomes || first.contains("10.253.156.166:8812"),
        "first render: {first:?}"
    );
    until(
        &w,
        Duration::from_secs(3),
        "the third server rendered",
        || {
            std::fs::read_to_string(&dest)
                .unwrap_or_default()
                .contains("server 10.253.156.166:8812;")
        },
    )
    .await;
    let mut want = becomes.clone();
    want.insert(3, "server 10.253.156.166:8812;".into());
    assert_eq!(squeeze(&std::fs::read_to_string(&dest).unwrap()), want);
    until(&w, Duration::from_secs(3), "two reloads", || {
        lines_of(&reloads) == 2
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o640
    );

    // A server the check refuses: the destination stays, nothing reloads.
    let before = std::fs::read(&dest).unwrap();
    put(&c, &url, "/services/sweetapp/d", "10.0.0.1:666").await;
    until(&w, Duration::from_secs(5), "the check failing", || {
        w.log().contains("check_cmd failed")
    })
    .await;
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        before,
        "a failed check replaced dest"
    );
    assert_eq!(lines_of(&reloads), 2, "reloaded after a failed check");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("flotilla-stage"))
        .collect();
    assert!(leftovers.is_empty(), "stage files left: {leftovers:?}");

    // Setting the same values again changes nothing on disk and reloads nothing.
    put(&c, &url, "/services/sweetapp/d", "10.0.0.1:80").await;
    until(&w, Duration::from_secs(3), "the fixed server", || {
        std::fs::read_to_string(&dest)
            .unwrap_or_default()
            .contains("10.0.0.1:80;")
    })
    .await;
    until(&w, Duration::from_secs(3), "three reloads", || {
        lines_of(&reloads) == 3
    })
    .await;
    put(&c, &url, "/services/sweetapp/d", "10.0.0.1:80").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        lines_of(&reloads),
        3,
        "an unchanged render reloaded:\n{}",
        w.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_renders_a_few_times() {
    let c = client();
    let mut cluster = Cluster::new(1, &[]);
    cluster.start_all();
    let url = cluster.nodes[0].client_url.clone();
    wait_healthy(&c, &url).await;
    put(&c, &url, "/burst/k0000", "0").await;
    let dir = tempfile::tempdir().unwrap();
    let (dest, reloads) = (dir.path().join("burst.conf"), dir.path().join("reloads"));
    write(
        &dir.path().join("templates/b.tmpl"),
        "{{len (ls \"/burst\")}}\n",
    );
    write(
        &dir.path().join("conf.d/b.toml"),
        &format!(
            "[template]\nsrc = \"b.tmpl\"\ndest = {:?}\nkeys = [\"/burst\"]\nreload_cmd = \"echo r >> {}\"\n",
            dest.display().to_string(),
            reloads.display()
        ),
    );
    let w = Watcher::start(dir.path(), &url, &["--debounce-ms", "200"]);
    until(&w, Duration::from_secs(10), "the first render", || {
        dest.exists()
    })
    .await;
    for i in 1..1000 {
        put(&c, &url, &format!("/burst/k{i:04}"), "v").await;
    }
    until(
        &w,
        Duration::from_secs(10),
        "all 1,000 keys rendered",
        || std::fs::read_to_string(&dest).unwrap_or_default() == "1000\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = lines_of(&reloads);
    eprintln!("{n} reloads for 999 changes");
    // The burst takes a few seconds; one render per 200 ms at most, never one per key.
    assert!(
        n <= 60,
        "{n} reloads for a burst of 999 changes:\n{}",
        w.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onetime_failures_leave_destinations_untouched() {
    let c = client();
    let mut cluster = Cluster::new(1, &[]);
    cluster.start_all();
    let url = cluster.nodes[0].client_url.clone();
    wait_healthy(&c, &url).await;
    put(&c, &url, "/app/name", "sweet").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = |n: &str| d.join(n).display().to_string();
    write(
        &d.join("templates/ok.tmpl"),
        "name={{getv \"/app/name\"}}\n",
    );
    write(
        &d.join("templates/missing.tmpl"),
        "{{getv \"/app/name\"}}\n",
    );
    write(
        &d.join("templates/bad.tmpl"),
        "line1\n{{getv \"/app/nope\"}}\n",
    );
    let res = |src: &str, dest: &str, keys: &str| {
        format!(
            "[template]\nsrc = {src:?}\ndest = {:?}\nkeys = [{keys}]\n",
            out(dest)
        )
    };
    write(
        &d.join("conf.d/1-ok.toml"),
        &res("ok.tmpl", "ok.conf", "\"/app\""),
    );
    write(
        &d.join("conf.d/2-missing-key.toml"),
        &res("missing.tmpl", "missing.conf", "\"/app\", \"/nope\""),
    );
    write(
        &d.join("conf.d/3-bad-template.toml"),
        &res("bad.tmpl", "bad.conf", "\"/app\""),
    );
    write(
        &d.join("conf.d/4-bad-mode.toml"),
        "[template]\nsrc = \"ok.tmpl\"\ndest = \"/tmp/x\"\nmode = \"rwx\"\n",
    );
    for name in ["missing.conf", "bad.conf"] {
        write(&d.join(name), "old\n");
    }
    let confdir = d.display().to_string();

    // --noop: a diff on stdout, nothing written.
    let (ok, stdout, _) = confd(
        &["--onetime", "--noop", "--confdir", &confdir, "--node", &url],
        &[],
    );
    assert!(!ok, "bad resources must fail the run");
    assert!(stdout.contains("+name=sweet"), "noop diff: {stdout}");
    assert!(!d.join("ok.conf").exists(), "--noop wrote");

    let (ok, _, err) = confd(&["--onetime", "--confdir", &confdir, "--node", &url], &[]);
    assert!(!ok, "failures must exit non-zero");
    assert_eq!(
        std::fs::read_to_string(d.join("ok.conf")).unwrap(),
        "name=sweet\n",
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("missing.conf")).unwrap(),
        "old\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("bad.conf")).unwrap(),
        "old\n"
    );
    for want in [
        "2-missing-key.toml: key /nope: not in the store",
        "3-bad-template.toml: template bad.tmpl:2: ",
        "key does not exist: /app/nope",
        "4-bad-mode.toml: mode: \"rwx\" is not a file mode",
    ] {
        assert!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    let (ok, _, err) = confd(
        &["--onetime", "--backend", "consul", "--confdir", &confdir],
        &[],
    );
    assert!(!ok && err.contains("--backend \"consul\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_renders_in_process_with_confdir() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("sweetapp.conf");
    write(&dir.path().join("templates/nginx.tmpl"), SEED_TMPL);
    write(
        &dir.path().join("conf.d/sweetapp.toml"),
        &format!(
            "[template]\nsrc = \"nginx.tmpl\"\ndest = {:?}\nkeys = [\"/services/sweetapp\"]\n",
            dest.display().to_string()
        ),
    );
    let confdir = dir.path().display().to_string();
    let mut cluster = Cluster::new(1, &["--confdir", &confdir]);
    cluster.start_all();
    let url = cluster.nodes[0].client_url.clone();
    wait_healthy(&c, &url).await;
    put(&c, &url, "/services/sweetapp/a", "10.253.156.164:8811").await;
    put(&c, &url, "/services/sweetapp/b", "10.253.156.165:8810").await;
    let want = squeeze(
        "upstream sweetapp_pool {\n    server 10.253.156.164:8811;\n    server 10.253.156.165:8810;\n}",
    );
    let end = Instant::now() + Duration::from_secs(10);
    while squeeze(&std::fs::read_to_string(&dest).unwrap_or_default()) != want {
        assert!(Instant::now() < end, "never rendered:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
