//! CORS as etcd 3.4's `--cors`: a list of origins allowed to read responses from a
//! browser. etcd's default (no flag, or an empty list) and `*` allow every origin; then
//! every response carries `Access-Control-Allow-Origin: *`. Otherwise a request whose
//! `Origin` is on the list gets that origin back, and others get no CORS headers. As in
//! etcd, the headers go on every path of the client port, and `OPTIONS` on any path is a
//! preflight answered 200 with an empty body.

use http::{HeaderMap, HeaderValue};
use std::collections::BTreeSet;

const ALLOW_METHODS: &str = "POST, GET, OPTIONS, PUT, DELETE";
const ALLOW_HEADERS: &str = "accept, content-type, authorization";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cors {
    /// Every origin may read (etcd's default: no flag or an empty list); writes from
    /// other origins are refused (see [`super::csrf`]).
    #[default]
    Any,
    /// `*` in the list: every origin may read and write, as in etcd.
    Star,
    Origins(BTreeSet<String>),
}

impl Cors {
    /// `--cors`: comma-separated origins; empty or containing `*` allows any.
    pub fn parse(flag: &str) -> Result<Self, String> {
        let mut origins = BTreeSet::new();
        for o in flag.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if o == "*" {
                return Ok(Self::Star);
            }
            if !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(format!(
                    "--cors: {o:?} is not an origin (scheme://host[:port], or *)"
                ));
            }
            if HeaderValue::from_str(o).is_err() {
                return Err(format!("--cors: {o:?} is not a valid header value"));
            }
            origins.insert(o.to_string());
        }
        Ok(if origins.is_empty() {
            Self::Any
        } else {
            Self::Origins(origins)
        })
    }

    /// The origin to allow for a request that sent `origin`, if any.
    pub fn allowed<'a>(&self, origin: Option<&'a str>) -> Option<&'a str> {
        match self {
            Self::Any | Self::Star => Some("*"),
            Self::Origins(list) => origin.filter(|o| list.contains(*o)),
        }
    }

    /// Did the operator name this origin (or `*`)? Only then may its pages write.
    pub fn explicitly_allows(&self, origin: &str) -> bool {
        match self {
            Self::Any => false,
            Self::Star => true,
            Self::Origins(list) => list.contains(origin),
        }
    }

    /// Adds etcd's three CORS headers when the request's `Origin` is allowed.
    pub fn apply(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        let origin = origin.and_then(|v| v.to_str().ok());
        let Some(allowed) = self.allowed(origin) else {
            return;
        };
        let Ok(allowed) = HeaderValue::from_str(allowed) else {
            return;
        };
        response.insert(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        response.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        response.insert(
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(cors: &Cors, origin: Option<&str>) -> Option<String> {
        let origin = origin.map(|o| HeaderValue::from_str(o).unwrap());
        let mut resp = HeaderMap::new();
        cors.apply(origin.as_ref(), &mut resp);
        let origin = resp.get(http::header::ACCESS_CONTROL_ALLOW_ORIGIN)?;
        assert_eq!(
            resp[http::header::ACCESS_CONTROL_ALLOW_METHODS],
            ALLOW_METHODS
        );
        assert_eq!(
            resp[http::header::ACCESS_CONTROL_ALLOW_HEADERS],
            ALLOW_HEADERS
        );
        Some(origin.to_str().unwrap().to_string())
    }

    #[test]
    fn any_origin_by_default_and_with_a_star() {
        for flag in ["", " , ", "*", "http://a.example,*"] {
            let c = Cors::parse(flag).unwrap();
            let star = flag.contains('*');
            assert_eq!(c, if star { Cors::Star } else { Cors::Any }, "{flag:?}");
            assert_eq!(c.explicitly_allows("http://evil.example"), star);
            assert_eq!(answer(&c, None).as_deref(), Some("*"));
            assert_eq!(
                answer(&c, Some("http://evil.example")).as_deref(),
                Some("*")
            );
        }
    }

    #[test]
    fn a_list_echoes_only_its_own_origins() {
        let c = Cors::parse("http://a.example, https://b.example:8443").unwrap();
        assert_eq!(
            answer(&c, Some("http://a.example")).as_deref(),
            Some("http://a.example")
        );
        assert_eq!(
            answer(&c, Some("https://b.example:8443")).as_deref(),
            Some("https://b.example:8443")
        );
        assert_eq!(answer(&c, Some("http://evil.example")), None);
        assert_eq!(answer(&c, None), None);
    }

    #[test]
    fn a_bad_origin_is_named() {
        let e = Cors::parse("http://a.example,a.example").unwrap_err();
        assert!(e.contains("\"a.example\""), "{e}");
    }
}
