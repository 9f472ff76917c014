//! `chaos`: seeded campaigns against the simulated cluster (see `flotilla-sim`).
fn main() {
    eprintln!("chaos: the campaign runner is not built yet; see the simulator issue");
    std::process::exit(2);
}
