//! The dashboard on an agent-only machine (`flotilla agent --listen`): the files are
//! served here and the API requests the pages make are passed to the cluster's members,
//! the first that answers, with the caller's credentials. A watch stream stays a stream.

use super::assets;
use crate::api::{cors::Cors, csrf, Reply};
use bytes::Bytes;
use flotilla_shims::http::full;
use http::{HeaderValue, Request, StatusCode};
use std::time::Duration;

/// The paths the pages read and write; nothing else is passed on.
const API_PREFIXES: [&str; 4] = ["/v2/", "/fleet/v1/", "/flotilla/v1/", "/version"];

pub struct Relay {
    /// The members' client URLs, tried in order.
    pub endpoints: Vec<String>,
    /// Always the default: a page on another origin may not write through this machine.
    pub cors: Cors,
    /// How long a member may take to start answering.
    pub timeout: Duration,
}

impl Relay {
    /// `None`: not a dashboard path; the machine's own handler answers it.
    pub async fn handle(&self, req: &Request<Bytes>, path: &str) -> Option<Reply> {
        if let Some(rest) = path.strip_prefix("/ui") {
            return assets::serve(req.method(), rest);
        }
        if !API_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return None;
        }
        if let Some(why) = csrf::refusal(req.method(), req.headers(), &self.cors) {
            return Some(json(StatusCode::FORBIDDEN, &why));
        }
        let mut last = String::from("no endpoints");
        for url in &self.endpoints {
            match flotilla_shims::http::forward(url, req, self.timeout).await {
                Ok(r) => return Some(r),
                Err(e) => last = e,
            }
        }
        Some(json(
            StatusCode::BAD_GATEWAY,
            &format!("no member answered: {last}"),
        ))
    }
}

fn json(status: StatusCode, message: &str) -> Reply {
    let body = serde_json::json!({ "message": message });
    let mut r = full(status, serde_json::to_vec(&body).expect("json"));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
