//! Agent-only machines: machines that are not members (`flotilla agent`), wired by the
//! same `agent::start` as a member's agent, that reach the cluster as production's do —
//! through `HttpKv` and its endpoints' failover rule — over the simulated fabric: each
//! request crosses to the member its URL names, is answered by that member's own API
//! handler, and crosses back, so partitions, loss and crashes reach this path too.

use super::World;
use crate::docker::{DockerFaults, SimDocker};
use crate::env::{SimClock, SimSpawn};
use crate::processes::SimProcesses;
use bytes::Bytes;
use flotilla::agent::presence::MachineConfig;
use flotilla::agent::{AgentConfig, AgentHandle};
use flotilla::client::endpoints::{Endpoints, Transport};
use flotilla::client::http::HttpKv;
use flotilla::client::KvClient;
use flotilla::node::RunSeams;
use flotilla_shims::files::MemFiles;
use flotilla_shims::http::{ClientResponse, RequestError};
use flotilla_shims::BoxFuture;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Fabric endpoints of agent-only machines start here (members are 0.., clients 1,000..).
pub(super) const AGENT_BASE: u64 = 500;
/// How long an agent-only machine's request to the cluster may take.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1_200);

/// An agent-only machine: its engine, processes and files, and how it reaches the store.
pub(super) struct AgentMachine {
    pub(super) id: String,
    pub(super) clock: SimClock,
    pub(super) docker: SimDocker,
    procs: SimProcesses,
    files: MemFiles,
    /// The store as this machine reaches it (its presence containers write through it).
    pub(super) kv: Arc<dyn KvClient>,
    pub(super) agent: Mutex<Option<AgentHandle>>,
}

/// The member a client URL (`http://10.0.0.N:2379`) names.
fn member_of(url: &str) -> Option<usize> {
    let host = url.strip_prefix("http://10.0.0.")?;
    let n: usize = host.split(':').next()?.parse().ok()?;
    n.checked_sub(1)
}

/// HTTP over the fabric, from one agent-only machine.
struct FabricHttp {
    world: Weak<World>,
    from: u64,
}

impl FabricHttp {
    async fn round_trip(
        &self,
        method: &str,
        url: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<ClientResponse, RequestError> {
        let w = self
            .world
            .upgrade()
            .ok_or_else(|| failed(url, "no world"))?;
        let node = member_of(url).ok_or_else(|| failed(url, "not a member's URL"))?;
        w.count("agent-request");
        let Some(there) = w.fabric.hop(self.from, node as u64) else {
            return std::future::pending().await;
        };
        madsim::time::sleep(there).await;
        let Some(api) = w.slots[node].api.lock().expect("slot lock").clone() else {
            return Err(failed(url, "connection refused"));
        };
        let path = url.splitn(4, '/').nth(3).unwrap_or("");
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("/{path}"));
        let bytes = match body {
            Some((ct, b)) => {
                req = req.header(http::header::CONTENT_TYPE, ct);
                b
            }
            None => Bytes::new(),
        };
        let req = req.body(bytes).map_err(|e| failed(url, &e.to_string()))?;
        let resp = api(req).await;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let Some(back) = w.fabric.hop(node as u64, self.from) else {
            return std::future::pending().await;
        };
        madsim::time::sleep(back).await;
        Ok(ClientResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

fn failed(url: &str, why: &str) -> RequestError {
    RequestError::Failed(format!("{url}: {why}"))
}

impl Transport for FabricHttp {
    fn request<'a>(
        &'a self,
        method: &'a str,
        url: &'a str,
        body: Option<(&'static str, Bytes)>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ClientResponse, RequestError>> {
        Box::pin(async move {
            // A lost message is a timeout, as on a real network.
            match madsim::time::timeout(timeout, self.round_trip(method, url, body)).await {
                Ok(r) => r,
                Err(_) => Err(RequestError::TimedOut {
                    url: url.to_string(),
                    after: timeout,
                }),
            }
        })
    }
}

impl AgentMachine {
    /// Agent-only machine `j` of world `w`: every member's client URL, its own first.
    pub(super) fn new(w: &Weak<World>, j: usize, nodes: usize, faults: DockerFaults) -> Self {
        Self {
            id: format!("m{}", nodes + j),
            clock: SimClock::default(),
            docker: SimDocker::new(faults),
            procs: SimProcesses::new(),
            files: MemFiles::new(),
            kv: fabric_kv(w, AGENT_BASE + j as u64, j, nodes),
            agent: Mutex::new(None),
        }
    }

    /// Starts its agent (on the current simulated node) by the one `agent::start`.
    pub(super) fn start(&self, cfg: AgentConfig) {
        let seams = RunSeams {
            containers: Arc::new(self.docker.clone()),
            procs: Arc::new(self.procs.clone()),
            files: Arc::new(self.files.clone()),
            network: flotilla::net::docker::UnitNetwork::off(),
        };
        let clock = Arc::new(self.clock.clone());
        let handle = flotilla::agent::start(
            cfg,
            seams.with_store(self.kv.clone()),
            clock,
            Arc::new(SimSpawn),
        );
        *self.agent.lock().expect("agent lock") = Some(handle);
    }

    /// What this machine's agent is configured with, beside a member's of the scenario.
    pub(super) fn config(&self, member: &AgentConfig, j: usize) -> AgentConfig {
        let machine = MachineConfig {
            id: self.id.clone(),
            public_ip: format!("10.0.1.{}", j + 1),
            agent_url: String::new(),
            ..member.machine.clone()
        };
        AgentConfig {
            machine,
            ..member.clone()
        }
    }
}

/// The store as a machine at fabric endpoint `from` reaches it: etcd's v2 HTTP API
/// through every member's client URL, member `j mod nodes`'s first.
pub(super) fn fabric_kv(w: &Weak<World>, from: u64, j: usize, nodes: usize) -> Arc<dyn KvClient> {
    let urls = (0..nodes)
        .map(|k| format!("http://10.0.0.{}:2379", (j + k) % nodes + 1))
        .collect();
    let transport = Arc::new(FabricHttp {
        world: w.clone(),
        from,
    });
    let endpoints = Endpoints::new("agent", urls)
        .expect("simulated endpoints are URLs")
        .with_transport(transport);
    Arc::new(HttpKv::new(endpoints, REQUEST_TIMEOUT))
}

/// Boots the agent-only machines of `w`, each on its own simulated node.
pub(super) fn start_agents(w: &Arc<World>) {
    let Some(member) = super::boot::node_config(&w.s, 0).agent else {
        return;
    };
    for (j, m) in w.agents.iter().enumerate() {
        let (m, cfg) = (m.clone(), m.config(&member, j));
        let node =
            w.rt.create_node()
                .name(format!("a{j}"))
                .init(move || {
                    let (m, cfg) = (m.clone(), cfg.clone());
                    async move {
                        m.start(cfg);
                        std::future::pending::<()>().await
                    }
                })
                .build();
        w.agent_nodes.lock().expect("nodes lock").push(node);
    }
}
