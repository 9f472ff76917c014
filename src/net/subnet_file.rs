//! flannel's subnet file (`/run/flannel/subnet.env`): what Docker is started with
//! (`--bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU`), and where a restarted machine finds the
//! subnet it held last.

use super::subnet::Ipv4Net;
use std::net::Ipv4Addr;

/// flannel's default path.
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

/// The file's text, in flannel's order and names.
pub fn render(network: Ipv4Net, lease: Ipv4Net, mtu: u32, ip_masq: bool) -> String {
    format!(
        "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ip_masq}\n",
        lease.gateway(),
        lease.prefix_len()
    )
}

/// The subnet a previous run wrote (`FLANNEL_SUBNET=10.1.74.1/24` → `10.1.74.0/24`);
/// `None` when the file has no such line or it is not an address/len.
pub fn previous_subnet(text: &str) -> Option<Ipv4Net> {
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("FLANNEL_SUBNET="))?;
    let (ip, len) = v.trim().split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    Ipv4Net::new(ip, len.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannels_file_and_back() {
        let net = Ipv4Net::parse_cidr("10.1.0.0/16").unwrap();
        let lease = Ipv4Net::parse_cidr("10.1.74.0/24").unwrap();
        let text = render(net, lease, 1450, false);
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(previous_subnet(&text), Some(lease));
        assert_eq!(previous_subnet("FLANNEL_SUBNET=garbage\n"), None);
        assert_eq!(previous_subnet(""), None);
    }
}
