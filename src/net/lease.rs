//! Subnet leases in flannel's layout and by flannel's algorithm (subnet/etcdv2), as pure
//! decisions: a listing in, what to write out.
//!
//! A lease is `<prefix>/subnets/<a.b.c.d>-<len>` holding [`LeaseAttrs`], with a TTL (a key
//! without one is a reservation and never expires). Choosing one, in flannel's order:
//! this machine's own lease by public IP (if it still fits the config), then the subnet
//! it held last (the subnet file of its last run, or the lease it just lost to an expiry
//! — flannel gave such a host a new subnet and stranded its containers), then a random
//! one of up to 100 free candidates.

use super::config::NetConfig;
use super::subnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// How many free subnets a random pick chooses among (flannel's bound).
pub const CANDIDATES_MAX: usize = 100;
/// How many times a create that lost a race (`prevExist=false` refused) is retried.
pub const CREATE_ATTEMPTS_MAX: u32 = 10;

/// A lease's value, as flannel writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "BackendType", default)]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub backend_data: serde_json::Value,
}

/// A lease as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    /// A key without a TTL: a reservation, never expiring, never re-set with one.
    pub reservation: bool,
}

impl Lease {
    /// A lease from its key's last segment and value; `None` (with why) when either is
    /// not flannel's, so one bad key never stops the network.
    pub fn parse(segment: &str, value: &str, has_ttl: bool) -> Result<Self, String> {
        let subnet = Ipv4Net::parse_key(segment)?;
        let attrs: LeaseAttrs = serde_json::from_str(value)
            .map_err(|e| format!("lease {segment}: value is not flannel's: {e}"))?;
        Ok(Self {
            subnet,
            attrs,
            reservation: !has_ttl,
        })
    }
}

/// What to do to hold a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// This machine's lease exists and fits: re-set it (with the TTL unless a reservation).
    Keep { subnet: Ipv4Net, reservation: bool },
    /// Create this subnet's key with `prevExist=false`.
    Create { subnet: Ipv4Net },
    /// Every subnet between SubnetMin and SubnetMax is taken.
    OutOfSubnets,
}

/// The decision, plus this machine's stale leases (they no longer fit the config) to
/// delete first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub delete: Vec<Ipv4Net>,
    pub plan: Plan,
}

/// Chooses a lease. `previous` is the subnet this machine held last; `pick(n)` returns an
/// index below `n` (the caller's seeded RNG).
pub fn decide(
    cfg: &NetConfig,
    leases: &[Lease],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    pick: impl FnOnce(usize) -> usize,
) -> Decision {
    let (ours, stale): (Vec<&Lease>, Vec<&Lease>) = leases
        .iter()
        .filter(|l| l.attrs.public_ip == public_ip)
        .partition(|l| cfg.fits(&l.subnet));
    let delete = stale.iter().map(|l| l.subnet).collect();
    if let Some(l) = ours.iter().min_by_key(|l| l.subnet) {
        let (subnet, reservation) = (l.subnet, l.reservation);
        return Decision {
            delete,
            plan: Plan::Keep {
                subnet,
                reservation,
            },
        };
    }
    let taken = |s: &Ipv4Net| leases.iter().any(|l| l.subnet.overlaps(s));
    if let Some(p) = previous.filter(|p| cfg.fits(p) && !taken(p)) {
        return Decision {
            delete,
            plan: Plan::Create { subnet: p },
        };
    }
    let free = free_candidates(cfg, &taken);
    let plan = if free.is_empty() {
        Plan::OutOfSubnets
    } else {
        let i = pick(free.len());
        assert!(i < free.len(), "pick returned {i} of {}", free.len());
        Plan::Create { subnet: free[i] }
    };
    Decision { delete, plan }
}

/// Up to [`CANDIDATES_MAX`] free subnets from SubnetMin upwards.
fn free_candidates(cfg: &NetConfig, taken: &dyn Fn(&Ipv4Net) -> bool) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    let mut s = Some(cfg.subnet_min);
    while let Some(cur) = s.filter(|c| *c <= cfg.subnet_max) {
        if !taken(&cur) {
            out.push(cur);
            if out.len() == CANDIDATES_MAX {
                break;
            }
        }
        s = cur.next();
    }
    out
}

/// When to renew a lease of `ttl_s` seconds: `margin_s` before it expires, as flannel's
/// `--subnet-lease-renew-margin`; a margin as long as the TTL renews at half of it.
pub fn renew_after_s(ttl_s: u64, margin_s: u64) -> u64 {
    if margin_s < ttl_s {
        ttl_s - margin_s
    } else {
        (ttl_s / 2).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> NetConfig {
        NetConfig::parse(json).unwrap()
    }

    fn lease(s: &str, ip: [u8; 4], ttl: bool) -> Lease {
        let v = format!(
            r#"{{"PublicIP":"{}","BackendType":"host-gw"}}"#,
            Ipv4Addr::from(ip)
        );
        Lease::parse(s, &v, ttl).unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        Ipv4Net::parse_cidr(s).unwrap()
    }

    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const C16: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#;

    #[test]
    fn own_lease_first_and_a_reservation_stays_one() {
        let c = cfg(C16);
        let ls = [
            lease("10.1.9.0-24", [192, 168, 1, 2], true),
            lease("10.1.7.0-24", [192, 168, 1, 1], false),
        ];
        let d = decide(&c, &ls, ME, Some(net("10.1.3.0/24")), |_| unreachable!());
        assert_eq!(
            d.plan,
            Plan::Keep {
                subnet: net("10.1.7.0/24"),
                reservation: true
            }
        );
        assert!(d.delete.is_empty());
    }

    #[test]
    fn a_lease_that_no_longer_fits_is_deleted_and_the_previous_subnet_retaken() {
        // The config moved to 10.1.0.0/16 with /25s: the old /24 is stale.
        let c = cfg(r#"{"Network":"10.1.0.0/16","SubnetLen":25}"#);
        let ls = [lease("10.1.7.0-24", [192, 168, 1, 1], true)];
        let d = decide(&c, &ls, ME, Some(net("10.1.3.0/25")), |_| unreachable!());
        assert_eq!(d.delete, vec![net("10.1.7.0/24")]);
        assert_eq!(
            d.plan,
            Plan::Create {
                subnet: net("10.1.3.0/25")
            }
        );
    }

    #[test]
    fn a_taken_previous_subnet_falls_to_a_random_free_one() {
        let c = cfg(C16);
        let ls = [
            lease("10.1.1.0-24", [192, 168, 1, 9], true),
            lease("10.1.3.0-24", [192, 168, 1, 8], true),
        ];
        let mut seen = 0;
        let d = decide(&c, &ls, ME, Some(net("10.1.3.0/24")), |n| {
            seen = n;
            1
        });
        assert_eq!(seen, CANDIDATES_MAX, "100 candidates to choose among");
        // Candidates skip 10.1.0.0 (below SubnetMin) and the two taken: 2, 4, 5, …
        assert_eq!(
            d.plan,
            Plan::Create {
                subnet: net("10.1.4.0/24")
            }
        );
    }

    #[test]
    fn out_of_subnets() {
        let c = cfg(r#"{"Network":"10.1.0.0/24","SubnetLen":26}"#);
        let ls: Vec<Lease> = ["10.1.0.64-26", "10.1.0.128-26", "10.1.0.192-26"]
            .iter()
            .enumerate()
            .map(|(i, s)| lease(s, [10, 0, 0, i as u8], true))
            .collect();
        assert_eq!(decide(&c, &ls, ME, None, |_| 0).plan, Plan::OutOfSubnets);
        let d = decide(&c, &ls[..2], ME, None, |n| {
            assert_eq!(n, 1);
            0
        });
        assert_eq!(
            d.plan,
            Plan::Create {
                subnet: net("10.1.0.192/26")
            }
        );
    }

    #[test]
    fn lease_values_are_flannels() {
        let l = Lease::parse(
            "10.1.74.0-24",
            r#"{"PublicIP":"192.168.64.3","BackendType":"vxlan","BackendData":{"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
            true,
        )
        .unwrap();
        assert_eq!(l.attrs.backend_data["VtepMAC"], "c6:d2:32:6f:8f:44");
        assert!(Lease::parse("10.1.74.0-24", "{}", true)
            .unwrap_err()
            .contains("not flannel's"));
        assert!(Lease::parse("10.1.74.0", "{}", true).is_err());
        let round = serde_json::to_string(&l.attrs).unwrap();
        assert_eq!(
            round,
            r#"{"PublicIP":"192.168.64.3","BackendType":"vxlan","BackendData":{"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
    }

    #[test]
    fn renewal_comes_a_margin_ahead() {
        assert_eq!(renew_after_s(86_400, 3_600), 82_800);
        assert_eq!(renew_after_s(60, 3_600), 30);
        assert_eq!(renew_after_s(1, 1), 1);
    }
}
