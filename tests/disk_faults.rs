//! A real node on a real filesystem that fails its writes, and on one that fails its
//! fsyncs. Writes: a small ext4 image on a loop device, filled up under the node. Fsyncs:
//! a pass-through FUSE filesystem (`tests/faultfs.py`, Debian's python3-fusepy) whose
//! fsyncs answer EIO once told to. Either way the node must stop (a failed sync is
//! fatal), acknowledge nothing it did not sync, and come back from what is durable once
//! the disk is whole again. Needs root, loop devices and /dev/fuse (this machine and CI
//! have them); it fails loudly rather than skip without them.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// A member process; `planted`: with the suite's planted bug that ignores failed fsyncs.
fn node(data: &Path, client: &str, peer: &str, log: &Path, planted: bool) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    if planted {
        cmd.env("FLOTILLA_TEST_PLANTED_BUG", "ignore-sync-errors");
    }
    cmd.args([
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

/// One member on a data dir under test, its log kept beside the test.
struct Member {
    data: PathBuf,
    url: String,
    peer: String,
    log: PathBuf,
    child: std::process::Child,
    _logdir: tempfile::TempDir,
}

impl Member {
    async fn start(c: &Http, data: PathBuf) -> Self {
        Self::start_planted(c, data, false).await
    }

    async fn start_planted(c: &Http, data: PathBuf, planted: bool) -> Self {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("node.log");
        let url = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = node(&data, &url, &peer, &log, planted);
        wait_healthy(c, &url).await;
        Self {
            data,
            url,
            peer,
            log,
            child,
            _logdir: logdir,
        }
    }

    async fn restart(&mut self, c: &Http) {
        self.child = node(&self.data, &self.url, &self.peer, &self.log, false);
        wait_healthy(c, &self.url).await;
    }

    /// Waits up to 30 s for the member to stop on its own; it must exit with a failure
    /// whose last words contain every one of `named`.
    async fn stopped_naming(&mut self, named: &[&str], why: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "the node kept running after {why}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!status.success(), "exit status {status}");
        assert!(
            named.iter().all(|n| text.contains(n)),
            "the node's last words do not name {why} ({named:?}):\n{}",
            &text[text.len().saturating_sub(3000)..]
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_disk_fills_stops_and_loses_nothing_it_acknowledged() {
    let fs = LoopFs::new(300);
    let c = client();
    let mut m = Member::start(&c, fs.mnt.join("data")).await;
    let url = m.url.clone();
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
        if m.child.try_wait().unwrap().is_some() || failures >= 20 {
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
    m.stopped_naming(&["No space left on device"], "a full disk")
        .await;
    assert!(
        acked.len() > 10,
        "only {} writes before the disk filled",
        acked.len()
    );

    // Room again: it comes back from what is durable, with every acknowledged write.
    std::fs::remove_file(&filler).unwrap();
    m.restart(&c).await;
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
    println!(
        "{} writes acknowledged before the disk filled; all present after the restart",
        acked.len()
    );
}

/// `tests/faultfs.py` mounted over a backing dir; while `control` exists, every fsync
/// fails with EIO. Unmounted on drop.
struct FaultFs {
    mnt: PathBuf,
    control: PathBuf,
    fs: std::process::Child,
    _dir: tempfile::TempDir,
}

impl FaultFs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let control = dir.path().join("fail-fsync");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/faultfs.py");
        let fs = Command::new("/usr/bin/python3")
            .arg(script)
            .args([&backing, &mnt, &control])
            .stderr(std::fs::File::create(dir.path().join("faultfs.log")).unwrap())
            .spawn()
            .expect("/usr/bin/python3 tests/faultfs.py (needs python3-fusepy)");
        let mut this = Self {
            mnt,
            control,
            fs,
            _dir: dir,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while !this.mounted() {
            if let Some(status) = this.fs.try_wait().unwrap() {
                let log = std::fs::read_to_string(this._dir.path().join("faultfs.log"));
                panic!("faultfs.py exited ({status}): {}", log.unwrap_or_default());
            }
            assert!(Instant::now() < end, "faultfs.py did not mount in 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        this
    }

    fn mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mnt = self.mnt.display().to_string();
        mounts.lines().any(|l| l.split(' ').nth(1) == Some(&mnt))
    }

    fn fail_fsyncs(&self, on: bool) {
        if on {
            std::fs::write(&self.control, "").unwrap();
        } else {
            std::fs::remove_file(&self.control).unwrap();
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = self.fs.kill();
        let _ = self.fs.wait();
    }
}

/// One write of the fsync test: its number, whether it was sent after fsyncs began to
/// fail, and whether it was acknowledged.
type Sent = (u32, bool, bool);

/// Writers sending sets until the node stops answering; `failing` says whether fsyncs
/// fail from now on.
async fn writers(c: &Http, url: &str, failing: Arc<AtomicBool>) -> Vec<Sent> {
    let tasks: Vec<_> = (0..4u32)
        .map(|w| {
            let (c, url, failing) = (c.clone(), url.to_string(), failing.clone());
            tokio::spawn(async move {
                let mut sent = vec![];
                let mut refused = 0;
                for n in (w..).step_by(4).take(100_000) {
                    let after = failing.load(Ordering::SeqCst);
                    let key = format!("{url}/v2/keys/fs/{n}");
                    let r = call(&c, "PUT", &key, Some(&format!("value={n}"))).await;
                    let ok = matches!(r, Ok(ref r) if r.status == 200 || r.status == 201);
                    sent.push((n, after, ok));
                    refused += usize::from(!ok);
                    if refused >= 5 {
                        break;
                    }
                }
                sent
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Four writers under way on a member of a FUSE filesystem; after a second, fsyncs begin
/// to fail. Returns the member and every write sent (number, sent after the fault,
/// acknowledged).
async fn writes_when_fsyncs_fail(c: &Http, fs: &FaultFs, planted: bool) -> (Member, Vec<Sent>) {
    let m = Member::start_planted(c, fs.mnt.join("data"), planted).await;
    let failing = Arc::new(AtomicBool::new(false));
    let sending = tokio::spawn({
        let (c, url, failing) = (c.clone(), m.url.clone(), failing.clone());
        async move { writers(&c, &url, failing).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    fs.fail_fsyncs(true);
    failing.store(true, Ordering::SeqCst);
    (m, sending.await.unwrap())
}

/// The test below has teeth: a member that ignores `fdatasync`'s error (the planted bug)
/// acknowledges writes no sync made durable, which the test refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fsync_check_refuses_a_member_that_ignores_failed_fsyncs() {
    let fs = FaultFs::new();
    let c = client();
    let (_m, sent) = writes_when_fsyncs_fail(&c, &fs, true).await;
    let unsynced = sent.iter().filter(|s| s.1 && s.2).count();
    assert!(
        unsynced > 0,
        "the planted bug acknowledged nothing after fsyncs failed: the check below would pass it"
    );
    println!("the planted bug acknowledged {unsynced} writes after fsyncs began to fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_fsyncs_fail_stops_and_acknowledges_nothing_unsynced() {
    let fs = FaultFs::new();
    let c = client();
    let (mut m, sent) = writes_when_fsyncs_fail(&c, &fs, false).await;
    let url = m.url.clone();

    m.stopped_naming(&["sync failed", "os error 5"], "a failed fsync")
        .await;
    // A write sent after fsyncs began to fail can only be made durable by a later fsync.
    let unsynced: Vec<u32> = sent.iter().filter(|s| s.1 && s.2).map(|s| s.0).collect();
    assert!(
        unsynced.is_empty(),
        "{} writes acknowledged without a sync, first: {:?}",
        unsynced.len(),
        &unsynced[..unsynced.len().min(10)]
    );
    let acked: Vec<u32> = sent.iter().filter(|s| s.2).map(|s| s.0).collect();
    assert!(
        acked.len() > 10,
        "only {} writes before the fault",
        acked.len()
    );

    // Fsyncs work again: it comes back from what is durable, with every acknowledged write.
    fs.fail_fsyncs(false);
    m.restart(&c).await;
    for n in &acked {
        let r = call(&c, "GET", &format!("{url}/v2/keys/fs/{n}"), None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "acknowledged write fs/{n} lost: {}", r.text);
        assert_eq!(
            r.body["node"]["value"].as_str(),
            Some(n.to_string().as_str())
        );
    }
    let after = sent.iter().filter(|s| s.1).count();
    println!(
        "{} writes acknowledged before fsyncs failed, {after} sent after (none acknowledged); \
         the node stopped, and all acknowledged writes were there after the restart",
        acked.len()
    );
}
