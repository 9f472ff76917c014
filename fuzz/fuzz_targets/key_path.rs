//! Keys as paths: cleaning is idempotent, always absolute, and a store takes any cleaned
//! key (set, get, delete) without panicking.
#![no_main]
use flotilla::kv::path::clean;
use flotilla::kv::{Command, Precondition, Store};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    let c = clean(key);
    assert!(c.starts_with('/'), "{key:?} cleaned to {c:?}");
    assert_eq!(clean(&c), c, "cleaning {key:?} is not idempotent");
    let mut s = Store::default();
    let put = Command::Put {
        key: key.to_string(),
        value: "v".into(),
        dir: false,
        expire_ms: None,
        refresh: false,
        prev: Precondition::default(),
    };
    let _ = s.apply(&put);
    let _ = s.get(key, true);
    let del = Command::Delete {
        key: key.to_string(),
        dir: true,
        recursive: true,
        prev: Precondition::default(),
    };
    let _ = s.apply(&del);
});
