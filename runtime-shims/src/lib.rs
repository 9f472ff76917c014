//! The runtime seam of flotilla.
//!
//! # Layout
//! - [`clock`]: monotonic and wall time, sleeping ([`Clock`]); Tokio implementation.
//! - [`task`]: spawning ([`Spawn`]) and the seeded RNG ([`SeededRng`]).
//! - [`net`]: peer messages between node ids ([`PeerNet`]); the framed wire format
//!   ([`wire`]) is generic over any `AsyncRead + AsyncWrite`, and [`tcp`] runs it on Tokio TCP.
//! - [`http`]: an HTTP/1.1 server on hyper, generic over the listener's stream type.
//! - [`disk`]: the durable store node logic writes to ([`Disk`], [`Files`]); [`wal_disk`]
//!   is the production store (a write-ahead log of segment files; its records' pure
//!   codec and replay step in [`wal_record`]), [`mem_disk`] the
//!   in-memory one (durable + pending layers) that tests and the simulator crash;
//!   [`files`] writes small files atomically.
//! - [`host`]: what a config template may ask of its host (environment, files, DNS).
//! - [`process`]: host processes ([`process::Processes`]), in their own process groups.
//! - [`links`]: the container network's kernel side ([`links::Links`]: routes, ARP and
//!   FDB entries, the VXLAN device, packet-filter rules); [`netlink`] implements it over
//!   rtnetlink and [`iptables`] (flotilla's own chains, set with the host's `iptables`).
//! - [`dns`]: DNS on the wire (hickory-server, UDP and TCP) from the node's
//!   [`dns::Resolve`]r, forwarding names it does not own.
//! - [`wireguard`]: userspace WireGuard (boringtun over a TUN device) for the links seam
//!   where the kernel has none.
//! - [`containers`]: the container-runtime trait and its types; [`docker`] implements it
//!   on a Docker Engine (bollard).
//!
//! Node crates reach the outside world only through these traits; `clippy.toml` in the
//! node crate forbids the direct routes.

pub mod clock;
pub mod containers;
pub mod disk;
pub mod dns;
pub mod docker;
pub mod files;
pub mod host;
pub mod http;
pub mod iptables;
pub mod links;
pub mod mem_disk;
pub mod net;
pub mod netlink;
pub mod process;
pub mod task;
pub mod tcp;
pub mod tls;
pub mod wal_disk;
pub mod wal_record;
pub mod wire;
pub mod wireguard;

pub use clock::{Clock, TokioClock};
pub use disk::{Blob, Disk, DiskError, FileMeta, Files, Loaded, Producer};
pub use net::PeerNet;
pub use task::{SeededRng, Spawn, TokioSpawn};

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future: the currency of the seam's async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
