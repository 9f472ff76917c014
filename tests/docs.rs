//! The docs stay true: every relative link and anchor in README.md and docs/ resolves
//! (offline: no web links are fetched); every page of docs/ that shows commands says they
//! are illustrative (the README's tour is run by `tests/tour.rs`); `flotilla --help`
//! and each subcommand's help name pages that exist; and every flag a page's Reference
//! names is one `flotilla` takes.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The line a page of docs/ carries when it shows commands no test runs as written.
const ILLUSTRATIVE: &str = "Commands on this page are illustrative";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pages() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors a page's headings make (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// Every `[text](target)` outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || line.starts_with("    ") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = vec![];
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
                continue;
            }
            if !anchor.is_empty() {
                let t = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&t).contains(anchor) {
                    broken.push(format!("{}: {link}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn commands_in_the_docs_are_run_or_said_to_be_illustrative() {
    let mut unmarked = vec![];
    for page in pages().into_iter().skip(1) {
        let text = std::fs::read_to_string(&page).unwrap();
        let shows_commands = text.contains("\n    ") || text.contains("```");
        if shows_commands && !text.contains(ILLUSTRATIVE) {
            unmarked.push(page.display().to_string());
        }
    }
    assert!(
        unmarked.is_empty(),
        "pages showing commands without saying they are illustrative: {unmarked:?}"
    );
    // The README's commands: the two of "Two commands" (the suite is the second; every
    // integration test starts nodes as the first does) and the tour (tests/tour.rs).
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let tour =
        readme.find("<!-- tour:begin -->").unwrap()..readme.find("<!-- tour:end -->").unwrap();
    let two =
        readme.find("## Two commands").unwrap()..readme.find("## A five-minute tour").unwrap();
    for (at, _) in readme.match_indices("\n```") {
        assert!(
            tour.contains(&at),
            "a code block outside the tour at byte {at}"
        );
    }
    for (at, _) in readme.match_indices("\n    ") {
        assert!(
            two.contains(&at) || tour.contains(&at),
            "an indented command outside 'Two commands' and the tour at byte {at}"
        );
    }
}

#[test]
fn help_points_to_pages_that_exist() {
    let mut named = 0;
    for sub in [
        &[][..],
        &["node"],
        &["kv"],
        &["units"],
        &["agent"],
        &["confd"],
        &["net"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(sub)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let pages: Vec<&str> = help
            .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ','))
            .filter(|w| w.starts_with("docs/"))
            .map(|w| w.trim_end_matches(['.', ':']))
            .collect();
        assert!(
            !pages.is_empty(),
            "flotilla {sub:?} --help names no page:\n{help}"
        );
        for p in pages {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
            assert!(
                path.exists() || p == "docs/",
                "{sub:?} --help names {p}, which is missing"
            );
            named += 1;
        }
    }
    assert!(named >= 7);
}

/// Every command whose help a Reference section may draw on.
const COMMANDS: &[&[&str]] = &[
    &["node"],
    &["agent"],
    &["confd"],
    &["kv", "get"],
    &["kv", "set"],
    &["kv", "mk"],
    &["kv", "mkdir"],
    &["kv", "update"],
    &["kv", "rm"],
    &["kv", "ls"],
    &["kv", "watch"],
    &["units"],
    &["units", "journal"],
    &["net", "init"],
    &["net", "status"],
];

#[test]
fn every_flag_a_reference_names_is_taken() {
    let mut known = BTreeSet::new();
    for args in COMMANDS {
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(*args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "flotilla {args:?} --help failed");
        known.extend(flags_in(&String::from_utf8_lossy(&out.stdout)));
    }
    let mut checked = 0;
    // The simulator's page names the chaos binary's flags (a madsim build serves its
    // help), the benchmarks' page cargo's.
    let others = |p: &&PathBuf| p.ends_with("simulation.md") || p.ends_with("benchmarks.md");
    for page in pages().iter().filter(|p| !others(p)) {
        let text = std::fs::read_to_string(page).unwrap();
        let Some(at) = text.find("\n## Reference") else {
            continue;
        };
        for flag in flags_in(&text[at..]) {
            assert!(
                known.contains(&flag),
                "{}: its Reference names {flag}, which no flotilla command takes",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} flags checked");
}

/// `--flag` words in a text.
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("--") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '-') {
            continue;
        }
        let word: String = text[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if word.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
            out.insert(format!("--{word}"));
        }
    }
    out
}
