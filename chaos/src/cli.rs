//! The `chaos` command line: run, replay, shrink.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use flotilla_chaos::{seed_file, shrink, tally, SeedFile, Summary};
use flotilla_sim::scenario::{Scenario, ALL_FAULTS};
use flotilla_sim::world::run;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The workloads `--scenario` can name.
const SCENARIOS: [&str; 5] = ["kv", "sched", "render", "stack", "net"];
/// Every planted bug `--bug` can name (test-only), across the layers.
pub const BUGS: [&str; 12] = [
    "skip-sync",
    "ack-on-propose",
    "drop-foreign-ttls",
    "ignore-conflicts",
    "reshuffle-on-takeover",
    "no-fencing",
    "fence-late",
    "render-skip-sync",
    "presence-no-ttl",
    "lease-no-prev-exist",
    "routes-kept-on-expiry",
    "renew-moves-subnet",
];

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Seeded chaos campaigns against a simulated flotilla cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a range of seeds with every checker; failing seeds are written as JSON files.
    Run {
        /// Seeds as START..END (end exclusive).
        #[arg(long, default_value = "0..100")]
        seeds: String,
        /// Nodes in the cluster (3 or 5).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Fault kinds to draw from (comma-separated; default all).
        #[arg(long)]
        faults: Option<String>,
        /// Where failing seed files go.
        #[arg(long, default_value = "chaos-failures")]
        out: PathBuf,
        /// Parallel runs (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Plant a bug (test-only): `skip-sync` (never fsync the Raft log),
        /// `ignore-conflicts` (the scheduler places units as if no Conflicts were declared),
        /// `no-fencing` (agents keep their units running when their lease is lost),
        /// `fence-late` (agents stop them only after their machine's key expired),
        /// `ack-on-propose` (writes are answered before they are committed),
        /// `drop-foreign-ttls` (a replica drops the TTL of writes other members
        /// proposed), `reshuffle-on-takeover` (a new leader's engine re-places correctly
        /// placed units),
        /// `render-skip-sync` (the renderer renames its stage file into place unsynced),
        /// `presence-no-ttl` (presence keys are written without a TTL),
        /// `lease-no-prev-exist`, `routes-kept-on-expiry`, `renew-moves-subnet` (the
        /// network, `--scenario net`: leases created blind, routes kept after a peer's
        /// lease expired, renewals that move the subnet).
        #[arg(long, value_parser = BUGS)]
        bug: Option<String>,
        /// `kv`: clients on the key-value store; `sched`: the same, and members are
        /// machines with units submitted, changed and destroyed throughout; `render`: the
        /// KV clients, and every node renders their keys with an in-process confd;
        /// `stack`: all of it at once — apps with presence sidekicks, and every node
        /// rendering their upstream.
        #[arg(long, default_value = "kv", value_parser = SCENARIOS)]
        scenario: String,
        /// With `--scenario stack`: this many agent-only machines in every seed (`flotilla
        /// agent`s reaching the cluster over HTTP; 0 to 400), instead of each seed's
        /// draw of 0 to 2.
        #[arg(long)]
        agents: Option<usize>,
        /// Six more machines on the cluster network beside the scenario's workload (as
        /// `--scenario net` has), each on its backend, with the network's checks.
        #[arg(long)]
        with_network: bool,
    },
    /// Deterministic throughput: writes per simulated second with a modelled disk and
    /// network (the same number on every run), and the simulator's own speed.
    Bench {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Modelled fsync latency, ms.
        #[arg(long, default_value_t = 2)]
        sync_ms: u64,
        /// Modelled network round trip, ms.
        #[arg(long, default_value_t = 1)]
        rtt_ms: u64,
        /// Simulated seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Write the scenario of one seed as a seed file (to replay, edit or shrink it).
    Scenario {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long)]
        faults: Option<String>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "kv", value_parser = SCENARIOS)]
        scenario: String,
    },
    /// Run a seed file again and report what it does now.
    Replay {
        file: PathBuf,
        /// Write every client operation of the run to this JSON file.
        #[arg(long)]
        dump_history: Option<PathBuf>,
    },
    /// Decide a recorded history (`replay --dump-history`, or one recorded from a real
    /// cluster in the same JSON): each key's verdict, size, time and memory.
    Check {
        file: PathBuf,
        /// Configurations the search may hold at once per key before it says undecided.
        #[arg(long, default_value_t = flotilla_sim::linearizability::CONFIGS_MAX)]
        configs_max: usize,
    },
    /// Reduce a failing seed file's faults and operations while it still fails.
    Shrink {
        file: PathBuf,
        /// Output file (default: FILE with .shrunk.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_range(s: &str) -> Result<std::ops::Range<u64>> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("--seeds {s:?}: expected START..END"))?;
    let a: u64 = a
        .parse()
        .with_context(|| format!("--seeds: {a:?} is not a number"))?;
    let b: u64 = b
        .parse()
        .with_context(|| format!("--seeds: {b:?} is not a number"))?;
    if a >= b {
        bail!("--seeds {s}: empty range");
    }
    Ok(a..b)
}

fn parse_faults(f: Option<&str>) -> Result<Vec<&'static str>> {
    let Some(f) = f else {
        return Ok(ALL_FAULTS.to_vec());
    };
    f.split(',')
        .map(|k| {
            ALL_FAULTS
                .iter()
                .find(|a| **a == k.trim())
                .copied()
                .with_context(|| {
                    format!(
                        "--faults: unknown fault kind {k:?}; known: {}",
                        ALL_FAULTS.join(",")
                    )
                })
        })
        .collect()
}

pub fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    match Cli::parse().cmd {
        Cmd::Run {
            seeds,
            nodes,
            faults,
            out,
            jobs,
            bug,
            scenario,
            agents,
            with_network,
        } => {
            if !(3..=7).contains(&nodes) {
                bail!("--nodes {nodes}: use 3 to 7");
            }
            match agents {
                Some(n) if n > AGENTS_MAX => bail!("--agents {n}: use 0 to {AGENTS_MAX}"),
                Some(_) if scenario != "stack" => {
                    bail!("--agents: only the stack scenario has agent-only machines")
                }
                _ => {}
            }
            let range = parse_range(&seeds)?;
            let kinds = parse_faults(faults.as_deref())?;
            let jobs = jobs
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                })
                .max(1);
            // What a chunk's child process is told besides its seeds.
            let mut flags = vec![
                format!("--nodes={nodes}"),
                format!("--scenario={scenario}"),
                format!("--out={}", out.display()),
                format!("--jobs={jobs}"),
            ];
            flags.extend(faults.as_ref().map(|f| format!("--faults={f}")));
            flags.extend(bug.as_ref().map(|b| format!("--bug={b}")));
            flags.extend(agents.map(|n| format!("--agents={n}")));
            let plan = Plan {
                nodes,
                kinds,
                scenario,
                bug,
                agents,
                with_network,
            };
            if range.end - range.start > CHUNK_SEEDS && std::env::var_os(CHUNK_ENV).is_none() {
                return in_chunks(range, &flags);
            }
            campaign(range, plan, &out, jobs)
        }
        Cmd::Bench {
            nodes,
            clients,
            sync_ms,
            rtt_ms,
            seconds,
        } => {
            let s = Scenario::bench(nodes, clients, sync_ms, rtt_ms, seconds);
            let t0 = Instant::now();
            let r = run(&s);
            let wall = t0.elapsed().as_secs_f64();
            let end_ns = seconds * 1_000_000_000;
            let writes = r
                .history
                .iter()
                .filter(|h| {
                    h.key.starts_with("/bench/")
                        && h.outcome == flotilla_sim::history::Outcome::Ok(None)
                })
                .filter(|h| h.complete_ns.is_some_and(|t| t <= end_ns))
                .count();
            println!("{nodes} members, {clients} writers, sync {sync_ms} ms, rtt {rtt_ms} ms, {seconds} simulated s");
            println!(
                "writes per simulated second: {:.1}",
                writes as f64 / seconds as f64
            );
            println!("trace hash:                  {:016x}", r.trace_hash);
            println!(
                "simulator: {:.1} s wall, {:.0} simulated s per wall s",
                wall,
                r.sim_ms as f64 / 1000.0 / wall
            );
            if !r.clean() {
                bail!(
                    "the benchmark run did not pass every checker: {}",
                    r.findings()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Scenario {
            seed,
            nodes,
            faults,
            out,
            scenario,
        } => {
            let kinds = parse_faults(faults.as_deref())?;
            let plan = Plan {
                nodes,
                kinds,
                scenario,
                bug: None,
                agents: None,
                with_network: false,
            };
            let s = plan.scenario(seed);
            let file = SeedFile {
                scenario: s,
                violation: String::new(),
                trace_hash: String::new(),
                command: format!("scripts/chaos replay {}", out.display()),
            };
            file.save(&out)?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay { file, dump_history } => {
            let f = SeedFile::load(&file)?;
            let r = run(&f.scenario);
            if let Some(p) = dump_history {
                let text = serde_json::to_string_pretty(&r.history)?;
                std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            }
            println!(
                "seed {} trace {:016x} ({} ops: {} ok, {} compare-failed, {} not-found, {} unknown; {} simulated ms; faults {:?})",
                f.scenario.seed, r.trace_hash, r.ops, r.outcomes[0], r.outcomes[1], r.outcomes[2], r.outcomes[3], r.sim_ms, r.faults
            );
            if r.clean() {
                println!("passes (was: {})", f.violation.lines().next().unwrap_or(""));
                Ok(ExitCode::SUCCESS)
            } else {
                for v in &r.violations {
                    println!("VIOLATION: {v}");
                }
                for u in &r.undecided {
                    println!("UNDECIDED: {u}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Check { file, configs_max } => check_history(&file, configs_max),
        Cmd::Shrink { file, out } => {
            let f = SeedFile::load(&file)?;
            let first = run(&f.scenario);
            if first.violations.is_empty() {
                bail!("{} has no violation now; nothing to shrink", file.display());
            }
            let before = (
                f.scenario.schedule.len(),
                f.scenario.sched.as_ref().map_or(0, |l| l.ops.len()),
            );
            let small = shrink(&f.scenario, |c, failed| {
                eprintln!(
                    "  try {} faults, {} unit ops, {} ops/client: {}",
                    c.schedule.len(),
                    c.sched.as_ref().map_or(0, |l| l.ops.len()),
                    c.ops_per_client,
                    if failed { "still fails" } else { "passes" }
                );
            });
            let out = out.unwrap_or_else(|| file.with_extension("shrunk.json"));
            let r = run(&small);
            seed_file(&small, &r, &out).save(&out)?;
            println!(
                "shrunk {} → {} fault events, {} → {} unit operations; written to {}",
                before.0,
                small.schedule.len(),
                before.1,
                small.sched.as_ref().map_or(0, |l| l.ops.len()),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What every seed of a campaign is made of.
#[derive(Clone)]
struct Plan {
    nodes: usize,
    kinds: Vec<&'static str>,
    scenario: String,
    bug: Option<String>,
    /// Agent-only machines in every stack seed, if not each seed's own draw.
    agents: Option<usize>,
    /// Network machines beside any scenario's workload.
    with_network: bool,
}

/// Agent-only machines a seed may have: their fabric endpoints sit between the members'
/// and the clients' (500 and up, below 1,000).
const AGENTS_MAX: usize = 400;

impl Plan {
    fn scenario(&self, seed: u64) -> Scenario {
        let mut s = match self.scenario.as_str() {
            "sched" => Scenario::generate_sched(seed, self.nodes, &self.kinds),
            "stack" => Scenario::generate_stack(seed, self.nodes, &self.kinds),
            "net" => Scenario::generate_net(seed, self.nodes, &self.kinds),
            _ => Scenario::generate(seed, self.nodes, &self.kinds),
        };
        s.render |= self.scenario == "render";
        let bug = self.bug.as_deref();
        s.bug_skip_sync = bug == Some("skip-sync");
        s.bug_ignore_conflicts = bug == Some("ignore-conflicts");
        s.bug_no_fencing = bug == Some("no-fencing");
        s.bug_fence_late = bug == Some("fence-late");
        s.bug_drop_foreign_ttls = bug == Some("drop-foreign-ttls");
        s.bug_ack_on_propose = bug == Some("ack-on-propose");
        s.bug_reshuffle_on_takeover = bug == Some("reshuffle-on-takeover");
        s.bug_render_skip_sync = bug == Some("render-skip-sync");
        s.bug_presence_no_ttl = bug == Some("presence-no-ttl");
        s.bug_lease_no_prev_exist = bug == Some("lease-no-prev-exist");
        s.bug_routes_kept_on_expiry = bug == Some("routes-kept-on-expiry");
        s.bug_renew_moves_subnet = bug == Some("renew-moves-subnet");
        if let Some(n) = self.agents {
            s.agents = n;
        }
        if self.with_network {
            s.net_machines = s.net_machines.max(6);
        }
        s
    }
}

/// Seeds one process runs before a long campaign moves on to a fresh one: a finished
/// simulation does not give all its memory back (madsim keeps what its tasks held), so
/// a process that ran 10,000 seeds would hold tens of GiB.
const CHUNK_SEEDS: u64 = 500;
/// Set in a chunk's process: it runs its seeds itself and reports them as one JSON line.
const CHUNK_ENV: &str = "FLOTILLA_CHAOS_CHUNK";
/// The line a chunk's process reports its summary on.
const CHUNK_LINE: &str = "CHAOS_CHUNK_SUMMARY ";

/// Runs `range` as chunks, each in a child process of this program, and reports them
/// as one campaign.
fn in_chunks(range: std::ops::Range<u64>, flags: &[String]) -> Result<ExitCode> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("finding this program")?;
    let mut sum = Summary::default();
    let mut start = range.start;
    while start < range.end {
        let end = (start + CHUNK_SEEDS).min(range.end);
        let out = std::process::Command::new(&exe)
            .args(["run", &format!("--seeds={start}..{end}")])
            .args(flags)
            .env(CHUNK_ENV, "1")
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running seeds {start}..{end}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(CHUNK_LINE))
            .with_context(|| format!("seeds {start}..{end}: no summary ({})", out.status))?;
        let part: Summary = serde_json::from_str(line)?;
        eprintln!(
            "seeds {start}..{end}: {} violations, {} undecided ({:.0} s so far)",
            part.failures.len(),
            part.undecided.len(),
            started.elapsed().as_secs_f64()
        );
        sum.merge(part);
        start = end;
    }
    let jobs = flags
        .iter()
        .find_map(|f| f.strip_prefix("--jobs="))
        .and_then(|j| j.parse().ok())
        .unwrap_or(1);
    report(&sum, started, jobs)
}

fn campaign(
    range: std::ops::Range<u64>,
    plan: Plan,
    out: &std::path::Path,
    jobs: usize,
) -> Result<ExitCode> {
    let total = range.end - range.start;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds  {per_sec}  eta {eta}  {msg}")
            .expect("template"),
    );
    let started = Instant::now();
    let next = Arc::new(Mutex::new(range.start));
    let summary = Arc::new(Mutex::new(Summary::default()));
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, summary, bar, plan, out) = (
                next.clone(),
                summary.clone(),
                bar.clone(),
                plan.clone(),
                out.to_path_buf(),
            );
            std::thread::spawn(move || loop {
                let seed = {
                    let mut n = next.lock().expect("seed counter");
                    if *n >= range.end {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                let s = plan.scenario(seed);
                let r = run(&s);
                if !r.clean() {
                    let path = out.join(format!("seed-{seed}.json"));
                    let file = seed_file(&s, &r, &path);
                    if let Err(e) = file.save(&path) {
                        bar.println(format!("could not save {}: {e}", path.display()));
                    }
                    let what = if r.violations.is_empty() {
                        "UNDECIDED"
                    } else {
                        "FAILED"
                    };
                    bar.println(format!(
                        "seed {seed} {what}: {}\n  reproduce: {}",
                        r.findings().lines().next().unwrap_or(""),
                        file.command
                    ));
                }
                let mut sum = summary.lock().expect("summary");
                tally(&mut sum, &r);
                bar.set_message(format!("{} failed", sum.failures.len()));
                bar.inc(1);
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    bar.finish();
    let sum = summary.lock().expect("summary").clone();
    if std::env::var_os(CHUNK_ENV).is_some() {
        println!("{CHUNK_LINE}{}", serde_json::to_string(&sum)?);
        return Ok(ExitCode::SUCCESS);
    }
    report(&sum, started, jobs)
}

/// The campaign's summary, as a reader sees it; failure if any seed was not clean.
fn report(sum: &Summary, started: Instant, jobs: usize) -> Result<ExitCode> {
    let wall = started.elapsed().as_secs_f64();
    println!("seeds run:          {}", sum.seeds);
    println!(
        "seeds per second:   {:.2}  ({} jobs, {:.1} s wall)",
        sum.seeds as f64 / wall,
        jobs,
        wall
    );
    println!(
        "simulated s / wall s: {:.0}",
        sum.sim_ms as f64 / 1000.0 / wall
    );
    println!("client operations:  {}", sum.ops);
    println!("messages:           {}", sum.messages);
    let faults: Vec<String> = sum.faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("faults injected:    {}", faults.join(" "));
    println!("campaign trace hash: {:016x}", sum.campaign_hash());
    if std::env::var_os("CHAOS_SEED_HASHES").is_some() {
        for (seed, h) in &sum.traces {
            println!("  seed {seed}: trace {h:016x}");
        }
    }
    println!("violations:         {}", sum.failures.len());
    for (seed, v) in &sum.failures {
        println!("  seed {seed}: {}", v.lines().next().unwrap_or(""));
    }
    println!("undecided:          {}", sum.undecided.len());
    for (seed, u) in &sum.undecided {
        println!("  seed {seed}: {}", u.lines().next().unwrap_or(""));
    }
    Ok(if sum.failures.is_empty() && sum.undecided.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `chaos check`: every key of a recorded history through the checker, timed.
fn check_history(file: &std::path::Path, configs_max: usize) -> Result<ExitCode> {
    use flotilla_sim::history::{Op, Outcome, Record};
    use flotilla_sim::linearizability::{search_key, Verdict};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let records: Vec<Record> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a history (a JSON list of records)", file.display()))?;
    let mut by_key: std::collections::BTreeMap<&str, Vec<&Record>> = Default::default();
    for r in &records {
        let unanswered_read = matches!(r.op, Op::Get { .. }) && r.outcome == Outcome::Unknown;
        let local = matches!(r.op, Op::Get { quorum: false });
        if !(local || unanswered_read || r.outcome == Outcome::Failed) {
            by_key.entry(&r.key).or_default().push(r);
        }
    }
    let mut bad = 0;
    let all = Instant::now();
    for (key, ops) in &by_key {
        let t = Instant::now();
        let s = search_key(ops, configs_max);
        let unanswered = ops.iter().filter(|r| r.outcome == Outcome::Unknown).count();
        let verdict = match &s.verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::Violation(v) => format!("VIOLATION\n{v}"),
            Verdict::Undecided(u) => format!("UNDECIDED: {u}"),
        };
        bad += usize::from(s.verdict != Verdict::Linearizable);
        println!(
            "{key}: {} operations ({unanswered} unanswered), {:.3} s, at most {} configurations held: {verdict}",
            ops.len(),
            t.elapsed().as_secs_f64(),
            s.peak_configs
        );
    }
    println!(
        "{} operations on {} keys in {:.3} s; peak resident memory {}",
        records.len(),
        by_key.len(),
        all.elapsed().as_secs_f64(),
        peak_rss().unwrap_or_else(|| "unknown".into())
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// This process's peak resident set (Linux's VmHWM).
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.trim_start_matches("VmHWM:").trim().to_string())
}
