//! flotilla: one node daemon giving a cluster what etcd, fleet and confd gave CoreOS.
//!
//! # Layout
//! - [`kv`]: the etcd v2 store as a pure state machine (`apply(command) -> (result, events)`).
//! - [`raft`]: raft-rs `RawNode` driven by one Ready loop; durable log on a
//!   [`flotilla_shims::Disk`]; snapshots, compaction, recovery, membership.
//! - [`api`]: the etcd-compatible HTTP API and fleet's API v1 (handlers only; the server
//!   is in the shims).
//! - [`auth`]: etcd's v2 auth (users, roles, key permissions) as a pure model.
//! - [`client`]: [`client::KvClient`], how the scheduler, agent, renderer and CLIs reach
//!   the store (in-process on a member).
//! - [`agent`]: what runs on each machine (its presence key; the units placed on it).
//! - [`unitfile`]: the unit-file language — systemd's lexer, fleet's normalised text
//!   and hash, unit names and specifiers, Go's glob — used by the scheduler, the agent,
//!   the renderer and the CLI alike.
//! - [`sched`]: fleet — placement (a pure function), the registry, the leader's engine.
//! - [`render`]: confd — template resources render store keys into config files.
//! - [`net`]: the container network — flannel's subnet leases, the subnet file, routes
//!   to the peers' subnets (host-gw, vxlan) through the links seam.
//! - [`node`]: wiring — config + environment + disk → a running node.
//! - [`cli`]: the `flotilla` command line (thin; production wiring of the shims).
//!
//! Data flow: HTTP request → [`api`] → [`raft::RaftHandle`] → Ready loop → disk sync →
//! peers → commit → [`kv::Store::apply`] → response. Node logic reaches clocks, tasks,
//! sockets and files only through `flotilla_shims` (enforced by `clippy.toml`).

pub mod agent;
pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod kv;
pub mod metrics;
pub mod net;
pub mod node;
pub mod raft;
pub mod render;
pub mod sched;
pub mod unitfile;
