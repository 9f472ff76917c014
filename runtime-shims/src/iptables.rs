//! flotilla's packet-filter chains, set with the host's `iptables`, as flannel sets its
//! own through go-iptables: Docker keeps its rules in iptables' chains, and the kernel's
//! nftables netlink API has no maintained Rust crate that edits those chains beside it.
//! A chain that does not hold exactly its rules is flushed and refilled whole; the jumps
//! into the chains are checked before they are moved or added, so setting the same rules
//! again (the network's repair pass does, every few seconds) only reads.

use crate::links::FilterRule;
use std::collections::BTreeSet;
use std::io;

/// Makes flotilla's chains hold exactly `rules`.
pub async fn set(rules: &[FilterRule]) -> io::Result<()> {
    let chains: BTreeSet<(&str, &str)> = rules.iter().map(|r| (r.table, r.chain)).collect();
    for (table, chain) in &chains {
        let want: Vec<String> = rules
            .iter()
            .filter(|r| (r.table, r.chain) == (*table, *chain))
            .map(|r| format!("-A {chain} {}", r.args.join(" ")))
            .collect();
        fill(table, chain, &want).await?;
        jump(table, chain).await?;
    }
    Ok(())
}

/// Removes flotilla's `chains` (`(table, chain)`) and every jump into them: what a node
/// does when it stops, as flannel removes its masquerade rules. Absent ones are no error.
pub async fn remove(chains: &[(&str, &str)]) -> io::Result<()> {
    for (table, chain) in chains {
        let from = if *table == "nat" {
            "POSTROUTING"
        } else {
            "FORWARD"
        };
        while run(&["-t", table, "-D", from, "-j", chain]).await.is_ok() {}
        if run(&["-t", table, "-S", chain]).await.is_ok() {
            run(&["-t", table, "-F", chain]).await?;
            run(&["-t", table, "-X", chain]).await?;
        }
    }
    Ok(())
}

/// Makes `chain` hold `want` (`-A CHAIN …` lines, as `iptables -S` prints them).
async fn fill(table: &str, chain: &str, want: &[String]) -> io::Result<()> {
    let have = match run(&["-t", table, "-S", chain]).await {
        Ok(text) => text,
        Err(_) => run(&["-t", table, "-N", chain]).await?,
    };
    let have: Vec<&str> = have.lines().filter(|l| l.starts_with("-A ")).collect();
    if have == want.iter().map(String::as_str).collect::<Vec<_>>() {
        return Ok(());
    }
    run(&["-t", table, "-F", chain]).await?;
    for line in want {
        let mut args = vec!["-t", table];
        args.extend(line.split(' '));
        run(&args).await?;
    }
    Ok(())
}

/// nat's chain goes first in `POSTROUTING`, before Docker's masquerade (moved back there
/// when Docker put a rule above it); filter's last in `FORWARD`, after Docker's
/// isolation of its bridges from each other.
async fn jump(table: &str, chain: &str) -> io::Result<()> {
    if table == "nat" {
        let rules = run(&["-t", table, "-S", "POSTROUTING"]).await?;
        let first = rules.lines().find(|l| l.starts_with("-A "));
        if first == Some(format!("-A POSTROUTING -j {chain}").as_str()) {
            return Ok(());
        }
        while run(&["-t", table, "-D", "POSTROUTING", "-j", chain])
            .await
            .is_ok()
        {}
        return run(&["-t", table, "-I", "POSTROUTING", "1", "-j", chain])
            .await
            .map(drop);
    }
    if run(&["-t", table, "-C", "FORWARD", "-j", chain])
        .await
        .is_ok()
    {
        return Ok(());
    }
    run(&["-t", table, "-A", "FORWARD", "-j", chain])
        .await
        .map(drop)
}

/// Runs `iptables -w ARGS`; what it printed.
async fn run(args: &[&str]) -> io::Result<String> {
    let out = tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("running iptables: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(io::Error::other(format!(
        "iptables {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
