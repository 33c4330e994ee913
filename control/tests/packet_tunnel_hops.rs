//! The remote path's prepared next hops (`XLB_NODE_HOPS`), packet by packet: the prepared path
//! and the lookup path put the same bytes on the wire; a node without a valid neighbour takes
//! the lookup (counted) and the kernel's resolution; neighbour and route changes reach the
//! prepared headers. Everything happens in a private network namespace (`fib_netns.rs`):
//! nothing is ever sent.
mod common;
#[path = "common/fib_netns.rs"]
mod fib_netns;
#[path = "common/remote.rs"]
mod remote;

use common::*;
use fib_netns::FibNetns;
use lb_common::maps::Reason;
use remote::*;
use xlb_bench::frame::{self, Frame};

const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// `web` (VIP:80) runs on node-c, `far` (198.19.255.3:80) on node-d.
fn manifest() -> String {
    remote_manifest(Cluster {
        far: true,
        ..Cluster::default()
    })
}

/// The frame the edge must emit for the client's TCP flow from `client_port` to `vip`:80, sent
/// to `node` at `dmac` from `smac`, built independently of the code under test from the inner
/// packet the program produced (its DNAT is tested elsewhere).
fn expected(
    dmac: [u8; 6],
    smac: [u8; 6],
    node: [u8; 4],
    vip: [u8; 4],
    client_port: u16,
    out: &[u8],
) -> Vec<u8> {
    let hash = lb_common::hash::flow_hash(
        u32::from_be_bytes(CLIENT),
        u32::from_be_bytes(vip),
        client_port,
        80,
        6,
    );
    let inner = &out[14 + lb_common::maps::ENCAP_OVERHEAD as usize..];
    Frame::udp(EDGE, hash as u16 | 0x8000, node, 6081)
        .macs(smac, dmac)
        .no_udp_checksum()
        .payload(&frame::geneve(vip, 80, 6, inner))
        .build()
}

/// One SYN through the edge: (action, output, prepared-path and lookup counters' growth).
fn syn(f: &mut Fixture, ifindex: u32, vip: [u8; 4], port: u16) -> (u32, Vec<u8>, u64, u64) {
    let (p, l) = (
        f.counter(Reason::EncapPrepared),
        f.counter(Reason::EncapHopFallback),
    );
    let (act, out) = f.xdp_on(&tcp(CLIENT, port, vip, 80, true), ifindex);
    (
        act,
        out,
        f.counter(Reason::EncapPrepared) - p,
        f.counter(Reason::EncapHopFallback) - l,
    )
}

#[test]
fn prepared_and_looked_up_paths_send_the_same_bytes() {
    let ns = FibNetns::new("hops");
    ns.enter();
    let mut f = Fixture::for_node(&manifest(), "node-a");
    // node-c has a permanent neighbour entry: prepared at apply; node-d has none.
    let hops: Vec<u32> = f.rec.maps.node_hops.keys().map(|k| k.unwrap()).collect();
    assert_eq!(hops, vec![u32::from_ne_bytes(NODE_C)]);

    let (act, prepared, p, l) = syn(&mut f, ns.ifindex, VIP, 40000);
    assert_eq!((act, p, l), (XDP_TX, 1, 0));
    assert_eq!(f.counter(Reason::FwdEncapTx), 1);
    assert_eq!(
        prepared,
        expected(NODE_C_MAC, ns.mac, NODE_C, VIP, 40000, &prepared)
    );
    let mut inner = prepared[..14].to_vec();
    inner.extend_from_slice(&prepared[14 + 48..]);
    assert_checksums(&inner);

    // Without the prepared hop, the same flow is looked up and sent the same.
    f.rec
        .maps
        .node_hops
        .remove(&u32::from_ne_bytes(NODE_C))
        .unwrap();
    let (act, looked_up, p, l) = syn(&mut f, ns.ifindex, VIP, 40000);
    assert_eq!((act, p, l), (XDP_TX, 0, 1));
    assert_eq!(f.counter(Reason::FwdEncapTx), 2);
    assert_eq!(looked_up, prepared);
}

#[test]
fn a_node_without_a_neighbour_is_resolved_by_the_kernel_then_prepared() {
    let ns = FibNetns::new("resolve");
    ns.enter();
    let mut f = Fixture::for_node(&manifest(), "node-a");
    // No neighbour for node-d yet: looked up, and the lookup hands the encapsulated packet to
    // the kernel, whose routing resolves the neighbour.
    let (act, out, p, l) = syn(&mut f, ns.ifindex, FAR_VIP, 40010);
    assert_eq!((act, p, l), (XDP_PASS, 0, 1));
    assert_eq!(f.counter(Reason::EncapFibPass), 1);
    assert_eq!(&out[14 + 16..14 + 20], &NODE_D);

    // The neighbour appears (as ARP would make it): the next refresh prepares node-d.
    let node_d_mac = [2, 0, 0, 0, 0, 5];
    ns.ip(&[
        "neigh",
        "add",
        "198.18.0.5",
        "lladdr",
        "02:00:00:00:00:05",
        "dev",
        "up0",
        "nud",
        "reachable",
    ]);
    let r = f.rec.refresh_hops().unwrap();
    assert_eq!((r.prepared, r.unresolved, r.written), (2, 0, 1), "{r:?}");
    let (act, out, p, l) = syn(&mut f, ns.ifindex, FAR_VIP, 40011);
    assert_eq!((act, p, l), (XDP_TX, 1, 0));
    assert_eq!(
        out,
        expected(node_d_mac, ns.mac, NODE_D, FAR_VIP, 40011, &out)
    );

    // It fails (the node went away): the hop is withdrawn and the lookup decides again.
    ns.ip(&["neigh", "del", "198.18.0.5", "dev", "up0"]);
    let r = f.rec.refresh_hops().unwrap();
    assert_eq!((r.prepared, r.removed), (1, 1), "{r:?}");
    let (act, _, p, l) = syn(&mut f, ns.ifindex, FAR_VIP, 40012);
    assert_eq!((act, p, l), (XDP_PASS, 0, 1));
}

#[test]
fn a_changed_neighbour_mac_reaches_the_prepared_headers() {
    let ns = FibNetns::new("newmac");
    ns.enter();
    let mut f = Fixture::for_node(&manifest(), "node-a");
    let (_, out, p, _) = syn(&mut f, ns.ifindex, VIP, 40020);
    assert_eq!(p, 1);
    assert_eq!(&out[..6], &NODE_C_MAC);

    ns.ip(&[
        "neigh",
        "replace",
        "198.18.0.4",
        "lladdr",
        "02:00:00:00:00:44",
        "dev",
        "up0",
        "nud",
        "permanent",
    ]);
    let r = f.rec.refresh_hops().unwrap();
    assert_eq!(r.written, 1, "{r:?}");
    let (act, out, p, l) = syn(&mut f, ns.ifindex, VIP, 40021);
    assert_eq!((act, p, l), (XDP_TX, 1, 0));
    let new_mac = [2, 0, 0, 0, 0, 0x44];
    assert_eq!(out, expected(new_mac, ns.mac, NODE_C, VIP, 40021, &out));
    // Nothing changed: nothing written.
    assert_eq!(f.rec.refresh_hops().unwrap().written, 0);
}

#[test]
fn a_route_through_another_interface_is_prepared_there() {
    let ns = FibNetns::new("reroute");
    ns.enter();
    let mut f = Fixture::for_node(&manifest(), "node-a");
    // node-c is now reached through the uplink's peer, by a gateway with a MAC of its own.
    ns.ip(&["link", "set", "peer0", "address", "02:00:00:00:00:10"]);
    ns.ip(&["addr", "add", "198.18.7.2/24", "dev", "peer0"]);
    ns.ip(&[
        "route",
        "add",
        "198.18.0.4/32",
        "via",
        "198.18.7.1",
        "dev",
        "peer0",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "198.18.7.1",
        "lladdr",
        "02:00:00:00:07:01",
        "dev",
        "peer0",
        "nud",
        "permanent",
    ]);
    f.rec.refresh_hops().unwrap();
    let (act, prepared, p, _) = syn(&mut f, ns.ifindex, VIP, 40030);
    assert_eq!((act, p), (XDP_REDIRECT, 1));
    assert_eq!(f.counter(Reason::FwdEncapRedirect), 1);
    let gw_mac = [2, 0, 0, 0, 7, 1];
    let peer_mac = [2, 0, 0, 0, 0, 0x10];
    assert_eq!(
        prepared,
        expected(gw_mac, peer_mac, NODE_C, VIP, 40030, &prepared)
    );
    // The lookup agrees.
    f.rec
        .maps
        .node_hops
        .remove(&u32::from_ne_bytes(NODE_C))
        .unwrap();
    let (act, looked_up, _, l) = syn(&mut f, ns.ifindex, VIP, 40030);
    assert_eq!((act, l), (XDP_REDIRECT, 1));
    assert_eq!(looked_up, prepared);
}

#[test]
fn too_big_for_the_prepared_mtu_takes_the_lookup_and_its_icmp() {
    let ns = FibNetns::new("hopmtu");
    ns.enter();
    let mut f = Fixture::for_node(&manifest(), "node-a");
    let big = Frame::tcp(CLIENT, 40040, VIP, 80)
        .seq(1)
        .ack(1)
        .payload(&[0x5a; 1420])
        .build();
    let before = f.counter(Reason::EncapHopFallback);
    let (act, _) = f.xdp_on(&big, ns.ifindex);
    assert_eq!(act, XDP_TX);
    assert_eq!(f.counter(Reason::IcmpTooBig), 1);
    assert_eq!(f.counter(Reason::EncapHopFallback), before + 1);
    assert_eq!(f.counter(Reason::EncapPrepared), 0);
}

/// `xlb run`'s watch: a neighbour's new MAC reaches the prepared headers by its rtnetlink
/// notification, well before the watch's own 5-second recheck would.
#[test]
fn the_daemons_watch_follows_a_neighbour_change_by_notification() {
    let ns = FibNetns::new("watch");
    ns.enter();
    let mut f = Fixture::for_node(&manifest(), "node-a");
    let mut watch = xlb::daemon::hops::HopWatch::new();
    // Its first turns: nothing to change yet.
    watch.tick(&mut f.rec);
    let key = u32::from_ne_bytes(NODE_C);
    let mac = |f: &Fixture| {
        let hop = f.rec.maps.node_hops.get(&key, 0).unwrap();
        <[u8; 6]>::try_from(&hop.hdr[..6]).unwrap()
    };
    assert_eq!(mac(&f), NODE_C_MAC);

    let started = std::time::Instant::now();
    ns.ip(&[
        "neigh",
        "replace",
        "198.18.0.4",
        "lladdr",
        "02:00:00:00:00:45",
        "dev",
        "up0",
        "nud",
        "permanent",
    ]);
    let new_mac = [2, 0, 0, 0, 0, 0x45];
    while mac(&f) != new_mac && started.elapsed() < std::time::Duration::from_secs(3) {
        watch.tick(&mut f.rec);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(mac(&f), new_mac, "not picked up within 3 s");
    let (act, out, p, _) = syn(&mut f, ns.ifindex, VIP, 40050);
    assert_eq!((act, p), (XDP_TX, 1));
    assert_eq!(out, expected(new_mac, ns.mac, NODE_C, VIP, 40050, &out));
}
