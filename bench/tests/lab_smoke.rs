//! The lab itself, without xlb: namespaces, links, routes, pod servers and client helpers.
//! Needs root (CI runs as root).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        })
        .collect();
    v.sort();
    v
}

fn assert_gone(names: &[String]) {
    for n in names {
        assert!(
            !Path::new(NETNS_RUN_DIR).join(n).exists(),
            "namespace {n} still exists"
        );
    }
}

#[test]
fn single_node_lab_routes_client_to_pods() {
    let before = root_links();
    let lab = Lab::single_node().expect("lab");
    let names = lab.namespaces();
    assert_eq!(names.len(), 5);
    for n in &names {
        assert!(
            n.starts_with(NAME_PREFIX) && n.starts_with(lab.prefix()),
            "{n}"
        );
        assert!(Path::new(NETNS_RUN_DIR).join(n).exists());
    }
    assert_eq!(
        root_links(),
        before,
        "the lab must not touch the root namespace"
    );

    // Offloads and sysctls as planned: the plain lab keeps the veth defaults.
    let client = lab.client();
    let k = client.netns().exec("ethtool", &["-k", "eth0"]).unwrap();
    assert!(k.contains("tx-checksumming: on"), "{k}");
    let node = lab.host("node-a");
    let fwd = node
        .netns()
        .run(|| Ok(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?))
        .unwrap();
    assert_eq!(fwd.trim(), "1");
    let fwd_client = client
        .netns()
        .run(|| Ok(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?))
        .unwrap();
    assert_eq!(fwd_client.trim(), "0", "sysctls must be per namespace");

    let servers = PodServers::start(&lab, POD_PORT).expect("servers");
    for (i, pod) in ["pod-1", "pod-2", "pod-3"].iter().enumerate() {
        let addr = lab.host(pod).addr();
        assert_eq!(addr, Ipv4Addr::new(198, 18, 1, 11 + i as u8));
        let src = client.alloc_port();
        let mut conn =
            connect_tcp(client, SocketAddrV4::new(addr, POD_PORT), Some(src), T).expect("connect");
        assert_eq!(conn.pod, *pod);
        assert_eq!(conn.seen, SocketAddrV4::new(CLIENT, src));
        assert_eq!(conn.local, SocketAddrV4::new(CLIENT, src));
        for j in 0..3 {
            assert_eq!(
                conn.exchange(&format!("line {j}")).unwrap(),
                format!("line {j}")
            );
        }
        let src = client.alloc_port();
        let r = udp_request(client, SocketAddrV4::new(addr, POD_PORT), Some(src), T).expect("udp");
        assert_eq!(r.pod, *pod);
        assert_eq!(r.seen, SocketAddrV4::new(CLIENT, src));
        assert_eq!(r.from, SocketAddrV4::new(addr, POD_PORT));
    }
    let many = tcp_many(
        client,
        SocketAddrV4::new(lab.host("pod-2").addr(), POD_PORT),
        20,
        T,
    );
    assert!(many.failures.is_empty(), "{:?}", many.failures);
    assert_eq!(many.per_pod().get("pod-2"), Some(&20));
    let ports: std::collections::BTreeSet<u16> = many.conns.iter().map(|c| c.src_port).collect();
    assert_eq!(ports.len(), 20, "distinct source ports");
    assert!(
        many.conns
            .iter()
            .all(|c| c.seen == SocketAddrV4::new(CLIENT, c.src_port))
    );

    let counts = servers.tcp_counts();
    assert_eq!(counts["pod-1"], 1);
    assert_eq!(counts["pod-2"], 21);
    assert_eq!(counts["pod-3"], 1);
    assert_eq!(servers.udp_counts().values().sum::<u64>(), 3);
    assert!(
        servers
            .pod("pod-2")
            .stats
            .peers()
            .iter()
            .all(|(_, a)| *a.ip() == CLIENT)
    );

    // Nothing answers outside the lab range or on unrouted addresses: a bounded failure.
    let err = connect_tcp(
        client,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 7, 7), 80),
        None,
        Duration::from_millis(300),
    );
    assert!(err.is_err());

    drop(servers);
    drop(lab);
    assert_gone(&names);
}

#[test]
fn bridge_lab_with_two_nodes() {
    let node = |name: &str, last: u8, subnet: u8, pods: &[&str]| NodeSpec {
        name: name.into(),
        addr: Ipv4Addr::new(198, 18, 0, last),
        edge: true,
        pod_gateway: Ipv4Addr::new(198, 18, subnet, 1),
        pod_subnet: Cidr::new(Ipv4Addr::new(198, 18, subnet, 0), 24),
        pods: pods
            .iter()
            .enumerate()
            .map(|(i, p)| PodSpec {
                name: (*p).into(),
                addr: Ipv4Addr::new(198, 18, subnet, 11 + i as u8),
            })
            .collect(),
    };
    let spec = LabSpec {
        fabric: Fabric::Bridge,
        subnet: Cidr::new(Ipv4Addr::new(198, 18, 0, 0), 24),
        clients: vec![ClientSpec {
            name: "client".into(),
            addr: CLIENT,
        }],
        nodes: vec![
            node("node-c", 4, 3, &["c1", "c2"]),
            node("node-d", 5, 4, &["d1"]),
        ],
        vips: vec![DEFAULT_VIP],
        ipv6: false,
        pod_routes: true,
        bench_helpers: false,
        fabric_gro: false,
    };
    let lab = Lab::new(spec).expect("lab");
    let names = lab.namespaces();
    assert_eq!(names.len(), 7); // fabric, client, 2 nodes, 3 pods
    let servers = PodServers::start(&lab, POD_PORT).expect("servers");
    for pod in ["c1", "c2", "d1"] {
        let c = connect_tcp(
            lab.client(),
            SocketAddrV4::new(lab.host(pod).addr(), POD_PORT),
            None,
            T,
        )
        .expect(pod);
        assert_eq!(c.pod, pod);
        assert_eq!(*c.seen.ip(), CLIENT);
    }
    // Pod to pod across nodes: c1 -> d1 goes c1 -> node-c -> fabric -> node-d -> d1.
    let c = connect_tcp(
        lab.host("c1"),
        SocketAddrV4::new(lab.host("d1").addr(), POD_PORT),
        None,
        T,
    )
    .expect("c1->d1");
    assert_eq!(c.pod, "d1");
    assert_eq!(*c.seen.ip(), lab.host("c1").addr());
    // The VIP is routed over both edge nodes (ECMP).
    let route = lab
        .client()
        .netns()
        .ip(&["route", "show", "198.19.255.1/32"])
        .unwrap();
    assert!(
        route.contains("nexthop via 198.18.0.4") && route.contains("nexthop via 198.18.0.5"),
        "{route}"
    );
    drop(c);
    drop(servers);
    drop(lab);
    assert_gone(&names);
}

#[test]
fn lab_is_removed_when_a_test_panics() {
    let names = std::sync::Mutex::new((Vec::new(), std::path::PathBuf::new()));
    let r = std::panic::catch_unwind(|| {
        let lab = Lab::single_node().expect("lab");
        *names.lock().unwrap() = (lab.namespaces(), lab.workdir().to_path_buf());
        let _servers = PodServers::start(&lab, POD_PORT).expect("servers");
        panic!("test failure inside a lab");
    });
    assert!(r.is_err());
    let (names, workdir) = names.into_inner().unwrap();
    assert_eq!(names.len(), 5);
    assert_gone(&names);
    // Kept for debugging after a panic; this panic was on purpose.
    assert!(workdir.exists());
    std::fs::remove_dir_all(workdir).unwrap();
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    // A pid above the kernel's pid_max cannot be alive.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let name = format!("{NAME_PREFIX}{}-0-leftover", pid_max + 1);
    let st = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    let removed = xlb_bench::lab::netns::clean_stale();
    assert!(removed.contains(&name), "{removed:?}");
    assert_gone(&[name]);
    // Namespaces of live labs are left alone.
    let lab = Lab::single_node().expect("lab");
    let removed = xlb_bench::lab::netns::clean_stale();
    assert!(removed.iter().all(|r| !r.starts_with(lab.prefix())));
    assert!(Path::new(NETNS_RUN_DIR).join(&lab.namespaces()[0]).exists());
}
