//! etcd's error codes, as the store produces them.

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const KEY_NOT_FOUND: u32 = 100;
pub const TEST_FAILED: u32 = 101;
pub const NOT_FILE: u32 = 102;
pub const NOT_DIR: u32 = 104;
pub const NODE_EXIST: u32 = 105;
pub const ROOT_READ_ONLY: u32 = 107;
pub const UNAUTHORIZED: u32 = 110;
pub const DIR_NOT_EMPTY: u32 = 108;
pub const VALUE_TOO_LARGE: u32 = 413;
pub const PREV_VALUE_REQUIRED: u32 = 201;
pub const TTL_NAN: u32 = 202;
pub const INDEX_NAN: u32 = 203;
pub const INVALID_FIELD: u32 = 209;
pub const REFRESH_VALUE: u32 = 211;
pub const REFRESH_TTL_REQUIRED: u32 = 212;
pub const RAFT_INTERNAL: u32 = 300;
pub const LEADER_ELECT: u32 = 301;
pub const EVENT_INDEX_CLEARED: u32 = 401;

/// An etcd error: code, cause (usually the key) and the store index it was seen at.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("{} ({code}): {cause}", message(*code))]
pub struct StoreError {
    pub code: u32,
    pub cause: String,
    pub index: u64,
}

impl StoreError {
    pub fn new(code: u32, cause: impl Into<String>, index: u64) -> Self {
        Self {
            code,
            cause: cause.into(),
            index,
        }
    }

    pub fn message(&self) -> &'static str {
        message(self.code)
    }

    /// The HTTP status etcd answers this error with.
    pub fn http_status(&self) -> u16 {
        match self.code {
            KEY_NOT_FOUND => 404,
            TEST_FAILED | NODE_EXIST => 412,
            NOT_FILE | DIR_NOT_EMPTY => 403,
            UNAUTHORIZED => 401,
            RAFT_INTERNAL | LEADER_ELECT => 500,
            VALUE_TOO_LARGE => 413,
            _ => 400,
        }
    }
}

pub fn message(code: u32) -> &'static str {
    match code {
        KEY_NOT_FOUND => "Key not found",
        TEST_FAILED => "Compare failed",
        NOT_FILE => "Not a file",
        NOT_DIR => "Not a directory",
        NODE_EXIST => "Key already exists",
        ROOT_READ_ONLY => "Root is read only",
        UNAUTHORIZED => "The request requires user authentication",
        DIR_NOT_EMPTY => "Directory not empty",
        PREV_VALUE_REQUIRED => "PrevValue is Required in POST form",
        TTL_NAN => "The given TTL in POST form is not a number",
        INDEX_NAN => "The given index in POST form is not a number",
        INVALID_FIELD => "Invalid field",
        REFRESH_VALUE => "Value provided on refresh",
        REFRESH_TTL_REQUIRED => "A TTL must be provided on refresh",
        VALUE_TOO_LARGE => "Value too large",
        RAFT_INTERNAL => "Raft Internal Error",
        LEADER_ELECT => "During Leader Election",
        EVENT_INDEX_CLEARED => "The event in requested index is outdated and cleared",
        _ => "Unknown error",
    }
}
