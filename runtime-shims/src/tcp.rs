//! The production peer transport: one persistent outbound connection per peer, frames
//! batched per write, reconnect with bounded exponential backoff. Generic over how a
//! stream is opened and how tasks sleep, so turmoil can drive the same code.

use crate::clock::Clock;
use crate::net::{PeerNet, PEER_QUEUE_FRAMES_MAX};
use crate::task::Spawn;
use crate::wire;
use crate::BoxFuture;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub const RECONNECT_BACKOFF_MIN_MS: u64 = 20;
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 1000;
pub const INBOUND_QUEUE_FRAMES_MAX: usize = 8192;
pub const INBOUND_BUFFER_BYTES: usize = 64 << 10;

/// Opens a byte stream to `addr`.
pub trait Connect: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<Self::Stream>>;
}

/// Tokio TCP with Nagle off (Raft messages are latency-bound).
pub struct TokioConnect;

impl Connect for TokioConnect {
    type Stream = tokio::net::TcpStream;
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<Self::Stream>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(s)
        })
    }
}

/// Tokio TCP, then TLS with this configuration (the peer's certificate as the client's,
/// the peers' CA as the roots): `--peer-cert-file` and friends.
pub struct TlsConnect(pub Arc<rustls::ClientConfig>);

impl Connect for TlsConnect {
    type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<Self::Stream>> {
        let cfg = self.0.clone();
        Box::pin(async move {
            let host = addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(h, _)| h)
                .to_string();
            let s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            crate::tls::connect_with(cfg, &host, s)
                .await
                .map_err(io::Error::other)
        })
    }
}

struct Peer {
    addr: Arc<Mutex<String>>,
    tx: mpsc::Sender<Bytes>,
}

/// [`PeerNet`] over persistent stream connections.
pub struct StreamTransport<C: Connect> {
    my_id: u64,
    connect: Arc<C>,
    clock: Arc<dyn Clock>,
    spawn: Arc<dyn Spawn>,
    peers: Mutex<BTreeMap<u64, Peer>>,
}

impl<C: Connect> StreamTransport<C> {
    pub fn new(my_id: u64, connect: C, clock: Arc<dyn Clock>, spawn: Arc<dyn Spawn>) -> Self {
        Self {
            my_id,
            connect: Arc::new(connect),
            clock,
            spawn,
            peers: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<C: Connect> PeerNet for StreamTransport<C> {
    fn send(&self, to: u64, frame: Bytes) {
        let peers = self.peers.lock().expect("peer map lock poisoned");
        if let Some(p) = peers.get(&to) {
            // A full queue means the peer is slow or gone; Raft will retransmit.
            let _ = p.tx.try_send(frame);
        }
    }

    fn set_peer(&self, id: u64, addr: &str) {
        let mut peers = self.peers.lock().expect("peer map lock poisoned");
        if let Some(p) = peers.get(&id) {
            *p.addr.lock().expect("peer addr lock poisoned") = addr.to_string();
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_FRAMES_MAX);
        let addr = Arc::new(Mutex::new(addr.to_string()));
        peers.insert(
            id,
            Peer {
                addr: addr.clone(),
                tx,
            },
        );
        let fut = outbound(
            self.my_id,
            addr,
            rx,
            self.connect.clone(),
            self.clock.clone(),
        );
        self.spawn.spawn("peer-outbound", Box::pin(fut));
    }

    fn remove_peer(&self, id: u64) {
        // Dropping the sender ends the outbound task.
        self.peers
            .lock()
            .expect("peer map lock poisoned")
            .remove(&id);
    }
}

async fn outbound<C: Connect>(
    my_id: u64,
    addr: Arc<Mutex<String>>,
    mut rx: mpsc::Receiver<Bytes>,
    connect: Arc<C>,
    clock: Arc<dyn Clock>,
) {
    let mut backoff_ms = RECONNECT_BACKOFF_MIN_MS;
    // Wait for something to send before connecting.
    let Some(mut pending) = rx.recv().await else {
        return;
    };
    loop {
        let target = addr.lock().expect("peer addr lock poisoned").clone();
        let mut stream = match connect.connect(target.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%target, error = %e, "peer connect failed");
                clock.sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MAX_MS);
                // Frames queued while the peer was down are stale; keep only the newest.
                while let Ok(f) = rx.try_recv() {
                    pending = f;
                }
                continue;
            }
        };
        backoff_ms = RECONNECT_BACKOFF_MIN_MS;
        if wire::write_hello(&mut stream, my_id).await.is_err() {
            continue;
        }
        loop {
            if let Err(e) = wire::write_batch(&mut stream, pending.clone(), &mut rx).await {
                tracing::debug!(%target, error = %e, "peer write failed; reconnecting");
                break;
            }
            match rx.recv().await {
                Some(f) => pending = f,
                None => return,
            }
        }
    }
}

/// Serves one inbound peer connection: frames go to `inbound` until the stream ends.
/// Reads are buffered: a frame's header and payload take one read, not three.
pub async fn serve_inbound<S: AsyncRead + Unpin>(stream: S, inbound: mpsc::Sender<Bytes>) {
    let mut stream = wire::FrameReader::new(stream, INBOUND_BUFFER_BYTES);
    let from = match stream.read_hello().await {
        Ok(id) => id,
        Err(_) => return,
    };
    loop {
        match stream.read_frame().await {
            Ok(Some(frame)) => {
                if inbound.send(frame).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(from, error = %e, "dropping peer connection");
                return;
            }
        }
    }
}

/// Accepts peer connections on a Tokio listener forever; with `tls`, only peers that
/// complete its handshake (with `--peer-client-cert-auth`: show a certificate signed by
/// the peers' CA) get their frames read.
pub async fn accept_tokio(
    listener: tokio::net::TcpListener,
    inbound: mpsc::Sender<Bytes>,
    spawn: Arc<dyn Spawn>,
    tls: Option<Arc<crate::tls::Listener>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                let inbound = inbound.clone();
                let Some(tls) = tls.clone() else {
                    spawn.spawn("peer-inbound", Box::pin(serve_inbound(stream, inbound)));
                    continue;
                };
                spawn.spawn(
                    "peer-inbound",
                    Box::pin(async move {
                        match tls.accept(stream).await {
                            Ok(s) => serve_inbound(s, inbound).await,
                            Err(e) => {
                                tracing::warn!(%from, error = %e, "peer TLS handshake refused")
                            }
                        }
                    }),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Binds a Tokio TCP listener on `host:port`.
pub async fn bind(addr: &str) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
