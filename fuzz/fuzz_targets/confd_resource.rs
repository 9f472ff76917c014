//! confd template resources (TOML): a clear error or a resource, never a panic.
#![no_main]
use flotilla_shims::host::FixedHost;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = flotilla::render::resource::parse("r.toml", text, "/t", None, &FixedHost::default());
});
