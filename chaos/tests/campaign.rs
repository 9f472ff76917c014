//! The simulator's own tests (run by `scripts/test-sim`, with `--cfg madsim`): a sample of
//! seeds through every checker, determinism, the regression corpus, the planted bug, and
//! shrinking. A failure writes a seed file and prints the command that reproduces it.
#![cfg(madsim)]

use flotilla_chaos::{seed_file, shrink, tally, SeedFile, Summary};
use flotilla_sim::scenario::{Scenario, ALL_FAULTS};
use flotilla_sim::world::{run, Report};
use std::path::PathBuf;

fn failure(s: &Scenario, r: &Report) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sim-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("seed-{}.json", s.seed));
    let file = seed_file(s, r, &path);
    let _ = file.save(&path);
    format!(
        "seed {} failed:\n{}\nreproduce: {}",
        s.seed,
        r.findings(),
        file.command
    )
}

fn clean_run(seeds: std::ops::Range<u64>, nodes: usize) {
    for seed in seeds {
        let s = Scenario::generate(seed, nodes, ALL_FAULTS);
        let r = run(&s);
        assert!(r.clean(), "{}", failure(&s, &r));
        assert!(r.ops > 0, "seed {seed} ran no client operations");
    }
}

#[test]
fn sample_of_three_node_seeds_passes_every_checker() {
    clean_run(0..200, 3);
}

#[test]
fn sample_of_five_node_seeds_passes_every_checker() {
    clean_run(1_000..1_060, 5);
}

#[test]
fn same_seed_gives_the_same_trace_hash() {
    for (seed, nodes) in [(1, 3), (17, 3), (117, 3), (1_001, 5)] {
        let s = Scenario::generate(seed, nodes, ALL_FAULTS);
        let (a, b) = (run(&s), run(&s));
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.ops, b.ops);
    }
    let a = run(&Scenario::generate(1, 3, ALL_FAULTS));
    let b = run(&Scenario::generate(2, 3, ALL_FAULTS));
    assert_ne!(a.trace_hash, b.trace_hash, "different seeds should differ");
}

#[test]
fn regression_corpus_replays_clean() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("chaos/seeds exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus is empty");
    for f in files {
        let seed = SeedFile::load(&f).unwrap();
        let r = run(&seed.scenario);
        assert!(
            r.clean(),
            "{} fails again:\n{}\nreproduce: scripts/chaos replay {}",
            f.display(),
            r.findings(),
            f.display()
        );
    }
}

/// A planted bug (the Raft log is never synced, so a crash loses acknowledged entries)
/// must be found within a bounded number of seeds.
#[test]
fn planted_bug_is_found_within_ten_seeds() {
    let found = (0..10).find(|seed| {
        let mut s = Scenario::generate(*seed, 3, &["crash"]);
        s.bug_skip_sync = true;
        !run(&s).violations.is_empty()
    });
    assert!(
        found.is_some(),
        "the skip-sync bug survived 10 seeds of crashes"
    );
}

#[test]
fn shrinking_keeps_the_failure_and_removes_faults() {
    use flotilla_sim::scenario::{Event, Fault};
    let mut s = (0..20)
        .map(|seed| {
            let mut s = Scenario::generate(seed, 3, &["crash", "partition", "pause"]);
            s.bug_skip_sync = true;
            s
        })
        .find(|s| !run(s).violations.is_empty())
        .expect("the planted bug fails some seed");
    // Pad with events that cannot matter; the shrinker must remove them.
    for i in 0..6 {
        s.schedule.push(Event {
            at_ms: 1_000 + i * 2_000,
            fault: Fault::ClockJump {
                node: 0,
                delta_ms: 0,
            },
        });
    }
    s.schedule.sort_by_key(|e| e.at_ms);
    let before = s.schedule.len();
    assert!(
        !run(&s).violations.is_empty(),
        "padding changed the outcome"
    );
    let small = shrink(&s, |_, _| {});
    assert!(
        !run(&small).violations.is_empty(),
        "the shrunk scenario must still fail"
    );
    assert!(
        small.schedule.len() < before,
        "shrinking removed nothing ({before} faults)"
    );
    let padding_left = small
        .schedule
        .iter()
        .filter(|e| {
            e.fault
                == Fault::ClockJump {
                    node: 0,
                    delta_ms: 0,
                }
        })
        .count();
    assert!(padding_left < 6, "irrelevant events survived shrinking");
}

/// Scheduling seeds (members are machines; units submitted, changed and destroyed under
/// faults): every committed schedule keeps the invariants and converges after healing.
#[test]
fn sample_of_scheduling_seeds_passes_every_checker() {
    for (seeds, nodes) in [(0..60, 3), (20_000..20_015, 5)] {
        for seed in seeds {
            let s = Scenario::generate_sched(seed, nodes, ALL_FAULTS);
            let r = run(&s);
            assert!(r.clean(), "{}", failure(&s, &r));
        }
    }
}

#[test]
fn scheduling_seeds_are_deterministic() {
    let s = Scenario::generate_sched(22, 3, ALL_FAULTS);
    let alone = run(&s).trace_hash;
    // A seed replays alike whatever ran before it in the process (tokio's watch channel
    // once broke this: its waiters' wake order came from a process-wide counter).
    run(&Scenario::generate_sched(21, 3, ALL_FAULTS));
    assert_eq!(run(&s).trace_hash, alone, "seed 22 (sched) after seed 21");
}

/// The scheduler's planted bug (Conflicts ignored) is caught by the schedule checker.
#[test]
fn ignore_conflicts_bug_is_found_within_five_seeds() {
    let found = (0..5).find_map(|seed| {
        let mut s = Scenario::generate_sched(seed, 3, ALL_FAULTS);
        s.bug_ignore_conflicts = true;
        run(&s)
            .violations
            .into_iter()
            .find(|v| v.contains("conflict"))
    });
    assert!(
        found.is_some(),
        "the ignore-conflicts bug survived 5 scheduling seeds"
    );
}

/// The first of `seeds` (KV scenario, three members) where `plant` yields a violation
/// that says `says`.
fn kv_bug_found(seeds: std::ops::Range<u64>, plant: Plant, says: &str) -> Option<u64> {
    seeds.into_iter().find(|seed| {
        let mut s = Scenario::generate(*seed, 3, ALL_FAULTS);
        plant(&mut s);
        run(&s).violations.iter().any(|v| v.contains(says))
    })
}

/// The replica-digest check has teeth: replicas that apply one entry differently are
/// found at the first sample.
#[test]
fn the_digest_check_finds_replicas_that_apply_differently_within_five_seeds() {
    let seed = kv_bug_found(0..5, |s| s.bug_drop_foreign_ttls = true, "replicas diverge");
    assert!(seed.is_some(), "--bug drop-foreign-ttls survived 5 seeds");
}

/// The acknowledged-write check has teeth of its own: writes answered before they are
/// committed are lost when their leader goes, and the final reads miss them.
#[test]
fn the_acknowledged_write_check_finds_lost_writes_within_a_hundred_seeds() {
    let plant: Plant = |s| s.bug_ack_on_propose = true;
    // Since a restarted member no longer re-publishes itself, the first seed whose
    // final reads miss an early-acknowledged write is 133 (the linearizability check
    // catches this bug on every seed); 100 seeds from 100 keep the test bounded.
    let seed = kv_bug_found(100..200, plant, "acknowledged write lost");
    assert!(
        seed.is_some(),
        "no acknowledged write was found lost in 100 ack-on-propose seeds"
    );
}

/// The agent's planted bug (no fencing on a lost lease) is caught by the lease-bound
/// checker: a unit runs on two live machines for longer than fencing allows.
#[test]
fn no_fencing_bug_is_found_within_twenty_seeds() {
    let found = (0..20).find_map(|seed| {
        let mut s = Scenario::generate_sched(seed, 3, ALL_FAULTS);
        s.bug_no_fencing = true;
        run(&s)
            .violations
            .into_iter()
            .find(|v| v.contains("at once for"))
    });
    assert!(
        found.is_some(),
        "the no-fencing bug survived 20 scheduling seeds"
    );
}

fn render_scenario(seed: u64, nodes: usize) -> Scenario {
    let mut s = Scenario::generate(seed, nodes, ALL_FAULTS);
    s.render = true;
    s
}

/// Renderer seeds (every node runs confd over the clients' keys, under faults): writes are
/// whole and checked, reloads follow changed writes, and every destination converges to
/// the template over the final state after healing.
#[test]
fn sample_of_render_seeds_passes_every_checker() {
    let mut reloads = 0;
    for (seeds, nodes) in [(0..60, 3), (30_000..30_015, 5)] {
        for seed in seeds {
            let s = render_scenario(seed, nodes);
            let r = run(&s);
            assert!(r.clean(), "{}", failure(&s, &r));
            reloads += r.faults.get("render-reload").copied().unwrap_or(0);
        }
    }
    assert!(
        reloads > 0,
        "no renderer ever reloaded: the workload did not reach it"
    );
}

#[test]
fn render_seeds_are_deterministic() {
    let s = render_scenario(7, 3);
    let alone = run(&s).trace_hash;
    run(&render_scenario(6, 3));
    assert_eq!(run(&s).trace_hash, alone, "seed 7 (render) after seed 6");
}

/// Whole-stack seeds (scheduler, agents, presence sidekicks, renderers, under every fault):
/// every checker of every layer, and the leader-kill probe at the end of each seed.
#[test]
fn sample_of_stack_seeds_passes_every_checker() {
    let (mut probes, mut reloads) = (0, 0);
    for (seeds, nodes) in [(0..40, 3), (40_000..40_010, 5)] {
        for seed in seeds {
            let s = Scenario::generate_stack(seed, nodes, ALL_FAULTS);
            let r = run(&s);
            assert!(r.clean(), "{}", failure(&s, &r));
            probes += r.faults.get("stack-probe").copied().unwrap_or(0);
            reloads += r.faults.get("render-reload").copied().unwrap_or(0);
        }
    }
    // Every seed ends with the probe (stack seeds draw no corruption, so a majority
    // always survives the leader).
    assert_eq!(
        probes, 50,
        "the leader-kill probe ran in only {probes} of 50 seeds"
    );
    assert!(reloads > 0, "no upstream was ever reloaded");
}

/// Agent-only machines (`flotilla agent`, reaching the store through `HttpKv` over the
/// fabric) take part in placement, fencing and the probe, and every checker still holds.
#[test]
fn stack_seeds_with_agent_only_machines_pass_every_checker() {
    let (mut requests, mut running) = (0, 0);
    for seed in 100..110 {
        let mut s = Scenario::generate_stack(seed, 3, ALL_FAULTS);
        s.agents = 2;
        let r = run(&s);
        assert!(r.clean(), "{}", failure(&s, &r));
        requests += r.faults.get("agent-request").copied().unwrap_or(0);
        running += r.faults.get("agent-only-running").copied().unwrap_or(0);
    }
    assert!(running > 0, "no agent-only machine ever ran a unit");
    assert!(requests > 0, "no agent-only machine ever reached the store");
}

/// `chaos run --jobs N` (and its child processes) split and order the seeds as they
/// please; the campaign hash is the same whatever they did.
#[test]
fn the_campaign_hash_does_not_depend_on_how_the_seeds_were_split_or_ordered() {
    let report = |seed| run(&Scenario::generate(seed, 3, ALL_FAULTS));
    let mut in_order = Summary::default();
    for seed in 0..6 {
        tally(&mut in_order, &report(seed));
    }
    let (mut even, mut odd) = (Summary::default(), Summary::default());
    for seed in (0..6).rev() {
        let part = if seed % 2 == 0 { &mut even } else { &mut odd };
        tally(part, &report(seed));
    }
    odd.merge(even);
    assert_eq!(odd.seeds, 6);
    assert_eq!(in_order.campaign_hash(), odd.campaign_hash());
    // And it is a hash of the seeds' traces: another seed set gives another.
    let mut other = Summary::default();
    tally(&mut other, &report(6));
    assert_ne!(other.campaign_hash(), in_order.campaign_hash());
}

#[test]
fn stack_seeds_are_deterministic() {
    let s = Scenario::generate_stack(11, 3, ALL_FAULTS);
    let alone = run(&s).trace_hash;
    run(&Scenario::generate_stack(10, 3, ALL_FAULTS));
    assert_eq!(run(&s).trace_hash, alone, "seed 11 (stack) after seed 10");
}

/// The first of `seeds` on which the planted bug is caught, with its violation.
fn stack_bug_found(seeds: std::ops::Range<u64>, plant: impl Fn(&mut Scenario)) -> Option<String> {
    seeds.into_iter().find_map(|seed| {
        let mut s = Scenario::generate_stack(seed, 3, ALL_FAULTS);
        plant(&mut s);
        run(&s).violations.into_iter().next()
    })
}

/// Each planted bug across the layers, and what its violation must say.
type Plant = fn(&mut Scenario);
// `ack-on-propose` is the store's bug and its check the store's (the kv scenario's
// acknowledged-write check): it answers with no event, which the HTTP API rightly refuses
// to serve, so in the stack it would be found by a panic rather than by its check.
const STACK_BUGS: [(&str, Plant, &[&str]); 8] = [
    (
        "skip-sync",
        |s| s.bug_skip_sync = true,
        &[
            "acknowledged write lost",
            "linearizab",
            "diverge",
            "refused",
            // raft-rs's own assertion: a member acknowledged entries it then lost.
            "out of range",
            // A member that lost its unsynced log stays behind the others for good.
            "did not converge",
        ],
    ),
    (
        "drop-foreign-ttls",
        |s| s.bug_drop_foreign_ttls = true,
        &["replicas diverge", "outlived"],
    ),
    (
        "reshuffle-on-takeover",
        |s| s.bug_reshuffle_on_takeover = true,
        &["the leader change restarted"],
    ),
    (
        "no-fencing",
        |s| s.bug_no_fencing = true,
        &["key expired while it still ran"],
    ),
    (
        "fence-late",
        |s| s.bug_fence_late = true,
        &["key expired while it still ran"],
    ),
    (
        "render-skip-sync",
        |s| s.bug_render_skip_sync = true,
        &["power loss"],
    ),
    (
        "presence-no-ttl",
        |s| s.bug_presence_no_ttl = true,
        &["outlived", "no sidekick announces it"],
    ),
    (
        "ignore-conflicts",
        |s| s.bug_ignore_conflicts = true,
        &["conflict"],
    ),
];

#[test]
fn every_stack_planted_bug_is_found_within_eight_seeds() {
    for (bug, plant, says) in STACK_BUGS {
        let v = stack_bug_found(0..8, plant);
        let v = v.unwrap_or_else(|| panic!("--bug {bug} survived 8 stack seeds"));
        assert!(says.iter().any(|w| v.contains(w)), "--bug {bug}: {v}");
    }
}

#[test]
fn stack_seeds_shrink_their_unit_operations() {
    let failing = (0..10).find_map(|seed| {
        let mut s = Scenario::generate_stack(seed, 3, ALL_FAULTS);
        s.bug_presence_no_ttl = true;
        (!run(&s).violations.is_empty()).then_some(s)
    });
    let s = failing.expect("the presence-no-ttl bug survived 10 stack seeds");
    let ops = |s: &Scenario| s.sched.as_ref().map_or(0, |l| l.ops.len());
    let small = shrink(&s, |_, _| {});
    assert!(!run(&small).violations.is_empty(), "the shrunk seed passes");
    assert!(
        ops(&small) < ops(&s) && small.schedule.len() <= s.schedule.len(),
        "nothing shrunk: {} → {} unit ops",
        ops(&s),
        ops(&small)
    );
}

#[test]
fn network_seeds_pass_every_checker() {
    for seed in 0..30 {
        let s = Scenario::generate_net(seed, 3, ALL_FAULTS);
        let r = run(&s);
        assert!(r.clean(), "{}", failure(&s, &r));
    }
}

#[test]
fn network_planted_bugs_are_found_within_a_few_seeds() {
    type Plant = fn(&mut Scenario);
    let bugs: [(&str, Plant, &str, u64); 3] = [
        (
            "routes-kept-on-expiry",
            |s| s.bug_routes_kept_on_expiry = true,
            "tables differ from the live leases",
            5,
        ),
        (
            "renew-moves-subnet",
            |s| s.bug_renew_moves_subnet = true,
            "stayed free",
            5,
        ),
        // Two machines must draw one subnet at once: about one seed in seven does.
        (
            "lease-no-prev-exist",
            |s| s.bug_lease_no_prev_exist = true,
            "replaced another machine's",
            12,
        ),
    ];
    for (bug, plant, says, seeds) in bugs {
        let found = (0..seeds).find_map(|seed| {
            let mut s = Scenario::generate_net(seed, 3, ALL_FAULTS);
            plant(&mut s);
            run(&s).violations.into_iter().next()
        });
        let v = found.unwrap_or_else(|| panic!("--bug {bug} survived {seeds} network seeds"));
        assert!(v.contains(says), "--bug {bug}: {v}");
    }
}
