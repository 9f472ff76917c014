//! Differential test: the same request sequence sent to a real etcd 3.4 (started here
//! with `--enable-v2`) and to flotilla; responses must be equal after normalising
//! indexes (each server's own starting index is subtracted), timestamps and cluster ids:
//! status, body (children in order under `sorted=true`, as sets otherwise, since etcd
//! lists them in Go map order) and headers — every header name, and the values of
//! `Content-Type`, CORS, `Allow`, `Location`; `X-Raft-Index`, `X-Raft-Term` and
//! `X-Etcd-Cluster-Id` by shape (each server has its own log and cluster), with the
//! index never going back and the term fixed while nothing fails over. The same with
//! `--cors` on both, and on three members each (writes through a follower, `quorum=true`
//! reads, stream watches).
//! Needs Debian's `etcd-server` (`scripts/test-all` installs it); fails loudly without.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

fn index_of(r: &Resp) -> u64 {
    r.headers
        .get("x-etcd-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Rewrites server-specific numbers: indexes relative to `base`, times, 20-digit keys;
/// children compared as sets unless the request asked for them `sorted`.
fn normalise(v: &mut Value, base: u64, sorted: bool) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match (k.as_str(), &x) {
                    ("modifiedIndex" | "createdIndex", Value::Number(n)) => {
                        *x = Value::from(n.as_u64().unwrap_or(0).saturating_sub(base));
                    }
                    ("index", Value::Number(n)) if n.as_u64() != Some(0) => {
                        *x = Value::from(n.as_u64().unwrap_or(0).saturating_sub(base));
                    }
                    ("expiration", _) => *x = Value::from("<time>"),
                    ("leader" | "id", Value::String(_)) => *x = Value::from("<member id>"),
                    ("key", Value::String(s)) => *x = Value::from(normalise_key(s, base)),
                    ("cause", Value::String(s)) => *x = Value::from(normalise_cause(s, base)),
                    _ => normalise(x, base, sorted),
                }
            }
        }
        Value::Array(a) => {
            a.iter_mut().for_each(|x| normalise(x, base, sorted));
            if sorted {
                return;
            }
            // etcd lists children in Go map order unless `sorted=true`: compare as sets.
            a.sort_by_key(|x| {
                x.get("key")
                    .and_then(|k| k.as_str())
                    .unwrap_or("")
                    .to_string()
            });
        }
        _ => {}
    }
}

/// Headers as compared: every name (but the transport's), the values that must match,
/// and the shape of those where each server has its own numbers.
fn header_shape(h: &http::HeaderMap, base: u64) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in h {
        let n = name.as_str();
        if matches!(
            n,
            "date" | "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        let v = value.to_str().unwrap_or("<not text>").to_string();
        let number = v.parse::<u64>().ok();
        let shown = match (n, number) {
            ("x-etcd-index", Some(i)) => i.saturating_sub(base).to_string(),
            ("x-raft-index" | "x-raft-term", Some(_)) => "<number>".to_string(),
            ("x-etcd-cluster-id", _) if is_hex_id(&v) => "<hex id>".to_string(),
            _ => v,
        };
        out.insert(n.to_string(), shown);
    }
    out
}

fn is_hex_id(v: &str) -> bool {
    !v.is_empty() && v.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// What one server's Raft headers said over a run: the index never goes back, the term
/// never changes while nothing fails over.
#[derive(Default)]
struct RaftHeaders {
    index: u64,
    term: Option<u64>,
}

impl RaftHeaders {
    fn check(&mut self, h: &http::HeaderMap) -> Result<(), String> {
        let num = |k: &str| h.get(k).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(i) = num("x-raft-index") {
            if i < self.index {
                return Err(format!("X-Raft-Index went back from {} to {i}", self.index));
            }
            self.index = i;
        }
        if let Some(t) = num("x-raft-term") {
            if *self.term.get_or_insert(t) != t {
                return Err(format!("X-Raft-Term changed from {:?} to {t}", self.term));
            }
        }
        Ok(())
    }
}

/// `[given != current]` pairs of numbers are indexes (the steps use non-numeric values).
fn normalise_cause(s: &str, base: u64) -> String {
    let s = normalise_key(s, base);
    s.split(' ')
        .map(
            |w| match w.trim_matches(|c| c == '[' || c == ']').parse::<u64>() {
                Ok(n) if n > base => w.replace(&n.to_string(), &(n - base).to_string()),
                _ => w.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

fn normalise_key(s: &str, base: u64) -> String {
    s.split('/')
        .map(|seg| match seg.parse::<u64>() {
            Ok(n) if seg.len() == 20 => format!("<{}>", n - base),
            _ => seg.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// (method, path and query, form body)
fn steps() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        ("GET", "/v2/keys/", None),
        ("GET", "/v2/keys", None),
        ("GET", "/v2/keys/missing", None),
        ("GET", "/v2/keys/missing/deeper", None),
        ("PUT", "/v2/keys/a", Some("value=1")),
        ("PUT", "/v2/keys/a", Some("value=2")),
        ("GET", "/v2/keys/a", None),
        ("PUT", "/v2/keys/a?value=fromquery", None),
        ("PUT", "/v2/keys/a?value=q", Some("value=body")),
        ("GET", "/v2/keys/a/b", None),
        ("PUT", "/v2/keys/a/b", Some("value=x")),
        ("POST", "/v2/keys/a", Some("value=x")),
        ("PUT", "/v2/keys/", Some("value=x")),
        ("DELETE", "/v2/keys/", None),
        ("DELETE", "/v2/keys/?recursive=true", None),
        ("PUT", "/v2/keys/dir?dir=true", None),
        ("PUT", "/v2/keys/dir?dir=true", None),
        ("PUT", "/v2/keys/dir", Some("value=x")),
        ("GET", "/v2/keys/dir", None),
        ("PUT", "/v2/keys/dir/x", Some("value=1")),
        ("PUT", "/v2/keys/dir/y", Some("value=2")),
        ("PUT", "/v2/keys/dir/sub/z", Some("value=3")),
        ("PUT", "/v2/keys/dir/_hidden", Some("value=secret")),
        ("GET", "/v2/keys/dir", None),
        ("GET", "/v2/keys/dir?recursive=true", None),
        ("GET", "/v2/keys/dir?recursive=true&sorted=true", None),
        ("GET", "/v2/keys/dir/_hidden", None),
        ("GET", "/v2/keys/dir?recursive=maybe", None),
        ("GET", "/v2/keys/dir?sorted=nope", None),
        ("DELETE", "/v2/keys/dir", None),
        ("DELETE", "/v2/keys/dir?dir=true", None),
        ("DELETE", "/v2/keys/dir/sub?dir=true", None),
        ("DELETE", "/v2/keys/dir/x?dir=true", None),
        ("DELETE", "/v2/keys/dir/y", None),
        ("DELETE", "/v2/keys/dir/y", None),
        ("DELETE", "/v2/keys/dir?recursive=true", None),
        ("GET", "/v2/keys/dir", None),
        ("PUT", "/v2/keys/c?prevExist=false", Some("value=one")),
        ("PUT", "/v2/keys/c?prevExist=false", Some("value=one")),
        ("PUT", "/v2/keys/c?prevExist=true", Some("value=two")),
        ("PUT", "/v2/keys/nothere?prevExist=true", Some("value=two")),
        ("PUT", "/v2/keys/c?prevExist=maybe", Some("value=two")),
        ("PUT", "/v2/keys/c?prevValue=two", Some("value=three")),
        ("PUT", "/v2/keys/c?prevValue=wrong", Some("value=four")),
        ("PUT", "/v2/keys/c?prevIndex=1", Some("value=four")),
        (
            "PUT",
            "/v2/keys/c?prevValue=wrong&prevIndex=1",
            Some("value=four"),
        ),
        ("PUT", "/v2/keys/c?prevIndex=0", Some("value=five")),
        ("PUT", "/v2/keys/c?prevIndex=abc", Some("value=five")),
        ("PUT", "/v2/keys/c?prevValue=", Some("value=five")),
        ("PUT", "/v2/keys/nothere?prevValue=x", Some("value=five")),
        (
            "PUT",
            "/v2/keys/c?prevExist=true&prevValue=five",
            Some("value=six"),
        ),
        (
            "PUT",
            "/v2/keys/c?prevExist=true&prevValue=no",
            Some("value=six"),
        ),
        ("DELETE", "/v2/keys/c?prevValue=no", None),
        ("DELETE", "/v2/keys/c?prevIndex=1", None),
        ("DELETE", "/v2/keys/c?prevIndex=zzz", None),
        ("DELETE", "/v2/keys/c?prevValue=six", None),
        ("DELETE", "/v2/keys/c?prevValue=six", None),
        ("PUT", "/v2/keys/cd?dir=true", None),
        ("PUT", "/v2/keys/cd?prevValue=x", Some("value=1")),
        ("DELETE", "/v2/keys/cd?prevValue=x", None),
        ("DELETE", "/v2/keys/cd?dir=true", None),
        ("PUT", "/v2/keys/t?ttl=100", Some("value=v")),
        ("GET", "/v2/keys/t", None),
        ("PUT", "/v2/keys/t?ttl=abc", Some("value=v")),
        ("PUT", "/v2/keys/t?ttl=-5", Some("value=v")),
        ("PUT", "/v2/keys/t", Some("value=v0")),
        ("PUT", "/v2/keys/t?ttl=50", Some("value=v1")),
        ("PUT", "/v2/keys/t?ttl=&prevExist=true", Some("value=v2")),
        ("GET", "/v2/keys/t", None),
        ("PUT", "/v2/keys/t?ttl=60&refresh=true", None),
        ("GET", "/v2/keys/t", None),
        ("PUT", "/v2/keys/t?refresh=true", None),
        ("PUT", "/v2/keys/t?ttl=60&refresh=true", Some("value=x")),
        ("PUT", "/v2/keys/nope?ttl=60&refresh=true", None),
        ("PUT", "/v2/keys/t?ttl=60&refresh=true&prevExist=true", None),
        ("PUT", "/v2/keys/t?refresh=maybe&ttl=5", None),
        ("PUT", "/v2/keys/tdir?dir=true&ttl=100", None),
        ("GET", "/v2/keys/tdir", None),
        ("PUT", "/v2/keys/tdir?dir=true&ttl=200&prevExist=true", None),
        ("POST", "/v2/keys/queue", Some("value=job1")),
        ("POST", "/v2/keys/queue", Some("value=job2")),
        ("POST", "/v2/keys/queue?ttl=100", Some("value=job3")),
        ("GET", "/v2/keys/queue?recursive=true&sorted=true", None),
        ("POST", "/v2/keys/t", Some("value=x")),
        ("PUT", "/v2/keys/nv?noValueOnSuccess=true", Some("value=1")),
        ("PUT", "/v2/keys/nv?noValueOnSuccess=true", Some("value=2")),
        ("DELETE", "/v2/keys/nv", None),
        ("PUT", "/v2/keys/e", None),
        ("GET", "/v2/keys/e", None),
        ("PUT", "/v2/keys/s%20p", Some("value=space")),
        ("GET", "/v2/keys/s%20p", None),
        ("PUT", "/v2/keys/u", Some("value=h%C3%A9llo+w%26rld")),
        ("GET", "/v2/keys/u", None),
        (
            "PUT",
            "/v2/keys/services/quad/10.253.156.164",
            Some("value=10.253.156.164:8810"),
        ),
        (
            "PUT",
            "/v2/keys/services/quad/10.253.156.165",
            Some("value=10.253.156.165:8810"),
        ),
        ("GET", "/v2/keys/services/quad?sorted=true", None),
        (
            "PUT",
            "/v2/keys/domains/example.com/10.10.10.123:8081",
            Some("value=run"),
        ),
        (
            "GET",
            "/v2/keys/domains/example.com/10.10.10.123:8081",
            None,
        ),
        (
            "DELETE",
            "/v2/keys/domains/example.com/10.10.10.123:8081",
            None,
        ),
        ("GET", "/v2/keys/a?wait=true&waitIndex=1", None),
        (
            "GET",
            "/v2/keys/dir?wait=true&waitIndex=1&recursive=true",
            None,
        ),
        ("GET", "/v2/keys/a?wait=true&waitIndex=xyz", None),
        ("GET", "/v2/keys/a?wait=maybe", None),
        ("GET", "/v2/keys/a?quorum=true", None),
        ("GET", "/v2/keys/a?quorum=nah", None),
        ("PATCH", "/v2/keys/a", Some("value=1")),
        ("PUT", "/v2/keys/a?wait=true", Some("value=1")),
        ("PUT", "/v2/keys/a?dir=maybe", Some("value=1")),
        ("PUT", "/v2/keys/a?noValueOnSuccess=maybe", Some("value=1")),
        ("GET", "/v2/keys/a?stream=maybe", None),
        (
            "PUT",
            "/v2/keys/a?prevIndex=x&recursive=y&ttl=z",
            Some("value=1"),
        ),
        ("PUT", "/v2/keys/t?ttl=&refresh=true", None),
        ("PUT", "/v2/keys/x/../y", Some("value=1")),
        ("DELETE", "/v2/keys/x//y", None),
        ("PUT", "/v2/keys/trailing/", Some("value=1")),
        ("GET", "/v2/stats/leader", None),
        ("GET", "/v2/keys/?recursive=true&sorted=true", None),
        ("GET", "/version", None),
        ("GET", "/health", None),
        // ttl=0 expires "now": only its own answer is timing-independent, so it comes last.
        ("PUT", "/v2/keys/t0?ttl=0", Some("value=v0")),
    ]
}

/// Shifts the 1-based indexes used in the steps by the server's starting index.
fn shift(path: &str, base: u64) -> String {
    let mut out = String::new();
    for (i, part) in path.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (head, tail) = part.split_at(part.find('?').map(|p| p + 1).unwrap_or(0));
        out.push_str(head);
        match tail.split_once('=') {
            Some((k, v))
                if (k == "prevIndex" || k == "waitIndex")
                    && v.parse::<u64>().is_ok_and(|n| n > 0) =>
            {
                out.push_str(&format!("{k}={}", v.parse::<u64>().unwrap() + base));
            }
            _ => out.push_str(tail),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_match_etcd() {
    let c = client();
    let etcd = start_etcd(&c).await;
    let mut fl = Cluster::new(1, &[]);
    fl.start_all();
    fl.leader(&c, Duration::from_secs(20)).await;
    let servers = [etcd.url.clone(), fl.nodes[0].client_url.clone()];
    let mut bases = [0u64; 2];
    for (i, s) in servers.iter().enumerate() {
        bases[i] = index_of(
            &call(&c, "GET", &format!("{s}/v2/keys/"), None)
                .await
                .unwrap(),
        );
    }
    let all = steps();
    assert!(
        all.len() >= 100,
        "the sequence covers at least 100 requests"
    );
    let mut mismatches = vec![];
    let mut raft = [RaftHeaders::default(), RaftHeaders::default()];
    for (method, path, body) in all {
        let mut seen = vec![];
        for (i, s) in servers.iter().enumerate() {
            let url = format!("{s}{}", shift(path, bases[i]));
            let r = call(&c, method, &url, body)
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            if let Err(e) = raft[i].check(&r.headers) {
                mismatches.push(format!("{method} {path} on {s}: {e}"));
            }
            let mut v = r.body.clone();
            normalise(&mut v, bases[i], path.contains("sorted=true"));
            let idx = r
                .headers
                .contains_key("x-etcd-index")
                .then(|| index_of(&r).saturating_sub(bases[i]));
            let ttl_ok = v.pointer("/node/ttl").is_some();
            if let Some(n) = v.pointer_mut("/node/ttl") {
                *n = Value::from("<ttl>");
            }
            let text = if v.is_null() {
                r.text.trim().to_string()
            } else {
                String::new()
            };
            let headers = header_shape(&r.headers, bases[i]);
            seen.push((r.status, v, idx, ttl_ok, text, headers));
        }
        if seen[0] != seen[1] {
            mismatches.push(format!(
                "{method} {path} {body:?}\n  etcd:     {:?}\n  flotilla: {:?}",
                seen[0], seen[1]
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of the responses differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Past the 1000-event window, a watch gets etcd's 401 (with `[oldest/asked]`);
/// inside it, the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleared_event_window_matches_etcd() {
    let c = client();
    let etcd = start_etcd(&c).await;
    let mut fl = Cluster::new(1, &[]);
    fl.start_all();
    fl.leader(&c, Duration::from_secs(20)).await;
    let servers = [etcd.url.clone(), fl.nodes[0].client_url.clone()];
    let mut seen = vec![];
    for s in &servers {
        let mut writers = vec![];
        for w in 0..8 {
            let (c, s) = (c.clone(), s.clone());
            writers.push(tokio::spawn(async move {
                for i in (w..1010).step_by(8) {
                    let r = call(
                        &c,
                        "PUT",
                        &format!("{s}/v2/keys/w"),
                        Some(&format!("value={i}")),
                    )
                    .await
                    .unwrap();
                    assert!(r.status == 200 || r.status == 201, "{}", r.text);
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let now = index_of(
            &call(&c, "GET", &format!("{s}/v2/keys/w"), None)
                .await
                .unwrap(),
        );
        let mut got = vec![];
        let old = now - 1005;
        let r = call(
            &c,
            "GET",
            &format!("{s}/v2/keys/w?wait=true&waitIndex={old}"),
            None,
        )
        .await
        .unwrap();
        let cause = r.body["cause"].as_str().unwrap_or("").to_string();
        assert!(
            cause.starts_with("the requested history has been cleared ["),
            "{s}: {}",
            r.text
        );
        assert!(
            cause.ends_with(&format!("/{old}]")),
            "{s}: asked index last: {cause}"
        );
        got.push((
            r.status,
            r.body["errorCode"].clone(),
            r.body["message"].clone(),
            r.body["index"] == now,
        ));
        let recent = now - 10;
        let r = call(
            &c,
            "GET",
            &format!("{s}/v2/keys/w?wait=true&waitIndex={recent}"),
            None,
        )
        .await
        .unwrap();
        got.push((
            r.status,
            r.body["action"].clone(),
            r.body["node"]["key"].clone(),
            r.body["node"]["modifiedIndex"] == recent,
        ));
        seen.push(got);
    }
    assert_eq!(
        seen[0], seen[1],
        "etcd vs flotilla past and inside the window"
    );
    assert_eq!(seen[1][0].0, 400, "{:?}", seen[1]);
    assert_eq!(seen[1][0].1, 401);
    // flotilla keeps exactly the last 1000 events.
    let now = index_of(
        &call(&c, "GET", &format!("{}/v2/keys/w", servers[1]), None)
            .await
            .unwrap(),
    );
    let edge = call(
        &c,
        "GET",
        &format!("{}/v2/keys/w?wait=true&waitIndex={}", servers[1], now - 999),
        None,
    )
    .await
    .unwrap();
    assert_eq!(edge.status, 200, "{}", edge.text);
    let past = call(
        &c,
        "GET",
        &format!(
            "{}/v2/keys/w?wait=true&waitIndex={}",
            servers[1],
            now - 1000
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        past.body["cause"],
        format!(
            "the requested history has been cleared [{}/{}]",
            now - 999,
            now - 1000
        )
    );
}

/// A request with an `Origin`, answered as (status, header shape, body).
async fn with_origin(
    c: &Http,
    method: &str,
    url: &str,
    origin: Option<&str>,
) -> (u16, BTreeMap<String, String>, String) {
    let mut b = http::Request::builder().method(method).uri(url);
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    let req = b.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("answer within 10 s")
        .expect("request");
    let status = resp.status().as_u16();
    let mut shape = header_shape(resp.headers(), 0);
    shape.remove("x-etcd-index");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    // Key answers carry each store's own indexes: their bodies are compared elsewhere.
    let text = if url.contains("/v2/keys") && method != "OPTIONS" {
        String::new()
    } else {
        text
    };
    (status, shape, text)
}

/// etcd's `--cors`: without it (every origin), and with a list (only those, echoed):
/// headers on every path, preflight `OPTIONS` on any path answered 200. (etcd takes only
/// `scheme://host:port` there; flotilla takes that and a bare `scheme://host` too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_matches_etcd_with_and_without_the_flag() {
    let c = client();
    let requests: &[(&str, &str, Option<&str>)] = &[
        ("GET", "/v2/keys/", None),
        ("GET", "/v2/keys/", Some("http://a.example:8080")),
        ("GET", "/v2/keys/", Some("http://evil.example:8080")),
        ("OPTIONS", "/v2/keys/x", Some("http://a.example:8080")),
        ("OPTIONS", "/v2/keys/x", Some("http://evil.example:8080")),
        ("OPTIONS", "/health", None),
        ("OPTIONS", "/no/such/path", Some("http://a.example:8080")),
        ("GET", "/health", Some("http://a.example:8080")),
        ("GET", "/version", Some("http://evil.example:8080")),
        ("GET", "/v2/members/nothing", Some("http://a.example:8080")),
        ("DELETE", "/v2/keys/nothing", Some("http://a.example:8080")),
        ("GET", "/no/such/path", Some("http://a.example:8080")),
    ];
    for flag in [
        None,
        Some("--cors=http://a.example:8080,https://b.example:8443"),
    ] {
        let extra: Vec<&str> = flag.into_iter().collect();
        let etcd = start_etcd_with(&c, &extra).await;
        let mut fl = Cluster::new(1, &extra);
        fl.start_all();
        wait_healthy(&c, &fl.nodes[0].client_url).await;
        let mut diffs = vec![];
        for (method, path, origin) in requests {
            let theirs = with_origin(&c, method, &format!("{}{path}", etcd.url), *origin).await;
            let url = format!("{}{path}", fl.nodes[0].client_url);
            let mine = with_origin(&c, method, &url, *origin).await;
            // flotilla's one departure (src/api/csrf.rs): without --cors naming it, a
            // browser page on another origin may not change the cluster.
            if flag.is_none() && *method == "DELETE" && origin.is_some() {
                assert_eq!(mine.0, 403, "a cross-site DELETE is refused: {mine:?}");
                continue;
            }
            if theirs != mine {
                diffs.push(format!(
                    "{flag:?} {method} {path} from {origin:?}:\n  etcd:     {theirs:?}\n  flotilla: {mine:?}"
                ));
            }
        }
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    }
}

/// A streamed watch's first `n` events, each a JSON line.
async fn stream_events(c: &Http, url: &str, n: usize) -> Vec<Value> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.expect("watch");
    assert_eq!(resp.status(), 200, "{url}");
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let read = async {
        while buf.iter().filter(|b| **b == b'\n').count() < n {
            match body.frame().await {
                Some(Ok(f)) => buf.extend_from_slice(f.data_ref().map_or(&[][..], |d| d)),
                _ => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("{n} events within 10 s from {url}"));
    buf.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .take(n)
        .map(|l| serde_json::from_slice(l).expect("an event per line"))
        .collect()
}

/// Which of these members are followers, by their own `/v2/stats/self`.
async fn followers(c: &Http, urls: &[String]) -> Vec<String> {
    let mut out = vec![];
    for u in urls {
        let r = call(c, "GET", &format!("{u}/v2/stats/self"), None)
            .await
            .unwrap();
        if r.body["state"] == "StateFollower" {
            out.push(u.clone());
        }
    }
    out
}

/// Three members each: writes through one follower, quorum reads through the other,
/// preconditions, in-order keys and a stream watch — answered alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_answer_as_three_etcd_members() {
    let c = client();
    let etcd = start_etcd_cluster(&c, 3).await;
    let mut fl = Cluster::new(3, &[]);
    fl.start_all();
    fl.leader(&c, Duration::from_secs(20)).await;
    let mut sides = vec![];
    for urls in [
        etcd.iter().map(|e| e.url.clone()).collect::<Vec<_>>(),
        fl.nodes.iter().map(|n| n.client_url.clone()).collect(),
    ] {
        let f = followers(&c, &urls).await;
        assert_eq!(f.len(), 2, "two followers among {urls:?}");
        let base = index_of(
            &call(&c, "GET", &format!("{}/v2/keys/", f[0]), None)
                .await
                .unwrap(),
        );
        sides.push((f, base));
    }
    let steps: &[(usize, &str, &str, Option<&str>)] = &[
        (0, "PUT", "/v2/keys/f/a", Some("value=1")),
        (1, "GET", "/v2/keys/f/a?quorum=true", None),
        (0, "PUT", "/v2/keys/f/a?prevValue=1", Some("value=2")),
        (1, "PUT", "/v2/keys/f/a?prevValue=1", Some("value=3")),
        (1, "PUT", "/v2/keys/f/b?prevExist=false", Some("value=x")),
        (0, "PUT", "/v2/keys/f/b?prevExist=false", Some("value=y")),
        (0, "POST", "/v2/keys/f/q", Some("value=j1")),
        (1, "POST", "/v2/keys/f/q", Some("value=j2")),
        (
            0,
            "GET",
            "/v2/keys/f?quorum=true&recursive=true&sorted=true",
            None,
        ),
        (1, "DELETE", "/v2/keys/f/b", None),
        (0, "GET", "/v2/keys/f/b?quorum=true", None),
    ];
    let mut diffs = vec![];
    for (who, method, path, body) in steps {
        let mut seen = vec![];
        for (f, base) in &sides {
            let r = call(&c, method, &format!("{}{path}", f[*who]), *body)
                .await
                .unwrap();
            let mut v = r.body.clone();
            normalise(&mut v, *base, path.contains("sorted=true"));
            seen.push((r.status, v, header_shape(&r.headers, *base)));
        }
        if seen[0] != seen[1] {
            diffs.push(format!(
                "{method} {path} through follower {who}:\n  etcd:     {:?}\n  flotilla: {:?}",
                seen[0], seen[1]
            ));
        }
    }
    // A stream watch on one follower sees the writes made through the other, in order.
    let mut streams = vec![];
    for (f, base) in &sides {
        let url = format!("{}/v2/keys/s?wait=true&stream=true&recursive=true", f[1]);
        let (c2, url2) = (c.clone(), url.clone());
        let watch = tokio::spawn(async move { stream_events(&c2, &url2, 3).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, k) in ["s/x", "s/y", "s/x"].iter().enumerate() {
            let r = call(
                &c,
                "PUT",
                &format!("{}/v2/keys/{k}", f[0]),
                Some(&format!("value={i}")),
            )
            .await
            .unwrap();
            assert!(r.status == 200 || r.status == 201, "{}", r.text);
        }
        let mut events = watch.await.unwrap();
        events.iter_mut().for_each(|e| normalise(e, *base, false));
        streams.push(events);
    }
    if streams[0] != streams[1] {
        diffs.push(format!(
            "stream watch:\n  etcd:     {:?}\n  flotilla: {:?}",
            streams[0], streams[1]
        ));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
