//! The kernel programs, packet by packet (BPF_PROG_TEST_RUN): programmed through the real
//! manifest → compile → reconcile path, each frame's verdict, output bytes, checksums and the
//! counter of the path it took.
mod common;

use std::net::Ipv4Addr;

use common::*;
use lb_common::maps::Reason;

const WEB_HTTP: &str = "default/web:http/TCP";
const WEB_DNS: &str = "default/web:dns/UDP";

fn fixture() -> Fixture {
    Fixture::new(&manifest(&PODS, &[]))
}

#[test]
fn arp_and_non_ip_pass_untouched() {
    let mut f = fixture();
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let (act, out) = f.xdp(&arp);
    assert_eq!(act, XDP_PASS);
    assert_eq!(out, arp);
    assert_eq!(f.counter(Reason::PassNotIpv4), 1);
}

#[test]
fn ipv4_to_a_non_frontend_passes_untouched() {
    let mut f = fixture();
    for frame in [
        tcp(CLIENT, 40000, [198, 18, 1, 11], 8080, true), // pod address directly
        tcp(CLIENT, 40000, VIP, 81, true),                // VIP, wrong port
        udp(CLIENT, 40000, VIP, 80),                      // VIP:80 but UDP
        tcp(CLIENT, 40000, [198, 18, 0, 99], 30080, true), // NodePort on a non-local address
    ] {
        let (act, out) = f.xdp(&frame);
        assert_eq!(act, XDP_PASS);
        assert_eq!(out, frame);
    }
    assert_eq!(f.counter(Reason::PassNoFrontend), 4);
    assert_eq!(f.counter(Reason::CtNew), 0);
}

#[test]
fn syn_to_vip_is_dnated_to_the_maglev_pod() {
    let mut f = fixture();
    let mut seen = std::collections::BTreeSet::new();
    for sport in 40000..40040u16 {
        let frame = tcp(CLIENT, sport, VIP, 80, true);
        let (act, out) = f.xdp(&frame);
        assert_eq!(act, XDP_PASS);
        let want = f.predict(WEB_HTTP, CLIENT, sport, VIP, 80, 6);
        assert_eq!(dst(&out), want, "sport {sport}");
        assert_eq!(
            src(&out),
            (Ipv4Addr::from(CLIENT), sport),
            "client address preserved"
        );
        assert_checksums(&out);
        // Only the destination changed.
        assert_eq!(out.len(), frame.len());
        seen.insert(want.0);
    }
    assert_eq!(seen.len(), 3, "40 flows should reach all three pods");
    assert_eq!(f.counter(Reason::CtNew), 40);
    assert_eq!(f.counter(Reason::FwdLocal), 40);
}

#[test]
fn established_flow_keeps_its_pod_after_the_table_changes() {
    let mut f = fixture();
    // Find a flow whose pod we then remove from the Service.
    let sport = (41000..42000u16)
        .find(|&p| f.predict(WEB_HTTP, CLIENT, p, VIP, 80, 6).0 == Ipv4Addr::from(PODS[0]))
        .unwrap();
    let (_, out) = f.xdp(&tcp(CLIENT, sport, VIP, 80, true));
    assert_eq!(dst(&out).0, Ipv4Addr::from(PODS[0]));

    f.reprogram(&manifest(&PODS[1..], &[]));
    let (act, out) = f.xdp(&tcp(CLIENT, sport, VIP, 80, false));
    assert_eq!(act, XDP_PASS);
    assert_eq!(
        dst(&out),
        (Ipv4Addr::from(PODS[0]), 8080),
        "ACK follows conntrack"
    );
    assert_checksums(&out);
    assert_eq!(f.counter(Reason::CtHit), 1);

    // A new flow never picks the removed pod.
    for p in 50000..50200u16 {
        let (_, out) = f.xdp(&tcp(CLIENT, p, VIP, 80, true));
        assert_ne!(dst(&out).0, Ipv4Addr::from(PODS[0]));
    }
}

#[test]
fn terminating_endpoint_keeps_flows_but_gets_no_new_ones() {
    let mut f = fixture();
    let sport = (41000..42000u16)
        .find(|&p| f.predict(WEB_HTTP, CLIENT, p, VIP, 80, 6).0 == Ipv4Addr::from(PODS[2]))
        .unwrap();
    f.xdp(&tcp(CLIENT, sport, VIP, 80, true));
    f.reprogram(&manifest(&PODS, &[PODS[2]]));
    let (_, out) = f.xdp(&tcp(CLIENT, sport, VIP, 80, false));
    assert_eq!(dst(&out).0, Ipv4Addr::from(PODS[2]));
    for p in 50000..50200u16 {
        let (_, out) = f.xdp(&tcp(CLIENT, p, VIP, 80, true));
        assert_ne!(dst(&out).0, Ipv4Addr::from(PODS[2]));
    }
}

#[test]
fn nodeport_on_the_node_address() {
    let mut f = fixture();
    let frame = tcp(CLIENT, 42000, NODE, 30080, true);
    let (act, out) = f.xdp(&frame);
    assert_eq!(act, XDP_PASS);
    assert_eq!(
        dst(&out),
        f.predict(WEB_HTTP, CLIENT, 42000, NODE, 30080, 6)
    );
    assert_checksums(&out);
}

#[test]
fn udp_is_balanced_and_checksummed() {
    let mut f = fixture();
    let frame = udp(CLIENT, 43000, VIP, 53);
    let (act, out) = f.xdp(&frame);
    assert_eq!(act, XDP_PASS);
    assert_eq!(dst(&out), f.predict(WEB_DNS, CLIENT, 43000, VIP, 53, 17));
    assert_eq!(dst(&out).1, 5353);
    assert_checksums(&out);

    // A zero UDP checksum ("none") stays zero.
    let mut nocsum = udp(CLIENT, 43001, VIP, 53);
    nocsum[14 + 20 + 6] = 0;
    nocsum[14 + 20 + 7] = 0;
    let (_, out) = f.xdp(&nocsum);
    assert_eq!(&out[40..42], &[0, 0]);
    assert_eq!(dst(&out).1, 5353);
}

#[test]
fn source_ranges_drop_outsiders() {
    let mut f = fixture();
    let restricted = [198, 19, 255, 2];
    let (act, _) = f.xdp(&tcp([198, 18, 0, 200], 44000, restricted, 80, true));
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropSourceRange), 1);
    let (act, out) = f.xdp(&tcp(CLIENT, 44000, restricted, 80, true));
    assert_eq!(act, XDP_PASS);
    assert_eq!(dst(&out), (Ipv4Addr::new(198, 18, 1, 11), 8080));
    // The ranges apply to the LoadBalancer IP only, not to the NodePort.
    let (act, _) = f.xdp(&tcp([198, 18, 0, 200], 44001, NODE, 30081, true));
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::DropSourceRange), 1);
}

#[test]
fn service_without_endpoints_drops_and_counts() {
    let mut f = Fixture::new(&manifest(&[], &[]));
    let (act, _) = f.xdp(&tcp(CLIENT, 45000, VIP, 80, true));
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropNoBackend), 1);
}

#[test]
fn vlan_tagged_frames_are_balanced() {
    let mut f = fixture();
    let plain = tcp(CLIENT, 46000, VIP, 80, true);
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    tagged.extend_from_slice(&plain[12..]);
    let (act, out) = f.xdp(&tagged);
    assert_eq!(act, XDP_PASS);
    assert_eq!(dst(&out), f.predict(WEB_HTTP, CLIENT, 46000, VIP, 80, 6));
    assert_checksums(&out);
}

/// Inserts 4 bytes of IPv4 options (NOPs + EOL) and fixes lengths and the header checksum.
fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let mut v = frame[..34].to_vec();
    v.extend_from_slice(&[1, 1, 1, 0]);
    v.extend_from_slice(&frame[34..]);
    v[14] = 0x46;
    let tot = u16::from_be_bytes([v[16], v[17]]) + 4;
    v[16..18].copy_from_slice(&tot.to_be_bytes());
    v[24] = 0;
    v[25] = 0;
    let mut sum: u32 = 0;
    for c in v[14..38].chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    v[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    v
}

#[test]
fn ip_options_are_skipped_and_checksums_stay_valid() {
    let mut f = fixture();
    let frame = with_ip_options(&tcp(CLIENT, 47000, VIP, 80, false));
    assert_checksums(&frame);
    let (act, out) = f.xdp(&frame);
    assert_eq!(act, XDP_PASS);
    assert_eq!(dst(&out), f.predict(WEB_HTTP, CLIENT, 47000, VIP, 80, 6));
    assert_checksums(&out);
}

#[test]
fn malformed_frames_pass_with_a_counter_and_no_rewrite() {
    let mut f = fixture();
    let good = tcp(CLIENT, 48000, VIP, 80, true);
    let mut cases: Vec<(&str, Vec<u8>, Reason)> = Vec::new();
    // Frames shorter than an Ethernet header never reach XDP (BPF_PROG_TEST_RUN refuses them
    // too); the shortest case is a bare Ethernet header.
    cases.push(("ethernet only", good[..14].to_vec(), Reason::PassMalformed));
    cases.push(("truncated ipv4", good[..30].to_vec(), Reason::PassMalformed));
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    cases.push(("ihl < 5", ihl4, Reason::PassMalformed));
    let mut v6 = good.clone();
    v6[14] = 0x65;
    cases.push(("version 6 in an IPv4 frame", v6, Reason::PassMalformed));
    let mut long = good.clone();
    long[16..18].copy_from_slice(&1500u16.to_be_bytes());
    cases.push(("total length beyond the frame", long, Reason::PassMalformed));
    let mut short_tot = good.clone();
    short_tot[16..18].copy_from_slice(&24u16.to_be_bytes());
    cases.push((
        "total length shorter than the headers",
        short_tot,
        Reason::PassMalformed,
    ));
    cases.push((
        "truncated tcp",
        good[..14 + 20 + 10].to_vec(),
        Reason::PassMalformed,
    ));
    let mut mf = good.clone();
    mf[20] = 0x20; // more fragments
    cases.push(("first fragment", mf, Reason::PassFragment));
    let mut off = good.clone();
    off[21] = 0x10; // offset 16*8
    cases.push(("later fragment", off, Reason::PassFragment));
    let mut icmp = good.clone();
    icmp[23] = 1;
    cases.push(("icmp", icmp, Reason::PassNotL4));
    let mut ipv6 = good.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    cases.push(("ipv6 ethertype", ipv6, Reason::PassIpv6));
    let mut ihl15 = good.clone();
    ihl15[14] = 0x4f; // 60-byte header claimed, only 40 bytes of IP+TCP in the frame
    cases.push((
        "options running past the frame",
        ihl15,
        Reason::PassMalformed,
    ));

    for (name, frame, reason) in cases {
        let before = f.counter(reason);
        let (act, out) = f.xdp(&frame);
        assert_eq!(act, XDP_PASS, "{name}");
        assert_eq!(out, frame, "{name}: must not be rewritten");
        assert_eq!(
            f.counter(reason),
            before + 1,
            "{name}: counted as {reason:?}"
        );
    }
    assert_eq!(f.counter(Reason::CtNew), 0);
}

#[test]
fn reply_from_the_pod_leaves_with_the_frontend_address() {
    let mut f = fixture();
    let (_, out) = f.xdp(&tcp(CLIENT, 49000, VIP, 80, true));
    let (pod, port) = dst(&out);
    let reply = tcp(pod.octets(), port, CLIENT, 49000, false);
    let (verdict, out) = f.tc(&reply);
    assert_eq!(verdict, 0, "TC_ACT_OK");
    assert_eq!(src(&out), (Ipv4Addr::from(VIP), 80));
    assert_eq!(dst(&out), (Ipv4Addr::from(CLIENT), 49000));
    assert_checksums(&out);
    assert_eq!(f.counter(Reason::ReplyRewritten), 1);

    // NodePort replies get the node address the client used.
    let (_, out) = f.xdp(&udp(CLIENT, 49001, NODE, 30053));
    let (pod, port) = dst(&out);
    let (_, out) = f.tc(&udp(pod.octets(), port, CLIENT, 49001));
    assert_eq!(src(&out), (Ipv4Addr::from(NODE), 30053));
    assert_checksums(&out);

    // Traffic that is not a reply passes untouched.
    let other = tcp([198, 18, 1, 12], 8080, [198, 18, 0, 77], 1234, false);
    let (verdict, out) = f.tc(&other);
    assert_eq!(verdict, 0);
    assert_eq!(out, other);
    assert_eq!(f.counter(Reason::ReplyPass), 1);
}

#[test]
fn new_flows_are_counted_once_per_flow_per_frontend_and_backend() {
    let mut f = fixture();
    let svc = f
        .rec
        .snapshot()
        .services
        .iter()
        .find(|s| s.name == WEB_HTTP)
        .expect("web:http programmed")
        .clone();
    let frontend = |addr: Option<Ipv4Addr>| {
        svc.frontends
            .iter()
            .find(|fe| fe.addr == addr)
            .expect("frontend")
            .frontend_id
    };
    let (vip, nodeport) = (frontend(Some(Ipv4Addr::from(VIP))), frontend(None));
    for sport in 41000..41010u16 {
        // The SYN opens the flow; the ACK after it is the same flow.
        assert_eq!(f.xdp(&tcp(CLIENT, sport, VIP, 80, true)).0, XDP_PASS);
        assert_eq!(f.xdp(&tcp(CLIENT, sport, VIP, 80, false)).0, XDP_PASS);
    }
    assert_eq!(f.xdp(&tcp(CLIENT, 41000, NODE, 30080, true)).0, XDP_PASS);
    let fe = |id| f.rec.maps.frontend_counter(id).unwrap();
    assert_eq!((fe(vip).new_flows, fe(vip).packets), (10, 20));
    assert_eq!((fe(nodeport).new_flows, fe(nodeport).packets), (1, 1));
    let per_backend: Vec<u64> = svc
        .backends
        .iter()
        .map(|b| f.rec.maps.backend_counter(b.backend_id).unwrap().new_flows)
        .collect();
    assert_eq!(per_backend.iter().sum::<u64>(), 11, "{per_backend:?}");
    assert_eq!(f.counter(Reason::CtNew), 11);
}
