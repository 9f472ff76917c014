//! flotilla's deterministic simulated world (built with `--cfg madsim`).
//!
//! # Layout
//! Filled in by the simulator issue: the runtime seam on madsim, the cluster harness,
//! fault injection, the history recorder and the checkers.
