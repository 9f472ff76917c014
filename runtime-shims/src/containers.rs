//! The container runtime as node logic sees it. The Docker implementation
//! ([`crate::docker`], on bollard) and the simulated engine implement this; the agent
//! drives it.

use crate::BoxFuture;
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum ContainerError {
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("no such image: {0}")]
    ImageNotFound(String),
    #[error("pull of {image} failed: {why}")]
    PullFailed { image: String, why: String },
    #[error("container {name}: {why}")]
    Failed { name: String, why: String },
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
}

/// A published port: `host_ip:host_port -> container_port/proto`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSpec {
    /// Empty: every address.
    pub host_ip: String,
    /// `None`: a port the engine picks.
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: String,
}

/// What `docker run` says about a container to create.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<PortSpec>,
    /// `-v` values: `host:container[:mode]`, or an anonymous `container` path.
    pub volumes: Vec<String>,
    pub network: Option<String>,
    /// Resolvers (`--dns`).
    pub dns: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    /// Docker's own restart policy (`--restart`), as written.
    pub restart: Option<String>,
    pub privileged: bool,
    pub labels: BTreeMap<String, String>,
    pub auto_remove: bool,
}

/// A bridge network for this machine's containers on its cluster subnet lease: the
/// self-contained form of flannel's `dockerd --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    /// The Linux bridge's name.
    pub bridge: String,
    /// `10.1.74.0/24`.
    pub subnet: String,
    /// The bridge's own address, `10.1.74.1`.
    pub gateway: String,
    pub mtu: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited { code: i64, oom_killed: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    pub labels: BTreeMap<String, String>,
    /// Its IPv4 address on each network it joined, by network name.
    pub addresses: BTreeMap<String, String>,
    /// The host ports it publishes.
    pub published: Vec<u16>,
}

/// An exit seen on the runtime's event stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitEvent {
    pub id: String,
    pub name: String,
    pub code: i64,
    pub oom_killed: bool,
}

pub trait Containers: Send + Sync + 'static {
    fn pull(&self, image: &str) -> BoxFuture<'static, Result<(), ContainerError>>;
    fn create(&self, spec: ContainerSpec) -> BoxFuture<'static, Result<String, ContainerError>>;
    fn start(&self, name: &str) -> BoxFuture<'static, Result<(), ContainerError>>;
    fn stop(&self, name: &str, timeout_s: u32) -> BoxFuture<'static, Result<(), ContainerError>>;
    /// Sends `signal` (`KILL`, `TERM`, …) to a running container.
    fn kill(&self, name: &str, signal: &str) -> BoxFuture<'static, Result<(), ContainerError>>;
    fn remove(&self, name: &str, force: bool) -> BoxFuture<'static, Result<(), ContainerError>>;
    fn inspect(&self, name: &str) -> BoxFuture<'static, Result<ContainerInfo, ContainerError>>;
    fn list_by_label(
        &self,
        key: &str,
        value: &str,
    ) -> BoxFuture<'static, Result<Vec<ContainerInfo>, ContainerError>>;
    /// The next exit event; resolves when a container exits.
    fn next_exit(&self) -> BoxFuture<'static, Result<ExitEvent, ContainerError>>;
    /// Is `image` here (pulled or built locally)?
    fn image_present(&self, image: &str) -> BoxFuture<'static, Result<bool, ContainerError>>;
    /// Makes the network `spec` describes, or leaves it when it is there as described; one
    /// of that name with another subnet, gateway, bridge or MTU is replaced (which the
    /// engine refuses while containers use it).
    fn ensure_network(&self, spec: NetworkSpec) -> BoxFuture<'static, Result<(), ContainerError>>;
    /// The last `tail` lines the container wrote (stdout and stderr).
    fn logs(
        &self,
        name: &str,
        tail: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, ContainerError>>;
}
