//! The network's configuration: flannel's JSON at `<prefix>/config`, with flannel's
//! defaults and checks (subnet/config.go), so a key written for flanneld means the same
//! here.

use super::subnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// flannel's VXLAN port when `Port` is 0: the kernel's default, 8472.
pub const VXLAN_PORT_DEFAULT: u16 = 8472;
pub const WIREGUARD_PORT_DEFAULT: u16 = 51820;

/// The data plane that carries packets between machines' subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A route per peer subnet via the peer's public IP (needs one L2 segment).
    HostGw,
    /// flannel's VXLAN: device `flannel.<vni>`, UDP `port`.
    Vxlan { vni: u32, port: u16 },
    /// WireGuard between machines, keys published in the leases.
    Wireguard {
        listen_port: u16,
        psk: Option<String>,
    },
}

impl Backend {
    /// flannel's `BackendType` word.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan { .. } => "vxlan",
            Backend::Wireguard { .. } => "wireguard",
        }
    }

    /// Bytes the encapsulation takes from the underlay's MTU (flannel's figures).
    pub fn mtu_overhead(&self) -> u32 {
        match self {
            Backend::HostGw => 0,
            Backend::Vxlan { .. } => 50,
            Backend::Wireguard { .. } => 80,
        }
    }
}

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Net,
    pub subnet_max: Ipv4Net,
    pub backend: Backend,
}

/// The JSON as flannel writes it (PascalCase; unknown fields kept out of the way).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet_len: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet_min: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet_max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backend: Option<RawBackend>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RawBackend {
    #[serde(rename = "Type", default)]
    kind: Option<String>,
    #[serde(rename = "VNI", default, skip_serializing_if = "Option::is_none")]
    vni: Option<u32>,
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(
        rename = "ListenPort",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    listen_port: Option<u16>,
    #[serde(rename = "PSK", default, skip_serializing_if = "Option::is_none")]
    psk: Option<String>,
}

impl NetConfig {
    /// Parses and checks `<prefix>/config`; the error names what is wrong.
    pub fn parse(json: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(json)
            .map_err(|e| format!("network config is not flannel's JSON: {e}"))?;
        let network = raw
            .network
            .as_deref()
            .ok_or("network config has no \"Network\"")?;
        let network = Ipv4Net::parse_cidr(network).map_err(|e| format!("\"Network\": {e}"))?;
        let subnet_len = match raw.subnet_len {
            Some(l) => l,
            None if network.prefix_len() <= 22 => 24,
            None => network.prefix_len() + 2,
        };
        if subnet_len > 30 {
            return Err(format!("\"SubnetLen\" {subnet_len} is longer than 30"));
        }
        if u32::from(subnet_len) < u32::from(network.prefix_len()) + 2 {
            return Err(format!(
                "\"SubnetLen\" {subnet_len}: \"Network\" {network} must hold at least four subnets"
            ));
        }
        let first = Ipv4Net::new(network.ip(), subnet_len).expect("len checked");
        let last_addr =
            u32::from(network.ip()) + (network.size() - (1u64 << (32 - subnet_len))) as u32;
        let last = Ipv4Net::new(Ipv4Addr::from(last_addr), subnet_len).expect("len checked");
        let bound = |name: &str, v: Option<&str>, default: Ipv4Net| -> Result<Ipv4Net, String> {
            let Some(v) = v else { return Ok(default) };
            let ip: Ipv4Addr = v
                .parse()
                .map_err(|_| format!("\"{name}\" {v:?} is not an IPv4 address"))?;
            let n = Ipv4Net::new(ip, subnet_len).expect("len checked");
            if n.ip() != ip {
                return Err(format!("\"{name}\" {v} is not on a /{subnet_len} boundary"));
            }
            if !network.covers(&n) {
                return Err(format!(
                    "\"{name}\" {v} is not inside \"Network\" {network}"
                ));
            }
            Ok(n)
        };
        let subnet_min = bound(
            "SubnetMin",
            raw.subnet_min.as_deref(),
            first.next().expect("4 subnets"),
        )?;
        let subnet_max = bound("SubnetMax", raw.subnet_max.as_deref(), last)?;
        if subnet_min > subnet_max {
            return Err(format!(
                "\"SubnetMin\" {subnet_min} is above \"SubnetMax\" {subnet_max}"
            ));
        }
        let backend = parse_backend(raw.backend.unwrap_or_default())?;
        Ok(Self {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// The JSON `flotilla net init` writes: only what was chosen, as flannel users write it.
    pub fn init_json(network: Ipv4Net, subnet_len: Option<u8>, backend: &str) -> String {
        let raw = RawConfig {
            network: Some(network.to_string()),
            subnet_len,
            backend: Some(RawBackend {
                kind: Some(backend.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        serde_json::to_string(&raw).expect("config serializes")
    }

    /// Whether `subnet` is a lease this configuration could hand out.
    pub fn fits(&self, subnet: &Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && self.network.covers(subnet)
            && *subnet >= self.subnet_min
            && *subnet <= self.subnet_max
    }
}

fn parse_backend(raw: RawBackend) -> Result<Backend, String> {
    // flannel's own default is its "udp" backend, which it has deprecated; vxlan is what
    // its documentation recommends, so an absent type means vxlan here.
    match raw.kind.as_deref().unwrap_or("vxlan") {
        "vxlan" => Ok(Backend::Vxlan {
            vni: raw.vni.unwrap_or(1),
            port: match raw.port {
                None | Some(0) => VXLAN_PORT_DEFAULT,
                Some(p) => p,
            },
        }),
        "host-gw" => Ok(Backend::HostGw),
        "wireguard" => Ok(Backend::Wireguard {
            listen_port: raw.listen_port.unwrap_or(WIREGUARD_PORT_DEFAULT),
            psk: raw.psk,
        }),
        other @ ("udp" | "ipsec" | "alloc" | "aws-vpc" | "gce" | "ali-vpc") => Err(format!(
            "backend {other:?} is flannel's but not flotilla's: use \"vxlan\", \"host-gw\" or \"wireguard\""
        )),
        other => Err(format!(
            "unknown backend type {other:?}: use \"vxlan\", \"host-gw\" or \"wireguard\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        Ipv4Net::parse_cidr(s).unwrap()
    }

    #[test]
    fn flannel_defaults() {
        let c =
            NetConfig::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, net("10.1.1.0/24"));
        assert_eq!(c.subnet_max, net("10.1.255.0/24"));
        assert_eq!(c.backend, Backend::Vxlan { vni: 1, port: 8472 });
        // A small network: prefix + 2.
        let c =
            NetConfig::parse(r#"{"Network":"10.1.0.0/24","Backend":{"Type":"host-gw"}}"#).unwrap();
        assert_eq!((c.subnet_len, c.backend), (26, Backend::HostGw));
        assert_eq!(c.subnet_min, net("10.1.0.64/26"));
        assert_eq!(c.subnet_max, net("10.1.0.192/26"));
        let c =
            NetConfig::parse(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"wireguard"}}"#).unwrap();
        assert_eq!(
            c.backend,
            Backend::Wireguard {
                listen_port: 51820,
                psk: None
            }
        );
    }

    #[test]
    fn the_reference_example_parses_as_written() {
        let c = NetConfig::parse(
            r#"{"Network":"10.1.0.0/16","SubnetLen":24,"SubnetMin":"10.1.1.0","SubnetMax":"10.1.254.0","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert!(c.fits(&net("10.1.74.0/24")));
        assert!(!c.fits(&net("10.1.255.0/24")) && !c.fits(&net("10.1.0.0/24")));
        assert!(!c.fits(&net("10.1.74.0/25")));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        for (json, says) in [
            ("{", "not flannel's JSON"),
            (r#"{"SubnetLen":24}"#, "no \"Network\""),
            (r#"{"Network":"10.1.0.1/16"}"#, "host bits"),
            (
                r#"{"Network":"10.1.0.0/16","SubnetLen":31}"#,
                "longer than 30",
            ),
            (
                r#"{"Network":"10.1.0.0/24","SubnetLen":25}"#,
                "four subnets",
            ),
            (
                r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.1.7"}"#,
                "boundary",
            ),
            (
                r#"{"Network":"10.1.0.0/16","SubnetMax":"10.2.1.0"}"#,
                "not inside",
            ),
            (
                r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.9.0","SubnetMax":"10.1.2.0"}"#,
                "above",
            ),
            (
                r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#,
                "not flotilla's",
            ),
            (
                r#"{"Network":"10.1.0.0/16","Backend":{"Type":"carrier-pigeon"}}"#,
                "unknown backend",
            ),
        ] {
            let e = NetConfig::parse(json).unwrap_err();
            assert!(e.contains(says), "{json}: {e}");
        }
    }

    #[test]
    fn init_json_round_trips() {
        let j = NetConfig::init_json(net("10.5.0.0/16"), None, "host-gw");
        assert_eq!(
            j,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#
        );
        assert_eq!(NetConfig::parse(&j).unwrap().backend, Backend::HostGw);
    }
}
