//! The `flotilla` command line. Thin: parse flags, wire the production shims, run.
//!
//! # Layout
//! - [`node`]: `flotilla node` (also the default with no subcommand), etcd's flag names.
//! - [`kv`]: `flotilla kv …`, an etcdctl (v2) work-alike.
//! - [`agent`]: `flotilla agent`, a machine that is not a member (through the client API).
//! - [`confd`]: `flotilla confd`, a confd work-alike (template resources → config files).
//! - [`net`]: `flotilla net …` and the `--network` flags of a node or an agent.
//! - [`machine`]: the flags that make a node or an agent a machine.
//! - [`tls`]: TLS flags — etcdctl's for clients, etcd's for a member's listeners.
//! - [`units`]: `flotilla units …`, a fleetctl work-alike over fleet's API v1
//!   ([`table`] lays out its columns as fleetctl's tabwriter does).

pub mod agent;
pub mod confd;
pub mod kv;
pub mod machine;
pub mod net;
pub mod node;
pub mod table;
pub mod tls;
pub mod units;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "flotilla",
    version,
    about = "The CoreOS stack in one node daemon: etcd's v2 API, fleet's scheduler and agent, confd",
    after_help = "The handbook: docs/ in the source tree (README.md links every page)."
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node (the default: a single-node cluster on 127.0.0.1:2379, data in ./flotilla.data).
    #[command(
        after_help = "More: docs/kv.md (the store), docs/operations.md (the data dir, \
        containers, upgrades), docs/security.md (TLS, auth, --cors)."
    )]
    Node(Box<node::NodeArgs>),
    /// etcdctl-style key-value commands: get, set, mk, mkdir, update, rm, rmdir, ls, watch, member.
    #[command(after_help = "More: docs/kv.md.")]
    Kv(kv::KvArgs),
    /// fleetctl-style unit commands: submit, load, start, stop, unload, destroy, cat,
    /// status, list-units, list-unit-files, list-machines.
    #[command(
        after_help = "More: docs/scheduling.md (units, [X-Fleet], the API) and \
        docs/agent.md (how a machine runs them)."
    )]
    Units(units::UnitsArgs),
    /// Run a machine that is not a cluster member: its units, through the client API.
    #[command(after_help = "More: docs/agent.md.")]
    Agent(Box<agent::AgentArgs>),
    /// confd: render template resources (conf.d/*.toml) from the store into config files.
    #[command(after_help = "More: docs/rendering.md.")]
    Confd(Box<confd::ConfdArgs>),
    /// The container network: init (flannel's config), leases, status.
    #[command(after_help = "More: docs/network.md.")]
    Net(net::NetCmdArgs),
}

/// A command that has said why it failed: exit with this code, printing nothing more.
#[derive(Debug, thiserror::Error)]
#[error("exit {0}")]
pub struct Exit(pub u8);

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = cli
        .cmd
        .unwrap_or(Cmd::Node(Box::new(node::NodeArgs::default_args())));
    let default_filter = match &cmd {
        Cmd::Confd(a) => match confd::log_filter(&a.log_level) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("flotilla: error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => "info,raft=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cmd {
        Cmd::Node(args) => node::run(*args),
        Cmd::Kv(args) => kv::run(args),
        Cmd::Units(args) => units::run(args),
        Cmd::Agent(args) => agent::run(*args),
        Cmd::Confd(args) => confd::run(*args),
        Cmd::Net(args) => net::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // etcdctl prints server errors as they are and exits 4.
        Err(e) if e.is::<kv::ServerError>() => {
            eprintln!("{e}");
            ExitCode::from(4)
        }
        Err(e) if e.is::<Exit>() => ExitCode::from(e.downcast_ref::<Exit>().map_or(1, |x| x.0)),
        Err(e) if e.is::<kv::PlainError>() => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("flotilla: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
