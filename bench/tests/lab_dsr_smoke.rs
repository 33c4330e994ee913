//! The direct-server-return lab ([`Lab::dsr`]) itself, without xlb: namespaces, the fabric
//! bridge, the ECMP route for the VIP with the L4 multipath hash, what the client can and cannot
//! reach, the pods' path back to the client, links going down, captures, and teardown.
//! Needs root (CI runs as root).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use xlb_bench::lab::netns::{NAME_PREFIX, NETNS_RUN_DIR};
use xlb_bench::lab::*;

const T: Duration = Duration::from_secs(3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

fn root_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect();
    v.sort();
    v
}

/// A TCP connection from `from`'s namespace to `dst` (the kernel completes the handshake on a
/// listening socket without an accept).
fn tcp_reach(from: &Host, dst: SocketAddrV4, timeout: Duration) -> Result<TcpStream> {
    from.netns()
        .run(move || Ok(TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout)?))
        .with_context(|| format!("TCP {} -> {dst}", from.name()))
}

fn listen(host: &Host, port: u16) -> TcpListener {
    host.netns()
        .run(move || {
            Ok(TcpListener::bind(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                port,
            ))?)
        })
        .expect("listener")
}

#[test]
fn dsr_lab_topology() {
    let before = root_links();
    let lab = Lab::dsr().expect("lab");
    let names = lab.namespaces();
    assert_eq!(names.len(), 9, "{names:?}"); // fabric, client, 4 nodes, 3 pods
    for n in &names {
        assert!(
            n.starts_with(NAME_PREFIX) && n.starts_with(lab.prefix()),
            "{n}"
        );
    }
    assert_eq!(
        root_links(),
        before,
        "the lab must not touch the root namespace"
    );
    assert_eq!(lab.fabric_port("client"), Some("port0"));
    assert_eq!(lab.fabric_port("edge-a"), Some("port1"));
    assert_eq!(lab.fabric_port("node-d"), Some("port4"));
    assert_eq!(lab.fabric_port("c1"), None);
    assert_eq!(
        lab.node_by_addr(Ipv4Addr::new(198, 18, 0, 4)),
        Some("node-c")
    );
    let client = lab.client();
    assert_eq!(client.addr(), CLIENT);
    // The tests' lab is a plain bridge: no XDP program on any bridge port (the benchmarks'
    // lab, `LabSpec::for_benchmarks`, adds them).
    let fabric = lab.fabric().expect("bridge lab");
    for i in 0..5 {
        let port = format!("port{i}");
        let link = fabric.netns().ip(&["-d", "link", "show", &port]).unwrap();
        assert!(!link.contains("xdp"), "{port}: {link}");
    }
    let uplink = lab
        .host("edge-a")
        .netns()
        .ip(&["link", "show", "eth0"])
        .unwrap();
    assert!(
        !uplink.contains("xdp"),
        "nodes' uplinks are left to xlb: {uplink}"
    );

    // The VIP: one ECMP route over both edges, spread by the L4 hash.
    let route = client
        .netns()
        .ip(&["route", "show", "198.19.255.1/32"])
        .unwrap();
    assert!(
        route.contains("nexthop via 198.18.0.2") && route.contains("nexthop via 198.18.0.3"),
        "{route}"
    );
    let vip = SocketAddrV4::new(DEFAULT_VIP, WEB_PORT);
    let mut by_hop: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for port in 20000..20064 {
        let a = lab.next_hop("client", Proto::Tcp, port, vip).unwrap();
        assert_eq!(
            a,
            lab.next_hop("client", Proto::Tcp, port, vip).unwrap(),
            "stable"
        );
        *by_hop.entry(a).or_default() += 1;
    }
    assert_eq!(
        by_hop.keys().copied().collect::<Vec<_>>(),
        [lab.node_addr("edge-a"), lab.node_addr("edge-b")],
        "64 source ports should use both edges: {by_hop:?}"
    );
    let udp_hops: std::collections::BTreeSet<Ipv4Addr> = (20000..20064)
        .map(|p| lab.next_hop("client", Proto::Udp, p, vip).unwrap())
        .collect();
    assert_eq!(udp_hops.len(), 2, "UDP is spread too");

    // Taking edge-a out of the route moves every flow to edge-b; putting it back restores it.
    lab.route_vip_via(DEFAULT_VIP, &["edge-b"]).unwrap();
    for port in 20000..20016 {
        assert_eq!(
            lab.next_hop("client", Proto::Tcp, port, vip).unwrap(),
            lab.node_addr("edge-b")
        );
    }
    lab.route_vip_via(DEFAULT_VIP, &["edge-a", "edge-b"])
        .unwrap();
    let again: BTreeMap<u16, Ipv4Addr> = (20000..20064)
        .map(|p| (p, lab.next_hop("client", Proto::Tcp, p, vip).unwrap()))
        .collect();
    assert_eq!(
        again
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2
    );

    // The client reaches every node's fabric address ...
    let listeners: Vec<TcpListener> = ["edge-a", "edge-b", "node-c", "node-d"]
        .iter()
        .map(|n| listen(lab.host(n), 7777))
        .collect();
    for n in ["edge-a", "edge-b", "node-c", "node-d"] {
        tcp_reach(client, SocketAddrV4::new(lab.node_addr(n), 7777), T).unwrap();
    }
    // ... but no pod: nobody routes the pod subnets (only xlb gets there).
    let _servers = PodServers::start(&lab, POD_PORT).expect("servers");
    for pod in ["c1", "c2", "d1"] {
        let dst = SocketAddrV4::new(lab.host(pod).addr(), POD_PORT);
        let started = Instant::now();
        assert!(connect_tcp(client, dst, None, Duration::from_millis(500)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        for edge in ["edge-a", "edge-b"] {
            assert!(
                tcp_reach(lab.host(edge), dst, Duration::from_millis(300)).is_err(),
                "{edge} reaches {pod} without a tunnel"
            );
        }
    }
    // Without xlb nothing answers on the VIP.
    assert!(connect_tcp(client, vip, None, Duration::from_millis(500)).is_err());

    // The pods' way back: pod -> its node -> fabric -> client, source the pod's address (one
    // way only: the client has no route back to a pod, so UDP, not TCP).
    let back = client
        .netns()
        .run(|| Ok(UdpSocket::bind(SocketAddrV4::new(CLIENT, 9999))?))
        .unwrap();
    back.set_read_timeout(Some(T)).unwrap();
    for pod in ["c1", "c2", "d1"] {
        let s = lab
            .host(pod)
            .netns()
            .run(|| {
                Ok(UdpSocket::bind(SocketAddrV4::new(
                    Ipv4Addr::UNSPECIFIED,
                    0,
                ))?)
            })
            .unwrap();
        s.send_to(pod.as_bytes(), SocketAddrV4::new(CLIENT, 9999))
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = back.recv_from(&mut buf).expect("datagram from the pod");
        assert_eq!(&buf[..n], pod.as_bytes());
        assert_eq!(from.ip(), std::net::IpAddr::V4(lab.host(pod).addr()));
    }

    // A capture on edge-a's bridge port sees the client's traffic to edge-a.
    let mut cap = Capture::start(
        &lab,
        "fabric",
        lab.fabric_port("edge-a").unwrap(),
        "tcp port 7777",
    )
    .unwrap();
    tcp_reach(client, SocketAddrV4::new(lab.node_addr("edge-a"), 7777), T).unwrap();
    tcp_reach(client, SocketAddrV4::new(lab.node_addr("edge-b"), 7777), T).unwrap();
    thread::sleep(Duration::from_millis(200));
    let syns = cap
        .read("src host 198.18.0.10 and tcp[tcpflags] == tcp-syn", false)
        .unwrap();
    assert_eq!(syns.len(), 1, "{syns:?}");
    assert!(syns[0].contains("198.18.0.10.") && syns[0].contains("> 198.18.0.2.7777"));
    assert_eq!(cap.count("dst host 198.18.0.3").unwrap(), 0);
    assert!(cap.path().exists());

    // A node whose link goes down is unreachable; back up, reachable again.
    lab.set_uplink("node-d", false).unwrap();
    assert!(
        tcp_reach(
            client,
            SocketAddrV4::new(lab.node_addr("node-d"), 7777),
            Duration::from_millis(500)
        )
        .is_err()
    );
    lab.set_uplink("node-d", true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcp_reach(
        client,
        SocketAddrV4::new(lab.node_addr("node-d"), 7777),
        Duration::from_millis(500),
    )
    .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "node-d unreachable after link up"
        );
    }

    drop(cap);
    drop(listeners);
    drop(back);
    drop(_servers);
    drop(lab);
    for n in &names {
        assert!(
            !Path::new(NETNS_RUN_DIR).join(n).exists(),
            "{n} left behind"
        );
    }
    assert_eq!(root_links(), before);
}
