//! The data a template sees: confd's flat key → value store ("memkv") and its lookup
//! functions, with confd's semantics (`../shared/reference/confd-corpus/README.md`):
//! exact keys (no path cleaning), `*` not crossing `/`, `gets` sorted by key, `getvs` by
//! value, `ls`/`lsdir` sorted names.

use crate::unitfile::glob;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KvError {
    #[error("key does not exist: {0}")]
    NotExist(String),
    #[error("syntax error in pattern: {0}")]
    BadPattern(String),
}

/// Keys and values under a resource's prefix (the prefix already stripped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemKv {
    m: BTreeMap<String, String>,
}

/// `path.Clean`, as Go has it (the lookups compare cleaned paths).
fn clean(p: &str) -> String {
    crate::kv::path::clean(p)
}

fn terms(p: &str) -> Vec<String> {
    clean(p).split('/').map(String::from).collect()
}

/// Go's `path.Dir`.
pub fn dir(p: &str) -> String {
    match p.rfind('/') {
        Some(i) => {
            let d = clean(&p[..i + 1]);
            if d.is_empty() {
                ".".into()
            } else {
                d
            }
        }
        None => ".".into(),
    }
}

/// Go's `path.Base`.
pub fn base(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return "/".into();
    }
    t.rsplit('/').next().unwrap_or(t).to_string()
}

fn same_prefix(prefix: &[String], test: &[String]) -> bool {
    test.len() >= prefix.len() && prefix.iter().zip(test).all(|(a, b)| a == b)
}

impl MemKv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.m.insert(key.to_string(), value.to_string());
    }

    pub fn insert(&mut self, key: String, value: String) {
        self.m.insert(key, value);
    }

    pub fn remove(&mut self, key: &str) {
        self.m.remove(key);
    }

    /// Removes `dir` and every key under it (a directory deleted or expired).
    pub fn remove_tree(&mut self, dir: &str) {
        self.m.remove(dir);
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        let under: Vec<String> = self
            .m
            .range(prefix.clone()..)
            .map(|(k, _)| k.clone())
            .take_while(|k| k.starts_with(&prefix))
            .collect();
        for k in under {
            self.m.remove(&k);
        }
    }

    pub fn len(&self) -> usize {
        self.m.len()
    }

    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }

    /// `get`: the pair at exactly `key`.
    pub fn get(&self, key: &str) -> Result<(&str, &str), KvError> {
        self.m
            .get_key_value(key)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .ok_or_else(|| KvError::NotExist(key.to_string()))
    }

    pub fn exists(&self, key: &str) -> bool {
        self.m.contains_key(key)
    }

    /// `getv`: the value, or the default when given.
    pub fn getv(&self, key: &str, default: Option<&str>) -> Result<String, KvError> {
        match (self.m.get(key), default) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(d)) => Ok(d.to_string()),
            (None, None) => Err(KvError::NotExist(key.to_string())),
        }
    }

    /// `gets`: pairs whose key matches the glob, by key.
    pub fn gets(&self, pattern: &str) -> Vec<(&str, &str)> {
        self.m
            .iter()
            .filter(|(k, _)| glob::matches(pattern, k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// `getvs`: the values of `gets`, sorted by value.
    pub fn getvs(&self, pattern: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .gets(pattern)
            .into_iter()
            .map(|(_, v)| v.to_string())
            .collect();
        v.sort();
        v
    }

    /// `ls`: names directly under `path` (the key itself counts when it is one).
    pub fn ls(&self, path: &str) -> Vec<String> {
        let prefix = terms(path);
        let mut out = BTreeSet::new();
        for k in self.m.keys() {
            if k == path {
                out.insert(base(k));
                continue;
            }
            if same_prefix(&prefix, &terms(&dir(k))) {
                let rest = k.strip_prefix(path).unwrap_or(k).trim_start_matches('/');
                out.insert(rest.split('/').next().unwrap_or("").to_string());
            }
        }
        out.into_iter().collect()
    }

    /// `lsdir`: names of the directories directly under `path`.
    pub fn lsdir(&self, path: &str) -> Vec<String> {
        let prefix = terms(path);
        let mut out = BTreeSet::new();
        for k in self.m.keys().filter(|k| k.starts_with(path)) {
            let items = terms(&dir(k));
            if same_prefix(&prefix, &items) && items.len() > prefix.len() {
                out.insert(items[prefix.len()].clone());
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> MemKv {
        let mut m = MemKv::new();
        for (k, v) in pairs {
            m.set(k, v);
        }
        m
    }

    #[test]
    fn lookups_as_confd() {
        let m = kv(&[
            ("/test/data/abc", "1"),
            ("/test/data/def/x", "2"),
            ("/test/data/ghi", "3"),
            ("/test/data/jkl/y/z", "4"),
            ("/top", "t"),
            ("/test/user", "mary"),
            ("/test/pass", "abc"),
        ]);
        assert_eq!(m.ls("/test/data"), ["abc", "def", "ghi", "jkl"]);
        assert_eq!(m.lsdir("/test/data"), ["def", "jkl"]);
        assert_eq!(m.ls("/"), ["top"], "only the root's leaf keys");
        assert!(m.lsdir("/").is_empty());
        assert_eq!(m.getvs("/test/*"), ["abc", "mary"]);
        assert_eq!(
            m.gets("/test/*"),
            [("/test/pass", "abc"), ("/test/user", "mary")]
        );
        assert!(
            !m.exists("/test/data"),
            "a directory does not exist as a key"
        );
        assert!(m.getv("/test/user/", None).is_err(), "no path cleaning");
        assert_eq!(m.getv("/nope", Some("d")).unwrap(), "d");
        assert_eq!(
            (dir("/test/data/abc"), base("/test/key")),
            ("/test/data".into(), "key".into())
        );
    }
}
