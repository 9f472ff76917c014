//! `GET /flotilla/v1/whoami[?key=/path][&unit=name]`: who the caller is and what they may
//! do, by the same checks the APIs make, so the dashboard hides what would be refused.

use crate::api::auth::Caller;
use crate::api::{Api, Reply};
use crate::sched::registry;
use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::json;

impl Api {
    pub(in crate::api) fn whoami(&self, req: &Request<Bytes>) -> Reply {
        let q: Vec<(String, String)> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let param = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let key = param("key").unwrap_or_else(|| "/".into());
        if !key.starts_with('/') {
            return self.bare_json(
                StatusCode::BAD_REQUEST,
                json!({"message": format!("key {key:?} must start with /")}),
            );
        }
        let unit_key = registry::unit_key(&param("unit").unwrap_or_else(|| "any.service".into()));
        let enabled = self.auth_enabled();
        let (user, roles) = match self.caller(req) {
            _ if !enabled => (None, vec![]),
            Caller::Refused => {
                return self.bare_json(
                    StatusCode::UNAUTHORIZED,
                    json!({"message": "the user name or password is wrong"}),
                )
            }
            Caller::Anonymous => (None, vec![crate::auth::GUEST.to_string()]),
            Caller::User(u) => (Some(u.user.clone()), u.roles.clone().unwrap_or_default()),
        };
        let root = !enabled || roles.iter().any(|r| r == crate::auth::ROOT);
        let body = json!({
            "authEnabled": enabled,
            "user": user,
            "roles": roles,
            "root": root,
            "key": {
                "path": key,
                "read": self.access(req, &key, false, false),
                "readRecursive": self.access(req, &key, true, false),
                "write": self.access(req, &key, false, true),
                "writeRecursive": self.access(req, &key, true, true),
            },
            "network": {
                "prefix": self.ui.network_prefix,
                "dnsDomain": self.ui.dns_domain,
            },
            "schedule": {
                "read": self.access(req, &format!("{}/", registry::ROOT), true, false),
                "write": self.access(req, &unit_key, false, true),
            },
        });
        self.bare_json(StatusCode::OK, body)
    }
}
