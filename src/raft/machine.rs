//! The replicated state: the KV store, the member list and the applied index. Snapshots
//! are this, serialized.

use crate::kv::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Request sequence numbers remembered per proposer, to drop duplicated proposals.
pub const DEDUP_WINDOW_PER_ORIGIN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    #[serde(default)]
    pub client_urls: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub store: Store,
    pub members: BTreeMap<u64, Member>,
    pub applied: u64,
    /// Recently applied `(origin, seq)` request ids. A proposal can reach the log twice
    /// (a forwarded proposal duplicated in transit, a frame resent after a broken
    /// connection); it must take effect once.
    #[serde(default)]
    pub applied_requests: BTreeMap<u64, BTreeSet<u64>>,
}

impl Machine {
    /// An empty state; members arrive by applying conf-change entries.
    pub fn new() -> Self {
        Self {
            store: Store::new(),
            members: BTreeMap::new(),
            applied: 0,
            applied_requests: BTreeMap::new(),
        }
    }

    /// Records request `(origin, seq)`; `false` if it was already applied.
    pub fn first_application(&mut self, origin: u64, seq: u64) -> bool {
        let seen = self.applied_requests.entry(origin).or_default();
        if !seen.insert(seq) {
            return false;
        }
        if seen.len() > DEDUP_WINDOW_PER_ORIGIN {
            seen.pop_first();
        }
        true
    }

    /// The snapshot encoding (bincode: several times faster than JSON for large stores,
    /// and a snapshot is taken inside the Ready loop).
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("machine serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode_bounded(bytes).map_err(|e| e.to_string())
    }

    /// [`Machine::encode`]'s bytes, streamed into `w` (a snapshot record's tail).
    pub fn encode_to<W: std::io::Write>(&self, w: W) -> std::io::Result<()> {
        bincode::serialize_into(w, self).map_err(std::io::Error::other)
    }

    /// A stable digest of the whole state, for comparing replicas.
    pub fn digest(&self) -> u64 {
        let bytes = serde_json::to_vec(self).expect("machine serializes");
        fnv1a(&bytes)
    }
}

/// bincode with every length checked against the input: a corrupt or hostile length is an
/// error, not an allocation of that size (a fuzzed snapshot made `bincode::deserialize`
/// abort on capacity overflow). Same encoding as `bincode::serialize`.
pub fn decode_bounded<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
}

/// FNV-1a, 64-bit: a stable, dependency-free hash for ids and digests (not for security).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A member's id, derived from its peer URLs (sorted), never zero: the member being
/// added (`POST /v2/members` knows only URLs) and the member starting agree on it.
pub fn member_id(peer_urls: &[String]) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    fnv1a(urls.join("\0").as_bytes()).max(1)
}

/// The cluster id: a digest of the initial members.
pub fn cluster_id(members: &[Member]) -> u64 {
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    fnv1a(&bytes).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_encoding_round_trips() {
        let mut m = Machine::new();
        m.first_application(1, 2);
        m.store.apply(&crate::kv::Command::Put {
            key: "/a/b".into(),
            value: "v".into(),
            dir: false,
            expire_ms: Some(9),
            refresh: false,
            prev: Default::default(),
        });
        assert_eq!(Machine::decode(&m.encode()).unwrap(), m);
        let mut tail = b"head".to_vec();
        m.encode_to(&mut tail).unwrap();
        assert_eq!(&tail[4..], &m.encode()[..], "one encoding, appended");
        assert!(Machine::decode(b"garbage").is_err());
        // Found by the snapshot fuzz target: a length far beyond the input.
        let crash = include_bytes!("../../fuzz/regressions/snapshot-capacity-overflow");
        assert!(Machine::decode(crash).is_err());
    }

    #[test]
    fn a_request_applies_once_within_the_window() {
        let mut m = Machine::new();
        assert!(m.first_application(7, 100));
        assert!(!m.first_application(7, 100), "duplicate must be refused");
        assert!(m.first_application(8, 100), "ids are per origin");
        for seq in 101..101 + DEDUP_WINDOW_PER_ORIGIN as u64 {
            assert!(m.first_application(7, seq));
        }
        assert_eq!(
            m.applied_requests[&7].len(),
            DEDUP_WINDOW_PER_ORIGIN,
            "the window is bounded"
        );
    }
}
