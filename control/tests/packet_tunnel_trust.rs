//! The tunnel port on a backend node, as untrusted and shared input: another Geneve user's
//! packets (the CNI's pod network) pass to the kernel byte for byte; xlb's packets are
//! decapsulated only when an edge could have sent them (the inner destination is a backend on
//! this node of the frontend the option names), and never take over a live flow's reply
//! rewrite. Frames are built here, independently of the edge's program.
mod common;
#[path = "common/remote.rs"]
mod remote;

use std::net::Ipv4Addr;

use common::*;
use lb_common::maps::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, Reason, RevNatValue};
use remote::*;
use xlb_bench::frame::{self, Frame};

const STRANGER: [u8; 4] = [198, 18, 0, 99];

/// `web` (VIP:80, NodePort 30080, TCP, and VIP:53 UDP) has its pod on node-c; `far` on node-d.
fn manifest() -> String {
    remote_manifest(Cluster {
        node_port: true,
        dns: true,
        far: true,
    })
}

fn node_c() -> Fixture {
    Fixture::for_node(&manifest(), "node-c")
}

/// A UDP datagram from `src` to node-c's port `dport` carrying `payload`, as a tunnel endpoint
/// sends it (no UDP checksum).
fn to_node_c(src: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    Frame::udp(src, 50000, NODE_C, dport)
        .no_udp_checksum()
        .payload(payload)
        .build()
}

/// An xlb tunnel packet from the edge: the client's TCP segment from `client_port`, DNATed to
/// `pod:pod_port`, naming frontend `fe`.
fn xlb_tcp(
    client_port: u16,
    pod: [u8; 4],
    pod_port: u16,
    fe: ([u8; 4], u16, u8),
    port: u16,
) -> Vec<u8> {
    let inner = Frame::tcp(CLIENT, client_port, pod, pod_port)
        .syn()
        .ip_packet();
    to_node_c(EDGE, port, &frame::geneve(fe.0, fe.1, fe.2, &inner))
}

/// A Geneve header (RFC 8926) with `options` (whole TLVs), payload type `proto` and `vni`.
fn geneve_hdr(options: &[u8], proto: u16, vni: u32) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut v = vec![(options.len() / 4) as u8, 0];
    v.extend_from_slice(&proto.to_be_bytes());
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(options);
    v
}

/// What the common CNIs and other Geneve users put on UDP 6081: pod-to-pod Ethernet frames
/// with no option (Antrea, Cilium), with OVN's option class 0x0102 (OVN-Kubernetes), an IPv4
/// payload with a foreign option, and UDP that is not Geneve at all.
fn foreign_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let pod_frame = Frame::tcp([10, 244, 1, 5], 33000, [10, 244, 2, 7], 443)
        .seq(7)
        .ack(9)
        .payload(b"pod to pod")
        .build();
    let with = |options: &[u8], proto: u16, vni: u32, payload: &[u8]| {
        let mut v = geneve_hdr(options, proto, vni);
        v.extend_from_slice(payload);
        v
    };
    let ovn_opt = [0x01, 0x02, 0x80, 0x01, 0x00, 0x01, 0x00, 0x02];
    let inner_ip = Frame::tcp(CLIENT, 41999, POD_C1, 8080).syn().ip_packet();
    vec![
        (
            "Ethernet in Geneve, no option (Antrea, Cilium)",
            with(&[], 0x6558, 5, &pod_frame),
        ),
        (
            "Ethernet in Geneve, OVN's option",
            with(&ovn_opt, 0x6558, 7, &pod_frame),
        ),
        (
            "IPv4 in Geneve, a foreign option class",
            with(
                &[0x01, 0x02, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 0],
                0x0800,
                0,
                &inner_ip,
            ),
        ),
        ("IPv4 in Geneve, no option", with(&[], 0x0800, 0, &inner_ip)),
        ("a Geneve header alone", geneve_hdr(&[], 0x6558, 1)),
        ("not Geneve", b"hello".to_vec()),
    ]
}

#[test]
fn foreign_geneve_on_the_tunnel_port_passes_byte_for_byte() {
    let mut f = node_c();
    let mut n = 0;
    for (name, payload) in foreign_payloads() {
        // From a node (a CNI peer) and from an address that is none (an external VTEP).
        for src in [NODE_D, STRANGER] {
            let pkt = to_node_c(src, 6081, &payload);
            let (act, out) = f.xdp(&pkt);
            n += 1;
            assert_eq!(act, XDP_PASS, "{name} from {src:?}");
            assert_eq!(out, pkt, "{name} from {src:?}: changed");
            assert_eq!(f.counter(Reason::PassTunnelForeign), n, "{name}");
        }
    }
    assert_eq!(f.counter(Reason::Decap), 0);
    for r in [
        Reason::DropTunnelMalformed,
        Reason::DropTunnelUnknownNode,
        Reason::DropTunnelNotBackend,
    ] {
        assert_eq!(f.counter(r), 0, "{r:?}");
    }
}

#[test]
fn a_configured_tunnel_port_moves_decap_and_leaves_6081_alone() {
    let mut f = node_c();
    let mut tunnel = tunnel_for_node(&manifest(), "node-c");
    tunnel.port = 6090;
    f.rec.apply_tunnel(&tunnel).expect("apply tunnel");

    // xlb's packets are decapsulated on the configured port.
    let ours = xlb_tcp(42000, POD_C1, 8080, (VIP, 80, IPPROTO_TCP), 6090);
    let (act, out) = f.xdp(&ours);
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::Decap), 1);
    assert_eq!(dst(&out), (Ipv4Addr::from(POD_C1), 8080));

    // On 6081 nothing is xlb's any more: even an xlb-looking packet is just UDP to the node.
    let old_port = xlb_tcp(42001, POD_C1, 8080, (VIP, 80, IPPROTO_TCP), 6081);
    let (act, out) = f.xdp(&old_port);
    assert_eq!((act, &out), (XDP_PASS, &old_port));
    assert_eq!(f.counter(Reason::PassNoFrontend), 1);
    let mut passed = 1;
    for (name, payload) in foreign_payloads() {
        for port in [6081, 6090] {
            let pkt = to_node_c(NODE_D, port, &payload);
            let (act, out) = f.xdp(&pkt);
            assert_eq!(act, XDP_PASS, "{name} to {port}");
            assert_eq!(out, pkt, "{name} to {port}: changed");
        }
        passed += 1;
        assert_eq!(f.counter(Reason::PassNoFrontend), passed, "{name} to 6081");
        assert_eq!(f.counter(Reason::PassTunnelForeign), passed - 1, "{name}");
    }
    assert_eq!(f.counter(Reason::Decap), 1);
}

#[test]
fn xlb_packets_that_no_edge_could_have_sent_are_dropped_and_counted() {
    let mut f = node_c();
    let tcp_fe = (VIP, 80, IPPROTO_TCP);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "to a pod on another node",
            xlb_tcp(43000, POD_D1, 8080, (FAR_VIP, 80, IPPROTO_TCP), 6081),
        ),
        (
            "to the pod of another Service's frontend",
            xlb_tcp(43001, POD_C1, 8080, (FAR_VIP, 80, IPPROTO_TCP), 6081),
        ),
        (
            "to a port the pod does not serve",
            xlb_tcp(43002, POD_C1, 22, tcp_fe, 6081),
        ),
        (
            "to the node itself",
            xlb_tcp(43003, NODE_C, 8080, tcp_fe, 6081),
        ),
        (
            "naming a frontend that does not exist",
            xlb_tcp(
                43004,
                POD_C1,
                8080,
                ([198, 19, 255, 9], 80, IPPROTO_TCP),
                6081,
            ),
        ),
        (
            "naming a frontend port that does not exist",
            xlb_tcp(43005, POD_C1, 8080, (VIP, 81, IPPROTO_TCP), 6081),
        ),
        (
            "TCP inside, the option names UDP",
            xlb_tcp(43006, POD_C1, 8080, (VIP, 80, IPPROTO_UDP), 6081),
        ),
        ("TCP to the UDP backend port", {
            xlb_tcp(43007, POD_C1, 5353, (VIP, 53, IPPROTO_TCP), 6081)
        }),
        ("UDP to the TCP backend port", {
            let inner = Frame::udp(CLIENT, 43008, POD_C1, 8080).ip_packet();
            to_node_c(EDGE, 6081, &frame::geneve(VIP, 80, IPPROTO_UDP, &inner))
        }),
    ];
    for (i, (name, pkt)) in cases.iter().enumerate() {
        let (act, _) = f.xdp(pkt);
        assert_eq!(act, XDP_DROP, "{name}");
        assert_eq!(
            f.counter(Reason::DropTunnelNotBackend),
            i as u64 + 1,
            "{name}"
        );
    }
    assert_eq!(f.counter(Reason::Decap), 0);
    // Nothing was recorded for the rejected flows: the pod's reply to one leaves unchanged.
    let reply = tcp(POD_C1, 8080, CLIENT, 43001, false);
    let (_, out) = f.tc(&reply);
    assert_eq!(out, reply);
    assert_eq!(f.counter(Reason::ReplyPass), 1);

    // What an edge does send is decapsulated: the VIP over TCP and UDP, and the NodePort
    // named with whichever edge address the client used.
    let good: Vec<(&str, Vec<u8>)> = vec![
        ("VIP:80", xlb_tcp(43100, POD_C1, 8080, tcp_fe, 6081)),
        (
            "NodePort on the edge's InternalIP",
            xlb_tcp(43101, POD_C1, 8080, (EDGE, NODE_PORT, IPPROTO_TCP), 6081),
        ),
        (
            "NodePort on another edge address",
            xlb_tcp(
                43102,
                POD_C1,
                8080,
                ([198, 18, 9, 2], NODE_PORT, IPPROTO_TCP),
                6081,
            ),
        ),
        ("VIP:53 over UDP", {
            let inner = Frame::udp(CLIENT, 43103, POD_C1, 5353).ip_packet();
            to_node_c(EDGE, 6081, &frame::geneve(VIP, 53, IPPROTO_UDP, &inner))
        }),
    ];
    for (i, (name, pkt)) in good.iter().enumerate() {
        let (act, out) = f.xdp(pkt);
        assert_eq!(act, XDP_PASS, "{name}");
        assert_eq!(f.counter(Reason::Decap), i as u64 + 1, "{name}");
        assert_eq!(
            &out[14..],
            &pkt[14 + 48..],
            "{name}: exactly the inner packet"
        );
    }
    let (_, out) = f.tc(&tcp(POD_C1, 8080, CLIENT, 43101, false));
    assert_eq!(src(&out), (Ipv4Addr::from(EDGE), NODE_PORT));
}

/// The reverse-NAT key of the client's UDP flow from `client_port` to c1's port 5353: the pod's
/// reply tuple, in network order.
fn udp_reply_key(client_port: u16) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes(POD_C1),
        dst_addr: u32::from_ne_bytes(CLIENT),
        src_port: 5353u16.to_be(),
        dst_port: client_port.to_be(),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    }
}

/// An xlb tunnel packet from the edge: the client's datagram from `client_port` to c1:5353,
/// naming the VIP's port 53.
fn xlb_udp_to_vip(client_port: u16) -> Vec<u8> {
    let inner = Frame::udp(CLIENT, client_port, POD_C1, 5353).ip_packet();
    to_node_c(EDGE, 6081, &frame::geneve(VIP, 53, IPPROTO_UDP, &inner))
}

#[test]
fn a_tunnel_packet_never_takes_over_a_live_flows_reply() {
    let mut f = node_c();
    let via_vip = xlb_tcp(44000, POD_C1, 8080, (VIP, 80, IPPROTO_TCP), 6081);
    let (act, _) = f.xdp(&via_vip);
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::Decap), 1);

    // The same flow, forged to name the NodePort on the edge: a real backend of a real
    // frontend, but the flow's replies must keep the VIP as their source.
    let forged = xlb_tcp(44000, POD_C1, 8080, (EDGE, NODE_PORT, IPPROTO_TCP), 6081);
    let (act, _) = f.xdp(&forged);
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropTunnelFlowConflict), 1);
    let reply = tcp(POD_C1, 8080, CLIENT, 44000, false);
    let (_, out) = f.tc(&reply);
    assert_eq!(src(&out), (Ipv4Addr::from(VIP), 80));

    // The flow's own packets keep coming through.
    let (act, _) = f.xdp(&via_vip);
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::Decap), 2);

    // A UDP flow recorded (here by hand) for another frontend and idle for longer than UDP's
    // idle timeout is over: a new flow on the same tuple may record its own frontend. (The
    // stale entry's timestamp is 0, so the host must have been up that long.)
    let idle = lb_common::maps::flow_idle_ns(IPPROTO_UDP);
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_nanos(idle + 1_000_000_000);
    while xlb::sys::clock::monotonic_ns() <= idle {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stale = RevNatValue {
        frontend_addr: u32::from_ne_bytes(EDGE),
        frontend_port: 30053u16.to_be(),
        flags: 0,
        last_ns: 0,
    };
    f.rec
        .maps
        .revnat
        .insert(udp_reply_key(44001), stale, 0)
        .unwrap();
    let (act, _) = f.xdp(&xlb_udp_to_vip(44001));
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::Decap), 3);
    let (_, out) = f.tc(&udp(POD_C1, 5353, CLIENT, 44001));
    assert_eq!(src(&out), (Ipv4Addr::from(VIP), 53));

    // Seen a moment ago, the same entry is live: taken over by nothing.
    let live = RevNatValue {
        last_ns: xlb::sys::clock::monotonic_ns(),
        ..stale
    };
    f.rec
        .maps
        .revnat
        .insert(udp_reply_key(44002), live, 0)
        .unwrap();
    let (act, _) = f.xdp(&xlb_udp_to_vip(44002));
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropTunnelFlowConflict), 2);
    let (_, out) = f.tc(&udp(POD_C1, 5353, CLIENT, 44002));
    assert_eq!(src(&out), (Ipv4Addr::from(EDGE), 30053));
}

/// `inner`, a TCP segment from the client to `pod`, tunnelled by the edge naming frontend `fe`.
fn tunnelled(inner: Frame, fe: ([u8; 4], u16)) -> Vec<u8> {
    to_node_c(
        EDGE,
        6081,
        &frame::geneve(fe.0, fe.1, IPPROTO_TCP, &inner.ip_packet()),
    )
}

#[test]
fn a_syn_through_another_frontend_reopens_a_closed_connections_tuple() {
    let mut f = node_c();
    let (vip, node_port) = ((VIP, 80), (EDGE, NODE_PORT));
    let seg = || Frame::tcp(CLIENT, 44100, POD_C1, 8080).seq(1000);
    let data = || seg().ack(5000).payload(b"hello");
    let pass = |f: &mut Fixture, frame: Vec<u8>, what: &str| {
        let (act, _) = f.xdp(&frame);
        assert_eq!(act, XDP_PASS, "{what}");
    };
    let conflicts = |f: &mut Fixture, frame: Vec<u8>, n: u64, what: &str| {
        let (act, _) = f.xdp(&frame);
        assert_eq!(act, XDP_DROP, "{what}");
        assert_eq!(f.counter(Reason::DropTunnelFlowConflict), n, "{what}");
    };
    let reply_src = |f: &mut Fixture| {
        let (_, out) = f.tc(&tcp(POD_C1, 8080, CLIENT, 44100, false));
        src(&out)
    };

    pass(
        &mut f,
        tunnelled(seg().syn(), vip),
        "the SYN through the VIP",
    );
    pass(&mut f, tunnelled(data(), vip), "data through the VIP");
    // Open: nothing through another frontend, not even a SYN.
    conflicts(
        &mut f,
        tunnelled(seg().syn(), node_port),
        1,
        "a SYN while open",
    );
    conflicts(&mut f, tunnelled(data(), node_port), 2, "data while open");
    assert_eq!(reply_src(&mut f), (Ipv4Addr::from(VIP), 80));

    // The client closes: a SYN through the NodePort is a new connection on the same tuple;
    // anything else is still refused.
    pass(&mut f, tunnelled(data().fin(), vip), "the client's FIN");
    conflicts(
        &mut f,
        tunnelled(data(), node_port),
        3,
        "data after the FIN",
    );
    pass(
        &mut f,
        tunnelled(seg().syn(), node_port),
        "a SYN after the FIN",
    );
    assert_eq!(reply_src(&mut f), (Ipv4Addr::from(EDGE), NODE_PORT));
    // The new connection is open: the old frontend's late segments do not take it back.
    conflicts(&mut f, tunnelled(data(), vip), 4, "the VIP's late segment");
    conflicts(
        &mut f,
        tunnelled(seg().syn(), vip),
        5,
        "a SYN through the VIP",
    );

    // The pod resets it (seen on TC egress): the VIP may have the tuple again.
    let (_, out) = f.tc(&frame::tcp_frame(POD_C1, 8080, CLIENT, 44100, false)
        .rst()
        .build());
    assert_eq!(src(&out), (Ipv4Addr::from(EDGE), NODE_PORT));
    pass(
        &mut f,
        tunnelled(seg().syn(), vip),
        "a SYN after the pod's RST",
    );
    assert_eq!(reply_src(&mut f), (Ipv4Addr::from(VIP), 80));
    assert_eq!(f.counter(Reason::DropTunnelFlowConflict), 5);
}

#[test]
fn a_backend_that_leaves_the_plan_stays_reachable_while_its_flows_live() {
    let mut f = node_c();
    // A live UDP flow to c1 through VIP:53; none on VIP:80.
    let (act, _) = f.xdp(&xlb_udp_to_vip(45000));
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::Decap), 1);

    // c1 leaves `web` (gone not-ready): node-c's plan has no local backend any more.
    let without_c1 = manifest().replace(
        r#"endpoints: [{addresses: ["198.18.4.11"], nodeName: node-c}]"#,
        "endpoints: []",
    );
    assert_ne!(without_c1, manifest());
    f.plan = plan_for_node(&without_c1, "node-c");
    f.rec.apply(&f.plan).expect("apply");

    // The edges keep sending the established UDP flow, which still arrives; c1's TCP port had
    // no live flow and is closed to the tunnel at once.
    let (act, _) = f.xdp(&xlb_udp_to_vip(45000));
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::Decap), 2);
    let (act, _) = f.xdp(&xlb_tcp(45001, POD_C1, 8080, (VIP, 80, IPPROTO_TCP), 6081));
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropTunnelNotBackend), 1);

    // Once the flow has been idle longer than UDP's timeout, the sweep closes the port too.
    let idle = lb_common::maps::flow_idle_ns(IPPROTO_UDP);
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_nanos(idle + 1_000_000_000);
    while xlb::sys::clock::monotonic_ns() <= idle {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Only the pair the flow uses is kept: VIP:53 to c1:5353.
    assert_eq!(
        f.rec.release_local_backends().unwrap(),
        (0, 1),
        "live: kept"
    );
    let key = udp_reply_key(45000);
    let mut rev = f.rec.maps.revnat.get(&key, 0).expect("recorded");
    rev.last_ns = 0;
    f.rec.maps.revnat.insert(key, rev, 0).unwrap();
    let (removed, kept) = f.rec.release_local_backends().unwrap();
    assert_eq!((removed, kept), (1, 0));
    let (act, _) = f.xdp(&xlb_udp_to_vip(45000));
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropTunnelNotBackend), 2);
}
