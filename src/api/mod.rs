//! The client HTTP API (etcd v2 shapes).
//!
//! # Layout
//! - [`params`]: query/form parsing and validation (etcd's 2xx error codes).
//! - [`json`]: etcd's JSON shapes, `ttl` from the reader's clock.
//! - [`keys`]: `/v2/keys` — reads from the local store (or after a ReadIndex barrier with
//!   `quorum=true`), writes through Raft, watches from the store's history.
//! - [`auth`]: `/v2/auth` (etcd's v2 users and roles) and the checks on keys and units.
//! - [`fleet`]: fleet's API v1 (`/fleet/v1`): units, states, machines.
//! - [`journal`]: `/flotilla/v1/journal/<unit>`, from the unit's machine's agent.
//! - [`members`]: `/v2/members` (listing open, changes root's once auth is on).
//! - [`ready`]: no request is answered before this member's publish is applied.
//! - [`cors`]: etcd's `--cors` headers and preflight `OPTIONS`, on every path.
//! - [`csrf`]: state-changing requests a browser marks as cross-site are refused.
//! - [`ui`]: the dashboard at `/ui/` and the two endpoints only it needs.
//! - this file: routing, `/health`, `/version`, `/v2/machines`, `/v2/stats`, common
//!   headers.
//!
//! Handlers take whole requests and return whole responses; the server that moves the
//! bytes lives in `flotilla_shims::http`.

pub mod auth;
pub mod cors;
pub mod csrf;
pub mod fleet;
pub mod journal;
pub mod json;
pub mod keys;
pub mod members;
pub mod params;
pub mod ready;
pub mod stream;
pub mod ui;

use crate::raft::RaftHandle;
use bytes::Bytes;
use flotilla_shims::http::{full, Body, Handler};
use flotilla_shims::Clock;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;
use std::sync::Arc;

pub type Reply = Response<Body>;

const JSON: &str = "application/json";
/// What Go's content sniffing calls a body of text, which etcd's untyped answers get.
const TEXT: &str = "text/plain; charset=utf-8";

pub const VERSION_SERVER: &str = "3.4.23";
pub const VERSION_CLUSTER: &str = "3.4.0";

pub struct Api {
    pub raft: RaftHandle,
    pub clock: Arc<dyn Clock>,
    /// Streaming watches run as tasks.
    pub spawn: Arc<dyn flotilla_shims::Spawn>,
    pub cluster_id: u64,
    pub value_bytes_max: usize,
    /// This member's agent, when it is a machine (for unit journals).
    pub agent: Option<crate::agent::AgentHandle>,
    /// Salts for password hashes (seeded: node logic draws randomness only from here).
    pub rng: std::sync::Mutex<flotilla_shims::SeededRng>,
    /// (user, SHA-1 of a password) → the hash it was verified against; bounded by
    /// [`auth::VERIFIED_MAX`].
    pub verified: std::sync::Mutex<std::collections::BTreeMap<(String, [u8; 20]), String>>,
    /// Which browser origins may read answers (`--cors`).
    pub cors: cors::Cors,
    /// Nothing is answered before this member's own publish is applied here.
    pub ready: ready::Readiness,
    /// What the dashboard needs that the store does not hold.
    pub ui: ui::UiConfig,
    /// The dashboard's charts, sampled on a timer (see [`ui::overview::sample_forever`]).
    pub ui_history: Arc<std::sync::Mutex<ui::history::History>>,
}

impl Api {
    pub fn into_handler(self) -> Handler {
        let api = Arc::new(self);
        let sampler = ui::overview::sample_forever(api.clone(), api.ui_history.clone());
        api.spawn.spawn("ui-history", Box::pin(sampler));
        Arc::new(move |req| {
            let api = api.clone();
            Box::pin(async move { api.route(req).await })
        })
    }

    async fn route(&self, req: Request<Bytes>) -> Reply {
        let t0 = self.clock.now_mono();
        let method = req.method().clone();
        let origin = req.headers().get(http::header::ORIGIN).cloned();
        let mut resp = if !self
            .ready
            .wait(&self.raft.shared, self.clock.as_ref())
            .await
        {
            self.not_ready()
        } else if method == Method::OPTIONS {
            // A CORS preflight, on any path, as etcd answers it.
            full(StatusCode::OK, Vec::new())
        } else if let Some(why) = csrf::refusal(&method, req.headers(), &self.cors) {
            self.bare_json(StatusCode::FORBIDDEN, json!({ "message": why }))
        } else {
            self.dispatch(req).await
        };
        self.cors.apply(origin.as_ref(), resp.headers_mut());
        let secs = self.clock.now_mono().saturating_sub(t0).as_secs_f64();
        self.raft
            .shared
            .metrics
            .observe_http(method.as_str(), resp.status().as_u16(), secs);
        resp
    }

    async fn dispatch(&self, req: Request<Bytes>) -> Reply {
        let raw_path = req.uri().path().to_string();
        if let Some(clean) = unclean(&raw_path) {
            // As Go's ServeMux (and so etcd): redirect to the cleaned path, query kept.
            let location = match req.uri().query() {
                Some(q) => format!("{clean}?{q}"),
                None => clean,
            };
            return redirect(req.method(), &location);
        }
        let path = percent_encoding::percent_decode_str(&raw_path)
            .decode_utf8_lossy()
            .into_owned();
        if let Some(rest) = path.strip_prefix("/v2/auth") {
            if rest.starts_with('/') {
                return self.auth_api(&req, rest).await;
            }
        }
        if let Some(key) = path.strip_prefix("/v2/keys") {
            if key.is_empty() || key.starts_with('/') {
                let key = if key.is_empty() { "/" } else { key };
                return self.keys(&req, key).await;
            }
        }
        if let Some(rest) = path.strip_prefix("/ui") {
            if let Some(r) = ui::assets::serve(req.method(), rest) {
                return r;
            }
        }
        if path == "/flotilla/v1/whoami" && req.method() == Method::GET {
            return self.whoami(&req);
        }
        for prefix in ["/fleet/v1", "/v1-alpha"] {
            if let Some(rest) = path.strip_prefix(prefix) {
                if rest.is_empty() || rest.starts_with('/') {
                    return self.fleet(&req, rest).await;
                }
            }
        }
        if path.starts_with("/flotilla/v1/")
            && !self.key_access(&req, &format!("{}/", crate::sched::registry::ROOT), true)
        {
            // Journals and placement explanations tell what runs where: with auth on,
            // they need read access to the whole schedule.
            return fleet::fleet_error(StatusCode::UNAUTHORIZED, "Insufficient credentials");
        }
        if let Some(unit) = path.strip_prefix("/flotilla/v1/journal/") {
            if req.method() == Method::GET {
                return self.journal(&req, unit).await;
            }
        }
        if let Some(unit) = path.strip_prefix("/flotilla/v1/placement/") {
            if req.method() == Method::GET {
                return self.placement(unit);
            }
        }
        if path == "/flotilla/v1/overview" && req.method() == Method::GET {
            return self.overview(&req).await;
        }
        if let Some(rest) = path.strip_prefix("/v2/members") {
            if rest.is_empty() || rest.starts_with('/') {
                return self.members(&req, rest).await;
            }
        }
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match path.as_str() {
            "/health" if get => self.health(),
            "/version" if get => {
                let body = format!(
                    r#"{{"etcdserver":"{VERSION_SERVER}","etcdcluster":"{VERSION_CLUSTER}"}}"#
                );
                self.bare(StatusCode::OK, JSON, body.into_bytes())
            }
            "/v2/machines" if get => self.machines(),
            "/v2/machines" => self.not_allowed("GET,HEAD"),
            "/v2/stats/self" | "/v2/stats/leader" | "/v2/stats/store"
                if *req.method() != Method::GET =>
            {
                self.not_allowed("GET")
            }
            "/v2/stats/self" => self.stats_self(),
            "/v2/stats/leader" => self.stats_leader(),
            "/v2/stats/store" => self.stats_store(),
            "/metrics" if get => self.bare(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.raft.shared.metrics.render().into_bytes(),
            ),
            _ => self.go_error(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    /// `/v2/machines`: the members' client URLs, as etcd's (and etcdctl v1's) text list.
    fn machines(&self) -> Reply {
        let urls: Vec<String> = {
            let m = self.raft.shared.machine();
            let members = m.members.values();
            members
                .flat_map(|m| m.client_urls.iter().cloned())
                .collect()
        };
        self.bare(StatusCode::OK, TEXT, urls.join(", ").into_bytes())
    }

    /// The request outwaited this member's publish: it is told so, never shown a member
    /// list without this member's client URLs.
    fn not_ready(&self) -> Reply {
        let body = br#"{"message":"not ready: this member has not yet published its name and client URLs through Raft"}"#;
        let mut r = full(StatusCode::SERVICE_UNAVAILABLE, body.to_vec());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }

    fn health(&self) -> Reply {
        // etcd 3.4 writes these bodies without a trailing newline, and no content type
        // (Go sniffs text/plain).
        if self.raft.shared.status().leader != 0 {
            self.bare(StatusCode::OK, TEXT, br#"{"health":"true"}"#.to_vec())
        } else {
            let body = br#"{"health":"false"}"#.to_vec();
            self.bare(StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
        }
    }

    fn stats_self(&self) -> Reply {
        let st = self.raft.shared.status().clone();
        let rs = self.raft.shared.raft_stats().clone();
        let name = self
            .raft
            .shared
            .machine()
            .members
            .get(&st.id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let state = if st.is_leader {
            "StateLeader"
        } else {
            "StateFollower"
        };
        let now = self.clock.now_wall_ms();
        let uptime = std::time::Duration::from_millis(now.saturating_sub(rs.leader_since_wall_ms));
        self.bare_json(
            StatusCode::OK,
            json!({
                "name": name,
                "id": format!("{:x}", st.id),
                "state": state,
                "startTime": json::rfc3339(rs.start_wall_ms),
                "leaderInfo": {
                    "leader": format!("{:x}", st.leader),
                    "uptime": format!("{:?}", uptime),
                    "startTime": json::rfc3339(rs.leader_since_wall_ms),
                },
                "recvAppendRequestCnt": rs.recv_append,
                "sendAppendRequestCnt": rs.send_append,
            }),
        )
    }

    fn stats_leader(&self) -> Reply {
        let st = self.raft.shared.status().clone();
        if !st.is_leader {
            return self.bare_json(
                StatusCode::FORBIDDEN,
                json!({"message": "not current leader"}),
            );
        }
        let members: Vec<u64> = self.raft.shared.machine().members.keys().copied().collect();
        let rs = self.raft.shared.raft_stats().clone();
        let mut followers = serde_json::Map::new();
        for id in members.into_iter().filter(|id| *id != st.id) {
            let f = rs.followers.get(&id).cloned().unwrap_or_default();
            let n = f.rtt_count.max(1) as f64;
            let avg = f.rtt_sum_s / n;
            let sd = (f.rtt_sum_sq / n - avg * avg).max(0.0).sqrt();
            followers.insert(
                format!("{id:x}"),
                json!({
                    "latency": {
                        "current": f.rtt_current_s,
                        "average": avg,
                        "standardDeviation": sd,
                        "minimum": f.rtt_min_s,
                        "maximum": f.rtt_max_s,
                    },
                    "counts": { "fail": f.fail, "success": f.success },
                }),
            );
        }
        self.bare_json(
            StatusCode::OK,
            json!({"leader": format!("{:x}", st.id), "followers": followers}),
        )
    }

    fn stats_store(&self) -> Reply {
        let stats = self.raft.shared.store_stats().clone();
        let v = serde_json::to_value(stats).expect("stats serialize");
        self.bare_json(StatusCode::OK, v)
    }

    /// A response with a content type and nothing else: etcd's handlers outside the
    /// keys, members and auth APIs set no cluster header.
    fn bare(&self, status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Reply {
        let mut r = full(status, body);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        r
    }

    /// A JSON body as Go's `json.Marshal` writes it (no newline), without etcd's headers.
    fn bare_json(&self, status: StatusCode, v: serde_json::Value) -> Reply {
        let body = serde_json::to_vec(&v).expect("json serializes");
        self.bare(status, JSON, body)
    }

    /// Go's `http.Error`: a line of text, sniffing forbidden.
    fn go_error(&self, status: StatusCode, text: &str) -> Reply {
        let mut r = self.bare(status, TEXT, format!("{text}\n").into_bytes());
        r.headers_mut().insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        r
    }

    /// etcd's `allowMethod` refusal: 405 in text with the methods that are allowed.
    fn not_allowed(&self, allow: &'static str) -> Reply {
        let mut r = self.go_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(allow));
        r
    }

    /// A response with etcd's headers. `etcd_index` adds the keys-API headers.
    fn reply(&self, status: StatusCode, body: Vec<u8>, etcd_index: Option<u64>) -> Reply {
        let mut r = self.bare(status, JSON, body);
        let h = r.headers_mut();
        h.insert("X-Etcd-Cluster-Id", hv(format!("{:x}", self.cluster_id)));
        if let Some(i) = etcd_index {
            let st = self.raft.shared.status().clone();
            h.insert("X-Etcd-Index", hv(i.to_string()));
            h.insert("X-Raft-Index", hv(st.commit.to_string()));
            h.insert("X-Raft-Term", hv(st.term.to_string()));
        }
        r
    }
}

/// Go's `http.Redirect` with 301: a link in HTML for GET (typed for HEAD too), nothing
/// for other methods.
fn redirect(method: &Method, location: &str) -> Reply {
    let get = *method == Method::GET;
    let body = if get {
        let href = location
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&#34;")
            .replace('\'', "&#39;");
        format!("<a href=\"{href}\">Moved Permanently</a>.\n\n").into_bytes()
    } else {
        vec![]
    };
    let mut r = full(StatusCode::MOVED_PERMANENTLY, body);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(http::header::LOCATION, v);
    }
    if get || *method == Method::HEAD {
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    r
}

/// Go's `cleanPath`: `Some(cleaned)` when `p` has empty, `.` or `..` segments (a
/// trailing slash is kept and is not unclean).
fn unclean(p: &str) -> Option<String> {
    let mut clean = crate::kv::path::clean(p);
    if p.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    (clean != p).then_some(clean)
}

fn hv(s: String) -> HeaderValue {
    HeaderValue::from_str(&s).expect("header values here are ASCII digits")
}
