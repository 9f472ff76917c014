//! The peer wire format, generic over any byte stream so the same code runs on Tokio TCP
//! and on turmoil's simulated TCP.
//!
//! A connection opens with an 8-byte big-endian sender id, then carries frames:
//! a 4-byte big-endian length, a 4-byte CRC32 of the payload, and the payload.
//! Many queued frames are written with one flush (batching).

use crate::net::FRAME_BYTES_MAX;
use bytes::{BufMut, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Frames written before one flush, at most.
pub const BATCH_FRAMES_MAX: usize = 256;

pub async fn write_hello<W: AsyncWrite + Unpin>(w: &mut W, from: u64) -> io::Result<()> {
    w.write_all(&from.to_be_bytes()).await?;
    w.flush().await
}

pub async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<u64> {
    r.read_u64().await
}

fn encode(buf: &mut BytesMut, payload: &[u8]) {
    buf.put_u32(payload.len() as u32);
    buf.put_u32(crc32fast::hash(payload));
    buf.put_slice(payload);
}

/// Writes `first` and then whatever else is already queued (up to a batch), then flushes.
/// Returns when the queue is empty and flushed, or `Ok(false)` when the queue closed.
pub async fn write_batch<W: AsyncWrite + Unpin>(
    w: &mut W,
    first: Bytes,
    rx: &mut mpsc::Receiver<Bytes>,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(first.len() + 8);
    encode(&mut buf, &first);
    for _ in 1..BATCH_FRAMES_MAX {
        match rx.try_recv() {
            Ok(frame) => encode(&mut buf, &frame),
            Err(_) => break,
        }
    }
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Bytes>> {
    let len = match r.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes exceeds the {FRAME_BYTES_MAX}-byte limit"),
        ));
    }
    let crc = r.read_u32().await?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if crc32fast::hash(&payload) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "peer frame checksum mismatch",
        ));
    }
    Ok(Some(Bytes::from(payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_in_one_batch() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(Bytes::from_static(b"two")).await.unwrap();
        tx.send(Bytes::from_static(b"")).await.unwrap();
        write_hello(&mut a, 7).await.unwrap();
        write_batch(&mut a, Bytes::from_static(b"one"), &mut rx)
            .await
            .unwrap();
        drop(a);
        assert_eq!(read_hello(&mut b).await.unwrap(), 7);
        let mut got = vec![];
        while let Some(f) = read_frame(&mut b).await.unwrap() {
            got.push(f);
        }
        assert_eq!(got, vec!["one", "two", ""]);
    }

    #[tokio::test]
    async fn corrupted_frame_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let mut buf = BytesMut::new();
        encode(&mut buf, b"hello");
        let last = buf.len() - 1;
        buf[last] ^= 1;
        a.write_all(&buf).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
