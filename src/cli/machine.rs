//! The flags that make a process a machine units run on — shared by `flotilla node` (a
//! member that is also a machine) and `flotilla agent` (a machine only).

use crate::agent::presence::MachineConfig;
use crate::agent::AgentConfig;
use crate::node::RunSeams;
use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_shims::SeededRng;
use std::path::Path;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct MachineArgs {
    /// This machine's id for the scheduler (letters, digits, `-`, `_`). Default: a random
    /// 32-hex id created once and kept in the data dir as `machine-id`.
    #[arg(long)]
    pub machine_id: Option<String>,
    /// Machine metadata for `MachineMetadata=`, `key=value,...`.
    #[arg(long, default_value = "")]
    pub metadata: String,
    /// The IP other machines and users reach this one on (default: the host of the first
    /// advertised client URL).
    #[arg(long)]
    pub public_ip: Option<String>,
    /// How long this machine stays registered without a heartbeat (fleet's agent_ttl);
    /// it renews every third of this. A duration: `30s`, `5s`, `1m`.
    #[arg(long, default_value = "30s")]
    pub agent_ttl: String,
    /// Let Exec lines run host commands (anything but docker and etcdctl). Off by
    /// default: whoever can submit a unit would get a shell on every machine.
    #[arg(long)]
    pub allow_host_commands: bool,
    /// The Docker Engine: unix:///var/run/docker.sock (default) or tcp://host:port.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Prefix for the names of containers this machine creates (`--name apache1` →
    /// PREFIXapache1), so several machines can share one engine.
    #[arg(long, default_value = "")]
    pub container_name_prefix: String,
    /// Bind every port this machine's containers publish on this address
    /// (`-p 8081:80` → IP:8081:80).
    #[arg(long)]
    pub publish_ip: Option<String>,
}

impl MachineArgs {
    /// The machine, from the flags (its id may still be empty: it then comes from the
    /// data dir). `agent_url` is where its journals are served.
    pub fn config(&self, client_urls: &[String], agent_url: &str) -> Result<MachineConfig> {
        let id = self.machine_id.clone().unwrap_or_default();
        if self.machine_id.is_some() {
            check_machine_id(&id)?;
        }
        let public_ip = match &self.public_ip {
            Some(ip) => ip.clone(),
            None => client_urls
                .first()
                .and_then(|u| u.parse::<http::Uri>().ok())
                .and_then(|u| u.host().map(String::from))
                .unwrap_or_default(),
        };
        Ok(MachineConfig {
            id,
            public_ip,
            metadata: parse_metadata(&self.metadata)?,
            ttl_s: parse_ttl(&self.agent_ttl)?,
            agent_url: agent_url.to_string(),
        })
    }

    /// How `machine` runs its units, from the flags.
    pub fn agent_config(&self, machine: MachineConfig) -> Result<AgentConfig> {
        check_prefix(&self.container_name_prefix)?;
        if let Some(ip) = &self.publish_ip {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| anyhow::anyhow!("--publish-ip {ip:?}: not an IP address"))?;
        }
        Ok(AgentConfig {
            allow_host_commands: self.allow_host_commands,
            name_prefix: self.container_name_prefix.clone(),
            publish_ip: self.publish_ip.clone(),
            host: host_facts(),
            ..AgentConfig::new(machine)
        })
    }

    /// The production seams: Docker (connected on first use), host processes, files.
    pub fn seams(&self, machine_id: &str) -> RunSeams {
        RunSeams {
            containers: Arc::new(flotilla_shims::docker::DockerEngine::new(
                self.docker_host.as_deref(),
                crate::agent::run_step::LABEL_MACHINE,
                machine_id,
            )),
            procs: Arc::new(flotilla_shims::process::HostProcesses::new()),
            files: Arc::new(flotilla_shims::files::RealFiles),
            network: crate::net::docker::UnitNetwork::off(),
        }
    }
}

/// The machine id kept in `dir` (created on first use, like `/etc/machine-id`).
pub fn stored_machine_id(dir: &Path) -> Result<String> {
    let path = dir.join("machine-id");
    let id = flotilla_shims::files::load_or_create(&path, || {
        let mut rng = SeededRng::from_entropy();
        format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
    })
    .with_context(|| format!("machine id in {}", path.display()))?;
    check_machine_id(&id).with_context(|| format!("{}", path.display()))?;
    Ok(id)
}

/// Docker's container names are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`: the prefix must keep them so.
pub fn check_prefix(p: &str) -> Result<()> {
    let ok = p
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && p.chars().next().is_none_or(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("--container-name-prefix {p:?}: letters, digits, '_', '.', '-', starting with a letter or digit");
    }
    Ok(())
}

/// `%H` and `%b` for Exec lines: this host's name and boot id.
pub fn host_facts() -> crate::unitfile::name::Host {
    let read = |p: &str| flotilla_shims::files::read_small(p).unwrap_or_default();
    crate::unitfile::name::Host {
        hostname: read("/proc/sys/kernel/hostname"),
        machine_id: String::new(),
        boot_id: read("/proc/sys/kernel/random/boot_id").replace('-', ""),
    }
}

pub fn check_machine_id(id: &str) -> Result<()> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("--machine-id {id:?}: must be a non-empty string of letters, digits, '-' and '_'");
    }
    Ok(())
}

/// `--agent-ttl`: a duration of whole seconds, at least one.
pub fn parse_ttl(s: &str) -> Result<u64> {
    let d = humantime::parse_duration(s.trim())
        .or_else(|_| s.trim().parse::<u64>().map(std::time::Duration::from_secs))
        .map_err(|_| anyhow::anyhow!("--agent-ttl {s:?}: not a duration (e.g. 30s)"))?;
    if d.as_millis() % 1000 != 0 || d.as_secs() == 0 || d.as_secs() > 86_400 {
        bail!("--agent-ttl {s:?}: must be whole seconds between 1s and 24h (TTLs are in seconds)");
    }
    Ok(d.as_secs())
}

/// `--metadata k=v,k2=v2`: keys and values trimmed; an item without `=` or with an
/// empty key is an error (fleet dropped them silently).
pub fn parse_metadata(s: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--metadata: {item:?} is not key=value");
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            bail!("--metadata: {item:?} has an empty key");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked() {
        assert!(check_machine_id("m-1_a").is_ok());
        assert!(check_machine_id("").is_err());
        assert!(check_machine_id("a b").is_err());
        assert_eq!(parse_ttl("30s").unwrap(), 30);
        assert_eq!(parse_ttl("2").unwrap(), 2);
        assert!(parse_ttl("1500ms").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert_eq!(parse_metadata(" a = 1 ,b=2").unwrap().len(), 2);
        assert!(parse_metadata("novalue").is_err());
        assert!(parse_metadata("=x").is_err());
        assert!(check_prefix("n1-").is_ok());
        assert!(check_prefix("-n").is_err());
        assert!(check_prefix("a/b").is_err());
    }
}
