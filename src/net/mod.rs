//! The container network across machines, as flannel built it on etcd: a subnet lease
//! per machine in flannel's key layout, the subnet file Docker starts from, and routes
//! to every peer's subnet.
//!
//! # Layout
//! - [`subnet`]: IPv4 networks (`10.1.0.0/16`, lease keys `10.1.74.0-24`).
//! - [`config`]: `<prefix>/config`, flannel's JSON with flannel's defaults and checks.
//! - [`lease`]: which lease to hold (flannel's order, plus "the same subnet again"), and
//!   when to renew — pure.
//! - [`routes`]: which kernel entries the peers' leases call for per backend, and the
//!   ordered changes from what is there — pure.
//! - [`subnet_file`] writes and reads `/run/flannel/subnet.env`.
//! - [`filter`]: flannel's forwarding and masquerade rules for the lease — pure.
//! - [`manager`]: the async shell — config → lease → subnet file and filter rules →
//!   watch the peers → [`flotilla_shims::links::Links`] (rtnetlink in production).
//! - [`docker`]: the Docker network on the lease that units' containers join.
//! - [`dns`]: DNS answered from the store (SkyDNS's `/skydns` layout, units, machines).
//!
//! Data flow: store (`KvClient`) → leases → `routes::wanted` → `routes::diff` → `Links`;
//! this machine's lease → [`NetStatus`] → [`docker::follow`] → the agent's containers.

pub mod config;
pub mod dns;
pub mod docker;
pub mod filter;
pub mod lease;
pub mod manager;
pub mod routes;
pub mod subnet;
pub mod subnet_file;

pub use manager::{NetBugs, NetOptions, NetSeams, NetStatus};

use flotilla_shims::Spawn;
use tokio::sync::watch;

/// Starts the network on this machine; the receiver follows what it holds.
pub fn start(seams: NetSeams, opts: NetOptions, spawn: &dyn Spawn) -> watch::Receiver<NetStatus> {
    let (tx, rx) = watch::channel(NetStatus::default());
    spawn.spawn("net", Box::pin(manager::run(seams, opts, tx)));
    rx
}
