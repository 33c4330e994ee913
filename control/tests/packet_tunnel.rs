//! Remote backends, packet by packet: Geneve encapsulation at the edge (byte for byte), the MTU
//! guard, decapsulation on the backend's node, the reply rewrite there, and malformed tunnel
//! packets. FIB lookups run in a private network namespace with a private interface, so the
//! results never depend on the host's routes and nothing is ever sent.
mod common;
#[path = "common/fib_netns.rs"]
mod fib_netns;

use std::net::Ipv4Addr;

use common::*;
use etherparse::PacketBuilder;
use fib_netns::FibNetns;
use lb_common::maps::{ENCAP_OVERHEAD, Reason};

const XDP_TX: u32 = 3;
const EDGE: [u8; 4] = [198, 18, 0, 2];
const NODE_C: [u8; 4] = [198, 18, 0, 4];
const NODE_D: [u8; 4] = [198, 18, 0, 5];
const NODE_C_MAC: [u8; 6] = [2, 0, 0, 0, 0, 4];
const POD_C1: [u8; 4] = [198, 18, 4, 11];
const POD_D1: [u8; 4] = [198, 18, 5, 11];

/// Services whose pods all run on other nodes: `web` on node-c, `far` on node-d.
fn remote_manifest() -> String {
    r#"apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Node, metadata: {name: node-a}, status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-c}, status: {addresses: [{type: InternalIP, address: 198.18.0.4}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-d}, status: {addresses: [{type: InternalIP, address: 198.18.0.5}]}}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    type: LoadBalancer
    ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}]
  status: {loadBalancer: {ingress: [{ip: 198.19.255.1}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-c, namespace: default, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints: [{addresses: ["198.18.4.11"], nodeName: node-c}]
- apiVersion: v1
  kind: Service
  metadata: {name: far, namespace: default}
  spec:
    type: LoadBalancer
    ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
  status: {loadBalancer: {ingress: [{ip: 198.19.255.3}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: far-d, namespace: default, labels: {kubernetes.io/service-name: far}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints: [{addresses: ["198.18.5.11"], nodeName: node-d}]
"#
    .to_string()
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The frame the edge must emit for `inner` (already DNATed), built independently of the code
/// under test.
fn expected_encap(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    fe: ([u8; 4], u16, u8),
    inner: &[u8],
) -> Vec<u8> {
    let tot = (inner.len() + ENCAP_OVERHEAD as usize) as u16;
    let mut v = Vec::new();
    v.extend_from_slice(&dmac);
    v.extend_from_slice(&smac);
    v.extend_from_slice(&[0x08, 0x00]);
    let mut iph = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    iph[2..4].copy_from_slice(&tot.to_be_bytes());
    iph.extend_from_slice(&src);
    iph.extend_from_slice(&dst);
    let c = fold(sum16(&iph));
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    v.extend_from_slice(&iph);
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&6081u16.to_be_bytes());
    v.extend_from_slice(&(tot - 20).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    // Geneve: version 0, 3 words of options, IPv4 payload, VNI 0.
    v.extend_from_slice(&[0x03, 0x00, 0x08, 0x00, 0, 0, 0, 0]);
    // xlb option: class 0xfff0, type 1, 2 words: frontend address, port, protocol.
    v.extend_from_slice(&[0xff, 0xf0, 0x01, 0x02]);
    v.extend_from_slice(&fe.0);
    v.extend_from_slice(&fe.1.to_be_bytes());
    v.extend_from_slice(&[fe.2, 0]);
    v.extend_from_slice(inner);
    v
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
    let inner = &out[14 + ENCAP_OVERHEAD as usize..];
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

    let hash = lb_common::hash::flow_hash(
        u32::from_be_bytes(CLIENT),
        u32::from_be_bytes(VIP),
        40000,
        80,
        6,
    );
    let want = expected_encap(
        NODE_C_MAC,
        ns.mac,
        EDGE,
        NODE_C,
        hash as u16 | 0x8000,
        (VIP, 80, 6),
        inner,
    );
    assert_eq!(out, want);
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
        &out[14 + ENCAP_OVERHEAD as usize + 16..14 + ENCAP_OVERHEAD as usize + 20],
        &POD_D1
    );
}

fn big_tcp(df: bool) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(CLIENT, VIP, 64)
        .tcp(40002, 80, 1, 64240)
        .ack(1)
        .write(&mut v, &[0x5a; 1420])
        .unwrap();
    if !df {
        // PacketBuilder sets DF; clear it and fix the header checksum.
        v[20] &= !0x40;
        v[24..26].fill(0);
        let c = fold(sum16(&v[14..34]));
        v[24..26].copy_from_slice(&c.to_be_bytes());
    }
    v
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
    assert_eq!(fold(sum16(ip)), 0, "IPv4 checksum");
    let icmp = &out[34..];
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 4),
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1500 - ENCAP_OVERHEAD as u16
    );
    assert_eq!(
        &icmp[8..],
        &frame[14..14 + 28],
        "quotes the original header and 8 bytes"
    );
    assert_eq!(fold(sum16(icmp)), 0, "ICMP checksum");

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
        &tunnel[14 + ENCAP_OVERHEAD as usize..],
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
fn malformed_and_foreign_tunnel_packets_are_dropped_and_counted() {
    let good = edge_output(41001);
    let mut node_c = Fixture::for_node(&remote_manifest(), "node-c");
    let udp = 14 + 20;
    let gnv = udp + 8;
    let mut cases: Vec<(&str, Vec<u8>, Reason)> = Vec::new();
    // Truncated inside the Geneve option (IP and UDP lengths fixed to match).
    let mut short = good[..gnv + 10].to_vec();
    let short_len = short.len();
    short[16..18].copy_from_slice(&((short_len - 14) as u16).to_be_bytes());
    short[24..26].fill(0);
    let c = fold(sum16(&short[14..34]));
    short[24..26].copy_from_slice(&c.to_be_bytes());
    short[udp + 4..udp + 6].copy_from_slice(&((short_len - udp) as u16).to_be_bytes());
    cases.push(("truncated geneve", short, Reason::DropTunnelMalformed));
    let mut version = good.clone();
    version[gnv] |= 0x40;
    cases.push(("geneve version 1", version, Reason::DropTunnelMalformed));
    let mut class = good.clone();
    class[gnv + 8] = 0x01;
    cases.push(("foreign option class", class, Reason::DropTunnelMalformed));
    let mut payload = good.clone();
    payload[gnv + 2..gnv + 4].copy_from_slice(&[0x65, 0x58]);
    cases.push(("Ethernet payload", payload, Reason::DropTunnelMalformed));
    let mut stranger = good.clone();
    stranger[14 + 12..14 + 16].copy_from_slice(&[198, 18, 0, 99]);
    stranger[24..26].fill(0);
    let c = fold(sum16(&stranger[14..34]));
    stranger[24..26].copy_from_slice(&c.to_be_bytes());
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
