//! Query strings and form bodies of `/v2/keys` requests: parsed for every method, never a
//! panic; the input is `query \0 body`.
#![no_main]
use flotilla::api::params::{KeyRequest, Params};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (q, body) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let query = std::str::from_utf8(q).ok();
    let p = Params::parse(query, Some(body));
    for m in [
        http::Method::GET,
        http::Method::PUT,
        http::Method::POST,
        http::Method::DELETE,
    ] {
        let _ = KeyRequest::parse(&p, &m);
    }
});
