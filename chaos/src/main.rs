//! `chaos`: seeded campaigns against the simulated cluster. Build and run it through
//! `scripts/chaos` (it needs `--cfg madsim`).

#[cfg(madsim)]
mod cli;

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    // `FLOTILLA_LOG=flotilla::agent=debug scripts/chaos replay FILE`: the nodes' own
    // logs, stamped with simulated nanoseconds as the trace is.
    if let Ok(filter) = std::env::var("FLOTILLA_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(SimTime)
            .with_writer(std::io::stderr)
            .init();
    }
    cli::main()
}

/// The simulated clock, for log lines written inside a run.
#[cfg(madsim)]
struct SimTime;

#[cfg(madsim)]
impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", flotilla_sim::env::elapsed().as_nanos())
    }
}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!("chaos: this binary runs the deterministic simulator and must be built with --cfg madsim; use scripts/chaos");
    std::process::ExitCode::from(2)
}
