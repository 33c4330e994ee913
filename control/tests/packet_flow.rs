//! The state a flow leaves in the maps, packet by packet (BPF_PROG_TEST_RUN): what a new flow
//! writes (no reverse NAT for a remote backend), FIN/RST close tracking and the sweep after it,
//! the SYN-flood guard (a SYN above the rate gets no conntrack entry, the flow gets one at its
//! first packet after the handshake), and the port filter that decides "not ours".
mod common;
#[path = "common/fib_netns.rs"]
mod fib_netns;
#[path = "common/remote.rs"]
mod remote;

use std::net::Ipv4Addr;

use common::*;
use fib_netns::FibNetns;
use lb_common::maps::{
    CT_F_CLOSING, FlowKey, PORT_F_TCP, PORT_F_TCP_NODEPORT, PORT_F_TUNNEL, PORT_F_UDP,
    PORT_F_UDP_NODEPORT, Reason,
};
use remote::*;
use xlb_bench::frame::Frame;

const WEB_HTTP: &str = "default/web:http/TCP";
const SEC: u64 = 1_000_000_000;

fn fixture() -> Fixture {
    Fixture::new(&manifest(&PODS, &[]))
}

fn key(sport: u16) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes(CLIENT),
        dst_addr: u32::from_ne_bytes(VIP),
        src_port: sport.to_be(),
        dst_port: 80u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    }
}

/// The reply tuple of the client's flow from `sport` once sent to `pod`:8080.
fn reply_key(sport: u16, pod: Ipv4Addr) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes(pod.octets()),
        dst_addr: u32::from_ne_bytes(CLIENT),
        src_port: 8080u16.to_be(),
        dst_port: sport.to_be(),
        proto: 6,
        _pad: [0; 3],
    }
}

fn segment(sport: u16, f: impl FnOnce(Frame) -> Frame) -> Vec<u8> {
    f(Frame::tcp(CLIENT, sport, VIP, 80).seq(1)).build()
}

/// The CPU the packets of a test run on: the guard's window is per CPU, and a test thread the
/// scheduler moves between runs would spread its new flows over two windows.
fn pin_to_one_cpu() {
    // SAFETY: plain syscall on this thread with a zeroed, then filled, CPU set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
fn fin_and_rst_move_a_flow_to_the_close_timeout_and_the_sweep_removes_it() {
    let mut f = fixture();
    // An open flow, a flow the client closes with a FIN, one it resets.
    for sport in [43000u16, 43001, 43002] {
        assert_eq!(f.xdp(&segment(sport, |s| s.syn())).0, XDP_PASS);
        assert_eq!(f.xdp(&segment(sport, |s| s.ack(1))).0, XDP_PASS);
    }
    let open_before = f.rec.maps.conntrack.get(&key(43001), 0).unwrap();
    assert_eq!(open_before.flags, 0);
    let (act, out) = f.xdp(&segment(43001, |s| s.fin().ack(1)));
    assert_eq!(act, XDP_PASS);
    // The FIN is forwarded like any packet of the flow: same pod, checksums valid.
    assert_eq!(dst(&out), f.predict(WEB_HTTP, CLIENT, 43001, VIP, 80, 6));
    assert_checksums(&out);
    let (act, _) = f.xdp(&segment(43002, |s| s.rst()));
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::CtClosing), 2);

    let now = xlb::sys::clock::monotonic_ns();
    let ct = |f: &Fixture, sport| f.rec.maps.conntrack.get(&key(sport), 0).unwrap();
    assert_eq!(ct(&f, 43000).flags, 0);
    for sport in [43001, 43002] {
        let c = ct(&f, sport);
        assert_eq!(c.flags, CT_F_CLOSING, "client port {sport}");
        assert!(!c.is_active(6, now));
        // The close timeout counts from the FIN/RST itself.
        assert!(c.last_seen_ns >= open_before.last_seen_ns);
    }
    assert!(ct(&f, 43000).is_active(6, now));

    // The last ACK after the FIN: still forwarded, counted as closing only once.
    let (act, out) = f.xdp(&segment(43001, |s| s.ack(2)));
    assert_eq!(act, XDP_PASS);
    assert_eq!(dst(&out), f.predict(WEB_HTTP, CLIENT, 43001, VIP, 80, 6));
    assert_eq!(f.counter(Reason::CtClosing), 2);

    // The CONNS figures (the census) count the open flow only.
    let census = xlb::observe::census::take(&f.rec.maps, None).unwrap();
    assert_eq!((census.entries, census.active), (3, 1));

    // Ten seconds after the FIN and RST the sweep removes both flows, each with its reverse
    // NAT; the open one stays.
    let replies: Vec<FlowKey> = [43000u16, 43001, 43002]
        .iter()
        .map(|&p| reply_key(p, f.predict(WEB_HTTP, CLIENT, p, VIP, 80, 6).0))
        .collect();
    for r in &replies {
        assert!(f.rec.maps.revnat.get(r, 0).is_ok());
    }
    assert_eq!(
        xlb::observe::census::expire_at(&mut f.rec.maps, now + 5 * SEC).unwrap(),
        0
    );
    assert_eq!(
        xlb::observe::census::expire_at(&mut f.rec.maps, now + 11 * SEC).unwrap(),
        2
    );
    assert!(f.rec.maps.conntrack.get(&key(43000), 0).is_ok());
    assert!(f.rec.maps.revnat.get(&replies[0], 0).is_ok());
    for (sport, r) in [43001u16, 43002].iter().zip(&replies[1..]) {
        assert!(f.rec.maps.conntrack.get(&key(*sport), 0).is_err());
        assert!(f.rec.maps.revnat.get(r, 0).is_err());
    }

    // A new SYN on a closed tuple (port reuse) opens a new, open flow.
    f.xdp(&segment(43000, |s| s.fin().ack(1)));
    assert_eq!(ct(&f, 43000).flags, CT_F_CLOSING);
    f.xdp(&segment(43000, |s| s.syn()));
    assert_eq!(ct(&f, 43000).flags, 0);
}

#[test]
fn a_fin_for_an_unknown_flow_is_recorded_as_closing() {
    let mut f = fixture();
    let (act, out) = f.xdp(&segment(43100, |s| s.fin().ack(1)));
    assert_eq!(act, XDP_PASS);
    assert_eq!(dst(&out), f.predict(WEB_HTTP, CLIENT, 43100, VIP, 80, 6));
    assert_eq!(f.counter(Reason::CtMissMidFlow), 1);
    assert_eq!(f.counter(Reason::CtNew), 1);
    let c = f.rec.maps.conntrack.get(&key(43100), 0).unwrap();
    assert_eq!(c.flags, CT_F_CLOSING);
}

#[test]
fn the_syn_guard_skips_the_conntrack_write_above_the_rate() {
    pin_to_one_cpu();
    let mut f = fixture();
    f.rec.set_syn_guard_rate(3).unwrap();
    let now = xlb::sys::clock::monotonic_ns();
    assert_eq!(f.rec.maps.syn_guard(now).unwrap().trips, 0);
    let sports: Vec<u16> = (44000..44010).collect();
    let mut pods = Vec::new();
    for &p in &sports {
        let (act, out) = f.xdp(&segment(p, |s| s.syn()));
        assert_eq!(act, XDP_PASS);
        // Guarded or not, the SYN goes to the Maglev pod, rewritten the same way.
        let want = f.predict(WEB_HTTP, CLIENT, p, VIP, 80, 6);
        assert_eq!(dst(&out), want, "client port {p}");
        assert_checksums(&out);
        pods.push(want.0);
    }
    // Within one second: the first three new flows are recorded, the other seven are not. The
    // test would need more than the window (1 s) between its first and last SYN to see another
    // split; ten test runs take microseconds.
    assert_eq!(f.counter(Reason::CtNew), 3);
    assert_eq!(f.counter(Reason::SynGuarded), 7);
    for (i, &p) in sports.iter().enumerate() {
        assert_eq!(
            f.rec.maps.conntrack.get(&key(p), 0).is_ok(),
            i < 3,
            "client port {p}"
        );
        // The pod is local: its SYN-ACK needs the reverse NAT, guarded or not.
        assert!(f.rec.maps.revnat.get(&reply_key(p, pods[i]), 0).is_ok());
    }
    let g = f
        .rec
        .maps
        .syn_guard(xlb::sys::clock::monotonic_ns())
        .unwrap();
    assert_eq!((g.engaged_cpus, g.trips), (1, 1));
    // Only the recorded flows count as new flows of the frontend.
    let fe_id = f
        .rec
        .snapshot()
        .services
        .iter()
        .find(|s| s.name == WEB_HTTP)
        .unwrap()
        .frontends
        .iter()
        .find(|fe| fe.addr == Some(Ipv4Addr::from(VIP)))
        .unwrap()
        .frontend_id;
    assert_eq!(f.rec.maps.frontend_counter(fe_id).unwrap().new_flows, 3);

    // The handshake's ACK of a guarded flow records it, on the pod its SYN went to.
    let guarded = sports[5];
    let (act, out) = f.xdp(&segment(guarded, |s| s.ack(1)));
    assert_eq!(act, XDP_PASS);
    assert_eq!(dst(&out).0, pods[5]);
    assert_eq!(f.counter(Reason::CtMissMidFlow), 1);
    let c = f.rec.maps.conntrack.get(&key(guarded), 0).unwrap();
    assert_eq!(c.flags, 0);
    let (_, again) = f.xdp(&segment(guarded, |s| s.ack(1)));
    assert_eq!(dst(&again).0, pods[5]);
    assert_eq!(f.counter(Reason::CtHit), 1);

    // Off again: every SYN is recorded.
    f.rec.set_syn_guard_rate(0).unwrap();
    f.xdp(&segment(44100, |s| s.syn()));
    assert!(f.rec.maps.conntrack.get(&key(44100), 0).is_ok());
    assert_eq!(f.counter(Reason::SynGuarded), 7);
}

/// Services whose pods run on node-c only, seen from node-a (the edge).
fn remote_manifest() -> String {
    remote::remote_manifest(Cluster::default())
}

#[test]
fn a_flow_to_a_remote_pod_writes_conntrack_and_no_reverse_nat() {
    pin_to_one_cpu();
    let ns = FibNetns::new("flowst");
    ns.enter();
    let mut f = Fixture::for_node(&remote_manifest(), "node-a");
    let pod = Ipv4Addr::new(198, 18, 4, 11);
    let (act, _) = f.xdp_on(&segment(45000, |s| s.syn()), ns.ifindex);
    assert_eq!(act, 3, "XDP_TX to node-c");
    assert_eq!(f.counter(Reason::CtNew), 1);
    assert!(f.rec.maps.conntrack.get(&key(45000), 0).is_ok());
    // The pod's replies go from node-c to the client directly: node-c records their rewrite
    // when it decapsulates; the edge writes none.
    assert!(f.rec.maps.revnat.get(&reply_key(45000, pod), 0).is_err());
    assert_eq!(f.rec.maps.revnat.keys().count(), 0);

    // Under the guard a remote SYN writes nothing at all.
    f.rec.set_syn_guard_rate(1).unwrap();
    f.xdp_on(&segment(45001, |s| s.syn()), ns.ifindex);
    let (act, _) = f.xdp_on(&segment(45002, |s| s.syn()), ns.ifindex);
    assert_eq!(act, 3);
    // The window's first new flow (45001) is recorded, 45002 is not.
    assert_eq!(f.counter(Reason::SynGuarded), 1);
    assert!(f.rec.maps.conntrack.get(&key(45001), 0).is_ok());
    assert!(f.rec.maps.conntrack.get(&key(45002), 0).is_err());
    assert_eq!(f.rec.maps.revnat.keys().count(), 0);

    // The sweep of a closed remote flow has no reverse NAT to remove and removes the flow.
    f.xdp_on(&segment(45000, |s| s.rst()), ns.ifindex);
    let now = xlb::sys::clock::monotonic_ns();
    let removed = xlb::observe::census::expire_at(&mut f.rec.maps, now + 11 * SEC).unwrap();
    assert_eq!(removed, 1);
    assert!(f.rec.maps.conntrack.get(&key(45000), 0).is_err());
}

#[test]
fn one_port_lookup_passes_traffic_no_frontend_could_match() {
    let mut f = fixture();
    let bits = |f: &Fixture, port: u16| f.rec.maps.ports.get(&(port as u32), 0).unwrap();
    // The fixture's frontends: VIPs on TCP 80 and UDP 53, NodePorts 30080 (TCP), 30053 (UDP)
    // and 30081 (TCP); the tunnel on 6081.
    assert_eq!(bits(&f, 80), PORT_F_TCP);
    assert_eq!(bits(&f, 53), PORT_F_UDP);
    assert_eq!(bits(&f, 30080), PORT_F_TCP | PORT_F_TCP_NODEPORT);
    assert_eq!(bits(&f, 30053), PORT_F_UDP | PORT_F_UDP_NODEPORT);
    assert_eq!(bits(&f, 6081), PORT_F_TUNNEL);
    assert_eq!(bits(&f, 22), 0);
    assert_eq!(f.rec.maps.config.get(&0, 0).unwrap().ports_ready, 1);

    // The node's own traffic: ssh to its address, DNS from it, a UDP packet to a TCP-only
    // NodePort port: passed untouched.
    for frame in [
        tcp(CLIENT, 40000, NODE, 22, true),
        udp(CLIENT, 40000, NODE, 22),
        udp(CLIENT, 40000, NODE, 30080),
        tcp(CLIENT, 40000, NODE, 53, true),
    ] {
        let (act, out) = f.xdp(&frame);
        assert_eq!(act, XDP_PASS);
        assert_eq!(out, frame);
    }
    assert_eq!(f.counter(Reason::PassNoFrontend), 4);
    // Frontends still match, the NodePort included.
    let (_, out) = f.xdp(&tcp(CLIENT, 40001, NODE, 30080, true));
    assert_eq!(dst(&out).1, 8080);
    let (_, out) = f.xdp(&udp(CLIENT, 40001, VIP, 53));
    assert_eq!(dst(&out).1, 5353);

    // A Service removed: its ports' bits go with it (the restricted Service's NodePort).
    let without = manifest(&PODS, &[]).replace("nodePort: 30081, ", "");
    f.reprogram(&without);
    assert_eq!(bits(&f, 30081), 0);
    assert_eq!(bits(&f, 30080), PORT_F_TCP | PORT_F_TCP_NODEPORT);
}
