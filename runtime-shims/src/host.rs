//! What a config template may ask of its host: environment variables, whether a file
//! exists, and DNS. Real lookups go to the system resolver; the simulator and tests
//! answer from a fixed table, so a render depends only on what the world was given.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Srv {
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

pub trait HostInfo: Send + Sync + 'static {
    fn getenv(&self, name: &str) -> Option<String>;
    fn file_exists(&self, path: &str) -> bool;
    /// A host's addresses; an error names why the lookup failed.
    fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, String>;
    /// `_service._proto.name` SRV records.
    fn lookup_srv(&self, service: &str, proto: &str, name: &str) -> Result<Vec<Srv>, String>;
    /// The process's effective user and group ids (a rendered file's default owner).
    fn ids(&self) -> (u32, u32);
    /// A user's uid, by name.
    fn user_uid(&self, name: &str) -> Option<u32>;
}

/// The machine's own environment, filesystem and resolver.
#[derive(Debug, Clone, Default)]
pub struct RealHost;

impl HostInfo for RealHost {
    fn getenv(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn file_exists(&self, path: &str) -> bool {
        std::path::Path::new(path).exists()
    }

    fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        // getaddrinfo, as Go's resolver falls back to; the port is a placeholder.
        let addrs = (host, 0u16)
            .to_socket_addrs()
            .map_err(|e| format!("lookup {host}: {e}"))?;
        Ok(addrs.map(|a| a.ip()).collect())
    }

    fn lookup_srv(&self, service: &str, proto: &str, name: &str) -> Result<Vec<Srv>, String> {
        // The C library offers no SRV lookup short of libresolv's raw packets; until a
        // resolver crate earns its weight here, say so rather than return nothing.
        Err(format!(
            "lookup _{service}._{proto}.{name}: SRV lookups are not supported by this build"
        ))
    }

    fn ids(&self) -> (u32, u32) {
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        unsafe { (libc::geteuid(), libc::getegid()) }
    }

    fn user_uid(&self, name: &str) -> Option<u32> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut f = line.split(':');
            (f.next()? == name).then_some(())?;
            f.nth(1)?.parse().ok()
        })
    }
}

/// A fixed host: the environment, files and DNS records it was given.
#[derive(Debug, Clone, Default)]
pub struct FixedHost {
    pub env: BTreeMap<String, String>,
    pub files: Vec<String>,
    pub ips: BTreeMap<String, Vec<IpAddr>>,
    /// Keyed by `_service._proto.name`.
    pub srv: BTreeMap<String, Vec<Srv>>,
    pub users: BTreeMap<String, u32>,
}

impl HostInfo for FixedHost {
    fn getenv(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn file_exists(&self, path: &str) -> bool {
        self.files.iter().any(|f| f == path)
    }

    fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        self.ips
            .get(host)
            .cloned()
            .ok_or_else(|| format!("lookup {host}: no such host"))
    }

    fn lookup_srv(&self, service: &str, proto: &str, name: &str) -> Result<Vec<Srv>, String> {
        let key = format!("_{service}._{proto}.{name}");
        self.srv
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("lookup {key}: no such host"))
    }

    fn ids(&self) -> (u32, u32) {
        (0, 0)
    }

    fn user_uid(&self, name: &str) -> Option<u32> {
        self.users.get(name).copied()
    }
}
