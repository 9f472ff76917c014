//! `GET /flotilla/v1/journal/<unit>?n=N`: what a unit's agent recorded (each step and
//! state change) and the main container's (or process's) latest output. Any member
//! answers: for a unit on another machine it asks that machine's agent (its `agentURL`).
//! An agent-only machine serves the same path on its own listener.

use super::fleet::{ErrorJson, JournalJson};
use super::ui::relay::Relay;
use crate::agent::AgentHandle;
use bytes::Bytes;
use flotilla_shims::http::{full, Body, Handler};
use http::{HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// Lines of output a journal request may ask for.
pub const LINES_MAX: usize = 10_000;

pub fn lines_param(query: Option<&str>) -> Result<usize, String> {
    let n = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "n")
        .map(|(_, v)| v.into_owned());
    match n {
        None => Ok(50),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 && n <= LINES_MAX => Ok(n),
            _ => Err(format!("n={v:?}: expected a number from 1 to {LINES_MAX}")),
        },
    }
}

fn error(code: u16, message: impl Into<String>) -> serde_json::Value {
    serde_json::to_value(ErrorJson::new(code, message)).expect("an error serializes")
}

fn journal_json(unit: &str, machine: &str, lines: Vec<String>) -> serde_json::Value {
    let j = JournalJson {
        name: unit.to_string(),
        machine_id: machine.to_string(),
        lines,
    };
    serde_json::to_value(j).expect("a journal serializes")
}

pub fn reply(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = full(status, serde_json::to_vec(&v).expect("json"));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Asks another machine's agent (or member), passing on the caller's credentials.
pub async fn remote(
    url: &str,
    unit: &str,
    n: usize,
    authorization: Option<&str>,
    timeout: Duration,
) -> Response<Body> {
    let enc = crate::client::endpoints::segment(unit);
    let target = format!(
        "{}/flotilla/v1/journal/{enc}?n={n}&local=1",
        url.trim_end_matches('/')
    );
    match flotilla_shims::http::request_as("GET", &target, None, authorization, timeout).await {
        Ok(r) => {
            let mut resp = full(
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY),
                r.body,
            );
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => reply(
            StatusCode::BAD_GATEWAY,
            error(502, format!("the unit's machine did not answer: {e}")),
        ),
    }
}

/// The handler an agent-only machine serves: its journal, `/health`, and the dashboard
/// through `relay` (its files here, its API requests passed to the members).
pub fn agent_handler(agent: AgentHandle, relay: Option<Arc<Relay>>) -> Handler {
    Arc::new(move |req: Request<Bytes>| {
        let agent = agent.clone();
        let relay = relay.clone();
        Box::pin(async move {
            let path = percent_encoding::percent_decode_str(req.uri().path())
                .decode_utf8_lossy()
                .into_owned();
            if path == "/health" {
                return reply(StatusCode::OK, serde_json::json!({"health": "true"}));
            }
            if let Some(unit) = path.strip_prefix("/flotilla/v1/journal/") {
                let n = match lines_param(req.uri().query()) {
                    Ok(n) => n,
                    Err(e) => return reply(StatusCode::BAD_REQUEST, error(400, e)),
                };
                if let Some(lines) = agent.journal(unit, n).await {
                    return reply(StatusCode::OK, journal_json(unit, &agent.machine, lines));
                }
                // Asked by a member (`local=1`), or no dashboard here: the unit is not here.
                let local = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .any(|(k, _)| k == "local");
                if local || relay.is_none() {
                    let msg = format!("{unit} is not on machine {}", agent.machine);
                    return reply(StatusCode::NOT_FOUND, error(404, msg));
                }
            }
            if let Some(relay) = &relay {
                if let Some(r) = relay.handle(&req, &path).await {
                    return r;
                }
            }
            reply(StatusCode::NOT_FOUND, error(404, ""))
        })
    })
}

impl super::Api {
    pub(super) async fn journal(&self, req: &Request<Bytes>, unit: &str) -> Response<Body> {
        let n = match lines_param(req.uri().query()) {
            Ok(n) => n,
            Err(e) => return reply(StatusCode::BAD_REQUEST, error(400, e)),
        };
        if let Some(a) = &self.agent {
            if let Some(lines) = a.journal(unit, n).await {
                return reply(StatusCode::OK, journal_json(unit, &a.machine, lines));
            }
        }
        let local_only = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .any(|(k, _)| k == "local");
        let snap = super::fleet::snapshot(self);
        let target = snap.machine_of(unit).map(String::from).or_else(|| {
            // A global unit: any machine that reports it.
            snap.states.get(unit).and_then(|s| s.keys().next().cloned())
        });
        let url = target.as_ref().and_then(|m| {
            let dir = self
                .raft
                .shared
                .machine()
                .store
                .get(crate::sched::registry::MACHINES, true)
                .ok();
            crate::sched::registry::agent_urls(dir.as_ref().map(|e| &e.node)).remove(m)
        });
        match (local_only, url) {
            (false, Some(url)) => {
                let auth = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                remote(&url, unit, n, auth, Duration::from_secs(5)).await
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                error(404, format!("no machine runs {unit}")),
            ),
        }
    }
}
