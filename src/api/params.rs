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

    /// Go's `strconv.ParseBool`; absent is `false`; anything else is error 209 with
    /// etcd's cause (which quotes the name).
    pub fn bool(&self, name: &str) -> Result<bool, StoreError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) => parse_bool(v)
                .ok_or_else(|| invalid(INVALID_FIELD, format!("invalid value for \"{name}\""))),
        }
    }

    /// `Some(bool)` when present (`prevExist`, `refresh`: etcd does not quote these).
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, StoreError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => parse_bool(v)
                .map(Some)
                .ok_or_else(|| invalid(INVALID_FIELD, format!("invalid value for {name}"))),
        }
    }

    /// An unsigned index (prevIndex, waitIndex); error 203 when not a number.
    pub fn index(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| invalid(INDEX_NAN, format!("invalid value for \"{name}\""))),
        }
    }

    /// `ttl` in seconds; empty counts as absent (as in etcd). Negative or non-numeric
    /// is error 202.
    pub fn ttl(&self) -> Result<Option<u64>, StoreError> {
        match self.get("ttl") {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| invalid(TTL_NAN, "invalid value for \"ttl\"")),
        }
    }
}

/// Every parameter of a keys request, validated in etcd's order (so the first error
/// reported is the one etcd reports).
pub struct KeyRequest {
    pub prev_index: u64,
    pub wait_index: Option<u64>,
    pub recursive: bool,
    pub sorted: bool,
    pub wait: bool,
    pub dir: bool,
    pub quorum: bool,
    pub stream: bool,
    pub prev_value: String,
    pub no_value_on_success: bool,
    pub ttl: Option<u64>,
    pub prev_exist: Option<bool>,
    pub refresh: bool,
    pub value: Option<String>,
}

impl KeyRequest {
    pub fn parse(p: &Params, method: &http::Method) -> Result<Self, StoreError> {
        let prev_index = p.index("prevIndex")?.unwrap_or(0);
        let wait_index = p.index("waitIndex")?;
        let recursive = p.bool("recursive")?;
        let sorted = p.bool("sorted")?;
        let wait = p.bool("wait")?;
        let dir = p.bool("dir")?;
        let quorum = p.bool("quorum")?;
        let stream = p.bool("stream")?;
        if wait && method != http::Method::GET {
            return Err(invalid(
                INVALID_FIELD,
                "\"wait\" can only be used with GET requests",
            ));
        }
        if p.get("prevValue") == Some("") {
            return Err(invalid(
                PREV_VALUE_REQUIRED,
                "\"prevValue\" cannot be empty",
            ));
        }
        let no_value_on_success = p.bool("noValueOnSuccess")?;
        let ttl = p.ttl()?;
        let prev_exist = p.opt_bool("prevExist")?;
        let refresh = p.opt_bool("refresh")?.unwrap_or(false);
        if refresh {
            if p.get("value").is_some_and(|v| !v.is_empty()) {
                return Err(invalid(REFRESH_VALUE, "A value was provided on a refresh"));
            }
            if ttl.is_none() {
                return Err(invalid(REFRESH_TTL_REQUIRED, "No TTL value set"));
            }
        }
        Ok(Self {
            prev_index,
            wait_index,
            recursive,
            sorted,
            wait,
            dir,
            quorum,
            stream,
            prev_value: p.get("prevValue").unwrap_or_default().to_string(),
            no_value_on_success,
            ttl,
            prev_exist,
            refresh,
            value: p.get("value").map(String::from),
        })
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
        let e = p.bool("recursive").unwrap_err();
        assert_eq!(
            (e.code, e.cause.as_str()),
            (INVALID_FIELD, "invalid value for \"recursive\"")
        );
        assert_eq!(p.ttl().unwrap_err().code, TTL_NAN);
        assert!(!p.bool("dir").unwrap());
        // etcd validates recursive before ttl: the first error wins.
        let e = KeyRequest::parse(&p, &http::Method::PUT).err().unwrap();
        assert_eq!(e.code, INVALID_FIELD);
    }
}
