//! Prepared next hops (`XLB_NODE_HOPS`): for every remote node, the outer headers of the Geneve
//! path built from the route and the neighbour table, so that the XDP program copies them
//! instead of looking the next hop up per packet. An entry exists only while its next hop is
//! valid; the program looks up (and lets the kernel resolve) the others. The daemon refreshes
//! them when rtnetlink reports a neighbour, route, link or address change, and on a timer.
use std::{collections::BTreeMap, io, net::Ipv4Addr};

use lb_common::{
    encap::{HopSpec, prepare},
    maps::NodeHop,
};

use crate::sys::neigh::{self, Link, Neighbour, Route};

/// Why a node has no prepared hop (it takes the lookup path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// No unicast route to it.
    NoRoute,
    /// The route leaves by an interface without an Ethernet address (a tunnel, a point-to-point
    /// link): the lookup path decides.
    NotEthernet,
    /// No valid neighbour entry for the next hop yet: the first packets go through the kernel,
    /// which resolves it.
    NoNeighbour,
}

/// The hop to `node` from what the kernel says: its route, the interfaces, the neighbours.
/// `src` is this node's tunnel address and `port` the Geneve port (host order).
pub fn spec_for(
    node: Ipv4Addr,
    src: Ipv4Addr,
    port: u16,
    route: Option<Route>,
    links: &[Link],
    neighbours: &[Neighbour],
) -> Result<HopSpec, Unresolved> {
    let route = route.ok_or(Unresolved::NoRoute)?;
    let link = links
        .iter()
        .find(|l| l.index == route.oif)
        .ok_or(Unresolved::NoRoute)?;
    let src_mac = link.mac.ok_or(Unresolved::NotEthernet)?;
    let dst_mac = neighbours
        .iter()
        .find(|n| n.ifindex == route.oif && n.addr == route.via)
        .and_then(|n| n.mac)
        .ok_or(Unresolved::NoNeighbour)?;
    Ok(HopSpec {
        src,
        dst: node,
        port,
        src_mac,
        dst_mac,
        ifindex: route.oif,
        mtu: route.mtu.unwrap_or(link.mtu),
    })
}

/// Every node's prepared hop, or why it has none, as the kernel's tables are now.
pub fn resolve(
    nodes: impl IntoIterator<Item = Ipv4Addr>,
    src: Ipv4Addr,
    port: u16,
) -> io::Result<BTreeMap<Ipv4Addr, Result<NodeHop, Unresolved>>> {
    let links = neigh::links()?;
    let neighbours = neigh::neighbours()?;
    let mut out = BTreeMap::new();
    for node in nodes {
        let route = neigh::route_to(node)?;
        out.insert(
            node,
            spec_for(node, src, port, route, &links, &neighbours).map(|s| prepare(&s)),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn link() -> Link {
        Link {
            index: 3,
            mac: Some([2, 0, 0, 0, 0, 2]),
            mtu: 1500,
        }
    }

    fn neighbour(addr: Ipv4Addr, mac: Option<[u8; 6]>) -> Neighbour {
        Neighbour {
            ifindex: 3,
            addr,
            mac,
        }
    }

    #[test]
    fn a_direct_route_takes_the_nodes_own_mac() {
        let route = Route {
            oif: 3,
            via: NODE,
            mtu: None,
        };
        let s = spec_for(
            NODE,
            SRC,
            6081,
            Some(route),
            &[link()],
            &[neighbour(NODE, Some([2, 0, 0, 0, 0, 4]))],
        )
        .unwrap();
        assert_eq!(s.dst_mac, [2, 0, 0, 0, 0, 4]);
        assert_eq!(s.src_mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!((s.ifindex, s.mtu, s.dst, s.src), (3, 1500, NODE, SRC));
    }

    #[test]
    fn a_gateway_route_takes_the_gateways_mac_and_the_routes_mtu() {
        let gw = Ipv4Addr::new(198, 18, 0, 1);
        let route = Route {
            oif: 3,
            via: gw,
            mtu: Some(1400),
        };
        let neighbours = [
            neighbour(NODE, Some([2, 0, 0, 0, 0, 4])),
            neighbour(gw, Some([2, 0, 0, 0, 0, 1])),
        ];
        let s = spec_for(NODE, SRC, 6081, Some(route), &[link()], &neighbours).unwrap();
        assert_eq!(s.dst_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(s.mtu, 1400);
    }

    #[test]
    fn missing_or_unusable_pieces_leave_the_node_to_the_lookup() {
        let route = Route {
            oif: 3,
            via: NODE,
            mtu: None,
        };
        assert_eq!(
            spec_for(NODE, SRC, 6081, None, &[link()], &[]),
            Err(Unresolved::NoRoute)
        );
        // Incomplete or failed: the entry has no usable MAC.
        assert_eq!(
            spec_for(
                NODE,
                SRC,
                6081,
                Some(route),
                &[link()],
                &[neighbour(NODE, None)]
            ),
            Err(Unresolved::NoNeighbour)
        );
        // The neighbour is known on another interface only.
        let elsewhere = Neighbour {
            ifindex: 4,
            ..neighbour(NODE, Some([2, 0, 0, 0, 0, 4]))
        };
        assert_eq!(
            spec_for(NODE, SRC, 6081, Some(route), &[link()], &[elsewhere]),
            Err(Unresolved::NoNeighbour)
        );
        let tun = Link {
            mac: None,
            ..link()
        };
        assert_eq!(
            spec_for(NODE, SRC, 6081, Some(route), &[tun], &[]),
            Err(Unresolved::NotEthernet)
        );
    }
}
