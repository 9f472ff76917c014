//! Request parameters, parsed and validated as etcd's v2 handler does. Body form values
//! take precedence over the query string (Go's `r.Form`).

use crate::kv::error::*;
use crate::kv::StoreError;
use std::collections::BTreeMap;

pub struct Params {
    map: BTreeMap<String, String>,
}

fn invalid(code: u32, cause: impl Into<String>) -> StoreError {
    // Validation errors report index 0, as etcd does.
    StoreError::new(code, cause, 0)
}

impl Params {
    pub fn parse(query: Option<&str>, body: Option<&[u8]>) -> Self {
        let mut map = BTreeMap::new();
        if let Some(q) = query {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        if let Some(b) = body {
            let mut from_body = BTreeMap::new();
            for (k, v) in form_urlencoded::parse(b) {
                from_body
                    .entry(k.into_owned())
                    .or_insert_with(|| v.into_owned());
            }
            map.extend(from_body);
        }
        Self { map }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Go's `strconv.ParseBool`; absent is `false`; anything else is error 209.
    pub fn bool(&self, name: &str) -> Result<bool, StoreError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) => parse_bool(v)
                .ok_or_else(|| invalid(INVALID_FIELD, format!("invalid value for {name}"))),
        }
    }

    /// `Some(bool)` when present.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, StoreError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.bool(name).map(Some),
        }
    }

    /// An unsigned index (prevIndex, waitIndex); error 203 when not a number.
    pub fn index(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| invalid(INDEX_NAN, format!("invalid value for {name}"))),
        }
    }

    /// `ttl`: `None` absent, `Some(None)` present but empty (remove the TTL),
    /// `Some(Some(s))` seconds. Negative or non-numeric is error 202.
    pub fn ttl(&self) -> Result<Option<Option<u64>>, StoreError> {
        match self.get("ttl") {
            None => Ok(None),
            Some("") => Ok(Some(None)),
            Some(v) => v
                .parse::<u64>()
                .map(|s| Some(Some(s)))
                .map_err(|_| invalid(TTL_NAN, "invalid value for ttl")),
        }
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_overrides_query_and_bools_validate() {
        let p = Params::parse(Some("value=q&recursive=yes&ttl=-1"), Some(b"value=b"));
        assert_eq!(p.get("value"), Some("b"));
        assert_eq!(p.bool("recursive").unwrap_err().code, INVALID_FIELD);
        assert_eq!(p.ttl().unwrap_err().code, TTL_NAN);
        assert!(!p.bool("dir").unwrap());
    }
}
