//! The next hop to another node as the kernel would take it, asked over rtnetlink: the route
//! (`RTM_GETROUTE`, as `ip route get`), the egress interface's MAC and MTU (`RTM_GETLINK`), the
//! neighbour table (`RTM_GETNEIGH`); and notifications that any of them changed, so that the
//! prepared outer headers of the remote path follow them (`datapath::hops`).
use std::{io, net::Ipv4Addr};

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Where the kernel would send a packet to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The egress interface.
    pub oif: u32,
    /// The neighbour the frame goes to: the route's gateway, else the node itself.
    pub via: Ipv4Addr,
    /// The route's MTU, if it sets one.
    pub mtu: Option<u32>,
}

/// An interface's hardware address (if it is a 6-byte one) and MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
}

/// An IPv4 neighbour entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    /// Its MAC, if the entry has one and is valid (`NUD_VALID`: permanent, noarp, reachable,
    /// stale, delay, probe): the entries the kernel's own FIB lookup for XDP would use.
    pub mac: Option<[u8; 6]>,
}

/// The route the kernel takes to `dst` from this host; `None` when it has no unicast one
/// (unreachable, blackhole, a local address).
pub fn route_to(dst: Ipv4Addr) -> io::Result<Option<Route>> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 32;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
    let answers = match super::links::ask(RouteNetlinkMessage::GetRoute(m), false) {
        Ok(a) => a,
        // No route (ENETUNREACH, EHOSTUNREACH): nothing to prepare.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EINVAL)
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    for a in answers {
        let RouteNetlinkMessage::NewRoute(r) = a else {
            continue;
        };
        if r.header.kind != RouteType::Unicast {
            return Ok(None);
        }
        let mut route = Route {
            oif: 0,
            via: dst,
            mtu: None,
        };
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Oif(i) => route.oif = *i,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.via = *g,
                RouteAttribute::Metrics(ms) => {
                    for metric in ms {
                        if let RouteMetric::Mtu(v) = metric
                            && *v > 0
                        {
                            route.mtu = Some(*v);
                        }
                    }
                }
                _ => {}
            }
        }
        return Ok((route.oif != 0).then_some(route));
    }
    Ok(None)
}

/// Every interface of this network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let mut out = Vec::new();
    for a in super::links::ask(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)? {
        let RouteNetlinkMessage::NewLink(m) = a else {
            continue;
        };
        let mut link = Link {
            index: m.header.index,
            mac: None,
            mtu: 0,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::Address(b) => link.mac = b.as_slice().try_into().ok(),
                LinkAttribute::Mtu(v) => link.mtu = *v,
                _ => {}
            }
        }
        out.push(link);
    }
    Ok(out)
}

/// Every IPv4 neighbour entry of this network namespace.
pub fn neighbours() -> io::Result<Vec<Neighbour>> {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    let mut out = Vec::new();
    for a in super::links::ask(RouteNetlinkMessage::GetNeighbour(m), true)? {
        let RouteNetlinkMessage::NewNeighbour(n) = a else {
            continue;
        };
        if let Some(neigh) = neighbour(&n) {
            out.push(neigh);
        }
    }
    Ok(out)
}

fn neighbour(n: &NeighbourMessage) -> Option<Neighbour> {
    let valid = matches!(
        n.header.state,
        NeighbourState::Permanent
            | NeighbourState::Noarp
            | NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
    );
    let mut addr = None;
    let mut mac = None;
    for attr in &n.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(*a),
            NeighbourAttribute::LinkLayerAddress(b) => mac = b.as_slice().try_into().ok(),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: n.header.ifindex,
        addr: addr?,
        mac: mac.filter(|_| valid),
    })
}

/// A non-blocking rtnetlink socket subscribed to what a next hop depends on: neighbours, IPv4
/// routes, links and IPv4 addresses.
pub struct HopEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl HopEvents {
    pub fn open() -> io::Result<HopEvents> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        for group in [
            libc::RTNLGRP_NEIGH,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_IPV4_IFADDR,
        ] {
            socket.add_membership(group)?;
        }
        socket.set_non_blocking(true)?;
        Ok(HopEvents {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Whether anything was notified since the last call (read without waiting). What
    /// changed does not matter: every node's hop is checked again, which is a few requests.
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut chunk: &mut [u8] = &mut self.buf[..];
            match self.socket.recv(&mut chunk, 0) {
                Ok(0) => break,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An overflow (ENOBUFS) lost notifications: look again all the same.
                Err(_) => {
                    any = true;
                    break;
                }
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a namespace of its own: the route, the link and the neighbour as `ip` set them, and
    /// a notification when the neighbour's MAC changes.
    #[test]
    fn reads_the_route_link_and_neighbour_and_hears_changes() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("needs root (a private network namespace); not run");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread, which ends with the test.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let ip = |args: &[&str]| {
                let st = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .unwrap();
                assert!(st.success(), "ip {args:?}");
            };
            ip(&[
                "link",
                "add",
                "xlbn0",
                "address",
                "02:00:00:00:00:02",
                "mtu",
                "1400",
                "type",
                "veth",
                "peer",
                "name",
                "xlbn1",
            ]);
            ip(&["link", "set", "xlbn0", "up"]);
            ip(&["link", "set", "xlbn1", "up"]);
            ip(&["addr", "add", "198.18.0.2/24", "dev", "xlbn0"]);
            ip(&[
                "route",
                "add",
                "198.18.9.0/24",
                "via",
                "198.18.0.1",
                "mtu",
                "1300",
            ]);
            ip(&[
                "neigh",
                "add",
                "198.18.0.1",
                "lladdr",
                "02:00:00:00:00:01",
                "dev",
                "xlbn0",
                "nud",
                "permanent",
            ]);
            let mut events = HopEvents::open().unwrap();
            let index = links()
                .unwrap()
                .into_iter()
                .find(|l| l.mac == Some([2, 0, 0, 0, 0, 2]))
                .expect("xlbn0");
            assert_eq!(index.mtu, 1400);

            let direct = route_to(Ipv4Addr::new(198, 18, 0, 4)).unwrap().unwrap();
            assert_eq!(direct.oif, index.index);
            assert_eq!(direct.via, Ipv4Addr::new(198, 18, 0, 4));
            assert_eq!(direct.mtu, None);
            let gw = route_to(Ipv4Addr::new(198, 18, 9, 9)).unwrap().unwrap();
            assert_eq!(gw.via, Ipv4Addr::new(198, 18, 0, 1));
            assert_eq!(gw.mtu, Some(1300));
            assert_eq!(route_to(Ipv4Addr::new(198, 19, 1, 1)).unwrap(), None);

            let mac_of = |a: Ipv4Addr| {
                neighbours()
                    .unwrap()
                    .into_iter()
                    .find(|n| n.addr == a && n.ifindex == index.index)
                    .and_then(|n| n.mac)
            };
            assert_eq!(
                mac_of(Ipv4Addr::new(198, 18, 0, 1)),
                Some([2, 0, 0, 0, 0, 1])
            );
            // The setup's own notifications.
            events.changed();
            ip(&[
                "neigh",
                "replace",
                "198.18.0.1",
                "lladdr",
                "02:00:00:00:00:11",
                "dev",
                "xlbn0",
                "nud",
                "permanent",
            ]);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut heard = false;
            while !heard && std::time::Instant::now() < deadline {
                heard = events.changed();
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(heard, "no notification of the neighbour change");
            assert_eq!(
                mac_of(Ipv4Addr::new(198, 18, 0, 1)),
                Some([2, 0, 0, 0, 0, 0x11])
            );
        })
        .join()
        .expect("namespace test");
    }
}
