//! A corrupted or truncated data dir is refused at start: non-zero exit, a message naming
//! what is wrong, and the dir's bytes left exactly as they were.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Starts a single node in `dir`, writes a few keys, and kills it. Returns its arguments.
async fn populated(dir: &Path) -> Vec<String> {
    let mut cl = Cluster::new(1, &[]);
    cl.nodes[0].data_dir = dir.to_path_buf();
    cl.start_all();
    let c = client();
    cl.leader(&c, Duration::from_secs(20)).await;
    for i in 0..50 {
        let url = format!("{}/v2/keys/k{i}", cl.nodes[0].client_url);
        let r = call(&c, "PUT", &url, Some("value=hello")).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // The disk records its durable sync generation at most once a second; let one pass so
    // that everything written above counts as long durable.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let url = format!("{}/v2/keys/last", cl.nodes[0].client_url);
    assert_eq!(
        call(&c, "PUT", &url, Some("value=x")).await.unwrap().status,
        201
    );
    cl.nodes[0].kill9();
    cl.nodes[0].args()
}

/// Runs a node with `args` and expects it to refuse (exit non-zero within 30 s):
/// returns its stderr.
fn refuses(args: &[String]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    match status {
        Some(s) => assert!(
            !s.success(),
            "node must refuse the damaged dir; stderr:\n{stderr}"
        ),
        None => panic!("node started on the damaged dir instead of refusing it; stderr:\n{stderr}"),
    }
    stderr
}

/// The newest WAL segment of a data dir.
fn segment(dir: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.pop().expect("a wal segment")
}

fn last_nonzero(data: &[u8]) -> usize {
    data.iter().rposition(|b| *b != 0).unwrap()
}

/// `expect`: the message must contain one of these (`|`-separated).
async fn check(damage: impl FnOnce(&Path), expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let args = populated(&dir).await;
    damage(&dir);
    let before = dir_digest(&dir);
    let stderr = refuses(&args);
    assert!(
        expect.split('|').any(|e| stderr.contains(e)),
        "message should say {expect:?}; got:\n{stderr}"
    );
    assert!(
        stderr.contains(&dir.display().to_string()),
        "message should name the dir:\n{stderr}"
    );
    assert!(
        dir_digest(&dir) == before,
        "the damaged dir must not be modified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_is_detected() {
    check(
        |d| {
            let p = segment(d);
            let mut data = std::fs::read(&p).unwrap();
            let at = last_nonzero(&data) * 3 / 4;
            data[at] ^= 0x5a;
            std::fs::write(&p, data).unwrap();
        },
        "truncated or damaged",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_store_file_is_detected() {
    check(
        |d| {
            let p = segment(d);
            let data = std::fs::read(&p).unwrap();
            std::fs::write(&p, &data[..last_nonzero(&data) / 2]).unwrap();
        },
        "truncated or damaged",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_store_file_is_detected() {
    check(
        |d| std::fs::remove_file(segment(d)).unwrap(),
        "the wal is missing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptied_store_file_is_detected() {
    check(
        |d| std::fs::write(segment(d), b"").unwrap(),
        "truncated or damaged",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), b"mine").unwrap();
    let before = dir_digest(tmp.path());
    let stderr = refuses(&[
        "node".into(),
        format!("--data-dir={}", tmp.path().display()),
    ]);
    assert!(stderr.contains("not a flotilla data dir"), "{stderr}");
    assert!(dir_digest(tmp.path()) == before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_member_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut args = populated(&dir).await;
    let before = dir_digest(&dir);
    for a in &mut args {
        if a.starts_with("--name=") || a.starts_with("--initial-cluster=") {
            *a = a.replace("n0", "other");
        }
    }
    let stderr = refuses(&args);
    assert!(stderr.contains("belongs to another member"), "{stderr}");
    assert!(dir_digest(&dir) == before);
}

#[test]
fn bad_flags_name_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["node", "--initial-cluster=n0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--initial-cluster"), "{stderr}");
}
