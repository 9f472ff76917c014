//! The peer wire format, generic over any byte stream so the same code runs on Tokio TCP
//! and on turmoil's simulated TCP.
//!
//! A connection opens with an 8-byte big-endian sender id, then carries frames:
//! a 4-byte big-endian length, a 4-byte CRC32 of the payload, and the payload.
//! Many queued frames are written with one flush (batching).

use crate::net::FRAME_BYTES_MAX;

/// Frames smaller than this fraction of a read chunk are copied out of it (see
/// [`FrameReader`]).
pub const COPY_BELOW_CHUNK_FRACTION: usize = 4;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Frames written before one flush, at most.
pub const BATCH_FRAMES_MAX: usize = 256;

pub async fn write_hello<W: AsyncWrite + Unpin>(w: &mut W, from: u64) -> io::Result<()> {
    w.write_all(&from.to_be_bytes()).await?;
    w.flush().await
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

/// Reads frames from a stream through one growing buffer: a frame's header and payload
/// usually arrive in the same read as several other frames. A large payload is handed out
/// as a slice of that buffer (no copy); a small one is copied out, because a slice keeps
/// its whole read chunk alive as long as anything holds it (a follower's log holds entries
/// for a long time), and a chunk of mostly heartbeats pinned by one small entry each would
/// let memory grow without bound. So held frames pin at most ~5x their own size.
pub struct FrameReader<R> {
    r: R,
    buf: BytesMut,
    read_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `read_bytes`: how much room each read asks for at least.
    pub fn new(r: R, read_bytes: usize) -> Self {
        Self {
            r,
            buf: BytesMut::new(),
            read_bytes,
        }
    }

    /// Reads until `n` bytes are buffered; `Ok(false)` on a clean end of stream before
    /// any byte of them arrived.
    async fn fill(&mut self, n: usize) -> io::Result<bool> {
        while self.buf.len() < n {
            // Grow only when the room left is too small: large frames handed out still
            // share this allocation, so a new one (of `read_bytes` at least) is taken only
            // when the current one is used up, not once per read.
            let need = n - self.buf.len();
            if self.buf.capacity() - self.buf.len() < need {
                self.buf.reserve(need.max(self.read_bytes));
            }
            if self.r.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(false);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(true)
    }

    /// The connection's opening sender id.
    pub async fn read_hello(&mut self) -> io::Result<u64> {
        if !self.fill(8).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(self.buf.get_u64())
    }

    /// Reads one frame; `Ok(None)` on a clean end of stream.
    pub async fn read_frame(&mut self) -> io::Result<Option<Bytes>> {
        if !self.fill(8).await? {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > FRAME_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("peer frame of {len} bytes exceeds the {FRAME_BYTES_MAX}-byte limit"),
            ));
        }
        self.fill(8 + len).await?;
        self.buf.advance(4);
        let crc = self.buf.get_u32();
        let payload = if len < self.read_bytes / COPY_BELOW_CHUNK_FRACTION {
            let p = Bytes::copy_from_slice(&self.buf[..len]);
            self.buf.advance(len);
            p
        } else {
            self.buf.split_to(len).freeze()
        };
        if crc32fast::hash(&payload) != crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "peer frame checksum mismatch",
            ));
        }
        Ok(Some(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_in_one_batch() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(Bytes::from_static(b"two")).await.unwrap();
        tx.send(Bytes::from_static(b"")).await.unwrap();
        write_hello(&mut a, 7).await.unwrap();
        write_batch(&mut a, Bytes::from_static(b"one"), &mut rx)
            .await
            .unwrap();
        drop(a);
        let mut b = FrameReader::new(b, 4);
        assert_eq!(b.read_hello().await.unwrap(), 7);
        let mut got = vec![];
        while let Some(f) = b.read_frame().await.unwrap() {
            got.push(f);
        }
        assert_eq!(got, vec!["one", "two", ""]);
    }

    /// A stream that delivers at most one frame's worth of bytes per read, as a socket
    /// does when frames arrive one by one.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = self.1.min(self.0.len()).min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0.drain(..n);
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Reads `count` frames of `size` bytes that arrive one per read, holding them all.
    async fn held_frames(count: usize, size: usize, read_bytes: usize) -> Vec<Bytes> {
        let mut buf = BytesMut::new();
        for i in 0..count {
            encode(&mut buf, &vec![i as u8; size]);
        }
        let mut r = FrameReader::new(Trickle(buf.to_vec(), size + 8), read_bytes);
        let mut held = vec![];
        while let Some(f) = r.read_frame().await.unwrap() {
            held.push(f);
        }
        assert_eq!(held.len(), count);
        assert!(held
            .iter()
            .enumerate()
            .all(|(i, f)| f[..] == vec![i as u8; size][..]));
        held
    }

    #[tokio::test]
    async fn held_large_frames_share_few_allocations() {
        // Large frames stay slices of the read chunks, and the chunks are filled before
        // a new one is taken (not one per read).
        let held = held_frames(200, 1500, 4096).await;
        let fresh_allocations = held
            .windows(2)
            .filter(|w| w[0].as_ptr().wrapping_add(1500 + 8) != w[1].as_ptr())
            .count();
        // A chunk is given up only when the next frame does not fit: each one holds at
        // least `read_bytes - frame` bytes of frames.
        let bytes = 200 * 1508;
        assert!(
            fresh_allocations <= bytes / (4096 - 1508) + 1,
            "{fresh_allocations} allocations for {bytes} bytes of frames"
        );
    }

    #[tokio::test]
    async fn held_small_frames_pin_no_read_chunk() {
        // A small frame held for long (a follower's log entry among heartbeats) must
        // not keep a whole read chunk alive: it is its own allocation.
        let held = held_frames(200, 100, 4096).await;
        assert!(held.iter().all(|f| f.is_unique()));
    }

    #[tokio::test]
    async fn corrupted_frame_is_refused() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut buf = BytesMut::new();
        encode(&mut buf, b"hello");
        let last = buf.len() - 1;
        buf[last] ^= 1;
        a.write_all(&buf).await.unwrap();
        let err = FrameReader::new(b, 64).read_frame().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
