//! End-to-end, the tunnel port as shared and untrusted input, on the DSR lab ([`Lab::dsr`],
//! `xlb run` on every node): another Geneve user's stream between two nodes (what the CNI's pod
//! network sends on UDP 6081) arrives byte for byte while xlb tunnels on the same port, on the
//! default port and on a configured one; and tunnel packets forged from a node's address that
//! no edge could have sent are dropped and counted while the real traffic keeps flowing.
//!
//! The lab kernel may lack the Geneve driver, so the other Geneve user is a plain UDP socket on
//! each node, a tunnel endpoint in user space that sees every datagram exactly as it arrived.
//! Needs root and an `xlb` binary (`$XLB_BIN`, `target/release/xlb` or `target/debug/xlb`).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use xlb_bench::frame::{self, Frame};
use xlb_bench::lab::*;
use xlb_e2e::*;

/// Datagrams of the foreign stream, each way.
const STREAM_LEN: u32 = 150;

/// A Geneve datagram (RFC 8926) as a CNI sends one between nodes: an Ethernet frame of pod
/// traffic with no option (Antrea, Cilium) or, for every third one, with OVN's option class
/// 0x0102 (OVN-Kubernetes). `i` is in the pod payload so the receiver can tell each one.
fn cni_datagram(i: u32) -> Vec<u8> {
    let pod_frame = Frame::tcp([198, 18, 200, 5], 33000, [198, 18, 201, 7], 443)
        .seq(i)
        .ack(1)
        .payload(format!("pod traffic {i}").as_bytes())
        .build();
    let ovn = i.is_multiple_of(3);
    let opt_words = if ovn { 2 } else { 0 };
    let vni = 5 + i % 2;
    let mut v = vec![opt_words, 0, 0x65, 0x58];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    if ovn {
        v.extend_from_slice(&[0x01, 0x02, 0x80, 0x01, 0x00, 0x01, 0x00, 0x02]);
    }
    v.extend_from_slice(&pod_frame);
    v
}

/// A UDP socket on `port` in `host`'s namespace: the other tunnel endpoint.
fn endpoint(host: &Host, port: u16) -> Result<UdpSocket> {
    let s = host
        .netns()
        .run(|| {
            Ok(UdpSocket::bind(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                port,
            ))?)
        })
        .with_context(|| format!("binding UDP {port} on {}", host.name()))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(s)
}

/// Sends [`STREAM_LEN`] foreign Geneve datagrams from node-c to node-d and as many back, on
/// UDP `port`, while both run xlb with that tunnel port; checks every one arrives byte for
/// byte, and that both nodes counted them as foreign and dropped nothing of the tunnel's.
fn foreign_stream(t: &Dsr<'_, '_>, port: u16) -> Result<()> {
    let (c, d) = (t.lab.host("node-c"), t.lab.host("node-d"));
    let (sc, sd) = (endpoint(c, port)?, endpoint(d, port)?);
    let foreign = |n: &str| t.xlb.node(n).counter("pass_tunnel_foreign");
    let dropped = |n: &str| -> Result<u64> {
        let p = t.xlb.node(n);
        Ok(p.counter("drop_tunnel_malformed")?
            + p.counter("drop_tunnel_unknown_node")?
            + p.counter("drop_tunnel_not_backend")?
            + p.counter("drop_tunnel_flow_conflict")?)
    };
    let before = [
        (foreign("node-c")?, dropped("node-c")?),
        (foreign("node-d")?, dropped("node-d")?),
    ];
    let sent: Vec<Vec<u8>> = (0..STREAM_LEN).map(cni_datagram).collect();
    for (i, dgram) in sent.iter().enumerate() {
        sc.send_to(dgram, SocketAddrV4::new(t.lab.node_addr("node-d"), port))?;
        sd.send_to(dgram, SocketAddrV4::new(t.lab.node_addr("node-c"), port))?;
        if i % 25 == 24 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    let want: BTreeSet<Vec<u8>> = sent.into_iter().collect();
    for (rx, name, from) in [(&sd, "node-d", "node-c"), (&sc, "node-c", "node-d")] {
        let mut got = BTreeSet::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < want.len() && Instant::now() < deadline {
            match rx.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    ensure!(
                        peer.ip() == std::net::IpAddr::V4(t.lab.node_addr(from)),
                        "{name} got a datagram from {peer}"
                    );
                    got.insert(buf[..n].to_vec());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e.into()),
            }
        }
        ensure!(
            got.len() == want.len(),
            "{name} received {} of {} foreign Geneve datagrams on UDP {port} from {from}",
            got.len(),
            want.len()
        );
        ensure!(
            got == want,
            "{name} received altered datagrams on UDP {port}"
        );
    }
    for (i, n) in ["node-c", "node-d"].into_iter().enumerate() {
        let (f0, d0) = before[i];
        let f = foreign(n)? - f0;
        ensure!(
            f >= STREAM_LEN as u64,
            "{n} counted {f} pass_tunnel_foreign for {STREAM_LEN} datagrams"
        );
        ensure!(dropped(n)? == d0, "{n} dropped tunnel packets");
    }
    Ok(())
}

/// Connections through the VIP to pods on node-c and node-d keep being tunnelled and answered.
fn dsr_works(t: &Dsr<'_, '_>) -> Result<()> {
    let decap =
        || -> Result<u64> { Ok(sum_over(&t.xlb.counters("decap")?, &["node-c", "node-d"])) };
    let d0 = decap()?;
    let report = tcp_many(t.client(), t.vip_dst(), 20, IO_TIMEOUT);
    ensure!(
        report.failures.is_empty(),
        "connections to the VIP failed: {:?}",
        report.failures
    );
    ensure!(
        report.per_pod().len() == 3,
        "connections reached only {:?}",
        report.per_pod()
    );
    ensure!(decap()? > d0, "no tunnel packet was decapsulated");
    Ok(())
}

/// A CNI-style Geneve stream between node-c and node-d on UDP 6081, the port xlb tunnels on by
/// default, arrives intact; xlb's own tunnel keeps working.
#[test]
fn foreign_geneve_between_nodes_arrives_intact_on_the_default_port() {
    with_dsr_lab(|t| {
        foreign_stream(t, 6081)?;
        dsr_works(t)
    });
}

/// The same with `--tunnel-port 6091` on every node and the foreign stream on 6091 too.
#[test]
fn foreign_geneve_between_nodes_arrives_intact_on_a_configured_port() {
    with_dsr_lab_args(
        LabSpec::dsr(),
        ServiceDef::web,
        &["--tunnel-port", "6091"],
        |t| {
            foreign_stream(t, 6091)?;
            dsr_works(t)
        },
    );
}

/// Waits until `read` reaches `want`, for up to 3 s.
fn wait_counter(what: &str, want: u64, read: impl Fn() -> Result<u64>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while read()? < want {
        ensure!(
            Instant::now() < deadline,
            "{what} stayed at {} (want {want})",
            read()?
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Tunnel packets sent from edge-a (a node: its source address passes) that no edge could have
/// sent: to c1's port 8080 naming a frontend with the wrong protocol or one that does not
/// exist, or to a pod on another node. node-c drops and counts each, c1 sees none; then a
/// forged packet that would give a live UDP flow's replies another frontend is dropped and the
/// flow's answers keep coming from the VIP; and connections through the VIP keep working.
#[test]
fn forged_tunnel_packets_from_a_node_are_dropped_while_dsr_keeps_working() {
    with_dsr_lab(|t| {
        let predictor = t.wait_programmed("udp", &t.web.ready_addrs())?.maglev()?;
        let node_c = SocketAddrV4::new(t.lab.node_addr("node-c"), 6081);
        let (c1, d1) = (t.pod_addr("c1"), t.pod_addr("d1"));
        let edge_a = t.lab.host("edge-a");
        let sock = edge_a.netns().run(|| {
            Ok(UdpSocket::bind(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                0,
            ))?)
        })?;
        let forge = |sport: u16, pod: Ipv4Addr, fe: (Ipv4Addr, u16, u8)| -> Result<()> {
            let inner = Frame::udp(t.client_addr(), sport, pod, POD_PORT)
                .payload(b"forged\n")
                .ip_packet();
            sock.send_to(&frame::geneve(fe.0, fe.1, fe.2, &inner), node_c)?;
            Ok(())
        };
        let not_backend = || t.xlb.node("node-c").counter("drop_tunnel_not_backend");
        let n0 = not_backend()?;
        let forged_ports: Vec<u16> = (0..3).map(|_| t.client().alloc_port()).collect();
        forge(forged_ports[0], c1, (t.vip(), WEB_PORT, 6))?;
        forge(forged_ports[1], c1, (t.vip(), WEB_PORT + 1, 17))?;
        forge(forged_ports[2], d1, (t.vip(), WEB_PORT, 17))?;
        wait_counter("node-c's drop_tunnel_not_backend", n0 + 3, not_backend)?;

        // A live UDP flow to c1 through the VIP, then a forged packet of the same flow naming
        // edge-a's NodePort (a real frontend of c1's port): its replies must keep the VIP.
        let vip = t.vip_dst();
        let port = t.ports_where(1, |p| {
            Ok(t.predict(&predictor, p, vip).as_deref() == Some("c1"))
        })?[0];
        let r = udp_request(t.client(), vip, Some(port), IO_TIMEOUT)?;
        ensure!(
            r.pod == "c1" && r.from == vip,
            "{} answered from {}",
            r.pod,
            r.from
        );
        let conflict = || t.xlb.node("node-c").counter("drop_tunnel_flow_conflict");
        let k0 = conflict()?;
        forge(port, c1, (t.lab.node_addr("edge-a"), WEB_NODE_PORT, 17))?;
        wait_counter("node-c's drop_tunnel_flow_conflict", k0 + 1, conflict)?;
        let r = udp_request(t.client(), vip, Some(port), IO_TIMEOUT)?;
        ensure!(
            r.pod == "c1" && r.from == vip,
            "after the forged packet, {} answered from {}",
            r.pod,
            r.from
        );

        // c1 saw the genuine flow only; d1 nothing forged.
        for pod in ["c1", "d1"] {
            let forged: Vec<_> = t
                .servers
                .pod(pod)
                .stats
                .peers()
                .into_iter()
                .filter(|(proto, a)| *proto == Proto::Udp && forged_ports.contains(&a.port()))
                .collect();
            ensure!(forged.is_empty(), "{pod} got forged datagrams: {forged:?}");
        }
        dsr_works(t)
    });
}
