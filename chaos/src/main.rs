//! `chaos`: seeded campaigns against the simulated cluster. Build and run it through
//! `scripts/chaos` (it needs `--cfg madsim`).

#[cfg(madsim)]
mod cli;

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!("chaos: this binary runs the deterministic simulator and must be built with --cfg madsim; use scripts/chaos");
    std::process::ExitCode::from(2)
}
