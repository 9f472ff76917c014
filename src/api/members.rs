//! `/v2/members`: list, add (POST `{"peerURLs": [...]}`) and remove (DELETE `/ID`) members
//! through Raft conf changes.

use super::{Api, Reply};
use crate::raft::{member_id, peer_addr, Member, ProposeError};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct AddRequest {
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

fn member_json(m: &Member) -> serde_json::Value {
    serde_json::to_value(MemberJson {
        id: format!("{:x}", m.id),
        name: &m.name,
        peer_urls: &m.peer_urls,
        client_urls: &m.client_urls,
    })
    .expect("member serializes")
}

impl Api {
    pub(super) async fn members(&self, req: &Request<Bytes>, rest: &str) -> Reply {
        match (req.method(), rest) {
            (&Method::GET, "" | "/") => self.list_members(),
            (&Method::GET, "/leader") => self.leader_member(),
            (&Method::POST, "" | "/") => self.add_member(req.body()).await,
            (&Method::DELETE, id) if id.len() > 1 => self.remove_member(&id[1..]).await,
            (&Method::PUT, id) if id.len() > 1 => self.update_member(&id[1..], req.body()).await,
            _ => self.message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        }
    }

    fn list_members(&self) -> Reply {
        let list: Vec<_> = self
            .raft
            .shared
            .machine()
            .members
            .values()
            .map(member_json)
            .collect();
        self.json(StatusCode::OK, json!({ "members": list }))
    }

    fn leader_member(&self) -> Reply {
        let leader = self.raft.shared.status().leader;
        let m = self.raft.shared.machine().members.get(&leader).cloned();
        match m {
            Some(m) => self.json(StatusCode::OK, member_json(&m)),
            None => self.message(StatusCode::SERVICE_UNAVAILABLE, "raft: no leader"),
        }
    }

    fn message(&self, status: StatusCode, msg: &str) -> Reply {
        self.json(status, json!({ "message": msg }))
    }

    /// A `{"peerURLs": [...]}` body with at least one http URL, or why not.
    fn peer_urls(body: &[u8]) -> Result<Vec<String>, String> {
        let req: AddRequest =
            serde_json::from_slice(body).map_err(|e| format!("bad member JSON: {e}"))?;
        if req.peer_urls.is_empty() || req.peer_urls.iter().any(|u| peer_addr(u).is_none()) {
            return Err("peerURLs must be non-empty http URLs".into());
        }
        Ok(req.peer_urls)
    }

    /// A hex member id, or why not.
    fn member_id(id_hex: &str) -> Result<u64, String> {
        u64::from_str_radix(id_hex, 16).map_err(|_| format!("member id {id_hex:?} is not hex"))
    }

    async fn add_member(&self, body: &[u8]) -> Reply {
        let peer_urls = match Self::peer_urls(body) {
            Ok(u) => u,
            Err(why) => return self.message(StatusCode::BAD_REQUEST, &why),
        };
        let taken = {
            let m = self.raft.shared.machine();
            m.members
                .values()
                .any(|mem| mem.peer_urls.iter().any(|u| peer_urls.contains(u)))
        };
        if taken {
            return self.message(StatusCode::CONFLICT, "membership: peerURL exists");
        }
        let member = Member {
            id: member_id(&peer_urls),
            name: String::new(),
            peer_urls,
            client_urls: vec![],
        };
        match self.raft.add_member(member.clone()).await {
            Ok(_) => self.json(StatusCode::CREATED, member_json(&member)),
            Err(e) => self.conf_error(e),
        }
    }

    async fn remove_member(&self, id_hex: &str) -> Reply {
        let id = match Self::member_id(id_hex) {
            Ok(id) => id,
            Err(why) => return self.message(StatusCode::BAD_REQUEST, &why),
        };
        let member = self.raft.shared.machine().members.get(&id).cloned();
        let Some(member) = member else {
            return self.message(StatusCode::NOT_FOUND, &format!("member {id_hex} not found"));
        };
        match self.raft.remove_member(member).await {
            Ok(_) => self.reply(StatusCode::NO_CONTENT, vec![], None),
            Err(e) => self.conf_error(e),
        }
    }

    async fn update_member(&self, id_hex: &str, body: &[u8]) -> Reply {
        let (id, peer_urls) = match (Self::member_id(id_hex), Self::peer_urls(body)) {
            (Ok(id), Ok(urls)) => (id, urls),
            (Err(why), _) | (_, Err(why)) => return self.message(StatusCode::BAD_REQUEST, &why),
        };
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
            return self.message(StatusCode::NOT_FOUND, &format!("member {id_hex} not found"));
        }
        if taken {
            return self.message(StatusCode::CONFLICT, "membership: peerURL exists");
        }
        match self.raft.update_peers(id, peer_urls).await {
            Ok(o) if o.result.is_ok() => self.reply(StatusCode::NO_CONTENT, vec![], None),
            Ok(_) => self.message(StatusCode::NOT_FOUND, &format!("member {id_hex} not found")),
            Err(e) => self.conf_error(e),
        }
    }

    fn conf_error(&self, e: ProposeError) -> Reply {
        let status = match e {
            ProposeError::Rejected(_) => StatusCode::CONFLICT,
            ProposeError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        self.message(status, &e.to_string())
    }
}
