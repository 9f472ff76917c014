//! Cross-site request refusal: a browser on another site must not change this cluster.
//!
//! etcd answers a state-changing request from any web page the operator's browser has
//! open (its `--cors` only decides whether that page may *read* the answer). flotilla
//! refuses a `PUT`, `POST`, `DELETE` or `PATCH` that a browser marks as coming from
//! another origin — by `Origin`, or by `Sec-Fetch-Site` when no `Origin` came — unless
//! the operator listed that origin in `--cors` (or gave `--cors=*`). Clients that are
//! not browsers (etcdctl, fleetctl, curl, agents) send neither header and are unaffected.

use super::cors::Cors;
use http::{HeaderMap, Method};

/// Why a request was refused, for the 403's message.
pub fn refusal(method: &Method, headers: &HeaderMap, cors: &Cors) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match text("origin") {
        Some(origin) if same_origin(origin, text("host")) => None,
        Some(origin) if cors.explicitly_allows(origin) => None,
        Some(origin) => Some(format!(
            "cross-site request refused: origin {origin:?} may not change this cluster (list it in --cors to allow it)"
        )),
        None => match text("sec-fetch-site") {
            Some("cross-site" | "same-site") => {
                Some("cross-site request refused: the browser says it came from another site".into())
            }
            _ => None,
        },
    }
}

/// `scheme://host[:port]` names the authority the request was sent to.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn writes_from_another_origin_are_refused_unless_listed() {
        let default = Cors::default();
        let listed = Cors::parse("http://ops.example:8080").expect("origin list");
        let star = Cors::parse("*").expect("star");
        let put = Method::PUT;
        let cross = headers(&[("origin", "http://evil.example"), ("host", "10.0.0.1:2379")]);
        assert!(refusal(&put, &cross, &default).is_some());
        assert!(refusal(&put, &cross, &listed).is_some());
        assert!(refusal(&put, &cross, &star).is_none());
        let ops = headers(&[
            ("origin", "http://ops.example:8080"),
            ("host", "10.0.0.1:2379"),
        ]);
        assert!(refusal(&Method::DELETE, &ops, &listed).is_none());
        assert!(refusal(&Method::DELETE, &ops, &default).is_some());
        // The dashboard itself: same scheme-less authority as the Host it was sent to.
        let same = headers(&[
            ("origin", "http://10.0.0.1:2379"),
            ("host", "10.0.0.1:2379"),
        ]);
        assert!(refusal(&Method::POST, &same, &default).is_none());
        // Reads are never refused here; non-browser clients send no such headers.
        assert!(refusal(&Method::GET, &cross, &default).is_none());
        assert!(refusal(&put, &headers(&[("host", "x:1")]), &default).is_none());
        let fetch = headers(&[("sec-fetch-site", "cross-site"), ("host", "x:1")]);
        assert!(refusal(&Method::PATCH, &fetch, &default).is_some());
        let typed = headers(&[("sec-fetch-site", "none"), ("host", "x:1")]);
        assert!(refusal(&Method::PATCH, &typed, &default).is_none());
        let null = headers(&[("origin", "null"), ("host", "x:1")]);
        assert!(refusal(&put, &null, &default).is_some());
    }
}
