//! End-to-end, single node: the real `xlb` binary on `node-a`'s uplink, real TCP and UDP from
//! the client namespace to the LoadBalancer VIP and the NodePort, answered by pod servers.
//! Each test builds its own lab (unique namespace names), so they run in parallel; every lab,
//! attachment and pin is removed afterwards, also when a test fails.
//!
//! Needs root and an `xlb` binary (`$XLB_BIN`, `target/release/xlb` or `target/debug/xlb`).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use xlb_bench::lab::*;
use xlb_e2e::*;

/// (a) Connections to the VIP and to the NodePort all complete, land on the pod Maglev
/// predicts for their source port, and the pods see the real client address.
#[test]
fn tcp_to_vip_and_nodeport_lands_on_predicted_pods() {
    with_local_lab(|t| {
        let status = t.wait_programmed("http", &t.web.ready_addrs())?;
        let predictor = status.maglev()?;
        let client = t.lab.client();
        let mut total: BTreeMap<String, usize> = BTreeMap::new();
        for dst in [
            SocketAddrV4::new(t.vip(), WEB_PORT),
            SocketAddrV4::new(t.node_addr(), WEB_NODE_PORT),
        ] {
            let report = tcp_many(client, dst, 60, IO_TIMEOUT);
            ensure!(
                report.failures.is_empty(),
                "connections to {dst} failed: {:?}",
                report.failures
            );
            ensure!(report.conns.len() == 60);
            for c in &report.conns {
                ensure!(
                    c.seen == SocketAddrV4::new(t.client_addr(), c.src_port),
                    "{} saw client {} for a connection from source port {} to {dst}",
                    c.pod,
                    c.seen,
                    c.src_port
                );
                let want = predictor.backend(t.client_addr(), c.src_port, *dst.ip(), dst.port());
                let want = want.and_then(|a| t.lab.pod_name(a));
                ensure!(
                    want == Some(c.pod.as_str()),
                    "source port {} to {dst}: landed on {}, Maglev predicts {want:?}",
                    c.src_port,
                    c.pod
                );
            }
            let per_pod = report.per_pod();
            ensure!(
                per_pod.len() == 3,
                "connections to {dst} reached only {per_pod:?}"
            );
            for (pod, n) in per_pod {
                *total.entry(pod).or_default() += n;
            }
        }
        // The pods agree: each saw exactly the connections we counted, all from the client.
        let counts = t.servers.tcp_counts();
        for (pod, n) in &total {
            ensure!(
                counts[pod] == *n as u64,
                "{pod} accepted {} connections, we made {n}",
                counts[pod]
            );
        }
        for s in t.servers.servers() {
            ensure!(
                s.stats
                    .peers()
                    .iter()
                    .all(|(_, a)| *a.ip() == t.client_addr()),
                "{} saw {:?}",
                s.pod,
                s.stats.peers()
            );
        }
        // xlb's own accounting saw the traffic on both frontends.
        let status = t.wait_programmed("http", &t.web.ready_addrs())?;
        for (addr, port) in t.frontends() {
            let fe = status.frontend(addr, port).expect("frontend present");
            ensure!(
                fe.packets >= 60,
                "frontend {addr:?}:{port} counted {} packets",
                fe.packets
            );
        }
        let forwarded = t.xlb.counter("forward_local")?;
        ensure!(
            forwarded >= 240,
            "forward_local = {forwarded}, expected at least 2 packets x 120 connections"
        );
        // Into ordinary pods past the kernel's stack: all but the packets that came before the
        // node had resolved a pod's neighbour entry (the first few per pod; at most 5%).
        for (_, p) in t.lab.spec().pods() {
            ensure_ordinary_pod(t.lab.host(&p.name))?;
        }
        let fast = t.xlb.counter("deliver_pod")?;
        let fallback: u64 = [
            "deliver_kernel_no_route",
            "deliver_kernel_no_neigh",
            "deliver_kernel_not_pod",
            "deliver_kernel_other",
        ]
        .iter()
        .map(|c| t.xlb.counter(c))
        .sum::<Result<u64>>()?;
        ensure!(
            fast + fallback == forwarded && fallback <= (forwarded / 20).max(9),
            "of {forwarded} local forwards, {fast} went straight into the pod and {fallback} \
             through the kernel"
        );
        Ok(())
    });
}

/// (b) A pod removed from the manifest gets no new connections, while a connection already
/// open to it keeps working after the reload.
#[test]
fn removed_pod_keeps_open_connection_but_gets_no_new_ones() {
    with_local_lab(|t| {
        let client = t.lab.client();
        let (vip, pod2) = (t.vip(), t.pod_addr("pod-2"));
        let before = t.wait_programmed("http", &t.web.ready_addrs())?.maglev()?;
        let ports: Vec<u16> = (0..500).map(|_| client.alloc_port()).collect();
        let Some(port) = before.port_for(pod2, t.client_addr(), vip, WEB_PORT, ports) else {
            bail!("no source port among 500 maps to pod-2");
        };
        let mut conn = connect_tcp(
            client,
            SocketAddrV4::new(vip, WEB_PORT),
            Some(port),
            IO_TIMEOUT,
        )?;
        ensure!(
            conn.pod == "pod-2",
            "steered connection landed on {}",
            conn.pod
        );
        ensure!(conn.exchange("before reload")? == "before reload");
        let flows = t.xlb.conntrack()?;
        ensure!(
            flows
                .iter()
                .any(|f| f.client_port == port && f.backend == Some(pod2) && f.frontend == vip),
            "conntrack has no flow {}:{port} -> {vip}:80 -> {pod2}: {flows:?}",
            t.client_addr()
        );

        // Remove pod-2 and wait until xlb has reloaded.
        let without = t.web.clone().without_pod("pod-2");
        t.manifests.write(&ManifestSet {
            services: vec![without.clone()],
            nodes: ManifestSet::nodes_of(t.lab.spec()),
        })?;
        let after = t.wait_programmed("http", &without.ready_addrs())?;
        let after = after.maglev()?;

        // The open connection still reaches pod-2.
        for i in 0..5 {
            let line = format!("after reload {i}");
            ensure!(
                conn.exchange(&line)? == line,
                "echo mismatch on the long-lived connection"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        // New connections avoid pod-2 and land where the new table says.
        for dst in [
            SocketAddrV4::new(vip, WEB_PORT),
            SocketAddrV4::new(t.node_addr(), WEB_NODE_PORT),
        ] {
            let report = tcp_many(client, dst, 30, IO_TIMEOUT);
            ensure!(
                report.failures.is_empty(),
                "connections to {dst} after the reload failed: {:?}",
                report.failures
            );
            for c in &report.conns {
                ensure!(
                    c.pod != "pod-2",
                    "a new connection from port {} to {dst} reached the removed pod-2",
                    c.src_port
                );
                let want = after.backend(t.client_addr(), c.src_port, *dst.ip(), dst.port());
                ensure!(
                    want.and_then(|a| t.lab.pod_name(a)) == Some(c.pod.as_str()),
                    "port {} to {dst}: landed on {}, Maglev predicts {want:?}",
                    c.src_port,
                    c.pod
                );
            }
            ensure!(report.per_pod().len() == 2, "{:?}", report.per_pod());
        }
        ensure!(
            t.servers.pod("pod-2").stats.tcp_connections() == 1,
            "pod-2 got new connections"
        );
        ensure!(conn.exchange("still here")? == "still here");
        ensure!(t.servers.pod("pod-2").stats.open_connections() == 1);
        drop(conn);
        Ok(())
    });
}

/// (c) UDP request/response through the VIP and the NodePort: the reply comes back from the
/// frontend address, the pod sees the real client, and the pod is the predicted one.
#[test]
fn udp_request_response_through_vip_and_nodeport() {
    with_local_lab(|t| {
        let predictor = t.wait_programmed("udp", &t.web.ready_addrs())?.maglev()?;
        let client = t.lab.client();
        let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
        for dst in [
            SocketAddrV4::new(t.vip(), WEB_PORT),
            SocketAddrV4::new(t.node_addr(), WEB_NODE_PORT),
        ] {
            for _ in 0..20 {
                let port = client.alloc_port();
                let r = udp_request(client, dst, Some(port), IO_TIMEOUT)?;
                ensure!(
                    r.from == dst,
                    "reply to {dst} came from {} (reply path not rewritten?)",
                    r.from
                );
                ensure!(
                    r.seen == SocketAddrV4::new(t.client_addr(), port),
                    "{} saw {}",
                    r.pod,
                    r.seen
                );
                let want = predictor.backend(t.client_addr(), port, *dst.ip(), dst.port());
                ensure!(
                    want.and_then(|a| t.lab.pod_name(a)) == Some(r.pod.as_str()),
                    "UDP from port {port} to {dst}: answered by {}, Maglev predicts {want:?}",
                    r.pod
                );
                *per_pod.entry(r.pod).or_default() += 1;
            }
        }
        ensure!(per_pod.len() == 3, "UDP reached only {per_pod:?}");
        ensure!(t.servers.udp_counts().values().sum::<u64>() == 40);
        Ok(())
    });
}

/// (d) `xlb run` on an interface that does not exist exits non-zero with one clear line, and
/// leaves nothing pinned.
#[test]
fn run_with_unknown_interface_fails_with_one_line() {
    let lab = Lab::single_node().expect("lab");
    let node = lab.host("node-a");
    let manifests = lab
        .write_manifests(&ManifestSet::web(lab.spec()))
        .expect("manifests");
    let dir = manifests.path().to_str().unwrap().to_string();
    let iface = "xlb-nosuch0";
    let out = xlb_cli(
        node,
        &[
            "run",
            "--iface",
            iface,
            "--node-name",
            "node-a",
            "--manifests",
            &dir,
        ],
    )
    .expect("running xlb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pins = default_pin_dir(node);
    let pinned = pins.exists();
    if pinned {
        // Clean up before failing, so the assertion below leaves nothing behind.
        let _ = xlb_cli(node, &["down", "--iface", iface]);
        let _ = std::fs::remove_dir_all(&pins);
    }
    assert!(
        !out.status.success(),
        "xlb run on a missing interface succeeded; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got: {stderr:?}"
    );
    assert!(
        lines[0].contains(iface),
        "the error does not name the interface: {stderr:?}"
    );
    assert!(
        !pinned,
        "xlb run left pins in {} after failing",
        pins.display()
    );
}

/// The datapath outlives the `xlb run` process (it stays attached and keeps forwarding until
/// `xlb down`), and `xlb down` removes the attachment and the pins.
#[test]
fn datapath_survives_process_exit_until_down() {
    with_local_lab(|t| {
        let node = t.lab.host("node-a");
        let xdp_attached = || xdp_attached(node, UPLINK);
        ensure!(xdp_attached()?, "no XDP program on {UPLINK} while xlb runs");
        let status = t.xlb.stop()?;
        ensure!(status.success(), "xlb run exited with {status} on SIGTERM");
        ensure!(
            xdp_attached()?,
            "the XDP program went away with the process"
        );
        let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
        let report = tcp_many(t.lab.client(), vip, 10, IO_TIMEOUT);
        ensure!(
            report.failures.is_empty(),
            "after xlb exited: {:?}",
            report.failures
        );
        ensure!(report.conns.iter().all(|c| *c.seen.ip() == t.client_addr()));
        ensure!(
            default_pin_dir(node).exists(),
            "no pins in {}",
            default_pin_dir(node).display()
        );

        t.xlb.down()?;
        ensure!(!xdp_attached()?, "xlb down left the XDP program attached");
        ensure!(
            !default_pin_dir(node).exists(),
            "xlb down left pins in {}",
            default_pin_dir(node).display()
        );
        // Without the datapath nothing answers on the VIP (the node has no route for it).
        ensure!(connect_tcp(t.lab.client(), vip, None, Duration::from_millis(500)).is_err());
        Ok(())
    });
}

/// A restarted `xlb run` adopts the pinned datapath: open connections keep their backend and
/// conntrack survives, new connections are balanced as before.
#[test]
fn restart_adopts_datapath_and_keeps_connections() {
    with_local_lab(|t| {
        let client = t.lab.client();
        let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
        let mut conn = connect_tcp(client, vip, None, IO_TIMEOUT)?;
        ensure!(conn.exchange("before restart")? == "before restart");
        let port = conn.local.port();

        let status = t.xlb.stop()?;
        ensure!(status.success(), "xlb run exited with {status} on SIGTERM");
        t.xlb.keep_datapath();
        // Without `xlb run` nobody counts connections: `xlb services` says so, rather than
        // print 0 or walk the table itself.
        let out = t.xlb.cli(&["services"])?;
        ensure!(out.contains("NOT COUNTED"), "{out}");
        let doc: ServicesOutput = serde_json::from_str(&t.xlb.cli(&["services", "-o", "json"])?)?;
        ensure!(
            doc.census.as_ref().is_some_and(|c| c.state == "no-daemon"),
            "{:?}",
            doc.census
        );
        let restarted = unix_now();
        let mut again = XlbProcess::start(t.lab, &xlb_options(t.manifests))?;
        let key = t.web.port_key("http");
        let fe = t.frontends();
        let svc = again.wait_for_service(&key, &fe, &t.web.ready_addrs(), PROGRAM_TIMEOUT)?;
        ensure!(
            xdp_attached(t.lab.host("node-a"), UPLINK)?,
            "no XDP program after the restart"
        );

        let flows = again.conntrack()?;
        ensure!(
            flows
                .iter()
                .any(|f| f.client_port == port && f.frontend == t.vip()),
            "the flow from port {port} is gone from conntrack after the restart: {flows:?}"
        );
        // The new run's census counts the adopted connection.
        let doc = again.services_counted_after(restarted, Duration::from_secs(20))?;
        let counted = doc.service(&key).map_or(0, |s| s.connections);
        ensure!(
            counted >= 1,
            "the census counts {counted} connections, 1 is open"
        );
        for i in 0..3 {
            let line = format!("after restart {i}");
            ensure!(conn.exchange(&line)? == line);
        }
        let predictor = svc.maglev()?;
        let report = tcp_many(client, vip, 20, IO_TIMEOUT);
        ensure!(
            report.failures.is_empty(),
            "after the restart: {:?}",
            report.failures
        );
        for c in &report.conns {
            let want = predictor.backend(t.client_addr(), c.src_port, t.vip(), WEB_PORT);
            ensure!(want.and_then(|a| t.lab.pod_name(a)) == Some(c.pod.as_str()));
        }
        drop(conn);
        drop(again); // stops it and runs `xlb down`
        ensure!(
            !xdp_attached(t.lab.host("node-a"), UPLINK)?,
            "xlb down after the restart left XDP attached"
        );
        Ok(())
    });
}

/// Removes a pin directory (unpinning detaches whatever links it held) when dropped.
struct PinDirGuard(PathBuf);

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `xlb run` must not adopt a pinned link whose interface is gone (its namespace was deleted
/// without `xlb down`, e.g. a killed test run): it must attach to the interface it was given.
/// (Default pin directories are keyed by the namespace cookie, which is never reused, so only
/// an explicit `--pin-dir` shared by two namespaces can meet a stale link; the test uses one.)
#[test]
fn stale_pinned_link_of_deleted_namespace_is_not_adopted() {
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xlb-e2e-stale-{}", std::process::id()));
    let _guard = PinDirGuard(pin_dir.clone());
    {
        let lab = Lab::single_node().expect("lab");
        let manifests = lab
            .write_manifests(&ManifestSet::web(lab.spec()))
            .expect("manifests");
        let mut opts = xlb_options(&manifests);
        opts.pin_dir = Some(pin_dir.clone());
        let mut xlb = XlbProcess::start(&lab, &opts).expect("xlb");
        let web = ServiceDef::web(lab.spec());
        xlb.wait_for_service(
            &web.port_key("http"),
            &[],
            &web.ready_addrs(),
            PROGRAM_TIMEOUT,
        )
        .expect("first xlb programmed");
        xlb.stop().expect("stop");
        xlb.keep_datapath(); // as if the test had been killed
    } // the lab's namespaces are deleted here; the pins stay
    let lab = Lab::single_node().expect("lab");
    let _servers = PodServers::start(&lab, POD_PORT).expect("servers");
    let manifests = lab
        .write_manifests(&ManifestSet::web(lab.spec()))
        .expect("manifests");
    let mut opts = xlb_options(&manifests);
    opts.pin_dir = Some(pin_dir.clone());
    let mut xlb = XlbProcess::start(&lab, &opts).expect("xlb");
    let web = ServiceDef::web(lab.spec());
    xlb.wait_for_service(
        &web.port_key("http"),
        &[],
        &web.ready_addrs(),
        PROGRAM_TIMEOUT,
    )
    .expect("second xlb programmed");
    let node = lab.host("node-a");
    // The names published by the first run are still there, so `wait_for_service` may return
    // before the second run has attached: give it a bounded moment.
    let deadline = std::time::Instant::now() + PROGRAM_TIMEOUT;
    while !xdp_attached(node, UPLINK).unwrap() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        xdp_attached(node, UPLINK).unwrap(),
        "xlb run adopted the stale link and left {UPLINK} without XDP; log:\n{}",
        xlb.log_tail(2000)
    );
    let report = tcp_many(
        lab.client(),
        SocketAddrV4::new(DEFAULT_VIP, WEB_PORT),
        5,
        IO_TIMEOUT,
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

/// `--iface` given twice attaches to both interfaces; a NodePort answers on the address of the
/// second one too (node addresses include every `--iface` address); `xlb down` of one
/// interface detaches only that one and keeps the datapath and its pins for the other.
#[test]
fn two_interfaces_nodeport_on_the_second_address_and_down_of_one() {
    // The node's first pod link: its address, the pod gateway, is not the Node's InternalIP.
    let second = "lxc0";
    with_local_lab_options(
        |o| o.ifaces = vec![UPLINK.into(), second.into()],
        |t| {
            let node = t.lab.host("node-a");
            for iface in [UPLINK, second] {
                ensure!(xdp_attached(node, iface)?, "no XDP program on {iface}");
            }
            let gateway = t.lab.spec().nodes[0].pod_gateway;
            ensure!(gateway != t.node_addr());
            // No process listens on the NodePort: only xlb can answer there.
            let np = SocketAddrV4::new(gateway, WEB_NODE_PORT);
            let report = tcp_many(t.lab.client(), np, 20, IO_TIMEOUT);
            ensure!(
                report.failures.is_empty(),
                "connections to the NodePort on {np} failed: {:?}",
                report.failures
            );
            ensure!(
                report
                    .conns
                    .iter()
                    .all(|c| c.seen == SocketAddrV4::new(t.client_addr(), c.src_port)),
                "a pod did not see the client's address"
            );
            let status = t.wait_programmed("http", &t.web.ready_addrs())?;
            let fe = status
                .frontend(None, WEB_NODE_PORT)
                .expect("NodePort frontend");
            // SYN, ACK and request of each connection at least.
            ensure!(
                fe.packets >= 60,
                "the NodePort frontend counted {} packets",
                fe.packets
            );

            let status = t.xlb.stop()?;
            ensure!(status.success(), "xlb run exited with {status} on SIGTERM");
            let out = xlb_cli(node, &["down", "--iface", second])?;
            ensure!(
                out.status.success(),
                "xlb down --iface {second}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(!xdp_attached(node, second)?, "{second} still attached");
            ensure!(xdp_attached(node, UPLINK)?, "{UPLINK} was detached too");
            ensure!(
                default_pin_dir(node).exists(),
                "the pins went with the first of two interfaces"
            );
            let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
            let report = tcp_many(t.lab.client(), vip, 10, IO_TIMEOUT);
            ensure!(
                report.failures.is_empty(),
                "the VIP after down of {second}: {:?}",
                report.failures
            );

            t.xlb.down()?;
            ensure!(!xdp_attached(node, UPLINK)?, "{UPLINK} still attached");
            ensure!(
                !default_pin_dir(node).exists(),
                "pins left after down of the last interface"
            );
            Ok(())
        },
    );
}
