//! A simulated container engine with seeded failures: pulls and starts that fail,
//! containers that die or are OOM-killed, daemon restarts. It implements the same
//! [`Containers`] trait as the Docker driver, for the agent to run against.

use flotilla_shims::containers::*;
use flotilla_shims::BoxFuture;
use madsim::rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Failure rates, per thousand operations.
#[derive(Debug, Clone, Default)]
pub struct DockerFaults {
    pub pull_fail_permille: u32,
    pub start_fail_permille: u32,
}

struct State {
    images: BTreeSet<String>,
    containers: BTreeMap<String, ContainerInfo>,
    /// Containers created with `--rm`: removed when they exit.
    auto_remove: BTreeSet<String>,
    /// Each container's environment (the presence image reads its key from it).
    env: BTreeMap<String, BTreeMap<String, String>>,
    next_id: u64,
    daemon_up: bool,
    faults: DockerFaults,
}

#[derive(Clone)]
pub struct SimDocker {
    st: Arc<Mutex<State>>,
    exits_tx: mpsc::Sender<ExitEvent>,
    exits_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<ExitEvent>>>,
}

pub use crate::scenario::PRESENCE_IMAGE;

/// One running presence container's announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub unit: String,
    pub key: String,
    pub value: String,
    /// `None`: written without a TTL.
    pub ttl_s: Option<u64>,
}

/// Exit events buffered at most; older ones are dropped when the agent lags.
pub const EXIT_EVENTS_MAX: usize = 1024;

fn roll(permille: u32) -> bool {
    madsim::rand::thread_rng().gen_range(0..1000) < permille
}

impl SimDocker {
    pub fn new(faults: DockerFaults) -> Self {
        let (exits_tx, rx) = mpsc::channel(EXIT_EVENTS_MAX);
        Self {
            st: Arc::new(Mutex::new(State {
                images: BTreeSet::new(),
                containers: BTreeMap::new(),
                auto_remove: BTreeSet::new(),
                env: BTreeMap::new(),
                next_id: 1,
                daemon_up: true,
                faults,
            })),
            exits_tx,
            exits_rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().expect("engine lock poisoned")
    }

    fn exit(&self, st: &mut State, name: &str, code: i64, oom: bool) {
        let auto_remove = st.auto_remove.contains(name);
        if let Some(c) = st.containers.get_mut(name) {
            if c.state == ContainerState::Running {
                c.state = ContainerState::Exited {
                    code,
                    oom_killed: oom,
                };
                let _ = self.exits_tx.try_send(ExitEvent {
                    id: c.id.clone(),
                    name: name.to_string(),
                    code,
                    oom_killed: oom,
                });
                if auto_remove {
                    st.containers.remove(name);
                    st.auto_remove.remove(name);
                    st.env.remove(name);
                }
            }
        }
    }

    /// Fault: a running container dies (exit 1) or is OOM-killed (exit 137).
    pub fn kill_container(&self, name: &str, oom: bool) {
        let mut st = self.lock();
        self.exit(&mut st, name, if oom { 137 } else { 1 }, oom);
    }

    /// Fault: one running container (picked by `pick`) dies, or is OOM-killed.
    pub fn kill_some(&self, pick: u64, oom: bool) {
        let name = {
            let st = self.lock();
            let running: Vec<&String> = st
                .containers
                .iter()
                .filter(|(_, c)| c.state == ContainerState::Running)
                .map(|(n, _)| n)
                .collect();
            if running.is_empty() {
                return;
            }
            running[(pick % running.len() as u64) as usize].clone()
        };
        self.kill_container(&name, oom);
    }

    /// The `flotilla.unit` label of every running container.
    pub fn running_units(&self) -> Vec<String> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.state == ContainerState::Running)
            .filter_map(|c| c.labels.get("flotilla.unit").cloned())
            .collect()
    }

    /// Each running container's unit and id: a restart shows as a new id.
    pub fn running_ids(&self) -> BTreeMap<String, String> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.state == ContainerState::Running)
            .filter_map(|c| Some((c.labels.get("flotilla.unit")?.clone(), c.id.clone())))
            .collect()
    }

    /// What the running presence containers (image [`PRESENCE_IMAGE`]) announce: their
    /// `PRESENCE_KEY`, `PRESENCE_VALUE` and `PRESENCE_TTL` (seconds), as the real image
    /// reads them from its environment.
    pub fn presences(&self) -> Vec<Presence> {
        let st = self.lock();
        st.containers
            .values()
            .filter(|c| c.state == ContainerState::Running && c.image == PRESENCE_IMAGE)
            .filter_map(|c| {
                let env = st.env.get(&c.name)?;
                Some(Presence {
                    unit: c.labels.get("flotilla.unit")?.clone(),
                    key: env.get("PRESENCE_KEY")?.clone(),
                    value: env.get("PRESENCE_VALUE").cloned().unwrap_or_default(),
                    ttl_s: env.get("PRESENCE_TTL").and_then(|t| t.parse().ok()),
                })
            })
            .collect()
    }

    pub fn set_faults(&self, faults: DockerFaults) {
        self.lock().faults = faults;
    }

    /// Fault: the daemon goes down (every running container exits) or comes back.
    pub fn set_daemon(&self, up: bool) {
        let mut st = self.lock();
        if !up {
            let running: Vec<String> = st
                .containers
                .iter()
                .filter(|(_, c)| c.state == ContainerState::Running)
                .map(|(n, _)| n.clone())
                .collect();
            for n in running {
                self.exit(&mut st, &n, 143, false);
            }
        }
        st.daemon_up = up;
    }

    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, ContainerError>,
    ) -> BoxFuture<'static, Result<T, ContainerError>> {
        let r = {
            let mut st = self.lock();
            if st.daemon_up {
                f(&mut st)
            } else {
                Err(ContainerError::Unavailable("daemon restarting".into()))
            }
        };
        Box::pin(async move { r })
    }
}

impl Containers for SimDocker {
    fn pull(&self, image: &str) -> BoxFuture<'static, Result<(), ContainerError>> {
        let image = image.to_string();
        self.with(move |st| {
            if roll(st.faults.pull_fail_permille) {
                return Err(ContainerError::PullFailed {
                    image,
                    why: "injected".into(),
                });
            }
            st.images.insert(image);
            Ok(())
        })
    }

    fn create(&self, spec: ContainerSpec) -> BoxFuture<'static, Result<String, ContainerError>> {
        self.with(move |st| {
            if !st.images.contains(&spec.image) {
                return Err(ContainerError::ImageNotFound(spec.image));
            }
            if st.containers.contains_key(&spec.name) {
                return Err(ContainerError::Failed {
                    name: spec.name,
                    why: "name already in use".into(),
                });
            }
            let id = format!("{:012x}", st.next_id);
            st.next_id += 1;
            if spec.auto_remove {
                st.auto_remove.insert(spec.name.clone());
            }
            st.env
                .insert(spec.name.clone(), spec.env.iter().cloned().collect());
            st.containers.insert(
                spec.name.clone(),
                ContainerInfo {
                    id: id.clone(),
                    name: spec.name,
                    image: spec.image,
                    state: ContainerState::Created,
                    labels: spec.labels,
                    addresses: BTreeMap::new(),
                    published: spec.ports.iter().filter_map(|p| p.host_port).collect(),
                },
            );
            Ok(id)
        })
    }

    fn start(&self, name: &str) -> BoxFuture<'static, Result<(), ContainerError>> {
        let name = name.to_string();
        self.with(move |st| {
            let fail = roll(st.faults.start_fail_permille);
            let c = st
                .containers
                .get_mut(&name)
                .ok_or_else(|| ContainerError::NotFound(name.clone()))?;
            if fail {
                return Err(ContainerError::Failed {
                    name,
                    why: "injected start failure".into(),
                });
            }
            c.state = ContainerState::Running;
            Ok(())
        })
    }

    fn stop(&self, name: &str, _timeout_s: u32) -> BoxFuture<'static, Result<(), ContainerError>> {
        self.signal(name, 0)
    }

    fn kill(&self, name: &str, _signal: &str) -> BoxFuture<'static, Result<(), ContainerError>> {
        self.signal(name, 137)
    }

    fn remove(&self, name: &str, force: bool) -> BoxFuture<'static, Result<(), ContainerError>> {
        let name = name.to_string();
        self.with(move |st| {
            let c = st
                .containers
                .get(&name)
                .ok_or_else(|| ContainerError::NotFound(name.clone()))?;
            if c.state == ContainerState::Running && !force {
                return Err(ContainerError::Failed {
                    name,
                    why: "container is running".into(),
                });
            }
            st.containers.remove(&name);
            st.auto_remove.remove(&name);
            st.env.remove(&name);
            Ok(())
        })
    }

    fn inspect(&self, name: &str) -> BoxFuture<'static, Result<ContainerInfo, ContainerError>> {
        let name = name.to_string();
        self.with(move |st| {
            st.containers
                .get(&name)
                .cloned()
                .ok_or(ContainerError::NotFound(name))
        })
    }

    fn list_by_label(
        &self,
        key: &str,
        value: &str,
    ) -> BoxFuture<'static, Result<Vec<ContainerInfo>, ContainerError>> {
        let (key, value) = (key.to_string(), value.to_string());
        self.with(move |st| {
            Ok(st
                .containers
                .values()
                .filter(|c| c.labels.get(&key) == Some(&value))
                .cloned()
                .collect())
        })
    }

    fn image_present(&self, image: &str) -> BoxFuture<'static, Result<bool, ContainerError>> {
        let image = image.to_string();
        self.with(move |st| Ok(st.images.contains(&image)))
    }

    /// The simulated engine has one flat network: any network asked for is there (the
    /// simulator's agents join none; the network's data plane is modelled by `SimLinks`).
    fn ensure_network(&self, _spec: NetworkSpec) -> BoxFuture<'static, Result<(), ContainerError>> {
        self.with(|_| Ok(()))
    }

    fn logs(
        &self,
        name: &str,
        _tail: usize,
    ) -> BoxFuture<'static, Result<Vec<String>, ContainerError>> {
        let name = name.to_string();
        self.with(move |st| match st.containers.get(&name) {
            Some(c) => Ok(vec![format!("{name}: {:?}", c.state)]),
            None => Err(ContainerError::NotFound(name)),
        })
    }

    fn next_exit(&self) -> BoxFuture<'static, Result<ExitEvent, ContainerError>> {
        let rx = self.exits_rx.clone();
        Box::pin(async move {
            rx.lock()
                .await
                .recv()
                .await
                .ok_or_else(|| ContainerError::Unavailable("engine gone".into()))
        })
    }
}

impl SimDocker {
    fn signal(&self, name: &str, code: i64) -> BoxFuture<'static, Result<(), ContainerError>> {
        let name = name.to_string();
        let me = self.clone();
        let r = {
            let mut st = self.lock();
            if !st.daemon_up {
                Err(ContainerError::Unavailable("daemon restarting".into()))
            } else if !st.containers.contains_key(&name) {
                Err(ContainerError::NotFound(name.clone()))
            } else {
                me.exit(&mut st, &name, code, false);
                Ok(())
            }
        };
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[madsim::test]
    async fn lifecycle_failures_and_daemon_restart() {
        let e = SimDocker::new(DockerFaults::default());
        let spec = ContainerSpec {
            name: "web".into(),
            image: "busybox".into(),
            ..Default::default()
        };
        assert_eq!(
            e.create(spec.clone()).await,
            Err(ContainerError::ImageNotFound("busybox".into()))
        );
        e.pull("busybox").await.unwrap();
        e.create(spec).await.unwrap();
        e.start("web").await.unwrap();
        e.kill_container("web", true);
        let ev = e.next_exit().await.unwrap();
        assert_eq!(
            (ev.name.as_str(), ev.code, ev.oom_killed),
            ("web", 137, true)
        );
        e.start("web").await.unwrap();
        e.set_daemon(false);
        assert!(matches!(
            e.inspect("web").await,
            Err(ContainerError::Unavailable(_))
        ));
        e.set_daemon(true);
        assert_eq!(
            e.inspect("web").await.unwrap().state,
            ContainerState::Exited {
                code: 143,
                oom_killed: false
            }
        );
        let failing = SimDocker::new(DockerFaults {
            pull_fail_permille: 1000,
            start_fail_permille: 0,
        });
        assert!(matches!(
            failing.pull("x").await,
            Err(ContainerError::PullFailed { .. })
        ));
    }
}
