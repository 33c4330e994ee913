//! Delivery into a local pod past the kernel's IP stack (`xdp/src/pod.rs`), byte for byte: the
//! FIB lookup from the uplink finds the pod's host-side interface and its MAC; with an
//! `XLB_POD_IFACES` entry the frame leaves DNATed, readdressed to the pod's MAC, TTL one less,
//! with the metadata that tells the TC ingress program how to hand it over; without one (or
//! without a neighbour, or with a TTL about to expire) the kernel gets it as before, counted.
mod common;
#[path = "common/fib_netns.rs"]
mod fib_netns;

use std::net::Ipv4Addr;

use common::*;
use fib_netns::FibNetns;
use lb_common::maps::{
    DELIVER_NEIGH, DELIVER_PEER, DELIVER_REDIRECT, DELIVER_XDP, PodIface, Reason, XDP_META_MAGIC,
    XDP_META_NEIGH, XDP_META_PEER,
};
use xlb_bench::frame::{self, Frame};

const XDP_REDIRECT: u32 = 4;
const LXC_MAC: [u8; 6] = [2, 0, 0, 0, 0x0a, 0];
const WEB_HTTP: &str = "default/web:http/TCP";

fn pod_mac(pod: Ipv4Addr) -> [u8; 6] {
    let o = pod.octets();
    [2, 0, 0, 0, o[2], o[3]]
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The uplink namespace plus a pod interface `lxc0` (a veth; its peer's whereabouts do not
/// matter to the XDP program, which trusts `XLB_POD_IFACES`) that the node routes the three
/// pods' /32s to, with a permanent neighbour entry for each.
fn pod_netns(tag: &str) -> (FibNetns, u32) {
    let ns = FibNetns::new(tag);
    ns.ip(&[
        "link",
        "add",
        "lxc0",
        "address",
        &mac_text(LXC_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "pod0",
    ]);
    ns.ip(&["link", "set", "pod0", "up"]);
    ns.ip(&["link", "set", "lxc0", "up"]);
    for p in PODS {
        let pod = Ipv4Addr::from(p);
        ns.ip(&["route", "add", &format!("{pod}/32"), "dev", "lxc0"]);
        ns.ip(&[
            "neigh",
            "add",
            &pod.to_string(),
            "lladdr",
            &mac_text(pod_mac(pod)),
            "dev",
            "lxc0",
            "nud",
            "permanent",
        ]);
    }
    let lxc = ns.ifindex_of("lxc0");
    (ns, lxc)
}

fn set_pod_iface(f: &mut Fixture, ifindex: u32, how: u8) {
    f.rec
        .maps
        .pod_ifaces
        .insert(ifindex, PodIface { how, _pad: [0; 3] }, 0)
        .unwrap();
}

fn request() -> Frame {
    Frame::tcp(CLIENT, 40000, VIP, 80)
        .ack(1)
        .payload(b"GET / HTTP/1.1\r\n\r\n")
}

fn with_ttl(mut f: Vec<u8>, ttl: u8) -> Vec<u8> {
    f[14 + 8] = ttl;
    frame::set_ipv4_checksum(&mut f[14..34]);
    f
}

/// The DNATed frame as it must enter the pod: to `pod`:8080, the pod's MAC from the host
/// veth's, TTL 63.
fn delivered(pod: Ipv4Addr) -> Vec<u8> {
    let f = Frame::tcp(CLIENT, 40000, pod, 8080)
        .ack(1)
        .payload(b"GET / HTTP/1.1\r\n\r\n")
        .macs(LXC_MAC, pod_mac(pod))
        .build();
    with_ttl(f, frame::TTL - 1)
}

fn meta(magic: u32, ifindex: u32) -> Vec<u8> {
    let mut m = magic.to_ne_bytes().to_vec();
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m
}

#[test]
fn a_pod_interface_gets_the_packet_past_the_stack_each_way() {
    let (ns, lxc) = pod_netns("podfast");
    ns.enter();
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let (pod, _) = f.predict(WEB_HTTP, CLIENT, 40000, VIP, 80, 6);
    let want = delivered(pod);
    assert_checksums(&want);
    for (i, (how, magic)) in [
        (DELIVER_PEER, XDP_META_PEER),
        (DELIVER_REDIRECT, XDP_META_MAGIC),
        (DELIVER_NEIGH, XDP_META_NEIGH),
    ]
    .into_iter()
    .enumerate()
    {
        set_pod_iface(&mut f, lxc, how);
        let (act, out) = f.xdp_on(&request().build(), ns.ifindex);
        assert_eq!(
            act, XDP_PASS,
            "passed to the TC ingress program (how {how})"
        );
        assert_eq!(out[..8], meta(magic, lxc)[..], "how {how}");
        assert_eq!(out[8..], want[..], "how {how}");
        assert_eq!(f.counter(Reason::DeliverPod), i as u64 + 1);
        assert_eq!(f.counter(Reason::FwdLocal), i as u64 + 1);
    }
    // The XDP frame itself, redirected into the host veth (pods that run XDP only).
    set_pod_iface(&mut f, lxc, DELIVER_XDP);
    let (act, out) = f.xdp_on(&request().build(), ns.ifindex);
    assert_eq!(act, XDP_REDIRECT);
    assert_eq!(out, want);
    assert_eq!(f.counter(Reason::DeliverPod), 4);
    for r in [
        Reason::DeliverKernelNoRoute,
        Reason::DeliverKernelNoNeigh,
        Reason::DeliverKernelNotPod,
        Reason::DeliverKernelOther,
    ] {
        assert_eq!(f.counter(r), 0, "{r:?}");
    }
}

#[test]
fn the_kernel_delivers_what_cannot_take_the_fast_path() {
    let (ns, lxc) = pod_netns("podslow");
    ns.enter();
    let mut f = Fixture::new(&manifest(&PODS, &[]));
    let (pod, _) = f.predict(WEB_HTTP, CLIENT, 40000, VIP, 80, 6);
    // As the kernel path always had it: DNATed, still addressed to this host, TTL untouched.
    let routed = Frame::tcp(CLIENT, 40000, pod, 8080)
        .ack(1)
        .payload(b"GET / HTTP/1.1\r\n\r\n")
        .build();

    // Not a pod interface (no entry: a plain device, or --pod-delivery kernel).
    let (act, out) = f.xdp_on(&request().build(), ns.ifindex);
    assert_eq!((act, &out), (XDP_PASS, &routed));
    assert_eq!(f.counter(Reason::DeliverKernelNotPod), 1);

    // No neighbour entry for the pod yet: the kernel resolves it.
    set_pod_iface(&mut f, lxc, DELIVER_PEER);
    ns.ip(&["neigh", "del", &pod.to_string(), "dev", "lxc0"]);
    let (act, out) = f.xdp_on(&request().build(), ns.ifindex);
    assert_eq!((act, &out), (XDP_PASS, &routed));
    assert_eq!(f.counter(Reason::DeliverKernelNoNeigh), 1);
    ns.ip(&[
        "neigh",
        "add",
        &pod.to_string(),
        "lladdr",
        &mac_text(pod_mac(pod)),
        "dev",
        "lxc0",
        "nud",
        "permanent",
    ]);

    // A TTL about to expire: the kernel answers with time-exceeded.
    let last_hop = with_ttl(request().build(), 1);
    let (act, out) = f.xdp_on(&last_hop, ns.ifindex);
    assert_eq!((act, &out), (XDP_PASS, &with_ttl(routed.clone(), 1)));
    assert_eq!(f.counter(Reason::DeliverKernelOther), 1);

    // No route to the pod: a blackhole.
    ns.ip(&["route", "del", &format!("{pod}/32"), "dev", "lxc0"]);
    ns.ip(&["route", "add", "blackhole", &format!("{pod}/32")]);
    let (act, out) = f.xdp_on(&request().build(), ns.ifindex);
    assert_eq!((act, &out), (XDP_PASS, &routed));
    assert_eq!(f.counter(Reason::DeliverKernelNoRoute), 1);

    assert_eq!(f.counter(Reason::DeliverPod), 0);
    assert_eq!(f.counter(Reason::FwdLocal), 4);
}
