//! `/v2/auth`: etcd 3.4's v2 auth API (users, roles, enable/disable), stored in the
//! replicated store under [`auth::PREFIX`], and the checks it puts on `/v2/keys` and on
//! fleet's API: who is asking (basic auth), and whether their roles reach the key.
//! Shapes, codes and messages are etcd's (see `tests/auth_diff.rs`).

use super::{Api, Reply};
use crate::auth::{self, err, AuthError, Role, User};
use crate::kv::error::{KEY_NOT_FOUND, NODE_EXIST};
use crate::kv::{Command, Precondition};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use serde::Serialize;

/// etcd's bcrypt cost.
const BCRYPT_COST: u32 = 10;
/// Passwords checked recently, so a request does not pay a bcrypt verification each time.
pub const VERIFIED_MAX: usize = 1024;

/// Who a request is.
pub(super) enum Caller {
    Anonymous,
    User(User),
    /// Credentials that do not check out: refused, never treated as a guest.
    Refused,
}

/// `GET /v2/auth/roles` (typed: etcd's field order).
#[derive(Serialize)]
struct Roles {
    roles: Vec<Role>,
}

/// `GET /v2/auth/users`: `null` when there are none, as etcd's nil slice.
#[derive(Serialize)]
struct Users {
    users: Option<Vec<UserWithRoles>>,
}

/// A user as listed: role objects instead of names, no password.
#[derive(Serialize)]
struct UserWithRoles {
    user: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    roles: Vec<Role>,
}

impl Api {
    pub(super) async fn auth_api(&self, req: &Request<Bytes>, rest: &str) -> Reply {
        let pieces: Vec<&str> = rest.split('/').collect();
        let r = match pieces.as_slice() {
            ["", "enable"] => self.enable(req).await,
            ["", kind @ ("users" | "roles")] | ["", kind @ ("users" | "roles"), ""] => {
                if req.method() != Method::GET {
                    return self.not_allowed("GET");
                }
                self.root_only(req).and_then(|_| self.list(kind))
            }
            ["", kind @ ("users" | "roles"), name] => {
                if !matches!(*req.method(), Method::GET | Method::PUT | Method::DELETE) {
                    return self.not_allowed("GET,PUT,DELETE");
                }
                match self.root_only(req) {
                    Ok(()) if *kind == "users" => self.user(req, name).await,
                    Ok(()) => self.role(req, name).await,
                    Err(e) => Err(e),
                }
            }
            ["", "users" | "roles", ..] => Err(err(400, "Invalid path")),
            _ => {
                return self.reply(
                    StatusCode::NOT_FOUND,
                    b"404 page not found\n".to_vec(),
                    None,
                )
            }
        };
        r.unwrap_or_else(|e| self.auth_error(&e))
    }

    /// etcd's `{"message":…}` error body (no newline).
    pub(super) fn auth_error(&self, e: &AuthError) -> Reply {
        let body = serde_json::to_vec(&serde_json::json!({ "message": e.message }))
            .expect("json serializes");
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.reply(status, body, None)
    }

    fn ok_json<T: Serialize>(&self, status: StatusCode, v: &T) -> Result<Reply, AuthError> {
        let mut body = serde_json::to_vec(v).map_err(|_| internal())?;
        body.push(b'\n');
        Ok(self.reply(status, body, None))
    }

    /// The store's copy of a small auth value.
    fn stored(&self, key: &str) -> Option<String> {
        let m = self.raft.shared.machine();
        m.store.get(key, false).ok().and_then(|e| e.node.value)
    }

    fn names(&self, dir: &str) -> Vec<String> {
        let m = self.raft.shared.machine();
        let Ok(ev) = m.store.get(&format!("{}/{dir}", auth::PREFIX), false) else {
            return vec![];
        };
        let prefix = format!("{}/{dir}/", auth::PREFIX);
        let mut names: Vec<String> = ev
            .node
            .nodes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| n.key.strip_prefix(&prefix).map(String::from))
            .collect();
        names.sort();
        names
    }

    pub(super) fn auth_enabled(&self) -> bool {
        self.stored(auth::ENABLED_KEY).as_deref() == Some("true")
    }

    fn get_user(&self, name: &str) -> Option<User> {
        let mut u: User = serde_json::from_str(&self.stored(&auth::user_key(name))?).ok()?;
        if name == auth::ROOT {
            let roles = u.roles.get_or_insert_with(Vec::new);
            if !roles.iter().any(|r| r == auth::ROOT) {
                roles.push(auth::ROOT.into());
            }
        }
        Some(u)
    }

    fn get_role(&self, name: &str) -> Option<Role> {
        if name == auth::ROOT {
            return Some(auth::root_role());
        }
        serde_json::from_str(&self.stored(&auth::role_key(name))?).ok()
    }

    /// Writes an auth record through Raft; `exist` is the precondition (`Some(false)`:
    /// create, `Some(true)`: replace), `None` deletes.
    async fn store_write(
        &self,
        key: String,
        value: Option<String>,
        exist: Option<bool>,
    ) -> Result<(), u32> {
        let prev = Precondition {
            exist,
            ..Default::default()
        };
        let cmd = match value {
            Some(value) => Command::Put {
                key,
                value,
                dir: false,
                expire_ms: None,
                refresh: false,
                prev,
            },
            None => Command::Delete {
                key,
                dir: false,
                recursive: false,
                prev,
            },
        };
        let out = self.raft.write(cmd).await.map_err(|_| 0u32)?;
        out.result.map(|_| ()).map_err(|e| e.code)
    }

    /// Deletes a user or role record: 200 with an empty body, or 404 with `missing`.
    async fn delete_record(&self, key: String, missing: String) -> Result<Reply, AuthError> {
        match self.store_write(key, None, Some(true)).await {
            Ok(()) => Ok(self.reply(StatusCode::OK, vec![], None)),
            Err(KEY_NOT_FOUND) => Err(err(404, missing)),
            Err(_) => Err(internal()),
        }
    }

    /// The caller, from `Authorization: Basic …`; without one, on a listener that
    /// requires client certificates, the first certificate common name that names a user
    /// (no password: the handshake proved it), as etcd does.
    pub(super) fn caller(&self, req: &Request<Bytes>) -> Caller {
        let Some(h) = req.headers().get(http::header::AUTHORIZATION) else {
            let names = req
                .extensions()
                .get::<flotilla_shims::tls::ClientCertNames>();
            // A certificate that names no user gets the guest role on keys and nothing
            // on /v2/auth, as in etcd.
            return names
                .into_iter()
                .flat_map(|n| n.0.iter())
                .find_map(|cn| self.get_user(cn))
                .map_or(Caller::Anonymous, Caller::User);
        };
        let Some((name, password)) = basic_auth(h) else {
            return Caller::Refused;
        };
        let Some(user) = self.get_user(&name) else {
            return Caller::Refused;
        };
        if self.password_ok(&user, &password) {
            Caller::User(user)
        } else {
            Caller::Refused
        }
    }

    fn password_ok(&self, user: &User, password: &str) -> bool {
        let key = (
            user.user.clone(),
            sha1_smol::Sha1::from(password).digest().bytes(),
        );
        if self.verified.lock().expect("auth lock").get(&key) == Some(&user.password) {
            return true;
        }
        let ok = bcrypt::verify(password, &user.password).unwrap_or(false);
        if ok {
            let mut v = self.verified.lock().expect("auth lock");
            if v.len() >= VERIFIED_MAX {
                v.clear();
            }
            v.insert(key, user.password.clone());
        }
        ok
    }

    /// etcd's `hasRootAccess`: open while auth is disabled; otherwise a user holding the
    /// root role, or 401.
    pub(super) fn root_only(&self, req: &Request<Bytes>) -> Result<(), AuthError> {
        if !self.auth_enabled() {
            return Ok(());
        }
        match self.caller(req) {
            Caller::User(u) if u.roles.iter().flatten().any(|r| r == auth::ROOT) => Ok(()),
            _ => Err(insufficient()),
        }
    }

    /// etcd's `hasKeyPrefixAccess`: may this request touch `key` (and, `recursive`, all
    /// under it)? Anonymous requests get the guest role (never recursively).
    pub(super) fn key_access(&self, req: &Request<Bytes>, key: &str, recursive: bool) -> bool {
        let write = !matches!(*req.method(), Method::GET | Method::HEAD);
        self.access(req, key, recursive, write)
    }

    /// [`Self::key_access`] for a read or write this request would make (the dashboard
    /// asks before it shows a button).
    pub(super) fn access(
        &self,
        req: &Request<Bytes>,
        key: &str,
        recursive: bool,
        write: bool,
    ) -> bool {
        if !self.auth_enabled() {
            return true;
        }
        let user = match self.caller(req) {
            Caller::Refused => return false,
            Caller::Anonymous => {
                return self
                    .get_role(auth::GUEST)
                    .is_some_and(|g| g.has_key_access(key, write))
            }
            Caller::User(u) => u,
        };
        user.roles
            .iter()
            .flatten()
            .filter_map(|r| self.get_role(r))
            .any(|role| {
                if recursive {
                    role.has_recursive_access(key, write)
                } else {
                    role.has_key_access(key, write)
                }
            })
    }

    fn list(&self, kind: &str) -> Result<Reply, AuthError> {
        if kind == "roles" {
            let mut names = self.names("roles");
            names.push(auth::ROOT.into());
            names.sort();
            let roles: Vec<Role> = names.iter().filter_map(|n| self.get_role(n)).collect();
            return self.ok_json(StatusCode::OK, &Roles { roles });
        }
        let mut users = vec![];
        for name in self.names("users") {
            let u = self.get_user(&name).ok_or_else(internal)?;
            let roles = u.roles.iter().flatten().filter_map(|r| self.get_role(r));
            users.push(UserWithRoles {
                user: u.user.clone(),
                roles: roles.collect(),
            });
        }
        let users = (!users.is_empty()).then_some(users);
        self.ok_json(StatusCode::OK, &Users { users })
    }

    async fn enable(&self, req: &Request<Bytes>) -> Result<Reply, AuthError> {
        let method = req.method().clone();
        if !matches!(method, Method::GET | Method::PUT | Method::DELETE) {
            return Ok(self.not_allowed("GET,PUT,DELETE"));
        }
        if method == Method::GET {
            let v = serde_json::json!({ "enabled": self.auth_enabled() });
            return self.ok_json(StatusCode::OK, &v);
        }
        self.root_only(req)?;
        let enabled = self.auth_enabled();
        if method == Method::PUT {
            if enabled {
                return Err(err(409, "auth: already enabled"));
            }
            if self.get_user(auth::ROOT).is_none() {
                return Err(err(409, "auth: No root user available, please create one"));
            }
            if self.get_role(auth::GUEST).is_none() {
                let guest =
                    serde_json::to_string(&auth::default_guest_role()).map_err(|_| internal())?;
                self.store_write(auth::role_key(auth::GUEST), Some(guest), None)
                    .await
                    .map_err(|_| internal())?;
            }
        } else if !enabled {
            return Err(err(409, "auth: already disabled"));
        }
        let flag = if method == Method::PUT {
            "true"
        } else {
            "false"
        };
        self.store_write(auth::ENABLED_KEY.into(), Some(flag.into()), None)
            .await
            .map_err(|_| internal())?;
        Ok(self.reply(StatusCode::OK, vec![], None))
    }

    async fn user(&self, req: &Request<Bytes>, name: &str) -> Result<Reply, AuthError> {
        match *req.method() {
            Method::GET => {
                let u = self
                    .get_user(name)
                    .ok_or_else(|| err(404, format!("auth: User {name} does not exist.")))?;
                let mut roles = vec![];
                for r in u.roles.iter().flatten() {
                    let role = self
                        .get_role(r)
                        .ok_or_else(|| err(404, format!("auth: Role {r} does not exist.")))?;
                    roles.push(role);
                }
                self.ok_json(
                    StatusCode::OK,
                    &UserWithRoles {
                        user: u.user,
                        roles,
                    },
                )
            }
            Method::DELETE => {
                if self.auth_enabled() && name == auth::ROOT {
                    return Err(err(
                        403,
                        "auth: Cannot delete root user while auth is enabled.",
                    ));
                }
                let missing = format!("auth: User {name} does not exist");
                self.delete_record(auth::user_key(name), missing).await
            }
            _ => self.put_user(req, name).await,
        }
    }

    async fn put_user(&self, req: &Request<Bytes>, name: &str) -> Result<Reply, AuthError> {
        let u: User = serde_json::from_slice(req.body())
            .map_err(|_| err(400, "Invalid JSON in request body."))?;
        if u.user != name {
            return Err(err(
                400,
                "User JSON name does not match the name in the URL",
            ));
        }
        let plain_roles = u.roles.as_ref().is_some_and(|r| !r.is_empty());
        let grant_or_revoke = u.grant.as_ref().is_some_and(|g| !g.is_empty())
            || u.revoke.as_ref().is_some_and(|r| !r.is_empty());
        let (out, created) = if grant_or_revoke {
            if plain_roles {
                return Err(err(400, "User JSON contains both roles and grant/revoke"));
            }
            (self.update_user(u).await?, false)
        } else if plain_roles {
            (self.create_user(u).await?, false)
        } else if self.get_user(name).is_some() {
            (self.update_user(u).await?, false)
        } else {
            (self.create_user(u).await?, true)
        };
        let shown = User {
            password: String::new(),
            ..out
        };
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        self.ok_json(status, &shown)
    }

    fn hash(&self, password: &str) -> Result<String, AuthError> {
        let mut salt = [0u8; 16];
        {
            let mut rng = self.rng.lock().expect("auth rng lock");
            for chunk in salt.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
            }
        }
        bcrypt::hash_with_salt(password, BCRYPT_COST, salt)
            .map(|h| h.format_for_version(bcrypt::Version::TwoA))
            .map_err(|_| internal())
    }

    async fn create_user(&self, mut u: User) -> Result<User, AuthError> {
        if u.user == auth::ROOT {
            let roles = u.roles.get_or_insert_with(Vec::new);
            if !roles.iter().any(|r| r == auth::ROOT) {
                roles.push(auth::ROOT.into());
            }
        }
        if u.password.is_empty() {
            let msg = format!("auth: Cannot create user {} with an empty password", u.user);
            return Err(err(400, msg));
        }
        let stored = User {
            password: self.hash(&u.password)?,
            grant: None,
            revoke: None,
            ..u.clone()
        };
        let value = serde_json::to_string(&stored).map_err(|_| internal())?;
        match self
            .store_write(auth::user_key(&u.user), Some(value), Some(false))
            .await
        {
            Ok(()) => Ok(stored),
            Err(NODE_EXIST) => Err(err(409, format!("auth: User {} already exists.", u.user))),
            Err(_) => Err(internal()),
        }
    }

    async fn update_user(&self, u: User) -> Result<User, AuthError> {
        // etcd reads the user first: its "does not exist." is what a missing one gets.
        let old = self
            .get_user(&u.user)
            .ok_or_else(|| err(404, format!("auth: User {} does not exist.", u.user)))?;
        let new_hash = match u.password.as_str() {
            "" => None,
            p => Some(self.hash(p)?),
        };
        let merged = auth::merge_user(&old, &u, new_hash)?;
        let value = serde_json::to_string(&merged).map_err(|_| internal())?;
        match self
            .store_write(auth::user_key(&u.user), Some(value), Some(true))
            .await
        {
            Ok(()) => Ok(merged),
            Err(KEY_NOT_FOUND) => Err(err(404, format!("auth: User {} doesn't exist.", u.user))),
            Err(_) => Err(internal()),
        }
    }

    async fn role(&self, req: &Request<Bytes>, name: &str) -> Result<Reply, AuthError> {
        let root = || err(403, "auth: Cannot modify role root: is root role.");
        match *req.method() {
            Method::GET => {
                let r = self
                    .get_role(name)
                    .ok_or_else(|| err(404, format!("auth: Role {name} does not exist.")))?;
                self.ok_json(StatusCode::OK, &r)
            }
            Method::DELETE => {
                if name == auth::ROOT {
                    return Err(root());
                }
                let missing = format!("auth: Role {name} doesn't exist.");
                self.delete_record(auth::role_key(name), missing).await
            }
            _ => {
                let r: Role = serde_json::from_slice(req.body())
                    .map_err(|_| err(400, "Invalid JSON in request body."))?;
                if r.role != name {
                    return Err(err(
                        400,
                        "Role JSON name does not match the name in the URL",
                    ));
                }
                let empty = |p: &Option<auth::Permissions>| p.as_ref().is_none_or(|p| p.is_empty());
                if empty(&r.grant) && empty(&r.revoke) {
                    if name == auth::ROOT {
                        return Err(root());
                    }
                    let value = serde_json::to_string(&r).map_err(|_| internal())?;
                    return match self
                        .store_write(auth::role_key(name), Some(value), Some(false))
                        .await
                    {
                        Ok(()) => self.ok_json(StatusCode::CREATED, &r),
                        Err(NODE_EXIST) => {
                            Err(err(409, format!("auth: Role {name} already exists.")))
                        }
                        Err(_) => Err(internal()),
                    };
                }
                if !r.permissions.is_empty() {
                    return Err(err(
                        400,
                        "Role JSON contains both permissions and grant/revoke",
                    ));
                }
                if name == auth::ROOT {
                    return Err(root());
                }
                let old = self
                    .get_role(name)
                    .ok_or_else(|| err(404, format!("auth: Role {name} doesn't exist.")))?;
                let merged = auth::merge_role(&old, &r)?;
                let value = serde_json::to_string(&merged).map_err(|_| internal())?;
                match self
                    .store_write(auth::role_key(name), Some(value), Some(true))
                    .await
                {
                    Ok(()) => self.ok_json(StatusCode::OK, &merged),
                    Err(KEY_NOT_FOUND) => {
                        Err(err(404, format!("auth: Role {name} doesn't exist.")))
                    }
                    Err(_) => Err(internal()),
                }
            }
        }
    }
}

fn insufficient() -> AuthError {
    err(401, "Insufficient credentials")
}

fn internal() -> AuthError {
    err(500, "Internal Server Error")
}

/// Go's `Request.BasicAuth`: `Basic base64(user:password)`, split at the first `:`.
fn basic_auth(h: &HeaderValue) -> Option<(String, String)> {
    use base64::Engine;
    let v = h.to_str().ok()?;
    let (scheme, b64) = v.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}
