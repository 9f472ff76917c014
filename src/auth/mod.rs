//! etcd's v2 auth as a pure model: users, roles and their key permissions, what a role
//! may touch, and how grants and revokes change users and roles — with etcd 3.4's JSON
//! shapes (nil lists stay `null`, merged ones are sorted) and its error texts. The HTTP
//! side (who is asking, storage through Raft) is `api::auth`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub const ROOT: &str = "root";
pub const GUEST: &str = "guest";
/// Where users, roles and the enabled flag live in the replicated store; `/v2/keys`
/// never reaches it (etcd keeps them outside the keys' namespace).
pub const PREFIX: &str = "/_flotilla/auth";
pub const ENABLED_KEY: &str = "/_flotilla/auth/enabled";

pub fn user_key(name: &str) -> String {
    format!("{PREFIX}/users/{name}")
}

pub fn role_key(name: &str) -> String {
    format!("{PREFIX}/roles/{name}")
}

/// An expected refusal: the HTTP status and etcd's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    pub status: u16,
    pub message: String,
}

pub fn err(status: u16, message: impl Into<String>) -> AuthError {
    AuthError {
        status,
        message: message.into(),
    }
}

fn is_none_or_empty(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

/// A user as etcd stores and exchanges it (`password` holds the bcrypt hash when stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub grant: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub revoke: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rw {
    #[serde(default)]
    pub read: Option<Vec<String>>,
    #[serde(default)]
    pub write: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    #[serde(default)]
    pub kv: Rw,
}

impl Permissions {
    /// Go's `IsEmpty`: both lists empty (or absent).
    pub fn is_empty(&self) -> bool {
        self.kv.read.as_ref().is_none_or(Vec::is_empty)
            && self.kv.write.as_ref().is_none_or(Vec::is_empty)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub role: String,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Permissions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<Permissions>,
}

fn all_keys(pattern: &str) -> Role {
    let every = Some(vec![pattern.to_string()]);
    Role {
        role: String::new(),
        permissions: Permissions {
            kv: Rw {
                read: every.clone(),
                write: every,
            },
        },
        grant: None,
        revoke: None,
    }
}

/// The built-in root role: everything. Never stored.
pub fn root_role() -> Role {
    Role {
        role: ROOT.into(),
        ..all_keys("/*")
    }
}

/// The guest role created when auth is enabled: everything, as before auth existed.
pub fn default_guest_role() -> Role {
    Role {
        role: GUEST.into(),
        ..all_keys("/*")
    }
}

/// etcd's `simpleMatch`: a trailing `*` makes the pattern a prefix; otherwise exact.
/// (An empty pattern matches nothing; etcd panics on it.)
fn simple_match(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => !pattern.is_empty() && key == pattern,
    }
}

/// etcd's `prefixMatch`: only `*` patterns grant a whole subtree.
fn prefix_match(pattern: &str, key: &str) -> bool {
    pattern
        .strip_suffix('*')
        .is_some_and(|prefix| key.starts_with(prefix))
}

impl Role {
    fn list(&self, write: bool) -> &[String] {
        let l = if write {
            &self.permissions.kv.write
        } else {
            &self.permissions.kv.read
        };
        l.as_deref().unwrap_or(&[])
    }

    /// May this role read (or write) `key` itself?
    pub fn has_key_access(&self, key: &str, write: bool) -> bool {
        self.role == ROOT || self.list(write).iter().any(|p| simple_match(p, key))
    }

    /// May this role read (or write) `key` and everything under it?
    pub fn has_recursive_access(&self, key: &str, write: bool) -> bool {
        self.role == ROOT || self.list(write).iter().any(|p| prefix_match(p, key))
    }
}

fn sorted(set: BTreeSet<String>) -> Option<Vec<String>> {
    Some(set.into_iter().collect())
}

/// A user after an update: grants then revokes, then the password (`new_hash`: the hash
/// of the new one, if one was given). Refuses duplicate grants, revokes of ungranted
/// roles, and updates that change nothing.
pub fn merge_user(old: &User, new: &User, new_hash: Option<String>) -> Result<User, AuthError> {
    let mut roles: BTreeSet<String> = old.roles.iter().flatten().cloned().collect();
    for g in new.grant.iter().flatten() {
        if !roles.insert(g.clone()) {
            let msg = format!("auth: Granting duplicate role {g} for user {}", new.user);
            return Err(err(409, msg));
        }
    }
    for r in new.revoke.iter().flatten() {
        if !roles.remove(r) {
            let msg = format!("auth: Revoking ungranted role {r} for user {}", new.user);
            return Err(err(409, msg));
        }
    }
    let password = new_hash.unwrap_or_else(|| old.password.clone());
    let out = User {
        user: old.user.clone(),
        password,
        roles: sorted(roles),
        grant: None,
        revoke: None,
    };
    if out == *old {
        return Err(err(
            400,
            "auth: User not updated. Use grant/revoke/password to update the user.",
        ));
    }
    Ok(out)
}

fn merge_list(
    old: &Option<Vec<String>>,
    grant: Option<&Vec<String>>,
    revoke: Option<&Vec<String>>,
    what: &str,
) -> Result<Option<Vec<String>>, AuthError> {
    let mut set: BTreeSet<String> = old.iter().flatten().cloned().collect();
    for g in grant.into_iter().flatten() {
        if !set.insert(g.clone()) {
            return Err(err(
                409,
                format!("auth: Granting duplicate {what} permission {g}"),
            ));
        }
    }
    // Revoking what is not there is ignored, as etcd does.
    for r in revoke.into_iter().flatten() {
        set.remove(r);
    }
    Ok(sorted(set))
}

/// A role after an update: grants then revokes (read, then write). Refuses duplicate
/// grants and updates that change nothing.
pub fn merge_role(old: &Role, new: &Role) -> Result<Role, AuthError> {
    let (g, r) = (new.grant.as_ref(), new.revoke.as_ref());
    let read = merge_list(
        &old.permissions.kv.read,
        g.and_then(|p| p.kv.read.as_ref()),
        r.and_then(|p| p.kv.read.as_ref()),
        "read",
    )?;
    let write = merge_list(
        &old.permissions.kv.write,
        g.and_then(|p| p.kv.write.as_ref()),
        r.and_then(|p| p.kv.write.as_ref()),
        "write",
    )?;
    let out = Role {
        role: old.role.clone(),
        permissions: Permissions {
            kv: Rw { read, write },
        },
        grant: None,
        revoke: None,
    };
    if out == *old {
        return Err(err(
            400,
            "auth: Role not updated. Use grant/revoke to update the role.",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(read: &[&str], write: &[&str]) -> Role {
        let v = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect());
        Role {
            role: "r".into(),
            permissions: Permissions {
                kv: Rw {
                    read: v(read),
                    write: v(write),
                },
            },
            grant: None,
            revoke: None,
        }
    }

    #[test]
    fn patterns_match_as_etcds() {
        let r = role(&["/foo*", "/exact", "/dir/*", ""], &["/w/*"]);
        for (key, read) in [
            ("/foo", true),
            ("/foobar", true),
            ("/foo/x", true),
            ("/exact", true),
            ("/exact/x", false),
            ("/dir", false),
            ("/dir/", true),
            ("/dir/a", true),
            ("/other", false),
            ("", false),
        ] {
            assert_eq!(r.has_key_access(key, false), read, "{key}");
        }
        assert!(
            !r.has_key_access("/foo", true),
            "write does not follow read"
        );
        assert!(r.has_key_access("/w/a", true));
        assert!(
            !r.has_key_access("/w/a", false),
            "read does not follow write"
        );
        assert!(r.has_recursive_access("/dir/", false));
        assert!(
            !r.has_recursive_access("/exact", false),
            "exact never recursive"
        );
        assert!(root_role().has_recursive_access("", true));
    }

    #[test]
    fn user_merges_grant_then_revoke_and_refuse_no_ops() {
        let old = User {
            user: "alice".into(),
            password: "h1".into(),
            roles: Some(vec!["b".into()]),
            grant: None,
            revoke: None,
        };
        let ask = |grant: &[&str], revoke: &[&str], pw: &str| User {
            user: "alice".into(),
            password: pw.into(),
            roles: None,
            grant: Some(grant.iter().map(|s| s.to_string()).collect()),
            revoke: Some(revoke.iter().map(|s| s.to_string()).collect()),
        };
        let m = merge_user(&old, &ask(&["a"], &[], ""), None).unwrap();
        assert_eq!(m.roles, Some(vec!["a".to_string(), "b".into()]));
        assert_eq!(m.password, "h1");
        let e = merge_user(&old, &ask(&["b"], &[], ""), None).unwrap_err();
        assert_eq!(
            e,
            err(409, "auth: Granting duplicate role b for user alice")
        );
        let e = merge_user(&old, &ask(&[], &["z"], ""), None).unwrap_err();
        assert_eq!(
            e,
            err(409, "auth: Revoking ungranted role z for user alice")
        );
        let e = merge_user(&old, &ask(&["a"], &["a"], ""), None).unwrap_err();
        assert_eq!(e.status, 400);
        let m = merge_user(&old, &ask(&[], &[], "pw"), Some("#pw".into())).unwrap();
        assert_eq!(m.password, "#pw");
    }

    #[test]
    fn role_merges_sort_ignore_missing_revokes_and_refuse_duplicates() {
        let old = role(&["/b"], &[]);
        let grant = |read: &[&str]| Role {
            grant: Some(role(read, &[]).permissions),
            ..role(&[], &[])
        };
        let m = merge_role(&old, &grant(&["/a"])).unwrap();
        assert_eq!(m.permissions.kv.read, Some(vec!["/a".into(), "/b".into()]));
        assert_eq!(merge_role(&old, &grant(&["/b"])).unwrap_err().status, 409);
        let revoke_missing = Role {
            revoke: Some(role(&["/zz"], &[]).permissions),
            ..role(&[], &[])
        };
        assert_eq!(merge_role(&old, &revoke_missing).unwrap_err().status, 400);
        // A null list becomes [] on the first no-op update, as in etcd.
        let nulls = Role {
            permissions: Permissions::default(),
            ..role(&[], &[])
        };
        let m = merge_role(&nulls, &revoke_missing).unwrap();
        assert_eq!(m.permissions.kv.read, Some(vec![]));
    }

    #[test]
    fn json_shapes_are_etcds() {
        let r: Role = serde_json::from_str(r#"{"role":"r"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"role":"r","permissions":{"kv":{"read":null,"write":null}}}"#
        );
        let u: User = serde_json::from_str(r#"{"user":"a","password":"p","roles":null}"#).unwrap();
        let shown = User {
            password: String::new(),
            ..u
        };
        assert_eq!(
            serde_json::to_string(&shown).unwrap(),
            r#"{"user":"a","roles":null}"#
        );
    }
}
