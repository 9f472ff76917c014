//! [`Links`] on the kernel of the current network namespace, over rtnetlink (the
//! rust-netlink crates: maintained, async on Tokio, and what the Rust container tools
//! use; no `ip` shell-outs).

use crate::links::{Entry, FilterRule, Iface, Links, Mac, VxlanSpec, WgKey, WgSpec};
use crate::BoxFuture;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// [`Links`] over one rtnetlink connection.
#[derive(Clone)]
pub struct Netlink {
    h: Handle,
    /// WireGuard devices run in this process (the kernel here has no WireGuard).
    wg: std::sync::Arc<crate::wireguard::Userspace>,
}

impl Netlink {
    /// Opens a connection; its driver runs on the current Tokio runtime.
    pub fn new() -> io::Result<Self> {
        let (conn, h, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self {
            h,
            wg: Default::default(),
        })
    }
}

fn nl(what: &str) -> impl Fn(rtnetlink::Error) -> io::Error + '_ {
    move |e| match e {
        rtnetlink::Error::NetlinkError(m) => {
            let io = m.to_io();
            io::Error::new(io.kind(), format!("{what}: {io}"))
        }
        other => io::Error::other(format!("{what}: {other}")),
    }
}

impl Netlink {
    async fn link_by_name(&self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut s = self.h.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(l) => Ok(l),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(e) => Err(nl("finding a link")(e)),
        }
    }

    async fn index_of(&self, name: &str) -> io::Result<u32> {
        match self.link_by_name(name).await? {
            Some(l) => Ok(l.header.index),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface named {name:?}"),
            )),
        }
    }

    async fn name_of(&self, index: u32) -> io::Result<String> {
        let mut s = self.h.link().get().match_index(index).execute();
        let l = s.try_next().await.map_err(nl("finding a link"))?;
        Ok(l.and_then(|l| link_name(&l)).unwrap_or_default())
    }

    /// The interface the IPv4 default route leaves by.
    async fn default_iface(&self) -> io::Result<u32> {
        let mut s = self
            .h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = s.try_next().await.map_err(nl("listing routes"))? {
            if r.header.destination_prefix_length == 0
                && r.header.table == RouteHeader::RT_TABLE_MAIN
            {
                if let Some(oif) = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }) {
                    return Ok(oif);
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no IPv4 default route: name the interface with --iface",
        ))
    }

    async fn first_v4(&self, index: u32) -> io::Result<Option<Ipv4Addr>> {
        let mut s = self
            .h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(a) = s.try_next().await.map_err(nl("listing addresses"))? {
            for attr in &a.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    return Ok(Some(*ip));
                }
            }
        }
        Ok(None)
    }

    fn route_msg(
        dst: Ipv4Addr,
        len: u8,
        via: Ipv4Addr,
        oif: Option<u32>,
        onlink: bool,
    ) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, len)
            .gateway(via);
        if let Some(i) = oif {
            b = b.output_interface(i);
        }
        let mut m = b.build();
        if onlink {
            m.header.flags |= RouteFlags::Onlink;
        }
        m
    }

    async fn add_entry(&self, e: &Entry) -> io::Result<()> {
        match e {
            Entry::WgPeer { .. } => self.wg.peer(e, true),
            Entry::Route {
                dst,
                len,
                via,
                dev,
                onlink,
            } => {
                let oif = match dev {
                    Some(d) => Some(self.index_of(d).await?),
                    None => None,
                };
                let m = Self::route_msg(*dst, *len, *via, oif, *onlink);
                self.h
                    .route()
                    .add(m)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl("adding a route"))
            }
            Entry::Neigh { dev, .. } | Entry::Fdb { dev, .. } => {
                let i = self.index_of(dev).await?;
                let what = if e.is_fdb() {
                    "adding an FDB entry"
                } else {
                    "adding an ARP entry"
                };
                self.neighbour(i, e)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(what))
            }
        }
    }

    /// The request for a Neigh or Fdb entry on link `index` (an add; its message also
    /// names the entry to delete).
    fn neighbour(&self, index: u32, e: &Entry) -> rtnetlink::NeighbourAddRequest {
        match e {
            Entry::Neigh { ip, mac, .. } => self
                .h
                .neighbours()
                .add(index, IpAddr::V4(*ip))
                .link_local_address(&mac.0),
            Entry::Fdb { mac, dst, .. } => {
                let mut req = self
                    .h
                    .neighbours()
                    .add_bridge(index, &mac.0)
                    .flags(NeighbourFlags::Own);
                let dst = NeighbourAttribute::Destination(NeighbourAddress::Inet(*dst));
                req.message_mut().attributes.push(dst);
                req
            }
            Entry::Route { .. } | Entry::WgPeer { .. } => unreachable!("not a neighbour: {e}"),
        }
    }

    async fn remove_entry(&self, e: &Entry) -> io::Result<()> {
        let (r, what) = match e {
            Entry::WgPeer { .. } => return self.wg.peer(e, false),
            Entry::Route {
                dst,
                len,
                via,
                dev,
                onlink,
            } => {
                let oif = match dev {
                    Some(d) => self.link_by_name(d).await?.map(|l| l.header.index),
                    None => None,
                };
                let m = Self::route_msg(*dst, *len, *via, oif, *onlink);
                (self.h.route().del(m).execute().await, "removing a route")
            }
            Entry::Neigh { dev, .. } | Entry::Fdb { dev, .. } => {
                let Some(l) = self.link_by_name(dev).await? else {
                    return Ok(());
                };
                let m = self.neighbour(l.header.index, e).message_mut().clone();
                (
                    self.h.neighbours().del(m).execute().await,
                    "removing a neighbour",
                )
            }
        };
        match r {
            // Already gone: what removing asked for.
            Err(rtnetlink::Error::NetlinkError(m))
                if [libc::ENOENT, libc::ESRCH].contains(&m.raw_code().abs()) =>
            {
                Ok(())
            }
            r => r.map_err(nl(what)),
        }
    }

    async fn vxlan(&self, spec: &VxlanSpec) -> io::Result<Mac> {
        let existing = self.link_by_name(&spec.name).await?;
        let fits = existing.as_ref().is_some_and(|l| vxlan_matches(l, spec));
        if let Some(l) = existing.as_ref().filter(|_| !fits) {
            // flannel's rule: a device of ours that does not match is made again.
            self.h
                .link()
                .del(l.header.index)
                .execute()
                .await
                .map_err(nl("removing a stale VXLAN device"))?;
        }
        if !fits {
            let under = self.index_of(&spec.underlay).await?;
            let m = LinkVxlan::new(&spec.name, spec.vni)
                .dev(under)
                .local(spec.local)
                .port(spec.port)
                .learning(false)
                .mtu(spec.mtu)
                .up()
                .build();
            self.h
                .link()
                .add(m)
                .execute()
                .await
                .map_err(nl("creating the VXLAN device"))?;
        }
        let l = self
            .link_by_name(&spec.name)
            .await?
            .ok_or_else(|| io::Error::other("the VXLAN device vanished after it was made"))?;
        self.address_and_up(&l, spec.addr, None, "the VXLAN device")
            .await?;
        link_mac(&l).ok_or_else(|| io::Error::other("the VXLAN device has no MAC address"))
    }

    /// Gives link `l` the /32 `addr` (if known) and `mtu` (if given), and sets it up.
    async fn address_and_up(
        &self,
        l: &LinkMessage,
        addr: Option<Ipv4Addr>,
        mtu: Option<u32>,
        what: &str,
    ) -> io::Result<()> {
        if let Some(addr) = addr {
            let r = self
                .h
                .address()
                .add(l.header.index, IpAddr::V4(addr), 32)
                .replace()
                .execute()
                .await;
            r.map_err(nl(&format!("addressing {what}")))?;
        }
        let mut up = rtnetlink::LinkUnspec::new_with_index(l.header.index).up();
        if let Some(m) = mtu {
            up = up.mtu(m);
        }
        self.h
            .link()
            .set(up.build())
            .execute()
            .await
            .map_err(nl(&format!("setting {what} up")))
    }

    async fn wireguard(&self, spec: &WgSpec) -> io::Result<WgKey> {
        let public = self.wg.ensure(spec)?;
        let l = self
            .link_by_name(&spec.name)
            .await?
            .ok_or_else(|| io::Error::other("the WireGuard device has no link"))?;
        self.address_and_up(&l, spec.addr, Some(spec.mtu), "the WireGuard device")
            .await?;
        Ok(public)
    }

    async fn neighbours(&self, dev: &str) -> io::Result<Vec<Entry>> {
        if self.wg.has(dev) {
            return self.wg.peers(dev);
        }
        let Some(l) = self.link_by_name(dev).await? else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        let mut s = self.h.neighbours().get().execute();
        while let Some(n) = s.try_next().await.map_err(nl("listing neighbours"))? {
            if n.header.ifindex != l.header.index || n.header.state != NeighbourState::Permanent {
                continue;
            }
            let (mut ip, mut mac) = (None, None);
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                    NeighbourAttribute::LinkLocalAddress(b) if b.len() == 6 => {
                        let mut m = [0u8; 6];
                        m.copy_from_slice(b);
                        mac = Some(Mac(m));
                    }
                    _ => {}
                }
            }
            let (Some(ip), Some(mac)) = (ip, mac) else {
                continue;
            };
            let dev = dev.to_string();
            out.push(match n.header.family {
                AddressFamily::Bridge => Entry::Fdb { dev, mac, dst: ip },
                _ => Entry::Neigh { dev, ip, mac },
            });
        }
        Ok(out)
    }

    async fn routes(&self, net: Ipv4Addr, len: u8) -> io::Result<Vec<Entry>> {
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        let inside = |ip: Ipv4Addr| u32::from(ip) & mask == u32::from(net);
        let mut out = Vec::new();
        let mut s = self
            .h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = s.try_next().await.map_err(nl("listing routes"))? {
            if r.header.table != RouteHeader::RT_TABLE_MAIN
                || r.header.address_family != AddressFamily::Inet
            {
                continue;
            }
            let (mut dst, mut via, mut oif) = (None, None, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let (Some(dst), Some(via)) = (dst, via) else {
                continue;
            };
            if !inside(dst) || r.header.destination_prefix_length < len {
                continue;
            }
            let onlink = r.header.flags.contains(RouteFlags::Onlink);
            let dev = match (onlink, oif) {
                (true, Some(i)) => Some(self.name_of(i).await?),
                _ => None,
            };
            out.push(Entry::Route {
                dst,
                len: r.header.destination_prefix_length,
                via,
                dev,
                onlink,
            });
        }
        Ok(out)
    }
}

fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn link_mac(l: &LinkMessage) -> Option<Mac> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            let mut m = [0u8; 6];
            m.copy_from_slice(b);
            Some(Mac(m))
        }
        _ => None,
    })
}

fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// Whether an existing device is the VXLAN device `spec` asks for (VNI, port, local).
fn vxlan_matches(l: &LinkMessage, spec: &VxlanSpec) -> bool {
    let infos = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    let Some(infos) = infos else { return false };
    let kind = infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    });
    let Some(d) = data else { return false };
    let has = |want: &InfoVxlan| d.iter().any(|x| x == want);
    kind && has(&InfoVxlan::Id(spec.vni))
        && has(&InfoVxlan::Port(spec.port))
        && has(&InfoVxlan::Local(spec.local))
}

impl Links for Netlink {
    fn iface(&self, name: Option<&str>) -> BoxFuture<'_, io::Result<Iface>> {
        let name = name.map(str::to_string);
        Box::pin(async move {
            let index = match &name {
                Some(n) => self.index_of(n).await?,
                None => self.default_iface().await?,
            };
            let mut s = self.h.link().get().match_index(index).execute();
            let l = s
                .try_next()
                .await
                .map_err(nl("reading the interface"))?
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the interface vanished"))?;
            let name = link_name(&l).unwrap_or_default();
            let ip = self.first_v4(index).await?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("interface {name:?} has no IPv4 address"),
                )
            })?;
            Ok(Iface {
                mtu: link_mtu(&l).unwrap_or(1500),
                name,
                ip,
            })
        })
    }

    fn ensure_vxlan(&self, spec: &VxlanSpec) -> BoxFuture<'_, io::Result<Mac>> {
        let spec = spec.clone();
        Box::pin(async move { self.vxlan(&spec).await })
    }

    fn ensure_wireguard(&self, spec: &WgSpec) -> BoxFuture<'_, io::Result<WgKey>> {
        let spec = spec.clone();
        Box::pin(async move { self.wireguard(&spec).await })
    }

    fn add(&self, e: &Entry) -> BoxFuture<'_, io::Result<()>> {
        let e = e.clone();
        Box::pin(async move { self.add_entry(&e).await })
    }

    fn remove(&self, e: &Entry) -> BoxFuture<'_, io::Result<()>> {
        let e = e.clone();
        Box::pin(async move { self.remove_entry(&e).await })
    }

    fn routes_within(&self, net: Ipv4Addr, len: u8) -> BoxFuture<'_, io::Result<Vec<Entry>>> {
        Box::pin(async move { self.routes(net, len).await })
    }

    fn neighbours_on(&self, dev: &str) -> BoxFuture<'_, io::Result<Vec<Entry>>> {
        let dev = dev.to_string();
        Box::pin(async move { self.neighbours(&dev).await })
    }

    fn set_filter(&self, rules: &[FilterRule]) -> BoxFuture<'_, io::Result<()>> {
        let rules = rules.to_vec();
        Box::pin(async move { crate::iptables::set(&rules).await })
    }
}
