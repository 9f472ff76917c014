//! The overview's charts: a node samples its own counters on a timer into a bounded ring.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// How often a sample is taken.
pub const SAMPLE_EVERY_MS: u64 = 5_000;
/// Ten minutes of samples.
pub const SAMPLES_MAX: usize = 120;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Wall time of the sample, ms since the epoch.
    pub at_ms: u64,
    /// Entries this node applied per second since the previous sample: the cluster's
    /// committed writes (every member applies every entry).
    pub writes_per_s: f64,
    /// Units by what their machines report (`active`, `failed`, …), plus `unplaced`.
    pub units: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
    /// `(at_ms, applied)` of the previous sample.
    last: Option<(u64, u64)>,
}

impl History {
    /// Records the counters as they are at `at_ms`. The first call only sets the base.
    pub fn record(&mut self, at_ms: u64, applied: u64, units: BTreeMap<String, u64>) {
        if let Some((t0, a0)) = self.last {
            let secs = at_ms.saturating_sub(t0) as f64 / 1000.0;
            let writes_per_s = if secs > 0.0 {
                applied.saturating_sub(a0) as f64 / secs
            } else {
                0.0
            };
            if self.samples.len() == SAMPLES_MAX {
                self.samples.pop_front();
            }
            self.samples.push_back(Sample {
                at_ms,
                writes_per_s,
                units,
            });
        }
        self.last = Some((at_ms, applied));
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_differences_and_the_ring_is_bounded() {
        let mut h = History::default();
        h.record(1_000, 100, BTreeMap::new());
        assert!(h.samples().is_empty());
        h.record(6_000, 600, BTreeMap::from([("active".into(), 3)]));
        let s = h.samples();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].writes_per_s, 100.0);
        assert_eq!(s[0].units["active"], 3);
        for i in 0..(SAMPLES_MAX as u64 + 10) {
            h.record(7_000 + i * 5_000, 600 + i, BTreeMap::new());
        }
        let s = h.samples();
        assert_eq!(s.len(), SAMPLES_MAX);
        assert_eq!(s.last().map(|x| x.writes_per_s), Some(0.2));
    }
}
