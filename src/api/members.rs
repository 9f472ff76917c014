//! `/v2/members`: list, add (POST `{"peerURLs": [...]}`), update (PUT `/ID`) and remove
//! (DELETE `/ID`) members through Raft, answered as etcd 3.4's `membersHandler` answers:
//! the method is checked first, then — for anything but GET, once auth is on — that the
//! caller holds the root role, then the request (`tests/auth_diff.rs`, `tests/etcd_diff.rs`).

use super::{Api, Reply};
use crate::raft::{member_id, peer_addr, Member, ProposeError};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct PeerUrlsRequest {
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
}

/// A member as etcd shows it (field order included).
#[derive(serde::Serialize)]
struct MemberJson<'a> {
    id: String,
    name: &'a str,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(rename = "clientURLs")]
    client_urls: &'a [String],
}

#[derive(serde::Serialize)]
struct MemberList<'a> {
    members: Vec<MemberJson<'a>>,
}

fn member_json(m: &Member) -> MemberJson<'_> {
    MemberJson {
        id: format!("{:x}", m.id),
        name: &m.name,
        peer_urls: &m.peer_urls,
        client_urls: &m.client_urls,
    }
}

/// Why a request's body was refused: etcd's status and message.
type Refusal = (StatusCode, String);

impl Api {
    pub(super) async fn members(&self, req: &Request<Bytes>, rest: &str) -> Reply {
        let m = req.method().clone();
        if !matches!(m, Method::GET | Method::POST | Method::DELETE | Method::PUT) {
            return self.not_allowed("GET,POST,DELETE,PUT");
        }
        // etcd's `hasWriteRootAccess`: reading the list is open, changing it is root's.
        if m != Method::GET {
            if let Err(e) = self.root_only(req) {
                return self.auth_error(&e);
            }
        }
        let sub = rest.strip_prefix('/').unwrap_or(rest);
        let r = match m {
            Method::GET => match sub {
                "" => Ok(self.list_members()),
                "leader" => Ok(self.leader_member()),
                _ => Err((StatusCode::NOT_FOUND, "Not found".into())),
            },
            Method::POST => match peer_urls(req) {
                Ok(urls) => self.add_member(urls).await,
                Err(e) => Err(e),
            },
            // DELETE and PUT name a member; without one, etcd's getID says 405 in text.
            _ if sub.is_empty() => return self.not_allowed_plain(),
            Method::DELETE => match hex_id(sub) {
                Ok(id) => self.remove_member(id).await,
                Err(e) => Err(e),
            },
            _ => match (hex_id(sub), peer_urls(req)) {
                (Ok(id), Ok(urls)) => self.update_member(id, urls).await,
                (Err(e), _) | (_, Err(e)) => Err(e),
            },
        };
        r.unwrap_or_else(|(status, msg)| self.message(status, &msg))
    }

    fn list_members(&self) -> Reply {
        let m = self.raft.shared.machine();
        let members = m.members.values().map(member_json).collect();
        self.typed_json(StatusCode::OK, &MemberList { members })
    }

    fn leader_member(&self) -> Reply {
        let leader = self.raft.shared.status().leader;
        let m = self.raft.shared.machine().members.get(&leader).cloned();
        match m {
            Some(m) => self.typed_json(StatusCode::OK, &member_json(&m)),
            None => self.message(StatusCode::SERVICE_UNAVAILABLE, "During election"),
        }
    }

    /// A body as Go's `json.Encoder` writes it: fields in the type's order, a newline.
    fn typed_json<T: serde::Serialize>(&self, status: StatusCode, v: &T) -> Reply {
        let mut body = serde_json::to_vec(v).expect("members serialize");
        body.push(b'\n');
        self.reply(status, body, None)
    }

    /// etcd's `HTTPError`: `{"message":…}`, no newline.
    fn message(&self, status: StatusCode, msg: &str) -> Reply {
        let body = serde_json::to_vec(&json!({ "message": msg })).expect("json serializes");
        self.reply(status, body, None)
    }

    /// Go's `http.Error(w, "Method Not Allowed", 405)`, with the cluster header etcd had
    /// already set by then.
    fn not_allowed_plain(&self) -> Reply {
        let mut r = self.reply(
            StatusCode::METHOD_NOT_ALLOWED,
            b"Method Not Allowed\n".to_vec(),
            None,
        );
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        r
    }

    async fn add_member(&self, peer_urls: Vec<String>) -> Result<Reply, Refusal> {
        let taken = {
            let m = self.raft.shared.machine();
            m.members
                .values()
                .any(|mem| mem.peer_urls.iter().any(|u| peer_urls.contains(u)))
        };
        if taken {
            return Err(peer_url_exists());
        }
        let member = Member {
            id: member_id(&peer_urls),
            name: String::new(),
            peer_urls,
            client_urls: vec![],
        };
        match self.raft.add_member(member.clone()).await {
            Ok(_) => Ok(self.typed_json(StatusCode::CREATED, &member_json(&member))),
            Err(e) => Err(conf_error(e)),
        }
    }

    async fn remove_member(&self, id: u64) -> Result<Reply, Refusal> {
        let member = self.raft.shared.machine().members.get(&id).cloned();
        let Some(member) = member else {
            return Err(no_such_member(&format!("{id:x}")));
        };
        match self.raft.remove_member(member).await {
            Ok(_) => Ok(self.reply(StatusCode::NO_CONTENT, vec![], None)),
            Err(e) => Err(conf_error(e)),
        }
    }

    async fn update_member(&self, id: u64, peer_urls: Vec<String>) -> Result<Reply, Refusal> {
        let (known, taken) = {
            let m = self.raft.shared.machine();
            let taken = m
                .members
                .values()
                .filter(|x| x.id != id)
                .any(|x| x.peer_urls.iter().any(|u| peer_urls.contains(u)));
            (m.members.contains_key(&id), taken)
        };
        if !known {
            return Err(no_such_member(&format!("{id:x}")));
        }
        if taken {
            return Err(peer_url_exists());
        }
        match self.raft.update_peers(id, peer_urls).await {
            Ok(o) if o.result.is_ok() => Ok(self.reply(StatusCode::NO_CONTENT, vec![], None)),
            Ok(_) => Err(no_such_member(&format!("{id:x}"))),
            Err(e) => Err(conf_error(e)),
        }
    }
}

/// etcd's `unmarshalRequest`: a JSON body (415 for another content type) of at least one
/// http(s) peer URL.
fn peer_urls(req: &Request<Bytes>) -> Result<Vec<String>, Refusal> {
    let ctype = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ctype = match ctype.split_once(';') {
        Some((t, _)) => t.trim().to_ascii_lowercase(),
        None => ctype.to_string(),
    };
    if ctype != "application/json" {
        let msg = format!("Bad Content-Type {ctype}, accept application/json");
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, msg));
    }
    let body: PeerUrlsRequest = serde_json::from_slice(req.body())
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad member JSON: {e}")))?;
    if body.peer_urls.is_empty() || body.peer_urls.iter().any(|u| peer_addr(u).is_none()) {
        let msg = "peerURLs must be non-empty http URLs".to_string();
        return Err((StatusCode::BAD_REQUEST, msg));
    }
    Ok(body.peer_urls)
}

/// A hex member id (etcd's `getID`: anything else is "No such member").
fn hex_id(text: &str) -> Result<u64, Refusal> {
    u64::from_str_radix(text, 16).map_err(|_| no_such_member(text))
}

fn no_such_member(id_text: &str) -> Refusal {
    (StatusCode::NOT_FOUND, format!("No such member: {id_text}"))
}

fn peer_url_exists() -> Refusal {
    (
        StatusCode::CONFLICT,
        "membership: peerURL exists".to_string(),
    )
}

fn conf_error(e: ProposeError) -> Refusal {
    let status = match e {
        ProposeError::Rejected(_) => StatusCode::CONFLICT,
        ProposeError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string())
}
