//! The endpoint list and its failover rule, and the one percent-encoder — stated once
//! for every client of a cluster: [`super::http::HttpKv`] (agents, renderers), `flotilla
//! kv`, `flotilla units`, `flotilla confd` and `flotilla agent`.
//!
//! **Failover rule.** Endpoints are tried in order. A request moves on to the next when
//! it gets no answer (refused, timed out, a failed TLS handshake) or a 5xx: a member that
//! is not ready, has no leader, or is stopping may be the only one that cannot help. Any
//! other status is the cluster's answer and is returned, 4xx included. When every
//! endpoint fails, the last 5xx answer is returned if there was one (so its words reach
//! the user), else the last transport error.

use bytes::Bytes;
use flotilla_shims::http::{request_body, ClientResponse, RequestError};
use flotilla_shims::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// How one HTTP request reaches one URL: TCP (and TLS) in production, the simulated
/// fabric in the simulator — so the client's logic above runs in both.
pub trait Transport: Send + Sync + 'static {
    fn request<'a>(
        &'a self,
        method: &'a str,
        url: &'a str,
        body: Option<(&'static str, Bytes)>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ClientResponse, RequestError>>;
}

/// Production's transport: a fresh connection per request (a command-line client's and
/// an agent's needs).
pub struct Tcp;

impl Transport for Tcp {
    fn request<'a>(
        &'a self,
        method: &'a str,
        url: &'a str,
        body: Option<(&'static str, Bytes)>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ClientResponse, RequestError>> {
        Box::pin(request_body(method, url, body, timeout))
    }
}

/// A cluster's client URLs, in the order they are tried, and how requests reach them.
#[derive(Clone)]
pub struct Endpoints {
    urls: Vec<String>,
    transport: Arc<dyn Transport>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.urls).finish()
    }
}

impl Endpoints {
    /// `list`: comma-separated `http://` or `https://` URLs, as given to `flag`.
    pub fn parse(flag: &str, list: &str) -> Result<Self, String> {
        let urls: Vec<String> = list
            .split(',')
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        Self::new(flag, urls)
    }

    pub fn new(flag: &str, urls: Vec<String>) -> Result<Self, String> {
        if urls.is_empty() {
            return Err(format!("{flag}: no URL given"));
        }
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("{flag}: {u:?} must be an http:// or https:// URL"));
            }
        }
        Ok(Self {
            urls,
            transport: Arc::new(Tcp),
        })
    }

    /// These endpoints, reached by `transport` instead of TCP.
    pub fn with_transport(self, transport: Arc<dyn Transport>) -> Self {
        Self { transport, ..self }
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// One request by the failover rule: `path_query` on each endpoint in turn.
    pub async fn call(
        &self,
        method: &str,
        path_query: &str,
        body: Option<(&'static str, Bytes)>,
        timeout: Duration,
    ) -> Result<ClientResponse, RequestError> {
        let mut last_answer = None;
        let mut last_error = RequestError::Failed("no endpoint".into());
        for ep in &self.urls {
            let url = format!("{ep}{path_query}");
            match self
                .transport
                .request(method, &url, body.clone(), timeout)
                .await
            {
                Ok(r) if moves_on(r.status) => last_answer = Some(r),
                Ok(r) => return Ok(r),
                Err(e) => last_error = e,
            }
        }
        last_answer.ok_or(last_error)
    }
}

/// Whether an answer with this status sends the request to the next endpoint.
pub fn moves_on(status: u16) -> bool {
    status >= 500
}

/// Everything but RFC 3986's unreserved characters and `@`, `:` is escaped.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'@')
    .remove(b':');

/// One path segment (a key's part, a unit's name), escaped.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// A query or form value, escaped as `application/x-www-form-urlencoded`.
pub fn query_value(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `/v2/keys/a/b` for key `a/b` or `/a/b`, each segment escaped.
pub fn key_path(key: &str) -> String {
    let segs: Vec<String> = key
        .split('/')
        .filter(|s| !s.is_empty())
        .map(segment)
        .collect();
    format!("/v2/keys/{}", segs.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_trimmed() {
        let e = Endpoints::parse("--endpoints", " http://a:2379/, https://b:2379").unwrap();
        assert_eq!(e.urls(), ["http://a:2379", "https://b:2379"]);
        let err = Endpoints::parse("--endpoints", "a:2379").unwrap_err();
        assert!(
            err.contains("--endpoints") && err.contains("\"a:2379\""),
            "{err}"
        );
        assert!(Endpoints::parse("--endpoint", " , ").is_err());
    }

    #[test]
    fn the_failover_rule() {
        for (status, next) in [
            (200, false),
            (404, false),
            (412, false),
            (500, true),
            (503, true),
        ] {
            assert_eq!(moves_on(status), next, "{status}");
        }
    }

    #[test]
    fn keys_and_values_are_escaped() {
        assert_eq!(
            key_path("/_flotilla/units/apache@1.service"),
            "/v2/keys/_flotilla/units/apache@1.service"
        );
        assert_eq!(key_path("/"), "/v2/keys/");
        assert_eq!(key_path("a b/c%d"), "/v2/keys/a%20b/c%25d");
        assert_eq!(query_value("a b&c=d"), "a+b%26c%3Dd");
    }
}
