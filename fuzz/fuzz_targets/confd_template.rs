//! confd templates (Go dialect, and handlebars when the input starts with `#hbs\n`):
//! rendering any source over a small store is an error or a string, never a panic.
#![no_main]
use flotilla::render::funcs::Ctx;
use flotilla::render::memkv::MemKv;
use flotilla_shims::host::FixedHost;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let mut kv = MemKv::new();
    kv.insert("/a/b".into(), "1".into());
    kv.insert("/a/c".into(), "two".into());
    let ctx = Arc::new(Ctx {
        kv: Arc::new(kv),
        host: Arc::new(FixedHost::default()),
        now_ms: 0,
    });
    let (name, src) = match src.strip_prefix("#hbs\n") {
        Some(rest) => ("t.hbs", rest),
        None => ("t.tmpl", src),
    };
    let _ = flotilla::render::template::render(name, src, ctx);
});
