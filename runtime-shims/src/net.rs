//! Peer messages between node ids.

use bytes::Bytes;

/// The node's view of its peers: fire-and-forget frames to a node id. Delivery is
/// best-effort (Raft retransmits); implementations bound their queues and drop when full.
/// Incoming frames arrive on the channel the implementation was built with.
pub trait PeerNet: Send + Sync + 'static {
    /// Queues `frame` for peer `to`. Never blocks.
    fn send(&self, to: u64, frame: Bytes);
    /// Adds or re-addresses a peer (`addr` is `host:port`).
    fn set_peer(&self, id: u64, addr: &str);
    /// Forgets a peer; queued frames for it are dropped.
    fn remove_peer(&self, id: u64);
}

/// Bounds shared by transports.
pub const PEER_QUEUE_FRAMES_MAX: usize = 4096;
/// The largest frame a peer may send (a snapshot travels in one frame).
pub const FRAME_BYTES_MAX: usize = 256 << 20;
