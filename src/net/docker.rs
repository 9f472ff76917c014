//! The agent's Docker network on this machine's lease: the self-contained form of
//! flannel's `dockerd --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU`. A bridge network on the
//! lease (gateway its first address, the network's MTU) that units' containers join
//! unless their `docker run` names a network; the agent holds their starts until it
//! exists ([`UnitNetwork`]).

use super::subnet::Ipv4Net;
use super::NetStatus;
use flotilla_shims::containers::{Containers, NetworkSpec};
use flotilla_shims::Clock;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The network's name when `--docker-network` does not say.
pub const DEFAULT_NAME: &str = "flotilla";
/// The Linux bridge under it.
pub const BRIDGE: &str = "flotilla0";
/// Backoff between attempts while the engine refuses, doubling up to the cap.
const RETRY_MS: u64 = 500;
const RETRY_MAX_MS: u64 = 10_000;

/// What units' containers join: off (no cluster network), or the network (its name and
/// gateway) once it exists.
/// Also the resolver they are given.
#[derive(Clone, Default)]
pub struct UnitNetwork {
    made: Option<watch::Receiver<Option<Made>>>,
    dns: ContainerDns,
}

/// The Docker network as made: its name and its gateway (the bridge's address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub name: String,
    pub gateway: String,
}

/// The resolver units' containers are given (`--dns-addr`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ContainerDns {
    /// Docker's own choice.
    #[default]
    None,
    /// The node answers on every address: the cluster network's gateway reaches it.
    Gateway,
    Addr(String),
}

/// Where the agent stands on a container that names no network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// Docker's default, as `docker run` does.
    Default,
    /// The cluster network by this name.
    Network(String),
    /// The cluster network does not exist yet (no lease yet): start it later.
    NotYet,
}

impl UnitNetwork {
    /// No cluster network: containers get Docker's default.
    pub fn off() -> Self {
        Self::default()
    }

    /// These containers get `dns` as their resolver.
    pub fn with_dns(self, dns: ContainerDns) -> Self {
        Self { dns, ..self }
    }

    /// The `--dns` servers a container gets.
    pub fn dns_servers(&self) -> Vec<String> {
        match &self.dns {
            ContainerDns::None => vec![],
            ContainerDns::Gateway => self.made().map(|m| m.gateway).into_iter().collect(),
            ContainerDns::Addr(a) => vec![a.clone()],
        }
    }

    pub fn join(&self) -> Join {
        match (&self.made, self.made()) {
            (None, _) => Join::Default,
            (Some(_), Some(m)) => Join::Network(m.name),
            (Some(_), None) => Join::NotYet,
        }
    }

    fn made(&self) -> Option<Made> {
        self.made.as_ref().and_then(|rx| rx.borrow().clone())
    }
}

/// The network `name` on `lease`.
pub fn spec(name: &str, lease: Ipv4Net, mtu: u32) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        bridge: BRIDGE.into(),
        subnet: lease.to_string(),
        gateway: lease.gateway().to_string(),
        mtu,
    }
}

/// A [`UnitNetwork`] for the agent, and the sender [`follow`] opens it with.
pub fn channel() -> (watch::Sender<Option<Made>>, UnitNetwork) {
    let (tx, rx) = watch::channel(None);
    let net = UnitNetwork {
        made: Some(rx),
        dns: ContainerDns::None,
    };
    (tx, net)
}

/// Keeps the Docker network on the lease `status` holds, for good.
pub async fn follow(
    mut status: watch::Receiver<NetStatus>,
    containers: Arc<dyn Containers>,
    clock: Arc<dyn Clock>,
    name: String,
    ready: watch::Sender<Option<Made>>,
) {
    let mut made: Option<NetworkSpec> = None;
    loop {
        let want = {
            let st = status.borrow_and_update();
            st.lease.map(|l| spec(&name, l, st.mtu))
        };
        if let Some(want) = want.filter(|w| made.as_ref() != Some(w)) {
            ensure(&*containers, &*clock, &want).await;
            tracing::info!(network = %want.name, subnet = %want.subnet, mtu = want.mtu, "docker network on the lease");
            ready.send_replace(Some(Made {
                name: name.clone(),
                gateway: want.gateway.clone(),
            }));
            made = Some(want);
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

async fn ensure(containers: &dyn Containers, clock: &dyn Clock, want: &NetworkSpec) {
    let mut backoff = RETRY_MS;
    let mut said = String::new();
    while let Err(e) = containers.ensure_network(want.clone()).await {
        let why = e.to_string();
        if why != said {
            tracing::error!(network = %want.name, error = %why, "could not make the docker network; retrying");
            said = why;
        }
        clock.sleep(Duration::from_millis(backoff)).await;
        backoff = (backoff * 2).min(RETRY_MAX_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_sits_on_the_lease() {
        let lease = Ipv4Net::parse_cidr("10.1.74.0/24").unwrap();
        let s = spec("flotilla", lease, 1450);
        assert_eq!(
            (
                s.subnet.as_str(),
                s.gateway.as_str(),
                s.bridge.as_str(),
                s.mtu
            ),
            ("10.1.74.0/24", "10.1.74.1", "flotilla0", 1450)
        );
    }

    #[test]
    fn units_wait_for_the_network_once_it_is_on() {
        assert_eq!(UnitNetwork::off().join(), Join::Default);
        let (tx, net) = channel();
        assert_eq!(net.join(), Join::NotYet);
        let net = net.with_dns(ContainerDns::Gateway);
        assert_eq!(net.dns_servers(), Vec::<String>::new());
        tx.send_replace(Some(Made {
            name: "flotilla".into(),
            gateway: "10.1.74.1".into(),
        }));
        assert_eq!(net.join(), Join::Network("flotilla".into()));
        assert_eq!(net.dns_servers(), ["10.1.74.1"]);
        let net = net.with_dns(ContainerDns::Addr("192.168.9.9".into()));
        assert_eq!(net.dns_servers(), ["192.168.9.9"]);
        assert_eq!(UnitNetwork::off().dns_servers(), Vec::<String>::new());
    }
}
