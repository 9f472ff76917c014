//! `flotilla net …` (configure and inspect the container network) and the `--network`
//! flags a node or an agent runs it with.

use crate::client::endpoints::Endpoints;
use crate::client::http::HttpKv;
use crate::client::{KvClient, SetOpts};
use crate::kv::Precondition;
use crate::net::config::NetConfig;
use crate::net::docker::{ContainerDns, UnitNetwork};
use crate::net::lease::Lease;
use crate::net::subnet::Ipv4Net;
use crate::net::{NetOptions, NetSeams, NetStatus};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use flotilla_shims::links::Links;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The flags that put a machine on the cluster network (flannel's names where it has one).
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Take a subnet lease and route to every other machine's subnet. It changes this
    /// host's routes, so it is never on by default.
    #[arg(long)]
    pub network: bool,
    /// Where the network's keys live (flannel's --etcd-prefix).
    #[arg(long, default_value = "/coreos.com/network")]
    pub network_prefix: String,
    /// The interface whose IPv4 address is this machine's public IP (default: the one
    /// the default route leaves by).
    #[arg(long)]
    pub iface: Option<String>,
    /// flannel's subnet file, for `dockerd --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU`.
    #[arg(long, default_value = crate::net::subnet_file::DEFAULT_PATH)]
    pub subnet_file: String,
    /// How long a lease outlives its machine (`24h`, `10m`, `90s`).
    #[arg(long, default_value = "24h")]
    pub subnet_lease_ttl: String,
    /// How long before expiry a lease is renewed.
    #[arg(long, default_value = "1h")]
    pub subnet_lease_renew_margin: String,
    /// Masquerade traffic leaving the network, as flannel's --ip-masq (for a dockerd
    /// started from the subnet file with --ip-masq=false).
    #[arg(long)]
    pub ip_masq: bool,
    /// The Docker network on this machine's lease that units' containers join unless
    /// their `docker run` names one; `none`: make none (dockerd runs from the subnet file).
    #[arg(long, default_value = crate::net::docker::DEFAULT_NAME)]
    pub docker_network: String,
    /// Answer DNS here, UDP and TCP (e.g. `0.0.0.0:53`): SkyDNS's /skydns records, and
    /// units' running instances and machines under --dns-domain. On port 53, units'
    /// containers get it as their resolver (the cluster network's gateway for 0.0.0.0).
    #[arg(long)]
    pub dns_addr: Option<String>,
    /// The domain flotilla's own names sit under (`apache.<domain>`, `<id>.machine.<domain>`).
    #[arg(long, default_value = crate::net::dns::DEFAULT_DOMAIN)]
    pub dns_domain: String,
    /// Upstream servers (`ip[:port]`, comma-separated) for names outside the cluster's;
    /// without any, such names are refused.
    #[arg(long, value_delimiter = ',')]
    pub dns_forward: Vec<String>,
}

/// The DNS server the flags ask for.
#[derive(Debug, Clone)]
pub struct DnsPlan {
    addr: std::net::SocketAddr,
    domain: String,
    forward: Vec<std::net::SocketAddr>,
}

impl DnsPlan {
    /// The resolver units' containers are given.
    pub fn container_dns(&self) -> ContainerDns {
        let ip = self.addr.ip();
        if self.addr.port() != 53 || ip.is_loopback() {
            // resolv.conf names no port, and a container's loopback is its own.
            ContainerDns::None
        } else if ip.is_unspecified() {
            ContainerDns::Gateway
        } else {
            ContainerDns::Addr(ip.to_string())
        }
    }

    /// Binds, starts answering, and keeps the answers current from `kv`.
    pub async fn start(
        self,
        kv: Arc<dyn KvClient>,
        clock: Arc<dyn flotilla_shims::Clock>,
        spawn: &dyn flotilla_shims::Spawn,
    ) -> Result<std::net::SocketAddr> {
        let dns = Arc::new(crate::net::dns::Dns::new(clock, &self.domain));
        crate::net::dns::follow(&dns, kv, spawn);
        let (bound, run) = flotilla_shims::dns::bind(self.addr, dns, self.forward)
            .await
            .with_context(|| format!("--dns-addr {}: cannot listen", self.addr))?;
        spawn.spawn("dns", run);
        tracing::info!(addr = %bound, domain = %self.domain, "answering DNS");
        Ok(bound)
    }
}

/// `host:port` or a bare host with `default_port`.
fn socket_addr(flag: &str, v: &str, default_port: u16) -> Result<std::net::SocketAddr> {
    if let Ok(a) = v.parse() {
        return Ok(a);
    }
    match v.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok((ip, default_port).into()),
        Err(_) => bail!("--{flag} {v:?}: not an address (ip or ip:port)"),
    }
}

impl NetArgs {
    /// The DNS server, when `--dns-addr` asks for one; the error names the bad flag.
    pub fn dns(&self) -> Result<Option<DnsPlan>> {
        let Some(addr) = &self.dns_addr else {
            return Ok(None);
        };
        let addr = socket_addr("dns-addr", addr, 53)?;
        let domain = self.dns_domain.trim_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if domain.is_empty() || !domain.split('.').all(label_ok) {
            bail!("--dns-domain {:?}: not a domain name", self.dns_domain);
        }
        let forward = self
            .dns_forward
            .iter()
            .filter(|v| !v.trim().is_empty())
            .map(|v| socket_addr("dns-forward", v.trim(), 53))
            .collect::<Result<_>>()?;
        Ok(Some(DnsPlan {
            addr,
            domain,
            forward,
        }))
    }

    /// The network's options, when `--network` is on; the error names the bad flag. The
    /// WireGuard key is kept in `data_dir` (it outlives a reboot, as the machine id does).
    pub fn options(&self, data_dir: &std::path::Path) -> Result<Option<NetOptions>> {
        if !self.network {
            return Ok(None);
        }
        let secs = |flag: &str, v: &str| -> Result<u64> {
            let d = humantime::parse_duration(v)
                .with_context(|| format!("--{flag} {v:?}: not a duration"))?;
            if d.as_secs() == 0 {
                bail!("--{flag} {v:?}: must be at least 1s");
            }
            Ok(d.as_secs())
        };
        let ttl = secs("subnet-lease-ttl", &self.subnet_lease_ttl)?;
        let margin = secs("subnet-lease-renew-margin", &self.subnet_lease_renew_margin)?;
        if !self.network_prefix.starts_with('/') {
            bail!(
                "--network-prefix {:?}: must start with /",
                self.network_prefix
            );
        }
        if self.subnet_file.is_empty() {
            bail!("--subnet-file must name a file");
        }
        if let Some(dir) = std::path::Path::new(&self.subnet_file).parent() {
            flotilla_shims::files::ensure_dir(dir)
                .with_context(|| format!("--subnet-file: creating {}", dir.display()))?;
        }
        Ok(Some(NetOptions {
            prefix: self.network_prefix.trim_end_matches('/').to_string(),
            iface: self.iface.clone(),
            subnet_file: self.subnet_file.clone(),
            lease_ttl_s: ttl,
            renew_margin_s: margin,
            ip_masq: self.ip_masq,
            wg_key_file: Some(data_dir.join("wgkey").display().to_string()),
            ..NetOptions::defaults()
        }))
    }

    /// What units' containers join, and the sender that opens it once the Docker network
    /// exists (`None`: they join Docker's default).
    pub fn unit_network(&self) -> Result<(Option<DockerNetwork>, UnitNetwork)> {
        if !self.network || self.docker_network == "none" {
            return Ok((None, UnitNetwork::off()));
        }
        let name = &self.docker_network;
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            bail!("--docker-network {name:?}: letters, digits, '-', '_' and '.' only");
        }
        let (ready, net) = crate::net::docker::channel();
        Ok((
            Some(DockerNetwork {
                name: name.clone(),
                ready,
            }),
            net,
        ))
    }
}

/// The Docker network to keep on the lease, and who waits for it.
pub struct DockerNetwork {
    name: String,
    ready: watch::Sender<Option<crate::net::docker::Made>>,
}

impl DockerNetwork {
    /// Keeps the network on the lease `status` follows, on its own task.
    pub fn follow(
        self,
        status: watch::Receiver<NetStatus>,
        containers: Arc<dyn flotilla_shims::containers::Containers>,
        clock: Arc<dyn flotilla_shims::Clock>,
        spawn: &dyn flotilla_shims::Spawn,
    ) {
        let f = crate::net::docker::follow(status, containers, clock, self.name, self.ready);
        spawn.spawn("docker-network", Box::pin(f));
    }
}

/// Takes down what the network set on the host that another program could trip over:
/// flotilla's packet-filter chains (the masquerade among them). Routes and devices stay,
/// as flannel leaves them, so the containers keep their traffic until the next start.
pub async fn on_stop(net_on: bool) {
    if !net_on {
        return;
    }
    let chains = [
        ("filter", crate::net::filter::FORWARD_CHAIN),
        ("nat", crate::net::filter::POSTROUTING_CHAIN),
    ];
    match flotilla_shims::iptables::remove(&chains).await {
        Ok(()) => tracing::info!("stopping: flotilla's packet-filter chains removed"),
        Err(e) => {
            tracing::error!(error = %e, "stopping: could not remove the packet-filter chains")
        }
    }
}

/// Starts the network with the production seams, if `--network` asked for it; what it
/// holds, followed.
pub fn start(
    opts: Option<NetOptions>,
    kv: Arc<dyn KvClient>,
    clock: Arc<dyn flotilla_shims::Clock>,
    spawn: &dyn flotilla_shims::Spawn,
    seed: u64,
) -> Result<Option<watch::Receiver<NetStatus>>> {
    let Some(opts) = opts else { return Ok(None) };
    let links = flotilla_shims::netlink::Netlink::new().context("--network: opening rtnetlink")?;
    let seams = NetSeams {
        kv,
        clock,
        links: Arc::new(links),
        files: Arc::new(flotilla_shims::files::RealFiles),
        seed,
    };
    Ok(Some(crate::net::start(seams, opts, spawn)))
}

#[derive(Args, Debug)]
pub struct NetCmdArgs {
    /// Client URLs to try, comma-separated.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:2379",
        env = "FLOTILLA_ENDPOINTS"
    )]
    endpoints: String,
    #[command(flatten)]
    tls: super::tls::ClientTlsArgs,
    /// Where the network's keys live (flannel's --etcd-prefix).
    #[arg(long, global = true, default_value = "/coreos.com/network")]
    network_prefix: String,
    #[command(subcommand)]
    cmd: NetCmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    HostGw,
    Vxlan,
    Wireguard,
}

#[derive(Subcommand, Debug)]
enum NetCmd {
    /// Configure the network (writes <prefix>/config, flannel's JSON); refuses to
    /// overwrite an existing config unless --force.
    Init {
        /// The whole network, e.g. 10.1.0.0/16.
        cidr: String,
        #[arg(long, value_enum, default_value = "vxlan")]
        backend: BackendArg,
        /// Each machine's subnet length (default: flannel's, 24 for a /22 or larger).
        #[arg(long)]
        subnet_len: Option<u8>,
        #[arg(long)]
        force: bool,
    },
    /// Every machine's lease: subnet, public IP, backend, and whether it is a reservation.
    Leases,
    /// This machine: its lease, backend, peers and the routes it holds into the network.
    Status {
        /// The interface whose address is this machine's public IP (as the node's --iface).
        #[arg(long)]
        iface: Option<String>,
    },
}

pub fn run(a: NetCmdArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(exec(a))
}

async fn exec(a: NetCmdArgs) -> Result<()> {
    let endpoints = Endpoints::parse("--endpoints", &a.endpoints).map_err(anyhow::Error::msg)?;
    a.tls.install(endpoints.urls())?;
    let kv = HttpKv::new(endpoints, Duration::from_secs(5));
    let prefix = a.network_prefix.trim_end_matches('/').to_string();
    match a.cmd {
        NetCmd::Init {
            cidr,
            backend,
            subnet_len,
            force,
        } => init(&kv, &prefix, &cidr, backend, subnet_len, force).await,
        NetCmd::Leases => {
            for line in lease_lines(&leases(&kv, &prefix).await?) {
                println!("{line}");
            }
            Ok(())
        }
        NetCmd::Status { iface } => status(&kv, &prefix, iface.as_deref()).await,
    }
}

async fn init(
    kv: &HttpKv,
    prefix: &str,
    cidr: &str,
    backend: BackendArg,
    len: Option<u8>,
    force: bool,
) -> Result<()> {
    let net = Ipv4Net::parse_cidr(cidr).map_err(|e| anyhow::anyhow!("CIDR: {e}"))?;
    let backend = match backend {
        BackendArg::HostGw => "host-gw",
        BackendArg::Vxlan => "vxlan",
        BackendArg::Wireguard => "wireguard",
    };
    let json = NetConfig::init_json(net, len, backend);
    // The same checks a node makes when it reads it: refuse now, not on every machine.
    NetConfig::parse(&json).map_err(anyhow::Error::msg)?;
    let prev = Precondition {
        exist: (!force).then_some(false),
        ..Default::default()
    };
    let key = format!("{prefix}/config");
    match kv
        .set(
            &key,
            &json,
            SetOpts {
                prev,
                ..Default::default()
            },
        )
        .await
    {
        Ok(_) => {
            println!("{json}");
            Ok(())
        }
        Err(crate::client::ClientError::Store(e)) if e.code == crate::kv::error::NODE_EXIST => {
            bail!("{key} exists already; --force replaces it (machines holding leases keep them until they restart)")
        }
        Err(e) => Err(e).context(format!("writing {key}")),
    }
}

async fn leases(kv: &HttpKv, prefix: &str) -> Result<Vec<Lease>> {
    let dir = format!("{prefix}/subnets");
    let Some(got) = kv
        .get(&dir, true, true)
        .await
        .with_context(|| format!("reading {dir}"))?
    else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for n in got.node.nodes.unwrap_or_default() {
        let seg = n.key.rsplit('/').next().unwrap_or("");
        match Lease::parse(seg, n.value.as_deref().unwrap_or(""), n.expire_ms.is_some()) {
            Ok(l) => out.push(l),
            Err(e) => eprintln!("flotilla: skipping {}: {e}", n.key),
        }
    }
    out.sort_by_key(|l| l.subnet);
    Ok(out)
}

fn lease_lines(ls: &[Lease]) -> Vec<String> {
    let mut out = vec![format!(
        "{:<18} {:<16} {:<10} {}",
        "SUBNET", "PUBLIC IP", "BACKEND", "KIND"
    )];
    for l in ls {
        let kind = if l.reservation {
            "reservation"
        } else {
            "lease"
        };
        out.push(format!(
            "{:<18} {:<16} {:<10} {}",
            l.subnet.to_string(),
            l.attrs.public_ip.to_string(),
            l.attrs.backend_type,
            kind
        ));
    }
    out
}

async fn status(kv: &HttpKv, prefix: &str, iface: Option<&str>) -> Result<()> {
    let key = format!("{prefix}/config");
    let cfg = match kv
        .get(&key, false, true)
        .await
        .with_context(|| format!("reading {key}"))?
    {
        Some(g) => {
            NetConfig::parse(g.node.value.as_deref().unwrap_or("")).map_err(anyhow::Error::msg)?
        }
        None => bail!("the network is not configured: {key} is missing (flotilla net init CIDR)"),
    };
    let links = flotilla_shims::netlink::Netlink::new().context("opening rtnetlink")?;
    let me = links
        .iface(iface)
        .await
        .context("finding this machine's interface")?;
    let all = leases(kv, prefix).await?;
    let mine = all.iter().find(|l| l.attrs.public_ip == me.ip);
    println!(
        "network: {} ({}), subnets /{}",
        cfg.network,
        cfg.backend.type_name(),
        cfg.subnet_len
    );
    println!("this machine: {} on {} (mtu {})", me.ip, me.name, me.mtu);
    match mine {
        Some(l) => println!("lease: {}", l.subnet),
        None => println!("lease: none held by {}", me.ip),
    }
    let peers: Vec<&Lease> = all.iter().filter(|l| l.attrs.public_ip != me.ip).collect();
    println!("peers: {}", peers.len());
    for l in peers {
        println!(
            "  {} via {} ({})",
            l.subnet, l.attrs.public_ip, l.attrs.backend_type
        );
    }
    let routes = links
        .routes_within(cfg.network.ip(), cfg.network.prefix_len())
        .await?;
    println!("routes into the network: {}", routes.len());
    for r in routes {
        println!("  {r}");
    }
    Ok(())
}
