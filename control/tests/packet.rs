//! The kernel programs, packet by packet (BPF_PROG_TEST_RUN): programmed through the real
//! manifest → compile → reconcile path, each frame's verdict, output bytes, checksums and the
//! counter of the path it took.
mod common;

use std::net::Ipv4Addr;

use common::*;
use lb_common::maps::{
    CtValue, FlowKey, FrontendKey, FrontendValue, MAP_CONNTRACK, MAX_BACKENDS, MAX_SERVICES, Reason,
};
use xlb::datapath::loader::LoadOptions;
use xlb_bench::frame;

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

#[test]
fn ip_options_are_skipped_and_checksums_stay_valid() {
    let mut f = fixture();
    // 4 bytes of IPv4 options: NOPs and EOL.
    let frame = frame::tcp_frame(CLIENT, 47000, VIP, 80, false)
        .ip_options(&[1, 1, 1, 0])
        .build();
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

fn flow_key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes(src),
        dst_addr: u32::from_ne_bytes(dst),
        src_port: sport.to_be(),
        dst_port: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

#[test]
fn a_flow_whose_backend_is_gone_is_picked_again() {
    let mut f = fixture();
    // A conntrack entry naming a backend slot that holds no backend, as after a release that
    // raced the flow's last packet.
    let gone = MAX_BACKENDS - 1;
    assert_eq!(f.rec.maps.backends.get(&gone, 0).unwrap().flags, 0);
    let key = flow_key(CLIENT, 51000, VIP, 80, 6);
    let stale = CtValue {
        backend_id: gone,
        frontend_id: 0,
        created_ns: 0,
        last_seen_ns: 0,
        ..Default::default()
    };
    f.rec.maps.conntrack.insert(key, stale, 0).unwrap();

    let (act, out) = f.xdp(&tcp(CLIENT, 51000, VIP, 80, false));
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::CtStaleBackend), 1);
    assert_eq!(f.counter(Reason::CtHit), 0);
    assert_eq!(f.counter(Reason::CtNew), 1);
    assert_eq!(dst(&out), f.predict(WEB_HTTP, CLIENT, 51000, VIP, 80, 6));
    assert_checksums(&out);
    let now = f.rec.maps.conntrack.get(&key, 0).unwrap();
    assert_ne!(now.backend_id, gone, "the entry names the new pick");

    // The next packet of the flow follows the repaired entry.
    let (_, again) = f.xdp(&tcp(CLIENT, 51000, VIP, 80, false));
    assert_eq!(dst(&again), dst(&out));
    assert_eq!(f.counter(Reason::CtHit), 1);
    assert_eq!(f.counter(Reason::CtStaleBackend), 1);
}

#[test]
fn a_frontend_without_a_maglev_table_drops_and_counts() {
    let mut f = fixture();
    let key = FrontendKey {
        addr: u32::from_ne_bytes(VIP),
        port: 80u16.to_be(),
        proto: 6,
        _pad: 0,
    };
    let fe = f.rec.maps.frontends.get(&key, 0).unwrap();
    // A table whose header says M = 0 (the frontend's own table_size is not what the datapath
    // reads: the table describes itself).
    let zero_id = MAX_SERVICES - 2;
    let table = xlb::datapath::maglev_map::create(&[0, 0]).unwrap();
    xlb::datapath::maglev_map::swap_all(&f.rec.maps.maglev_fd, &[(zero_id, table)]).unwrap();
    let zero = FrontendValue {
        service_id: zero_id,
        ..fe
    };
    f.rec.maps.frontends.insert(key, zero, 0).unwrap();
    let (act, _) = f.xdp(&tcp(CLIENT, 52000, VIP, 80, true));
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropNoTable), 1);
    // A Service id whose table slot is empty.
    let orphan_id = MAX_SERVICES - 1;
    assert!(f.rec.maps.maglev.get(&orphan_id, 0).is_err());
    let orphan = FrontendValue {
        service_id: orphan_id,
        ..fe
    };
    f.rec.maps.frontends.insert(key, orphan, 0).unwrap();
    let (act, _) = f.xdp(&tcp(CLIENT, 52001, VIP, 80, true));
    assert_eq!(act, XDP_DROP);
    assert_eq!(f.counter(Reason::DropNoTable), 2);
    assert_eq!(f.counter(Reason::CtNew), 0);
    assert_eq!(f.counter(Reason::DropNoBackend), 0);
}

/// A bpffs directory for one test's pinned maps, removed on drop.
struct PinDir(std::path::PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/xlb-packet-test-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("maps")).unwrap();
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_failed_conntrack_insert_is_counted_and_the_packet_still_forwarded() {
    // An LRU map evicts rather than fail, so the loader is handed a pinned conntrack map of the
    // same layout that can fail: a plain hash with room for one flow.
    let pins = PinDir::new("ctfail");
    let pin = pins.0.join("maps").join(MAP_CONNTRACK);
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args(["type", "hash", "key", "16", "value", "32", "entries", "1"])
        .args(["name", "xlb_ct_one"])
        .output()
        .expect("bpftool (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let opts = LoadOptions {
        pin_dir: Some(pins.0.clone()),
        conntrack_size: 4096,
    };
    let mut f = Fixture::load(&opts, &manifest(&PODS, &[]), "node-a");

    let (act, _) = f.xdp(&tcp(CLIENT, 53000, VIP, 80, true));
    assert_eq!(act, XDP_PASS);
    assert_eq!(f.counter(Reason::CtInsertFailed), 0);
    let (act, out) = f.xdp(&tcp(CLIENT, 53001, VIP, 80, true));
    assert_eq!(act, XDP_PASS, "forwarded without its conntrack entry");
    assert_eq!(f.counter(Reason::CtInsertFailed), 1);
    assert_eq!(dst(&out), f.predict(WEB_HTTP, CLIENT, 53001, VIP, 80, 6));
    assert_checksums(&out);
    assert_eq!(f.counter(Reason::FwdLocal), 2);
    assert!(
        f.rec
            .maps
            .conntrack
            .get(&flow_key(CLIENT, 53001, VIP, 80, 6), 0)
            .is_err()
    );
}

/// The idle sweep removes exactly the flows idle past their protocol's timeout, each with its
/// reverse-NAT entry, and leaves the rest to the datapath.
#[test]
fn the_idle_sweep_expires_flows_idle_past_their_timeout() {
    let mut f = fixture();
    // (client port, protocol, idle seconds, expired?): the timeouts are 300 s (UDP) and a day
    // (TCP), written here rather than read from the code under test.
    // An idle time longer than the machine's uptime cannot be written (the clock is
    // CLOCK_MONOTONIC): such cases are left out.
    let now = xlb::sys::clock::monotonic_ns();
    let flows: Vec<(u16, u8, u64, bool)> = [
        (54000, 17, 301, true),
        (54001, 17, 250, false),
        (54002, 6, 3600, false),
        (54003, 6, 86_401, true),
    ]
    .into_iter()
    .filter(|&(_, _, idle_s, _)| idle_s * 1_000_000_000 < now)
    .collect();
    for &(sport, proto, _, _) in &flows {
        let frame = if proto == 17 {
            udp(CLIENT, sport, VIP, 53)
        } else {
            tcp(CLIENT, sport, VIP, 80, true)
        };
        assert_eq!(f.xdp(&frame).0, XDP_PASS);
    }
    let dport = |proto: u8| if proto == 17 { 53 } else { 80 };
    let reply_key = |f: &Fixture, sport: u16, proto: u8| {
        let key = flow_key(CLIENT, sport, VIP, dport(proto), proto);
        let ct = f.rec.maps.conntrack.get(&key, 0).unwrap();
        let b = f.rec.maps.backends.get(&ct.backend_id, 0).unwrap();
        FlowKey {
            src_addr: b.addr,
            dst_addr: u32::from_ne_bytes(CLIENT),
            src_port: b.port,
            dst_port: sport.to_be(),
            proto,
            _pad: [0; 3],
        }
    };
    let replies: Vec<FlowKey> = flows
        .iter()
        .map(|&(sport, proto, _, _)| reply_key(&f, sport, proto))
        .collect();
    for &(sport, proto, idle_s, _) in &flows {
        let key = flow_key(CLIENT, sport, VIP, dport(proto), proto);
        let mut ct = f.rec.maps.conntrack.get(&key, 0).unwrap();
        ct.last_seen_ns = now - idle_s * 1_000_000_000;
        f.rec.maps.conntrack.insert(key, ct, 0).unwrap();
    }

    let expired = flows.iter().filter(|c| c.3).count();
    assert_eq!(
        xlb::observe::census::expire_at(&mut f.rec.maps, xlb::sys::clock::monotonic_ns()).unwrap(),
        expired as u64
    );
    for (&(sport, proto, idle_s, expired), reply) in flows.iter().zip(&replies) {
        let key = flow_key(CLIENT, sport, VIP, dport(proto), proto);
        let what = format!("proto {proto} idle {idle_s} s");
        assert_eq!(
            f.rec.maps.conntrack.get(&key, 0).is_err(),
            expired,
            "{what}: conntrack"
        );
        assert_eq!(
            f.rec.maps.revnat.get(reply, 0).is_err(),
            expired,
            "{what}: reverse NAT"
        );
    }
}

/// Every counter the datapath has is named by some packet test (each counter it names is
/// asserted): a new counter comes with the test that drives its path.
#[test]
fn every_counter_is_asserted_by_a_packet_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut named = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(file.starts_with("packet") && file.ends_with(".rs")) {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for after in source.split("Reason::").skip(1) {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            named.insert(name);
        }
    }
    let unnamed: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|r| !named.contains(&format!("{r:?}")))
        .collect();
    assert!(unnamed.is_empty(), "no packet test asserts {unnamed:?}");
}
