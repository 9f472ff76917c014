//! The README's five-minute tour, run as written: every shell block between the
//! `tour:begin` and `tour:end` markers, in order, as one bash script (but for the
//! `cargo build` line: this test puts its own `flotilla` first on PATH). It uses the
//! README's own addresses (127.0.0.1:2379, 127.0.0.2–4, port 8081), so it fails loudly
//! if something else holds them; the processes and containers it made are removed.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::ensure_images;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The tour's shell blocks, joined, without the line that builds the binary.
fn tour_script(readme: &str) -> String {
    let begin = readme
        .find("<!-- tour:begin -->")
        .expect("README has a tour:begin marker");
    let end = readme
        .find("<!-- tour:end -->")
        .expect("README has a tour:end marker");
    let mut script = String::new();
    let mut in_block = false;
    for line in readme[begin..end].lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, l) if l.starts_with("cargo build") => {}
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

/// Removes what the tour leaves: its nodes (by their data dirs) and its containers (by
/// the machine label the agents put on them).
fn clean_up() {
    let _ = Command::new("pkill")
        .args(["-9", "-f", "--", "--data-dir /tmp/tour/"])
        .status();
    for m in ["m0", "m1", "m2", "m3"] {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=flotilla.machine={m}"),
            ])
            .output()
            .expect("docker ps");
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
    let _ = Command::new("docker")
        .args(["rm", "-f", "apache1", "sweetapp-presence-1"])
        .output();
}

struct CleanUp;

impl Drop for CleanUp {
    fn drop(&mut self) {
        clean_up();
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    ensure_images();
    clean_up();
    let _clean = CleanUp;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let script = tour_script(&readme);
    assert!(
        script.contains("flotilla units start") && script.contains("flotilla confd"),
        "the tour lost its steps:\n{script}"
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_flotilla")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["300", "bash", "-euo", "pipefail", "-c"])
        .arg(format!("trap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}"))
        .current_dir(root)
        .env("PATH", path)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let logs: String = ["m0", "m1", "m2", "m3"]
        .iter()
        .map(|m| {
            let log = std::fs::read_to_string(format!("/tmp/tour/{m}.log")).unwrap_or_default();
            format!("--- {m}.log (tail):\n{}\n", tail(&log, 20))
        })
        .collect();
    assert!(
        out.status.success(),
        "the tour failed ({}) after {:?}:\n{stdout}\n{}\n{logs}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    // What a reader is told to expect: the seed's page, and three servers upstream.
    assert!(stdout.contains("It works"), "{stdout}");
    let upstream = std::fs::read_to_string("/tmp/tour/sweetapp-m1.conf").unwrap();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        assert!(
            upstream.contains(&format!("server {ip}:8081;")),
            "{ip} missing upstream:\n{upstream}"
        );
    }
    println!("the tour ran in {:?}", started.elapsed());
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
