//! Chaos campaigns over the simulated cluster.
//!
//! # Layout
//! - [`SeedFile`]: a failing seed as a small JSON file (scenario, violation, the command
//!   that reproduces it); `chaos/seeds/` holds fixed ones, replayed by the test suite.
//! - [`campaign`]: run many seeds, collect a [`Summary`].
//! - [`shrink`]: delete fault events and operations while the run still fails.
//!
//! Everything here runs only with `--cfg madsim` (see `scripts/chaos`).

use flotilla_sim::scenario::Scenario;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedFile {
    pub scenario: Scenario,
    pub violation: String,
    pub trace_hash: String,
    pub command: String,
}

impl SeedFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading seed file {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("seed file {} is not valid: {e}", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub seeds: u64,
    pub failures: Vec<(u64, String)>,
    /// Seeds whose history the checker could not decide: counted apart from failures,
    /// and never a pass.
    pub undecided: Vec<(u64, String)>,
    pub sim_ms: u64,
    pub ops: u64,
    pub faults: BTreeMap<String, u64>,
    pub messages: u64,
    /// Each seed's trace hash.
    pub traces: BTreeMap<u64, u64>,
}

impl Summary {
    /// Folds another part of the campaign into this one.
    pub fn merge(&mut self, other: Summary) {
        self.seeds += other.seeds;
        self.failures.extend(other.failures);
        self.undecided.extend(other.undecided);
        self.sim_ms += other.sim_ms;
        self.ops += other.ops;
        for (k, v) in other.faults {
            *self.faults.entry(k).or_default() += v;
        }
        self.messages += other.messages;
        self.traces.extend(other.traces);
    }

    /// One hash over every seed's trace hash, in seed order: the same seeds give the same
    /// campaign hash, whatever order the jobs ran them in.
    pub fn campaign_hash(&self) -> u64 {
        let mut t = flotilla_sim::trace::Trace::default();
        for (seed, h) in &self.traces {
            t.record(&format!("{seed} {h:016x}"));
        }
        t.hash()
    }
}

#[cfg(madsim)]
pub use sim::*;

#[cfg(madsim)]
mod sim {
    use super::*;
    use flotilla_sim::world::{run, Report};

    /// Folds one run into the summary.
    pub fn tally(sum: &mut Summary, r: &Report) {
        sum.seeds += 1;
        sum.sim_ms += r.sim_ms;
        sum.ops += r.ops as u64;
        sum.messages += r.messages.0;
        sum.traces.insert(r.seed, r.trace_hash);
        for (k, v) in &r.faults {
            *sum.faults.entry(k.clone()).or_default() += v;
        }
        if let Some(v) = r.violations.first() {
            sum.failures.push((r.seed, v.clone()));
        } else if let Some(u) = r.undecided.first() {
            sum.undecided.push((r.seed, u.clone()));
        }
    }

    /// A seed file for a failed run.
    pub fn seed_file(s: &Scenario, r: &Report, path: &Path) -> SeedFile {
        SeedFile {
            scenario: s.clone(),
            violation: r.findings(),
            trace_hash: format!("{:016x}", r.trace_hash),
            command: format!("scripts/chaos replay {}", path.display()),
        }
    }

    /// Greedily deletes schedule events (halves, then one at a time) and trims the
    /// workload while the scenario still fails. Returns the smallest failing scenario.
    pub fn shrink(s: &Scenario, mut progress: impl FnMut(&Scenario, bool)) -> Scenario {
        let fails = |c: &Scenario| !run(c).violations.is_empty();
        let mut best = s.clone();
        // Fault events first, then the unit operations of sched and stack seeds.
        best = ddmin(best, |c| &mut c.schedule, &fails, &mut progress);
        if best.sched.is_some() {
            best = ddmin(
                best,
                |c| &mut c.sched.as_mut().expect("sched load").ops,
                &fails,
                &mut progress,
            );
        }
        for ops in [best.ops_per_client / 2, best.ops_per_client / 4, 20] {
            if ops == 0 || ops >= best.ops_per_client {
                continue;
            }
            let cand = Scenario {
                ops_per_client: ops,
                ..best.clone()
            };
            let f = fails(&cand);
            progress(&cand, f);
            if f {
                best = cand;
            }
        }
        best
    }

    /// Deletes chunks of the list `items` picks out of the scenario, halving the chunk
    /// size, while the run still fails.
    fn ddmin<T: Clone>(
        mut best: Scenario,
        items: impl Fn(&mut Scenario) -> &mut Vec<T>,
        fails: &impl Fn(&Scenario) -> bool,
        progress: &mut impl FnMut(&Scenario, bool),
    ) -> Scenario {
        let mut chunk = items(&mut best).len().div_ceil(2).max(1);
        while !items(&mut best).is_empty() {
            let mut i = 0;
            let mut shrunk = false;
            while i < items(&mut best).len() {
                let mut cand = best.clone();
                let list = items(&mut cand);
                let end = (i + chunk).min(list.len());
                list.drain(i..end);
                let f = fails(&cand);
                progress(&cand, f);
                if f {
                    best = cand;
                    shrunk = true;
                } else {
                    i += chunk;
                }
            }
            if !shrunk {
                if chunk == 1 {
                    break;
                }
                chunk /= 2;
            }
        }
        best
    }
}
