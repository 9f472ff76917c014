//! Snapshot files: a checksummed record holding the state machine. Unsealing and decoding
//! any bytes is an error or a state, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flotilla::raft::machine::Machine::decode(data);
    if let Ok(inner) = flotilla_shims::disk::unseal("snap", "snapshot", data) {
        let _ = flotilla::raft::machine::Machine::decode(&inner);
    }
});
