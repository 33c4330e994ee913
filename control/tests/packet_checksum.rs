//! TCP/UDP checksums after DNAT, whatever the sender offloaded. A sender with TX checksum
//! offload on hands over segments whose checksum field holds only the pseudo-header sum
//! (`CHECKSUM_PARTIAL`). Byte for byte:
//! * handed to the kernel (local pods, the TC path, generic mode) the packet stays an skb that
//!   still says `CHECKSUM_PARTIAL`, so the field must be the pseudo-header sum of the new
//!   destination: completing it then gives the right checksum;
//! * sent as an XDP frame (`XDP_TX`) it carries no checksum state, so the field must be the full
//!   checksum;
//! * full checksums are updated as before, also one that happens to equal the partial value.
mod common;
#[path = "common/fib_netns.rs"]
mod fib_netns;

use std::net::Ipv4Addr;

use common::*;
use fib_netns::FibNetns;
use lb_common::maps::{
    EGRESS_TC_REDIRECT, EGRESS_XDP_GENERIC, EgressWhy, IfaceValue, Reason, XDP_META_MAGIC,
    XDP_MODE_GENERIC, XDP_MODE_NATIVE,
};
use xlb_bench::frame::{self, Frame};

const WEB_HTTP: &str = "default/web:http/TCP";
const WEB_DNS: &str = "default/web:dns/UDP";
const XDP_TX: u32 = 3;
const EDGE: [u8; 4] = [198, 18, 0, 2];
const NODE_C: [u8; 4] = [198, 18, 0, 4];
const NODE_C_MAC: [u8; 6] = [2, 0, 0, 0, 0, 4];
const POD_C1: [u8; 4] = [198, 18, 4, 11];
/// Outer IPv4 (20) + UDP (8) + Geneve (8) + the xlb option (12).
const ENCAP_OVERHEAD: usize = 48;

/// A payload of `len` bytes that is not all zeros (the sum must depend on it).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// Where the L4 checksum field of `frame` is.
fn csum_at(frame: &[u8]) -> usize {
    let v = ipv4_view(frame);
    let l4 = v.l3 + v.ihl;
    if frame[v.l3 + 9] == 6 {
        l4 + 16
    } else {
        l4 + 6
    }
}

/// The folded pseudo-header sum of `frame`'s segment: what a sender that offloads the checksum
/// leaves in the field.
fn pseudo(frame: &[u8]) -> u16 {
    let v = ipv4_view(frame);
    let ip = &frame[v.l3..v.l3 + v.ihl];
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as u64;
    lb_common::csum::fold(frame::sum16(&ip[12..20], ip[9] as u64 + tot - v.ihl as u64))
}

/// `frame` as a sender with TX checksum offload hands it over.
fn partial(mut frame: Vec<u8>) -> Vec<u8> {
    let at = csum_at(&frame);
    let p = pseudo(&frame);
    frame[at..at + 2].copy_from_slice(&p.to_be_bytes());
    frame
}

/// What the kernel does to a `CHECKSUM_PARTIAL` skb before it leaves for a device without
/// checksum offload (skb_checksum_help): the sum of the segment from its start, field included.
fn complete(mut frame: Vec<u8>) -> Vec<u8> {
    let v = ipv4_view(&frame);
    let tot = u16::from_be_bytes([frame[v.l3 + 2], frame[v.l3 + 3]]) as usize;
    let at = csum_at(&frame);
    let c = frame::checksum(&frame[v.l3 + v.ihl..v.l3 + tot]);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    frame
}

fn tcp_to(dst: impl Into<Ipv4Addr>, dport: u16, body: &[u8]) -> Vec<u8> {
    Frame::tcp(CLIENT, 40000, dst, dport)
        .ack(1)
        .payload(body)
        .build()
}

fn udp_to(dst: impl Into<Ipv4Addr>, dport: u16, body: &[u8]) -> Vec<u8> {
    Frame::udp(CLIENT, 40000, dst, dport).payload(body).build()
}

#[test]
fn a_partial_tcp_checksum_to_a_local_pod_stays_partial_for_the_pod() {
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let (pod, port) = f.predict(WEB_HTTP, CLIENT, 40000, VIP, 80, 6);
    for len in [0, 1, 100, 1401] {
        let body = payload(len);
        let (act, out) = f.xdp(&partial(tcp_to(VIP, 80, &body)));
        assert_eq!(act, XDP_PASS);
        assert_eq!(out, partial(tcp_to(pod, port, &body)), "payload {len}");
        // Completed by the kernel, it is the pod's segment with a right checksum.
        assert_checksums(&complete(out));
    }
    assert_eq!(f.counter(Reason::L4CsumPartialKept), 4);
    assert_eq!(f.counter(Reason::L4CsumCompleted), 0);
}

#[test]
fn a_partial_udp_checksum_to_a_local_pod_stays_partial_and_none_stays_none() {
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let (pod, port) = f.predict(WEB_DNS, CLIENT, 40000, VIP, 53, 17);
    let body = payload(333);
    let (act, out) = f.xdp(&partial(udp_to(VIP, 53, &body)));
    assert_eq!(act, XDP_PASS);
    assert_eq!(out, partial(udp_to(pod, port, &body)));
    assert_eq!(f.counter(Reason::L4CsumPartialKept), 1);

    let none = |dst: Ipv4Addr, dport: u16| {
        Frame::udp(CLIENT, 40001, dst, dport)
            .no_udp_checksum()
            .payload(&body)
            .build()
    };
    let (pod, port) = f.predict(WEB_DNS, CLIENT, 40001, VIP, 53, 17);
    let (act, out) = f.xdp(&none(Ipv4Addr::from(VIP), 53));
    assert_eq!(act, XDP_PASS);
    assert_eq!(out, none(pod, port), "a UDP checksum of 0 stays 0");
    assert_eq!(f.counter(Reason::L4CsumPartialKept), 1);
}

/// A segment whose full checksum equals the partial value: the two last payload bytes are
/// chosen to make it so.
fn full_equal_to_partial(dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut body = payload(64);
    let base = tcp_to(dst, dport, &body);
    let want = pseudo(&base);
    let at = csum_at(&base);
    let have = u16::from_be_bytes([base[at], base[at + 1]]);
    // Raising a payload word by d lowers the checksum by d (one's complement).
    let d = lb_common::csum::fold(have as u64 + (!want) as u64);
    let w = u16::from_be_bytes([body[62], body[63]]);
    let w = lb_common::csum::fold(w as u64 + d as u64);
    body[62..64].copy_from_slice(&w.to_be_bytes());
    let frame = tcp_to(dst, dport, &body);
    assert_checksums(&frame);
    assert_eq!(
        u16::from_be_bytes([frame[at], frame[at + 1]]),
        pseudo(&frame),
        "the test segment's full checksum equals its partial value"
    );
    frame
}

#[test]
fn a_full_checksum_that_looks_partial_is_updated_as_full() {
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let (pod, port) = f.predict(WEB_HTTP, CLIENT, 40000, VIP, 80, 6);
    let frame = full_equal_to_partial(VIP, 80);
    let (act, out) = f.xdp(&frame);
    assert_eq!(act, XDP_PASS);
    assert_checksums(&out);
    let mut want = frame.clone();
    want[30..34].copy_from_slice(&pod.octets());
    want[36..38].copy_from_slice(&port.to_be_bytes());
    frame::set_ipv4_checksum(&mut want[14..34]);
    let at = csum_at(&want);
    want[at..at + 2].fill(0);
    let v = ipv4_view(&want);
    let c = frame::l4_checksum(&want[v.l3..v.l3 + v.ihl], &want[v.l3 + v.ihl..]);
    want[at..at + 2].copy_from_slice(&c.to_be_bytes());
    assert_eq!(out, want);
    assert_eq!(f.counter(Reason::L4CsumPartialKept), 0);
    assert_eq!(f.counter(Reason::L4CsumCompleted), 0);
}

/// Services whose pods all run on node-c.
fn remote_manifest() -> String {
    r#"apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Node, metadata: {name: node-a}, status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-c}, status: {addresses: [{type: InternalIP, address: 198.18.0.4}]}}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    type: LoadBalancer
    ports:
    - {name: http, port: 80, targetPort: 8080, protocol: TCP}
    - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
  status: {loadBalancer: {ingress: [{ip: 198.19.255.1}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-c, namespace: default, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
  endpoints: [{addresses: ["198.18.4.11"], nodeName: node-c}]
"#
    .to_string()
}

/// The frame the edge sends node-c for `inner` (an IPv4 packet, DNATed) of the client's flow
/// from port 40000 to VIP:`port`/`proto`, built independently of the code under test.
fn expected_encap(edge_mac: [u8; 6], port: u16, proto: u8, inner: &[u8]) -> Vec<u8> {
    let hash = lb_common::hash::flow_hash(
        u32::from_be_bytes(CLIENT),
        u32::from_be_bytes(VIP),
        40000,
        port,
        proto,
    );
    Frame::udp(EDGE, hash as u16 | 0x8000, NODE_C, 6081)
        .macs(edge_mac, NODE_C_MAC)
        .no_udp_checksum()
        .payload(&frame::geneve(VIP, port, proto, inner))
        .build()
}

fn set_iface(f: &mut Fixture, ifindex: u32, xdp_mode: u8, path: u8) {
    let v = IfaceValue {
        xdp_mode,
        path,
        why: EgressWhy::VethPeerNotReady as u8,
        _pad: 0,
    };
    f.rec.maps.ifaces.insert(ifindex, v, 0).unwrap();
}

#[test]
fn a_partial_checksum_sent_as_an_xdp_frame_is_completed() {
    let ns = FibNetns::new("csumtx");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    for (i, len) in [0usize, 3, 1400].into_iter().enumerate() {
        let body = payload(len);
        let (act, out) = f.xdp_on(&partial(tcp_to(VIP, 80, &body)), ns.ifindex);
        assert_eq!(act, XDP_TX);
        let inner = tcp_to(POD_C1, 8080, &body);
        assert_checksums(&inner);
        assert_eq!(
            out,
            expected_encap(ns.mac, 80, 6, &inner[14..]),
            "payload {len}"
        );
        assert_eq!(f.counter(Reason::L4CsumCompleted), i as u64 + 1);
    }
    let body = payload(77);
    let (act, out) = f.xdp_on(&partial(udp_to(VIP, 53, &body)), ns.ifindex);
    assert_eq!(act, XDP_TX);
    let inner = udp_to(POD_C1, 5353, &body);
    assert_eq!(out, expected_encap(ns.mac, 53, 17, &inner[14..]));
    assert_eq!(f.counter(Reason::L4CsumCompleted), 4);
    assert_eq!(f.counter(Reason::FwdEncapTx), 4);
    assert_eq!(f.counter(Reason::L4CsumPartialKept), 0);
}

#[test]
fn a_full_checksum_sent_as_an_xdp_frame_is_updated_not_recomputed() {
    let ns = FibNetns::new("csumfull");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    let frame = full_equal_to_partial(VIP, 80);
    let (act, out) = f.xdp_on(&frame, ns.ifindex);
    assert_eq!(act, XDP_TX);
    let inner = &out[14 + ENCAP_OVERHEAD..];
    let mut inner_frame = frame[..14].to_vec();
    inner_frame.extend_from_slice(inner);
    assert_checksums(&inner_frame);
    assert_eq!(out, expected_encap(ns.mac, 80, 6, inner));
    assert_eq!(f.counter(Reason::L4CsumCompleted), 0);
}

#[test]
fn an_egress_that_drops_xdp_frames_gets_them_through_tc_with_the_checksum_partial() {
    let ns = FibNetns::new("csumtc");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    set_iface(&mut f, ns.ifindex, XDP_MODE_NATIVE, EGRESS_TC_REDIRECT);
    let body = payload(200);
    let (act, out) = f.xdp_on(&partial(tcp_to(VIP, 80, &body)), ns.ifindex);
    assert_eq!(act, XDP_PASS, "passed for the TC ingress program");
    assert_eq!(f.counter(Reason::FwdEncapSkb), 1);
    assert_eq!(f.counter(Reason::FwdEncapTx), 0);
    assert_eq!(f.counter(Reason::L4CsumPartialKept), 1);
    // The metadata in front of the frame: xlb's mark and the interface to send it out of.
    let mut meta = XDP_META_MAGIC.to_ne_bytes().to_vec();
    meta.extend_from_slice(&ns.ifindex.to_ne_bytes());
    assert_eq!(out[..8], meta[..]);
    let inner = partial(tcp_to(POD_C1, 8080, &body));
    assert_eq!(out[8..], expected_encap(ns.mac, 80, 6, &inner[14..])[..]);
    assert_checksums(&complete(inner));

    // A full checksum takes the same way, updated as full.
    let full = Frame::tcp(CLIENT, 40000, VIP, 80)
        .ack(1)
        .payload(&body)
        .build();
    let (act, out) = f.xdp_on(&full, ns.ifindex);
    assert_eq!(act, XDP_PASS);
    let inner = tcp_to(POD_C1, 8080, &body);
    assert_eq!(out[8..], expected_encap(ns.mac, 80, 6, &inner[14..])[..]);
    assert_eq!(f.counter(Reason::FwdEncapSkb), 2);
}

#[test]
fn generic_mode_keeps_xdp_tx_and_the_checksum_partial() {
    let ns = FibNetns::new("csumgen");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    set_iface(&mut f, ns.ifindex, XDP_MODE_GENERIC, EGRESS_XDP_GENERIC);
    let body = payload(51);
    let (act, out) = f.xdp_on(&partial(udp_to(VIP, 53, &body)), ns.ifindex);
    assert_eq!(act, XDP_TX, "generic XDP_TX sends the skb itself");
    let inner = partial(udp_to(POD_C1, 5353, &body));
    assert_eq!(out, expected_encap(ns.mac, 53, 17, &inner[14..]));
    assert_eq!(f.counter(Reason::L4CsumPartialKept), 1);
    assert_eq!(f.counter(Reason::FwdEncapTx), 1);
}
