//! [`Containers`] on a real Docker Engine, through bollard (its HTTP API over the unix
//! socket, or `tcp://`/`http://` with `--docker-host` / `DOCKER_HOST`).
//!
//! Exits come from the engine's event stream (`die` events), filtered to the containers
//! carrying `label` (so several agents on one engine each see their own). The stream is
//! reconnected when it breaks; while the engine is down, every call answers
//! [`ContainerError::Unavailable`], which the agent reports and retries with backoff.

use crate::containers::*;
use crate::BoxFuture;
use bollard::container::{
    Config, CreateContainerOptions, KillContainerOptions, ListContainersOptions, LogOutput,
    LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::image::CreateImageOptions;
use bollard::models::{HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use bollard::system::EventsOptions;
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};

/// Exit events buffered; when the agent lags further, the oldest are dropped (it
/// re-inspects its containers on every reconcile anyway).
pub const EXIT_EVENTS_MAX: usize = 1024;
/// A Docker API call may take this long (a pull takes as long as it takes).
pub const CALL_TIMEOUT_S: u64 = 120;

/// Connects on first use, and again after a failed connection: an engine that is down
/// when the node starts is a unit failure to retry, not a node that cannot start.
#[derive(Clone)]
pub struct DockerEngine {
    inner: Arc<Inner>,
}

struct Inner {
    host: Option<String>,
    label: String,
    docker: std::sync::Mutex<Option<Docker>>,
    exits_tx: mpsc::Sender<ExitEvent>,
    exits: Mutex<mpsc::Receiver<ExitEvent>>,
}

fn unavailable(e: impl std::fmt::Display) -> ContainerError {
    ContainerError::Unavailable(e.to_string())
}

/// Maps bollard's errors: 404 is "no such container/image", a broken connection is the
/// engine being unavailable, the rest are the operation's failure.
fn map_err(name: &str, e: bollard::errors::Error) -> ContainerError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.contains("image") => ContainerError::ImageNotFound(message),
        E::DockerResponseServerError {
            status_code: 404, ..
        } => ContainerError::NotFound(name.to_string()),
        E::DockerResponseServerError {
            status_code,
            message,
        } => ContainerError::Failed {
            name: name.to_string(),
            why: format!("{message} (HTTP {status_code})"),
        },
        E::HyperResponseError { .. } | E::IOError { .. } | E::SocketNotFoundError(_) => {
            unavailable(e)
        }
        other => ContainerError::Failed {
            name: name.to_string(),
            why: other.to_string(),
        },
    }
}

impl DockerEngine {
    /// An engine at `host` (`unix:///var/run/docker.sock`, `tcp://…`), or at
    /// `DOCKER_HOST`/the local socket when `None`. Exit events are those of containers
    /// labelled `label_key=label_value`.
    pub fn new(host: Option<&str>, label_key: &str, label_value: &str) -> Self {
        let (exits_tx, rx) = mpsc::channel(EXIT_EVENTS_MAX);
        Self {
            inner: Arc::new(Inner {
                host: host.map(String::from),
                label: format!("{label_key}={label_value}"),
                docker: std::sync::Mutex::new(None),
                exits_tx,
                exits: Mutex::new(rx),
            }),
        }
    }

    /// The client, connecting (and starting the exit watcher) if need be.
    fn client(&self) -> Result<Docker, ContainerError> {
        let mut slot = self.inner.docker.lock().expect("docker client lock");
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let docker = match self.inner.host.as_deref() {
            Some(h) if h.starts_with("unix://") || h.starts_with('/') => {
                Docker::connect_with_unix(h, CALL_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => Docker::connect_with_http(
                &h.replacen("tcp://", "http://", 1),
                CALL_TIMEOUT_S,
                bollard::API_DEFAULT_VERSION,
            ),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(unavailable)?;
        tokio::spawn(watch_exits(
            docker.clone(),
            self.inner.label.clone(),
            self.inner.exits_tx.clone(),
        ));
        *slot = Some(docker.clone());
        Ok(docker)
    }
}

macro_rules! client_or_fail {
    ($self:expr) => {
        match $self.client() {
            Ok(d) => d,
            Err(e) => return Box::pin(async move { Err(e) }),
        }
    };
}

/// Follows the engine's `die` events for our label, reconnecting with backoff.
async fn watch_exits(docker: Docker, label: String, tx: mpsc::Sender<ExitEvent>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert("event".to_string(), vec!["die".to_string()]);
        filters.insert("label".to_string(), vec![label.clone()]);
        let mut events = docker.events(Some(EventsOptions::<String> {
            since: None,
            until: None,
            filters,
        }));
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { break };
            backoff = Duration::from_millis(100);
            let attrs = ev
                .actor
                .as_ref()
                .and_then(|a| a.attributes.clone())
                .unwrap_or_default();
            let code = attrs
                .get("exitCode")
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1);
            let exit = ExitEvent {
                id: ev.actor.and_then(|a| a.id).unwrap_or_default(),
                name: attrs.get("name").cloned().unwrap_or_default(),
                code,
                // The die event does not say; an OOM kill shows as 137 and in inspect.
                oom_killed: false,
            };
            if tx.is_closed() {
                return;
            }
            let _ = tx.try_send(exit);
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// `docker run`'s `--restart` value as Docker's policy.
fn restart_policy(v: &str) -> RestartPolicy {
    let (kind, count) = v.split_once(':').unwrap_or((v, ""));
    let name = match kind {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        _ => RestartPolicyNameEnum::NO,
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: count.parse().ok(),
    }
}

fn config(spec: &ContainerSpec) -> Config<String> {
    let mut exposed = HashMap::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.container_port, p.proto);
        exposed.insert(key.clone(), HashMap::new());
        bindings
            .entry(key)
            .or_insert_with(|| Some(vec![]))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: (!p.host_ip.is_empty()).then(|| p.host_ip.clone()),
                host_port: p.host_port.map(|h| h.to_string()),
            });
    }
    let (binds, anonymous): (Vec<String>, Vec<String>) =
        spec.volumes.iter().cloned().partition(|v| v.contains(':'));
    let host = HostConfig {
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        binds: (!binds.is_empty()).then_some(binds),
        network_mode: spec.network.clone(),
        dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
        memory: spec.memory_bytes,
        nano_cpus: spec.nano_cpus,
        privileged: Some(spec.privileged),
        auto_remove: Some(spec.auto_remove),
        restart_policy: spec.restart.as_deref().map(restart_policy),
        ..Default::default()
    };
    Config {
        image: Some(spec.image.clone()),
        cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
        entrypoint: spec.entrypoint.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        volumes: (!anonymous.is_empty())
            .then(|| anonymous.into_iter().map(|v| (v, HashMap::new())).collect()),
        working_dir: spec.workdir.clone(),
        user: spec.user.clone(),
        hostname: spec.hostname.clone(),
        labels: Some(spec.labels.clone().into_iter().collect()),
        host_config: Some(host),
        ..Default::default()
    }
}

const BRIDGE_NAME: &str = "com.docker.network.bridge.name";
const MTU: &str = "com.docker.network.driver.mtu";

fn network_options(spec: &NetworkSpec) -> bollard::network::CreateNetworkOptions<String> {
    use bollard::models::{Ipam, IpamConfig};
    bollard::network::CreateNetworkOptions {
        name: spec.name.clone(),
        check_duplicate: true,
        driver: "bridge".into(),
        ipam: Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(spec.subnet.clone()),
                gateway: Some(spec.gateway.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        },
        options: HashMap::from([
            (BRIDGE_NAME.to_string(), spec.bridge.clone()),
            (MTU.to_string(), spec.mtu.to_string()),
        ]),
        ..Default::default()
    }
}

/// Is the engine's network `n` the one `spec` describes?
fn network_is(n: &bollard::models::Network, spec: &NetworkSpec) -> bool {
    let cfg = n.ipam.as_ref().and_then(|i| i.config.as_ref());
    let first = cfg.and_then(|c| c.first());
    let opts = n.options.clone().unwrap_or_default();
    first.and_then(|c| c.subnet.as_deref()) == Some(spec.subnet.as_str())
        && first.and_then(|c| c.gateway.as_deref()) == Some(spec.gateway.as_str())
        && opts.get(BRIDGE_NAME) == Some(&spec.bridge)
        && opts.get(MTU) == Some(&spec.mtu.to_string())
}

fn state_of(s: Option<&bollard::models::ContainerState>) -> ContainerState {
    let Some(s) = s else {
        return ContainerState::Created;
    };
    if s.running == Some(true) {
        return ContainerState::Running;
    }
    match s.status {
        Some(bollard::models::ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        _ => ContainerState::Exited {
            code: s.exit_code.unwrap_or(0),
            oom_killed: s.oom_killed.unwrap_or(false),
        },
    }
}

impl Containers for DockerEngine {
    fn pull(&self, image: &str) -> BoxFuture<'static, Result<(), ContainerError>> {
        let (docker, image) = (client_or_fail!(self), image.to_string());
        Box::pin(async move {
            let (from, tag) = match image.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                Some((f, t)) => (f.to_string(), t.to_string()),
                None => (image.clone(), "latest".to_string()),
            };
            let opts = CreateImageOptions {
                from_image: from,
                tag,
                ..Default::default()
            };
            let mut s = docker.create_image(Some(opts), None, None);
            while let Some(r) = s.next().await {
                if let Err(e) = r {
                    return Err(match map_err(&image, e) {
                        ContainerError::Unavailable(u) => ContainerError::Unavailable(u),
                        other => ContainerError::PullFailed {
                            image: image.clone(),
                            why: other.to_string(),
                        },
                    });
                }
            }
            Ok(())
        })
    }

    fn create(&self, spec: ContainerSpec) -> BoxFuture<'static, Result<String, ContainerError>> {
        let docker = client_or_fail!(self);
        Box::pin(async move {
            let opts = CreateContainerOptions {
                name: spec.name.clone(),
                platform: None,
            };
            docker
                .create_container(Some(opts), config(&spec))
                .await
                .map(|r| r.id)
                .map_err(|e| map_err(&spec.name, e))
        })
    }

    fn start(&self, name: &str) -> BoxFuture<'static, Result<(), ContainerError>> {
        let (docker, name) = (client_or_fail!(self), name.to_string());
        Box::pin(async move {
            docker
                .start_container::<String>(&name, None)
                .await
                .map_err(|e| map_err(&name, e))
        })
    }

    fn stop(&self, name: &str, timeout_s: u32) -> BoxFuture<'static, Result<(), ContainerError>> {
        let (docker, name) = (client_or_fail!(self), name.to_string());
        Box::pin(async move {
            let opts = StopContainerOptions {
                t: i64::from(timeout_s),
            };
            match docker.stop_container(&name, Some(opts)).await {
                // 304: already stopped — what `docker stop` calls success.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 304, ..
                }) => Ok(()),
                r => r.map_err(|e| map_err(&name, e)),
            }
        })
    }

    fn kill(&self, name: &str, signal: &str) -> BoxFuture<'static, Result<(), ContainerError>> {
        let (docker, name, signal) = (client_or_fail!(self), name.to_string(), signal.to_string());
        Box::pin(async move {
            docker
                .kill_container(&name, Some(KillContainerOptions { signal }))
                .await
                .map_err(|e| map_err(&name, e))
        })
    }

    fn remove(&self, name: &str, force: bool) -> BoxFuture<'static, Result<(), ContainerError>> {
        let (docker, name) = (client_or_fail!(self), name.to_string());
        Box::pin(async move {
            let opts = RemoveContainerOptions {
                force,
                v: true,
                ..Default::default()
            };
            docker
                .remove_container(&name, Some(opts))
                .await
                .map_err(|e| map_err(&name, e))
        })
    }

    fn inspect(&self, name: &str) -> BoxFuture<'static, Result<ContainerInfo, ContainerError>> {
        let (docker, name) = (client_or_fail!(self), name.to_string());
        Box::pin(async move {
            let c = docker
                .inspect_container(&name, None)
                .await
                .map_err(|e| map_err(&name, e))?;
            let cfg = c.config.unwrap_or_default();
            let net = c.network_settings.unwrap_or_default();
            let published = net
                .ports
                .unwrap_or_default()
                .into_values()
                .flatten()
                .flatten()
                .filter_map(|b| b.host_port?.parse().ok())
                .collect();
            Ok(ContainerInfo {
                addresses: addresses(net.networks),
                published,
                id: c.id.unwrap_or_default(),
                name: c
                    .name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                image: cfg.image.unwrap_or_default(),
                state: state_of(c.state.as_ref()),
                labels: cfg.labels.unwrap_or_default().into_iter().collect(),
            })
        })
    }

    fn list_by_label(
        &self,
        key: &str,
        value: &str,
    ) -> BoxFuture<'static, Result<Vec<ContainerInfo>, ContainerError>> {
        let docker = client_or_fail!(self);
        let label = format!("{key}={value}");
        Box::pin(async move {
            let mut filters = HashMap::new();
            filters.insert("label".to_string(), vec![label]);
            let list = docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters,
                    ..Default::default()
                }))
                .await
                .map_err(|e| map_err("(list)", e))?;
            Ok(list
                .into_iter()
                .map(|c| {
                    let running = c.state.as_deref() == Some("running");
                    let created = c.state.as_deref() == Some("created");
                    let networks = c.network_settings.and_then(|n| n.networks);
                    ContainerInfo {
                        addresses: addresses(networks),
                        published: c
                            .ports
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|p| p.public_port)
                            .collect(),
                        id: c.id.unwrap_or_default(),
                        name: c
                            .names
                            .and_then(|n| n.into_iter().next())
                            .unwrap_or_default()
                            .trim_start_matches('/')
                            .to_string(),
                        image: c.image.unwrap_or_default(),
                        state: if running {
                            ContainerState::Running
                        } else if created {
                            ContainerState::Created
                        } else {
                            ContainerState::Exited {
                                code: -1,
                                oom_killed: false,
                            }
                        },
                        labels: c
                            .labels
                            .unwrap_or_default()
                            .into_iter()
                            .collect::<BTreeMap<_, _>>(),
                    }
                })
                .collect())
        })
    }

    fn next_exit(&self) -> BoxFuture<'static, Result<ExitEvent, ContainerError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner
                .exits
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| ContainerError::Unavailable("event stream ended".into()))
        })
    }

    fn image_present(&self, image: &str) -> BoxFuture<'static, Result<bool, ContainerError>> {
        let (docker, image) = (client_or_fail!(self), image.to_string());
        Box::pin(async move {
            match docker.inspect_image(&image).await {
                Ok(_) => Ok(true),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(false),
                Err(e) => Err(map_err(&image, e)),
            }
        })
    }

    fn ensure_network(&self, spec: NetworkSpec) -> BoxFuture<'static, Result<(), ContainerError>> {
        let docker = client_or_fail!(self);
        Box::pin(async move {
            use bollard::errors::Error as E;
            let name = spec.name.clone();
            match docker.inspect_network::<String>(&name, None).await {
                Ok(n) if network_is(&n, &spec) => return Ok(()),
                Ok(_) => docker
                    .remove_network(&name)
                    .await
                    .map_err(|e| map_err(&name, e))?,
                Err(E::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(map_err(&name, e)),
            }
            docker
                .create_network(network_options(&spec))
                .await
                .map(drop)
                .map_err(|e| map_err(&name, e))
        })
    }

    fn logs(
        &self,
        name: &str,
        tail: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, ContainerError>> {
        let (docker, name) = (client_or_fail!(self), name.to_string());
        Box::pin(async move {
            let opts = LogsOptions::<String> {
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            };
            let mut s = docker.logs(&name, Some(opts));
            let mut out = vec![];
            while let Some(r) = s.next().await {
                match r {
                    Ok(
                        LogOutput::StdOut { message }
                        | LogOutput::StdErr { message }
                        | LogOutput::Console { message },
                    ) => {
                        out.extend(String::from_utf8_lossy(&message).lines().map(String::from));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(map_err(&name, e)),
                }
            }
            let skip = out.len().saturating_sub(tail);
            Ok(out.split_off(skip))
        })
    }
}

/// Each network's IPv4 address, as the engine reports it (empty ones left out).
fn addresses(
    networks: Option<HashMap<String, bollard::models::EndpointSettings>>,
) -> BTreeMap<String, String> {
    networks
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, e)| Some((name, e.ip_address.filter(|ip| !ip.is_empty())?)))
        .collect()
}
