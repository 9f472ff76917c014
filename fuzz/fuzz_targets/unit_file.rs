//! Unit files as fleet reads them: parsing never panics, and a parsed file hashes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(opts) = flotilla::unitfile::file::parse(text) {
        let _ = flotilla::unitfile::file::hash(&opts);
    }
});
