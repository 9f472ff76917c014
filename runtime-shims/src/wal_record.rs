//! The WAL's records, pure: how one is encoded into a batch, parsed back from a segment's
//! bytes, and applied to the replayed state. The segment files, syncs and side files are
//! [`crate::wal_disk`]'s.
//!
//! Layout (little-endian): `len u32` (bytes after the crc) · `crc32 u32` (of those bytes)
//! · `seq u64` · `kind u8` · body. A header of zeros (`len` 0) marks the unwritten,
//! preallocated rest of a segment.

use crate::disk::Loaded;
use std::collections::BTreeMap;

pub const HEADER_BYTES: usize = 8;
/// No record is this large; a header claiming more is damage, not a record.
pub const RECORD_BYTES_MAX: usize = 1 << 30;

pub const PUT: u8 = 1;
pub const TRUNCATE_FROM: u8 = 2;
pub const TRUNCATE_BEFORE: u8 = 3;
pub const META: u8 = 4;
/// A metadata record whose value is a file in `snap/`: name, length and CRC.
pub const BLOB: u8 = 5;

/// A metadata value kept in a file of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobRef {
    pub name: String,
    pub len: u64,
    pub crc: u32,
}

pub fn blob_body(key: &str, b: &BlobRef) -> Vec<u8> {
    let mut out = vec![];
    for s in [key, &b.name] {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&b.len.to_le_bytes());
    out.extend_from_slice(&b.crc.to_le_bytes());
    out
}

pub fn parse_blob(body: &[u8]) -> Result<(&str, BlobRef), String> {
    let (key, rest) = meta_body(body)?;
    let (name, rest) = meta_body(rest)?;
    if rest.len() != 12 {
        return Err("file reference has the wrong size".into());
    }
    // The name becomes a path under snap/: only what `write_blob` makes is accepted.
    let plain =
        |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let seq_hex = name
        .strip_prefix(key)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".snap"));
    if !plain(key)
        || !seq_hex.is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(format!(
            "file reference names {name:?}, not a snapshot file of {key:?}"
        ));
    }
    Ok((
        key,
        BlobRef {
            name: name.to_string(),
            len: u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")),
            crc: u32::from_le_bytes(rest[8..].try_into().expect("4 bytes")),
        },
    ))
}

/// Appends one record (`seq`, `kind`, the body as `parts`) to `batch`.
pub fn encode(batch: &mut Vec<u8>, seq: u64, kind: u8, parts: &[&[u8]]) {
    let at = batch.len();
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let len = 9 + body;
    assert!(len <= RECORD_BYTES_MAX, "record of {len} bytes");
    batch.extend_from_slice(&(len as u32).to_le_bytes());
    batch.extend_from_slice(&[0; 4]);
    batch.extend_from_slice(&seq.to_le_bytes());
    batch.push(kind);
    for p in parts {
        batch.extend_from_slice(p);
    }
    let crc = crc32fast::hash(&batch[at + HEADER_BYTES..]);
    batch[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A record read back from a segment.
pub struct Record<'a> {
    pub seq: u64,
    pub kind: u8,
    pub body: &'a [u8],
    /// Offset just past it.
    pub next: usize,
}

pub enum Parse<'a> {
    Record(Record<'a>),
    End,
    Bad(String),
}

pub fn parse(buf: &[u8], at: usize) -> Parse<'_> {
    if at + HEADER_BYTES > buf.len() {
        return if buf[at..].iter().all(|b| *b == 0) {
            Parse::End
        } else {
            Parse::Bad("record header cut short".into())
        };
    }
    let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
    if len == 0 && crc == 0 {
        return Parse::End;
    }
    let start = at + HEADER_BYTES;
    if !(9..=RECORD_BYTES_MAX).contains(&len) || start + len > buf.len() {
        return Parse::Bad(format!("record length {len} does not fit the segment"));
    }
    let data = &buf[start..start + len];
    if crc32fast::hash(data) != crc {
        return Parse::Bad("checksum mismatch".into());
    }
    Parse::Record(Record {
        seq: u64::from_le_bytes(data[..8].try_into().expect("8 bytes")),
        kind: data[8],
        body: &data[9..],
        next: start + len,
    })
}

pub fn u64_at(body: &[u8], what: &str) -> Result<u64, String> {
    body.get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| format!("{what} record too short"))
}

/// Applies one record to the replayed state; `Err` names what is malformed. File-backed
/// values are collected in `refs` and read once replay is done (`wal_disk`'s `resolve`).
pub fn apply(
    out: &mut Loaded,
    refs: &mut BTreeMap<String, BlobRef>,
    r: &Record,
) -> Result<(), String> {
    match r.kind {
        PUT => {
            let index = u64_at(r.body, "log")?;
            out.log.insert(index, r.body[8..].to_vec());
        }
        TRUNCATE_FROM => {
            out.log.split_off(&u64_at(r.body, "truncation")?);
        }
        TRUNCATE_BEFORE => {
            let keep = out.log.split_off(&u64_at(r.body, "compaction")?);
            out.log = keep;
        }
        META => {
            let (key, data) = meta_body(r.body)?;
            refs.remove(key);
            out.meta.insert(key.to_string(), data.to_vec());
        }
        BLOB => {
            let (key, b) = parse_blob(r.body)?;
            out.meta.remove(key);
            refs.insert(key.to_string(), b);
        }
        k => return Err(format!("unknown record kind {k}")),
    }
    Ok(())
}

pub fn meta_body(body: &[u8]) -> Result<(&str, &[u8]), String> {
    let n = body
        .get(..2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        .ok_or("metadata record too short")?;
    let key = body.get(2..2 + n).ok_or("metadata record too short")?;
    let key = std::str::from_utf8(key).map_err(|_| "metadata key is not UTF-8")?;
    Ok((key, &body[2 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_encodes_and_parses_back() {
        let mut batch = vec![];
        encode(&mut batch, 7, PUT, &[&5u64.to_le_bytes(), b"entry"]);
        encode(&mut batch, 8, META, &[&3u16.to_le_bytes(), b"keyvalue"]);
        batch.extend_from_slice(&[0; 16]);
        let Parse::Record(r) = parse(&batch, 0) else {
            panic!("first record")
        };
        assert_eq!((r.seq, r.kind), (7, PUT));
        let mut loaded = Loaded::default();
        let mut refs = BTreeMap::new();
        apply(&mut loaded, &mut refs, &r).expect("applies");
        let Parse::Record(r2) = parse(&batch, r.next) else {
            panic!("second record")
        };
        apply(&mut loaded, &mut refs, &r2).expect("applies");
        assert!(matches!(parse(&batch, r2.next), Parse::End));
        assert_eq!(loaded.log.get(&5).map(Vec::as_slice), Some(&b"entry"[..]));
        assert_eq!(
            loaded.meta.get("key").map(Vec::as_slice),
            Some(&b"value"[..])
        );
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_mismatch() {
        let mut batch = vec![];
        encode(&mut batch, 1, PUT, &[&1u64.to_le_bytes(), b"x"]);
        let last = batch.len() - 1;
        batch[last] ^= 1;
        assert!(matches!(parse(&batch, 0), Parse::Bad(why) if why.contains("checksum")));
    }

    #[test]
    fn a_header_claiming_too_much_is_damage() {
        let mut batch = vec![0u8; 64];
        batch[..4].copy_from_slice(&(RECORD_BYTES_MAX as u32 + 1).to_le_bytes());
        batch[4] = 1;
        assert!(matches!(parse(&batch, 0), Parse::Bad(_)));
    }

    #[test]
    fn a_blob_reference_round_trips_and_odd_names_are_refused() {
        let b = BlobRef {
            name: "snapshot-00000000000000ff.snap".into(),
            len: 10,
            crc: 42,
        };
        assert_eq!(
            parse_blob(&blob_body("snapshot", &b)).expect("parses"),
            ("snapshot", b.clone())
        );
        let evil = BlobRef {
            name: "../../etc/passwd".into(),
            ..b
        };
        assert!(parse_blob(&blob_body("snapshot", &evil)).is_err());
    }
}
