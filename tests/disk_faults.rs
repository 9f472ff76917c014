//! A real node on a real filesystem that fails its writes: a small ext4 image on a loop
//! device, filled up under the node. It must stop on the failed write (a failed sync is
//! fatal), acknowledge nothing it did not sync, and come back from what is durable once
//! there is room again. Needs root and loop devices (this machine and CI have both); it
//! fails loudly rather than skip without them.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd} {args:?}: {e} (the disk-fault test needs root, e2fsprogs and loop devices)")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {} (the disk-fault test needs root, e2fsprogs and loop devices)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ext4 filesystem in a file, mounted through a loop device; unmounted on drop.
struct LoopFs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    fn new(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let img_s = img.display().to_string();
        run("truncate", &["-s", &format!("{mib}M"), &img_s]);
        run("mkfs.ext4", &["-q", "-F", &img_s]);
        run("mount", &["-o", "loop", &img_s, &mnt.display().to_string()]);
        Self { mnt, _dir: dir }
    }

    fn free_bytes(&self) -> u64 {
        let out = run(
            "df",
            &["--output=avail", "-B1", &self.mnt.display().to_string()],
        );
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn node(data: &Path, client: &str, peer: &str, log: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "node",
            &format!("--data-dir={}", data.display()),
            &format!("--listen-client-urls={client}"),
            &format!("--listen-peer-urls={peer}"),
            "--no-agent",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start flotilla")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_disk_fills_stops_and_loses_nothing_it_acknowledged() {
    let fs = LoopFs::new(300);
    let data = fs.mnt.join("data");
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("node.log");
    let (url, peer) = (
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let c = client();
    let mut child = node(&data, &url, &peer, &log);
    wait_healthy(&c, &url).await;
    // Leave about 1 MiB: the WAL's current segment is preallocated, so writes go on until
    // it needs its next one.
    let filler = fs.mnt.join("filler");
    let room = fs.free_bytes().saturating_sub(1 << 20);
    run(
        "fallocate",
        &["-l", &room.to_string(), &filler.display().to_string()],
    );

    let value = "v".repeat(256 << 10);
    let mut acked = vec![];
    let mut failures = 0;
    let started = Instant::now();
    for i in 0..2_000 {
        if child.try_wait().unwrap().is_some() || failures >= 20 {
            break;
        }
        let key = format!("{url}/v2/keys/big/{i}");
        match call(&c, "PUT", &key, Some(&format!("value={value}"))).await {
            Ok(r) if r.status == 200 || r.status == 201 => acked.push(i),
            _ => failures += 1,
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the disk never filled"
        );
    }
    // The node stops on its failed write, saying why.
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the node kept running on a full disk");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "exit status {status}");
    assert!(
        text.contains("No space left on device") || text.contains("os error 28"),
        "the node's last words do not name the disk:\n{}",
        &text[text.len().saturating_sub(3000)..]
    );
    assert!(
        acked.len() > 10,
        "only {} writes before the disk filled",
        acked.len()
    );

    // Room again: it comes back from what is durable, with every acknowledged write.
    std::fs::remove_file(&filler).unwrap();
    let mut child = node(&data, &url, &peer, &log);
    wait_healthy(&c, &url).await;
    for i in &acked {
        let r = call(&c, "GET", &format!("{url}/v2/keys/big/{i}"), None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "acknowledged write big/{i} lost: {}", r.text);
        assert_eq!(
            r.body["node"]["value"].as_str().map(str::len),
            Some(value.len()),
            "big/{i}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{} writes acknowledged before the disk filled; all present after the restart",
        acked.len()
    );
}
