//! The packet-filter rules the network needs, as flannel sets them (pure).
//!
//! - **Forwarding**: Docker (since 1.13) drops forwarded packets by default, which keeps
//!   other machines from reaching this machine's containers by their cluster address.
//!   flannel accepts everything from and to the network; so does flotilla, in its own
//!   filter chain appended to `FORWARD` (after Docker's own rules, which isolate its
//!   bridges from each other first).
//! - **Masquerade**: traffic between cluster addresses keeps its source (a container on
//!   another machine sees the caller's cluster address), so a rule at the head of `nat
//!   POSTROUTING` returns it before Docker's masquerade can rewrite it. With `--ip-masq`
//!   (flannel's flag, for a `dockerd --ip-masq=false` started from the subnet file),
//!   flannel's rules: traffic leaving the network is masqueraded, multicast is not.
//!
//! The rules live in chains of flotilla's own, flushed and refilled whole, so a
//! restarted node replaces what an earlier run left instead of adding beside it.

use super::subnet::Ipv4Net;
use flotilla_shims::links::FilterRule;

/// flotilla's filter chain, jumped to from the end of `FORWARD`.
pub const FORWARD_CHAIN: &str = "FLOTILLA-FWD";
/// flotilla's nat chain, jumped to from the head of `POSTROUTING`.
pub const POSTROUTING_CHAIN: &str = "FLOTILLA-POSTRTG";

/// Every rule for a machine holding `lease` in `network`.
pub fn rules(network: Ipv4Net, lease: Ipv4Net, ip_masq: bool) -> Vec<FilterRule> {
    let (n, l) = (network.to_string(), lease.to_string());
    let fwd = |args: &[&str]| rule("filter", FORWARD_CHAIN, args);
    let nat = |args: &[&str]| rule("nat", POSTROUTING_CHAIN, args);
    let mut out = vec![
        fwd(&["-s", &n, "-j", "ACCEPT"]),
        fwd(&["-d", &n, "-j", "ACCEPT"]),
        nat(&["-s", &n, "-d", &n, "-j", "RETURN"]),
    ];
    if ip_masq {
        out.extend([
            nat(&["-s", &n, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE"]),
            nat(&["!", "-s", &n, "-d", &l, "-j", "RETURN"]),
            nat(&["!", "-s", &n, "-d", &n, "-j", "MASQUERADE"]),
        ]);
    }
    out
}

fn rule(table: &'static str, chain: &'static str, args: &[&str]) -> FilterRule {
    FilterRule {
        table,
        chain,
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        Ipv4Net::parse_cidr(s).unwrap()
    }

    fn lines(rules: &[FilterRule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| format!("-t {} -A {} {}", r.table, r.chain, r.args.join(" ")))
            .collect()
    }

    #[test]
    fn forwarding_and_cluster_sources_kept_without_ip_masq() {
        let r = rules(net("10.1.0.0/16"), net("10.1.74.0/24"), false);
        assert_eq!(
            lines(&r),
            [
                "-t filter -A FLOTILLA-FWD -s 10.1.0.0/16 -j ACCEPT",
                "-t filter -A FLOTILLA-FWD -d 10.1.0.0/16 -j ACCEPT",
                "-t nat -A FLOTILLA-POSTRTG -s 10.1.0.0/16 -d 10.1.0.0/16 -j RETURN",
            ]
        );
    }

    #[test]
    fn ip_masq_adds_flannels_rules_after_the_return() {
        let r = rules(net("10.1.0.0/16"), net("10.1.74.0/24"), true);
        assert_eq!(
            lines(&r)[2..],
            [
                "-t nat -A FLOTILLA-POSTRTG -s 10.1.0.0/16 -d 10.1.0.0/16 -j RETURN",
                "-t nat -A FLOTILLA-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE",
                "-t nat -A FLOTILLA-POSTRTG ! -s 10.1.0.0/16 -d 10.1.74.0/24 -j RETURN",
                "-t nat -A FLOTILLA-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -j MASQUERADE",
            ]
        );
    }
}
