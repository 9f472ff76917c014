//! The trace hash: every observable step of a run folded into one number. Same seed,
//! same hash — the determinism check compares these.

#[derive(Debug, Clone)]
pub struct Trace {
    hash: u64,
    pub events: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            events: 0,
        }
    }
}

impl Trace {
    pub fn record(&mut self, line: &str) {
        self.events += 1;
        // `FLOTILLA_SIM_TRACE=1 scripts/chaos replay FILE` shows the run step by step.
        if std::env::var_os("FLOTILLA_SIM_TRACE").is_some() {
            eprintln!("{line}");
        }
        for b in line.as_bytes().iter().chain(b"\n") {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }
}
