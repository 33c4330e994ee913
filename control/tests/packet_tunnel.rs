//! Remote backends, packet by packet: Geneve encapsulation at the edge (byte for byte), the MTU
//! guard, decapsulation on the backend's node, the reply rewrite there, and malformed tunnel
//! packets (foreign Geneve and forged xlb packets: `packet_tunnel_trust.rs`). FIB lookups run in a private network namespace with a private interface, so the
//! results never depend on the host's routes and nothing is ever sent.
mod common;
#[path = "common/fib_netns.rs"]
mod fib_netns;
#[path = "common/remote.rs"]
mod remote;

use std::net::Ipv4Addr;

use common::*;
use fib_netns::FibNetns;
use lb_common::maps::Reason;
use remote::*;
use xlb_bench::frame::{self, Frame};

/// Outer IPv4 (20) + UDP (8) + Geneve (8) + the xlb option (12), from the Geneve layout rather
/// than from the code under test.
const ENCAP_OVERHEAD: usize = 48;

const XDP_TX: u32 = 3;

/// Services whose pods all run on other nodes: `web` on node-c, `far` on node-d.
fn remote_manifest() -> String {
    remote::remote_manifest(Cluster {
        node_port: true,
        far: true,
        ..Cluster::default()
    })
}

/// What the edge sends node-c for the client's TCP flow from `client_port` to VIP:80: the
/// outer source port is the flow hash with the top bit set.
fn expected_from_edge(edge_mac: [u8; 6], client_port: u16, inner: &[u8]) -> Vec<u8> {
    let hash = lb_common::hash::flow_hash(
        u32::from_be_bytes(CLIENT),
        u32::from_be_bytes(VIP),
        client_port,
        80,
        6,
    );
    expected_encap(
        NODE_C_MAC,
        edge_mac,
        EDGE,
        NODE_C,
        hash as u16 | 0x8000,
        (VIP, 80, 6),
        inner,
    )
}

/// The frame the edge must emit for `inner` (already DNATed), built independently of the code
/// under test: outer IPv4 with DF, UDP without a checksum, Geneve with xlb's option.
fn expected_encap(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    fe: ([u8; 4], u16, u8),
    inner: &[u8],
) -> Vec<u8> {
    Frame::udp(src, sport, dst, 6081)
        .macs(smac, dmac)
        .no_udp_checksum()
        .payload(&frame::geneve(fe.0, fe.1, fe.2, inner))
        .build()
}

#[test]
fn syn_to_a_remote_pod_is_encapsulated_byte_for_byte() {
    let ns = FibNetns::new("encap");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    let frame = tcp(CLIENT, 40000, VIP, 80, true);
    let (act, out) = f.xdp_on(&frame, ns.ifindex);
    assert_eq!(act, XDP_TX, "egress interface = ingress interface");
    assert_eq!(f.counter(Reason::FwdEncapTx), 1);

    // The inner packet is the client's, DNATed to the pod.
    let inner = &out[14 + ENCAP_OVERHEAD..];
    let mut want_inner = frame[14..].to_vec();
    want_inner[16..20].copy_from_slice(&POD_C1);
    want_inner[22..24].copy_from_slice(&8080u16.to_be_bytes());
    let mut inner_frame = frame[..14].to_vec();
    inner_frame.extend_from_slice(inner);
    assert_checksums(&inner_frame);
    // Checksum bytes were verified above; compare everything else.
    let mut a = inner.to_vec();
    let mut b = want_inner.clone();
    for v in [&mut a, &mut b] {
        v[10..12].fill(0);
        v[36..38].fill(0);
    }
    assert_eq!(a, b);

    assert_eq!(out, expected_from_edge(ns.mac, 40000, inner));
}

#[test]
fn no_neighbour_yet_hands_the_encapsulated_packet_to_the_kernel() {
    let ns = FibNetns::new("noneigh");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    let far = [198, 19, 255, 3];
    let frame = tcp(CLIENT, 40001, far, 80, true);
    let (act, out) = f.xdp_on(&frame, ns.ifindex);
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::EncapFibPass), 1);
    // Still addressed to this host (the original MACs), so the kernel routes it to node-d.
    assert_eq!(&out[..12], &frame[..12]);
    assert_eq!(&out[14 + 16..14 + 20], &NODE_D);
    assert_eq!(
        &out[14 + ENCAP_OVERHEAD + 16..14 + ENCAP_OVERHEAD + 20],
        &POD_D1
    );
}

fn big_tcp(df: bool) -> Vec<u8> {
    let f = Frame::tcp(CLIENT, 40002, VIP, 80)
        .seq(1)
        .ack(1)
        .payload(&[0x5a; 1420]);
    if df { f } else { f.may_fragment() }.build()
}

#[test]
fn too_big_for_the_tunnel_gets_icmp_fragmentation_needed() {
    let ns = FibNetns::new("mtu");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    let frame = big_tcp(true);
    assert_eq!(
        frame.len() - 14,
        1460,
        "fits 1500 alone, not with 48 bytes of tunnel"
    );
    let (act, out) = f.xdp_on(&frame, ns.ifindex);
    assert_eq!(act, XDP_TX);
    assert_eq!(f.counter(Reason::IcmpTooBig), 1);
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    assert_eq!(&out[..6], &frame[6..12], "back to the sender's MAC");
    assert_eq!(&out[6..12], &frame[..6]);
    let ip = &out[14..34];
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(&ip[12..16], &VIP, "from the address the client used");
    assert_eq!(&ip[16..20], &CLIENT);
    assert_eq!(frame::checksum(ip), 0, "IPv4 checksum");
    let icmp = &out[34..];
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 4),
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1452);
    assert_eq!(
        &icmp[8..],
        &frame[14..14 + 28],
        "quotes the original header and 8 bytes"
    );
    assert_eq!(frame::checksum(icmp), 0, "ICMP checksum");

    // Without DF the client allows fragmentation, which XDP cannot do: dropped and counted.
    let (act, _) = f.xdp_on(&big_tcp(false), ns.ifindex);
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropTooBig), 1);
}

/// The tunnel packet node-a sends node-c for a client's SYN (built by the edge's own program).
fn edge_output(client_port: u16) -> Vec<u8> {
    let ns = FibNetns::new(&format!("edge{client_port}"));
    let handle = std::thread::spawn(move || {
        ns.enter();
        let mut edge = Fixture::for_node(&remote_manifest(), "node-a");
        let (act, out) = edge.xdp_on(&tcp(CLIENT, client_port, VIP, 80, true), ns.ifindex);
        assert_eq!(act, XDP_TX);
        out
    });
    handle.join().unwrap()
}

#[test]
fn backend_node_decapsulates_and_rewrites_the_reply() {
    let tunnel = edge_output(41000);
    let mut node_c = Fixture::for_node(&remote_manifest(), "node-c");
    let (act, out) = node_c.xdp(&tunnel);
    assert_eq!(
        act, XDP_PASS,
        "the kernel delivers the inner packet to the pod"
    );
    assert_eq!(node_c.counter(Reason::Decap), 1);
    assert_eq!(
        &out[..12],
        &tunnel[..12],
        "outer MACs kept: still addressed to this host"
    );
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    assert_eq!(
        &out[14..],
        &tunnel[14 + ENCAP_OVERHEAD..],
        "exactly the inner packet"
    );
    assert_eq!(dst(&out), (Ipv4Addr::from(POD_C1), 8080));
    assert_eq!(src(&out), (Ipv4Addr::from(CLIENT), 41000));

    // The pod's reply leaves node-c with the frontend as its source, straight to the client.
    let reply = tcp(POD_C1, 8080, CLIENT, 41000, false);
    let (verdict, out) = node_c.tc(&reply);
    assert_eq!(verdict, 0);
    assert_eq!(src(&out), (Ipv4Addr::from(VIP), 80));
    assert_checksums(&out);
    assert_eq!(node_c.counter(Reason::ReplyRewritten), 1);
}

#[test]
fn malformed_xlb_tunnel_packets_and_strangers_are_dropped_and_counted() {
    let good = edge_output(41001);
    let mut node_c = Fixture::for_node(&remote_manifest(), "node-c");
    let udp = 14 + 20;
    let gnv = udp + 8;
    let mut cases: Vec<(&str, Vec<u8>, Reason)> = Vec::new();
    // Truncated inside the Geneve option (IP and UDP lengths fixed to match).
    let mut short = good[..gnv + 10].to_vec();
    let short_len = short.len();
    short[16..18].copy_from_slice(&((short_len - 14) as u16).to_be_bytes());
    frame::set_ipv4_checksum(&mut short[14..34]);
    short[udp + 4..udp + 6].copy_from_slice(&((short_len - udp) as u16).to_be_bytes());
    cases.push(("truncated geneve", short, Reason::DropTunnelMalformed));
    let mut version = good.clone();
    version[gnv] |= 0x40;
    cases.push(("geneve version 1", version, Reason::DropTunnelMalformed));
    let mut opt_type = good.clone();
    opt_type[gnv + 10] = 0x02;
    cases.push(("unknown option type", opt_type, Reason::DropTunnelMalformed));
    let mut payload = good.clone();
    payload[gnv + 2..gnv + 4].copy_from_slice(&[0x65, 0x58]);
    cases.push(("Ethernet payload", payload, Reason::DropTunnelMalformed));
    let mut stranger = good.clone();
    stranger[14 + 12..14 + 16].copy_from_slice(&[198, 18, 0, 99]);
    frame::set_ipv4_checksum(&mut stranger[14..34]);
    cases.push((
        "source is not a cluster node",
        stranger,
        Reason::DropTunnelUnknownNode,
    ));
    for (name, frame, reason) in cases {
        let before = node_c.counter(reason);
        let (act, _) = node_c.xdp(&frame);
        assert_eq!(act, XDP_DROP, "{name}");
        assert_eq!(node_c.counter(reason), before + 1, "{name}");
    }
    assert_eq!(node_c.counter(Reason::Decap), 0);

    // The same packet to an address that is not node-c's is not a tunnel packet for it.
    let mut elsewhere = good.clone();
    elsewhere[14 + 16..14 + 20].copy_from_slice(&[198, 18, 0, 77]);
    let (act, _) = node_c.xdp(&elsewhere);
    assert_eq!(act, XDP_PASS);
    assert_eq!(node_c.counter(Reason::PassNoFrontend), 1);
}

const XDP_REDIRECT: u32 = 4;

#[test]
fn a_next_hop_on_another_interface_is_a_redirect() {
    let ns = FibNetns::new("redirect");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    // Arriving on the uplink's peer: the route to node-c leaves through the uplink.
    let frame = tcp(CLIENT, 40003, VIP, 80, true);
    let (act, out) = f.xdp_on(&frame, ns.peer_ifindex);
    assert_eq!(act, XDP_REDIRECT);
    assert_eq!(f.counter(Reason::FwdEncapRedirect), 1);
    assert_eq!(f.counter(Reason::FwdEncapTx), 0);
    let inner = &out[14 + ENCAP_OVERHEAD..];
    assert_eq!(dst(&out[ENCAP_OVERHEAD..]), (Ipv4Addr::from(POD_C1), 8080));
    assert_eq!(out, expected_from_edge(ns.mac, 40003, inner));
}

/// `frame` with `tags` (TPID, VLAN id) inserted after the MAC addresses, outermost first.
fn tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut v = frame[..12].to_vec();
    for (tpid, id) in tags {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
    }
    v.extend_from_slice(&frame[12..]);
    v
}

#[test]
fn vlan_and_802_1ad_tagged_frames_are_encapsulated_without_their_tag() {
    let ns = FibNetns::new("vlanencap");
    ns.enter();
    let plain = tcp(CLIENT, 40004, VIP, 80, true);
    let (act, want) = Fixture::for_node(&remote_manifest(), "node-a").xdp_on(&plain, ns.ifindex);
    assert_eq!(act, XDP_TX);
    assert_checksums(&want[ENCAP_OVERHEAD..]);
    for (name, tags) in [
        ("802.1Q", &[(0x8100u16, 100u16)][..]),
        ("802.1ad", &[(0x88a8, 200)][..]),
    ] {
        let mut f = Fixture::for_node(&remote_manifest(), "node-a");
        let (act, out) = f.xdp_on(&tagged(&plain, tags), ns.ifindex);
        assert_eq!(act, XDP_TX, "{name}");
        assert_eq!(f.counter(Reason::FwdEncapTx), 1, "{name}");
        // The same tunnel packet as for the untagged frame: the inner Ethernet header and its
        // tag are not carried.
        assert_eq!(out, want, "{name}");
    }

    // Two tags (an 802.1ad service tag around an 802.1Q tag) are beyond the parser: passed
    // untouched.
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    let qinq = tagged(&plain, &[(0x88a8, 200), (0x8100, 100)]);
    let (act, out) = f.xdp_on(&qinq, ns.ifindex);
    assert_eq!(act, XDP_PASS);
    assert_eq!(out, qinq);
    assert_eq!(f.counter(Reason::PassNotIpv4), 1);
}

#[test]
fn a_remote_backend_without_node_addresses_drops_and_counts() {
    // node-x, where `ghost`'s pod runs, has no Node object: no address to tunnel to.
    let ghost = format!(
        "{}{}",
        remote_manifest(),
        r#"- apiVersion: v1
  kind: Service
  metadata: {name: ghost, namespace: default}
  spec:
    type: LoadBalancer
    ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
  status: {loadBalancer: {ingress: [{ip: 198.19.255.4}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: ghost-x, namespace: default, labels: {kubernetes.io/service-name: ghost}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints: [{addresses: ["198.18.6.11"], nodeName: node-x}]
"#
    );
    let mut f = Fixture::for_node(&ghost, "node-a");
    let (act, _) = f.xdp(&tcp(CLIENT, 40005, [198, 19, 255, 4], 80, true));
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropNoNodeAddr), 1);

    // This node has no address of its own (no InternalIP, no --iface address): nothing to
    // tunnel from.
    let anonymous = remote_manifest().replace(
        "{name: node-a}, status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}",
        "{name: node-a}, status: {addresses: []}",
    );
    assert_ne!(anonymous, remote_manifest());
    let mut f = Fixture::for_node(&anonymous, "node-a");
    let (act, _) = f.xdp(&tcp(CLIENT, 40006, VIP, 80, true));
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropNoNodeAddr), 1);
    assert_eq!(f.counter(Reason::FwdEncapTx), 0);
}

#[test]
fn no_headroom_for_the_outer_headers_drops_and_counts() {
    let ns = FibNetns::new("headroom");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    let frame = tcp(CLIENT, 40007, VIP, 80, true);
    // 200 bytes of metadata leave 56 bytes of headroom, less than the 48 bytes of outer
    // headers plus the kernel's own frame record in front of them.
    let (act, _) = f.xdp_with_metadata(&frame, ns.ifindex, 200);
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::EncapFailed), 1);
    assert_eq!(f.counter(Reason::FwdEncapTx), 0);
    // With room, the same frame is encapsulated.
    let (act, out) = f.xdp_with_metadata(&frame, ns.ifindex, 16);
    assert_eq!(act, XDP_TX);
    assert_eq!(f.counter(Reason::FwdEncapTx), 1);
    assert_eq!(&out[16 + 14 + 16..16 + 14 + 20], &NODE_C);
}
