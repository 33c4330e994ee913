//! End-to-end, several nodes, direct server return (issue 3): the real `xlb` binary on every
//! node of the DSR lab ([`Lab::dsr`]): the client reaches the VIP over an ECMP route via
//! `edge-a` and `edge-b` (L4 hash), or the NodePort on either edge; the edges encapsulate every
//! flow in Geneve to the node of the pod Maglev picks (`node-c`: `c1`, `c2`; `node-d`: `d1`),
//! which decapsulates it, hands it to the pod, and sends the pod's reply, its source rewritten
//! to the frontend, straight back to the client. Nobody routes the pod subnets: a pod is
//! reachable only through xlb's tunnel.
//!
//! Each test builds its own lab (unique namespace names), so they run in parallel; every lab,
//! attachment and pin is removed afterwards, also when a test fails. Needs root and an `xlb`
//! binary (`$XLB_BIN`, `target/release/xlb` or `target/debug/xlb`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use xlb_bench::frame::{self, Frame};
use xlb_bench::lab::client::parse_greeting;
use xlb_bench::lab::*;
use xlb_e2e::*;

/// Overhead of xlb's encapsulation: outer IPv4 (20), UDP (8), Geneve (8), frontend option (12).
const ENCAP_OVERHEAD: u32 = 48;
/// MTU of every lab link.
const LINK_MTU: u32 = 1500;

/// `a.b.c.d.port` as tcpdump prints an endpoint.
fn parse_endpoint(s: &str) -> Option<SocketAddrV4> {
    let (ip, port) = s.trim_end_matches(':').rsplit_once('.')?;
    Some(SocketAddrV4::new(ip.parse().ok()?, port.parse().ok()?))
}

/// Every `IP src > dst:` of one line of tcpdump output, outermost first (for a Geneve packet:
/// the outer header, then the inner one).
fn ip_headers(line: &str) -> Vec<(SocketAddrV4, SocketAddrV4)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut found = Vec::new();
    for w in words.windows(4) {
        if w[0] == "IP"
            && w[2] == ">"
            && let (Some(src), Some(dst)) = (parse_endpoint(w[1]), parse_endpoint(w[3]))
        {
            found.push((src, dst));
        }
    }
    found
}

/// Captures of everything on each edge's link, taken at two places: its port on the fabric
/// bridge (sees every frame to and from the edge, also those its XDP program sends straight
/// back out) and its own uplink inside the edge (what its kernel sees).
struct EdgeCaptures<'lab> {
    caps: Vec<(String, &'static str, Capture<'lab>)>,
}

impl<'lab> EdgeCaptures<'lab> {
    fn start(lab: &'lab Lab) -> Result<EdgeCaptures<'lab>> {
        let mut caps = Vec::new();
        for edge in EDGES {
            let port = lab.fabric_port(edge).expect("edges are on the bridge");
            caps.push((
                edge.to_string(),
                "bridge port",
                Capture::start(lab, "fabric", port, "ip")?,
            ));
            caps.push((
                edge.to_string(),
                "uplink",
                Capture::start(lab, edge, UPLINK, "ip")?,
            ));
        }
        Ok(EdgeCaptures { caps })
    }

    /// Fails if any capture holds a reply to or from the edge: a packet from a frontend (the
    /// VIP, or source port 80 or the NodePort) or from a pod, other than the tunnel's own
    /// packets. Also fails if a
    /// bridge-port capture did not see the edge's encapsulated traffic (a capture that sees
    /// nothing proves nothing), and returns the Geneve packets the bridge ports saw, by edge.
    fn check_no_replies(&mut self, t: &Dsr<'_, '_>) -> Result<BTreeMap<String, Vec<String>>> {
        // A marker datagram from the client to each edge, sent after all the traffic, must be
        // in both of its captures: then everything before it is in them too.
        let marker_port = 9;
        let socket = t.client().netns().run(|| {
            Ok(UdpSocket::bind(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                0,
            ))?)
        })?;
        for edge in EDGES {
            socket.send_to(
                b"marker",
                SocketAddrV4::new(t.lab.node_addr(edge), marker_port),
            )?;
        }
        for (edge, _, cap) in &self.caps {
            let addr = t.lab.node_addr(edge);
            cap.wait_for(
                &format!("dst host {addr} and udp dst port {marker_port}"),
                Duration::from_secs(5),
            )?;
        }
        let pods: Vec<String> = t
            .lab
            .spec()
            .nodes
            .iter()
            .filter(|n| !n.pods.is_empty())
            .map(|n| format!("src net {}", n.pod_subnet.network()))
            .collect();
        let replies = format!(
            "ip and not udp port {GENEVE} and (src host {} or src port {WEB_PORT} or src port {WEB_NODE_PORT} or {})",
            t.vip(),
            pods.join(" or ")
        );
        let mut geneve = BTreeMap::new();
        for (edge, at, cap) in &mut self.caps {
            // Frames to or from the edge: a reply passing through it is addressed to its MAC
            // (the next hop) or sent by it. (The bridge may flood a frame to every port before
            // it has learned a MAC; such a frame does not pass through the edge.)
            let mac = t.lab.uplink_mac(edge)?;
            let seen = cap.read(&format!("ether host {mac} and {replies}"), false)?;
            ensure!(
                seen.is_empty(),
                "the capture on {edge}'s {at} ({}) shows {} reply packets passing through the edge, e.g. {:?}",
                cap.path().display(),
                seen.len(),
                &seen[..seen.len().min(5)]
            );
            if *at == "bridge port" {
                let addr = t.lab.node_addr(edge);
                let tunnel =
                    cap.read(&format!("src host {addr} and udp dst port {GENEVE}"), false)?;
                ensure!(
                    !tunnel.is_empty(),
                    "the capture on {edge}'s {at} saw no Geneve packets from {addr}"
                );
                geneve.insert(edge.clone(), tunnel);
            }
        }
        Ok(geneve)
    }
}

const GENEVE: u16 = 6081;

/// Checks what a bridge-port capture shows of an edge's tunnel: tcpdump decodes the packets
/// as Geneve; the outer source is the edge, the outer destination the node of the inner
/// destination pod; the inner packet comes from the client, DNATed to a pod's port 8080.
fn check_geneve(t: &Dsr<'_, '_>, edge: &str, packets: &[String]) -> Result<()> {
    let spec = t.lab.spec();
    for line in packets {
        ensure!(
            line.contains("Geneve"),
            "tcpdump does not decode {edge}'s tunnel packet as Geneve: {line}"
        );
        let hdrs = ip_headers(line);
        let [(outer_src, outer_dst), (inner_src, inner_dst), ..] = hdrs.as_slice() else {
            bail!("no outer and inner IPv4 header in {line:?}");
        };
        ensure!(
            *outer_src.ip() == t.lab.node_addr(edge) && outer_dst.port() == GENEVE,
            "outer header {outer_src} > {outer_dst} of {line:?}"
        );
        let pod = spec
            .pod_by_addr(*inner_dst.ip())
            .with_context(|| format!("inner destination is no pod: {line}"))?;
        let node = spec
            .pods()
            .find(|(_, p)| p.name == pod.name)
            .map(|(n, _)| n)
            .expect("pod has a node");
        ensure!(
            *outer_dst.ip() == node.addr,
            "{edge} sent a packet for {} ({}) to {outer_dst}, not to its node {} ({})",
            pod.name,
            inner_dst,
            node.name,
            node.addr
        );
        ensure!(
            *inner_src.ip() == t.client_addr() && inner_dst.port() == POD_PORT,
            "inner header {inner_src} > {inner_dst} of {line:?}"
        );
    }
    Ok(())
}

/// Acceptance 1: TCP connections to the VIP (over both edges) and to the NodePort of each edge
/// complete on the pod Maglev predicts, the pods see the real client address, the edges'
/// tunnel is Geneve as specified, and captures on the edges show no reply passing through
/// them.
#[test]
fn tcp_via_vip_and_each_edge_nodeport_with_direct_return() {
    with_dsr_lab(|t| {
        for (_, p) in t.lab.spec().pods() {
            ensure_ordinary_pod(t.lab.host(&p.name))?;
        }
        let status = t.wait_programmed("http", &t.web.ready_addrs())?;
        // Every node sees the same backends, on the right nodes, local only where they run.
        for p in t.xlb.nodes() {
            let me = p.host().name();
            let svc = p
                .services()?
                .into_iter()
                .find(|s| s.name == t.web.port_key("http"))
                .context("web:http")?;
            for b in &svc.backends {
                let pod = t
                    .lab
                    .spec()
                    .pod_by_addr(b.addr)
                    .context("backend is a pod")?;
                let (node, _) = t
                    .lab
                    .spec()
                    .pods()
                    .find(|(_, q)| q.name == pod.name)
                    .expect("pod's node");
                ensure!(
                    b.node.as_deref() == Some(node.name.as_str()) && b.local == (node.name == me),
                    "on {me}, backend {} shows node {:?} local {} (runs on {})",
                    b.addr,
                    b.node,
                    b.local,
                    node.name
                );
            }
        }
        let predictor = status.maglev()?;
        let mut caps = EdgeCaptures::start(t.lab)?;
        let client = t.client();
        let mut made: BTreeMap<String, u64> = BTreeMap::new();
        let mut vip_edges = BTreeSet::new();
        for (dst, n) in [
            (t.vip_dst(), 40),
            (t.node_port("edge-a"), 20),
            (t.node_port("edge-b"), 20),
        ] {
            let ports: Vec<u16> = (0..n).map(|_| client.alloc_port()).collect();
            if dst == t.vip_dst() {
                for &p in &ports {
                    vip_edges.insert(t.edge_of(Proto::Tcp, p)?);
                }
            }
            let report = tcp_from_ports(client, dst, &ports, IO_TIMEOUT);
            ensure!(
                report.failures.is_empty(),
                "connections to {dst} failed: {:?}",
                report.failures
            );
            for c in &report.conns {
                ensure!(
                    c.seen == SocketAddrV4::new(t.client_addr(), c.src_port),
                    "{} saw client {} for a connection from port {} to {dst}",
                    c.pod,
                    c.seen,
                    c.src_port
                );
                let want = t.predict(&predictor, c.src_port, dst);
                ensure!(
                    want.as_deref() == Some(c.pod.as_str()),
                    "port {} to {dst}: landed on {}, Maglev predicts {want:?}",
                    c.src_port,
                    c.pod
                );
                *made.entry(c.pod.clone()).or_default() += 1;
            }
            ensure!(
                report.per_pod().len() == 3,
                "connections to {dst} reached only {:?}",
                report.per_pod()
            );
        }
        ensure!(
            vip_edges.len() == 2,
            "40 VIP flows all hashed to {vip_edges:?}"
        );
        // A long-lived connection with data both ways through each way in: short lines, and
        // a 1,000-byte one (one segment each way, well within the tunnel MTU).
        for dst in t.entry_points() {
            let mut c = connect_tcp(client, dst, None, IO_TIMEOUT)?;
            for i in 0..3 {
                let line = format!("line {i} to {dst}");
                ensure!(c.exchange(&line)? == line);
            }
            let long = format!("{dst} {}", "x".repeat(1000));
            ensure!(
                c.exchange(&long)
                    .with_context(|| format!("a 1,000-byte line through {dst}"))?
                    == long
            );
            *made.entry(c.pod.clone()).or_default() += 1;
        }
        let geneve = caps.check_no_replies(t)?;
        for (edge, packets) in &geneve {
            check_geneve(t, edge, packets)?;
        }

        // The pods agree: each saw exactly our connections, all from the client.
        ensure!(
            t.tcp_counts() == made,
            "pods counted {:?}, we made {made:?}",
            t.tcp_counts()
        );
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
        // The datapaths' own accounting: the edges encapsulated and never saw a reply; the
        // backend nodes decapsulated and rewrote the replies.
        let encap = |n: &str| -> Result<u64> {
            let p = t.xlb.node(n);
            Ok(p.counter("forward_encap_tx")?
                + p.counter("forward_encap_redirect")?
                + p.counter("forward_encap_skb")?
                + p.counter("encap_fib_pass")?)
        };
        for edge in EDGES {
            ensure!(encap(edge)? > 0, "{edge} encapsulated nothing");
            let p = t.xlb.node(edge);
            // No static neighbours here: the first packets to a node take the lookup (and the
            // kernel resolves the node's MAC); once `xlb run` has seen the neighbour, the
            // prepared hop. This test's traffic is usually over before the first refresh (about
            // a second after the neighbour appears), so only the accounting is asserted: every
            // encapsulation took exactly one of the two ways.
            let (prepared, looked_up) = (
                p.counter("encap_prepared_hop")?,
                p.counter("encap_hop_fallback")?,
            );
            ensure!(
                prepared + looked_up == encap(edge)?,
                "{edge}: {prepared} prepared + {looked_up} looked up != {} encapsulated",
                encap(edge)?
            );
            ensure!(p.counter("decap")? == 0, "{edge} decapsulated something");
            ensure!(p.counter("reply_rewritten")? == 0, "{edge} rewrote a reply");
            ensure!(p.counter("forward_local")? == 0, "{edge} has no pods");
        }
        for node in ["node-c", "node-d"] {
            let p = t.xlb.node(node);
            ensure!(p.counter("decap")? > 0, "{node} decapsulated nothing");
            // Into ordinary pods past the kernel's stack, but for packets that came before the
            // node had resolved a pod's neighbour entry.
            let (decap, fast) = (p.counter("decap")?, p.counter("deliver_pod")?);
            ensure!(
                fast > 0 && decap.saturating_sub(fast) <= (decap / 20).max(6),
                "{node}: {fast} of {decap} decapsulated packets went straight into the pod"
            );
            ensure!(p.counter("reply_rewritten")? > 0, "{node} rewrote no reply");
            ensure!(encap(node)? == 0, "{node} encapsulated something");
            for bad in ["drop_tunnel_unknown_node", "drop_tunnel_malformed"] {
                ensure!(p.counter(bad)? == 0, "{node}: {bad} = {}", p.counter(bad)?);
            }
        }
        Ok(())
    });
}

/// Acceptance 1, UDP: request/response through the VIP and each edge's NodePort; the answer
/// comes from the address the client sent to, the pods see the real client, nothing comes
/// back through an edge.
#[test]
fn udp_via_vip_and_each_edge_nodeport_with_direct_return() {
    with_dsr_lab(|t| {
        let predictor = t.wait_programmed("udp", &t.web.ready_addrs())?.maglev()?;
        let mut caps = EdgeCaptures::start(t.lab)?;
        let client = t.client();
        let mut per_pod: BTreeMap<String, u64> = BTreeMap::new();
        let mut vip_edges = BTreeSet::new();
        for (dst, n) in [
            (t.vip_dst(), 30),
            (t.node_port("edge-a"), 15),
            (t.node_port("edge-b"), 15),
        ] {
            for _ in 0..n {
                let port = client.alloc_port();
                if dst == t.vip_dst() {
                    vip_edges.insert(t.edge_of(Proto::Udp, port)?);
                }
                let r = udp_request(client, dst, Some(port), IO_TIMEOUT)?;
                ensure!(
                    r.from == dst,
                    "the answer to {dst} came from {} (reply not rewritten?)",
                    r.from
                );
                ensure!(
                    r.seen == SocketAddrV4::new(t.client_addr(), port),
                    "{} saw {}",
                    r.pod,
                    r.seen
                );
                let want = t.predict(&predictor, port, dst);
                ensure!(
                    want.as_deref() == Some(r.pod.as_str()),
                    "UDP from port {port} to {dst}: answered by {}, Maglev predicts {want:?}",
                    r.pod
                );
                *per_pod.entry(r.pod).or_default() += 1;
            }
        }
        ensure!(
            vip_edges.len() == 2,
            "30 VIP flows all hashed to {vip_edges:?}"
        );
        ensure!(per_pod.len() == 3, "UDP reached only {per_pod:?}");
        ensure!(
            t.servers.udp_counts() == per_pod,
            "pods answered {:?}, we got {per_pod:?}",
            t.servers.udp_counts()
        );
        let geneve = caps.check_no_replies(t)?;
        for (edge, packets) in &geneve {
            check_geneve(t, edge, packets)?;
        }
        Ok(())
    });
}

/// Acceptance 2: both edges pick the same pod for the same flow. Long-lived TCP connections
/// whose ECMP path is edge-a keep working, each on its pod, when edge-a's next hop is removed
/// from the client's route mid-stream and their packets arrive at edge-b instead (which has
/// never seen them: no conntrack entry, only the same Maglev table); and again when edge-a
/// comes back.
#[test]
fn ecmp_path_change_mid_stream_keeps_connection_and_pod() {
    with_dsr_lab(|t| {
        let predictor = t.wait_programmed("http", &t.web.ready_addrs())?.maglev()?;
        let vip = t.vip_dst();
        // Source ports whose flows the client's L4 hash sends via edge-a, over all three pods.
        let mut want_pods: BTreeMap<String, usize> = BTreeMap::new();
        let ports = t.ports_where(6, |p| {
            if t.edge_of(Proto::Tcp, p)? != "edge-a" {
                return Ok(false);
            }
            let pod = t.predict(&predictor, p, vip).unwrap_or_default();
            let n = want_pods.entry(pod).or_default();
            *n += 1;
            Ok(*n <= 2)
        })?;
        ensure!(
            ports.len() == 6,
            "found only {} source ports via edge-a",
            ports.len()
        );
        let mut conns = Vec::new();
        for &p in &ports {
            let mut c = connect_tcp(t.client(), vip, Some(p), IO_TIMEOUT)?;
            ensure!(c.exchange("via edge-a")? == "via edge-a");
            conns.push(c);
        }
        let pods: Vec<String> = conns.iter().map(|c| c.pod.clone()).collect();
        let flows = |node: &str| -> Result<BTreeMap<u16, Ipv4Addr>> {
            Ok(t.xlb
                .node(node)
                .conntrack()?
                .into_iter()
                .filter(|f| f.client == t.client_addr() && f.frontend == t.vip())
                .filter_map(|f| Some((f.client_port, f.backend?)))
                .collect())
        };
        let on_a = flows("edge-a")?;
        let on_b = flows("edge-b")?;
        for (c, &p) in conns.iter().zip(&ports) {
            ensure!(
                on_a.get(&p).and_then(|a| t.lab.pod_name(*a)) == Some(c.pod.as_str()),
                "edge-a's conntrack has no flow from port {p} to {}: {on_a:?}",
                c.pod
            );
            ensure!(
                !on_b.contains_key(&p),
                "edge-b already carried port {p}: {on_b:?}"
            );
        }

        // Remove edge-a's next hop: the same flows now arrive at edge-b, mid-stream.
        t.lab.route_vip_via(t.vip(), &["edge-b"])?;
        for round in 0..5 {
            for c in &mut conns {
                let line = format!("via edge-b {round}");
                ensure!(
                    c.exchange(&line)? == line,
                    "the connection from {} lost its pod",
                    c.local
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        let on_b = flows("edge-b")?;
        for (c, &p) in conns.iter().zip(&ports) {
            ensure!(
                on_b.get(&p).and_then(|a| t.lab.pod_name(*a)) == Some(c.pod.as_str()),
                "edge-b did not pick {} for the flow from port {p}: {on_b:?}",
                c.pod
            );
        }
        // And back over both edges.
        t.lab.route_vip_via(t.vip(), &["edge-a", "edge-b"])?;
        for c in &mut conns {
            ensure!(c.exchange("back on ECMP")? == "back on ECMP");
        }
        let after: Vec<String> = conns.iter().map(|c| c.pod.clone()).collect();
        ensure!(after == pods);
        // Each pod saw exactly the connections we made to it: nothing was re-established.
        let mut made: BTreeMap<String, u64> = BTreeMap::new();
        for p in &pods {
            *made.entry(p.clone()).or_default() += 1;
        }
        ensure!(
            t.tcp_counts()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect::<BTreeMap<_, _>>()
                == made,
            "pods accepted {:?}, we made {made:?}",
            t.tcp_counts()
        );
        for c in &conns {
            ensure!(t.servers.pod(&c.pod).stats.open_connections() >= 1);
        }
        Ok(())
    });
}

/// Acceptance 3: scaling `web` from 3 pods to 4 (a spare pod `d2` on node-d) and back moves
/// no established connection (also ones the new table would send elsewhere, and ones on the
/// pod that leaves), while new connections spread over the new set, as Maglev predicts.
#[test]
fn scaling_3_to_4_and_back_moves_no_established_connection() {
    let spec = LabSpec::dsr().with_pod("node-d", "d2").expect("spare pod");
    with_dsr_lab_spec(
        spec,
        |s| ServiceDef::web(s).without_pod("d2"),
        |t| {
            let full = ServiceDef::web(t.lab.spec());
            let three = t.web.clone();
            let before = t.wait_programmed("http", &three.ready_addrs())?;
            let old = before.maglev()?;
            // The table xlb will build with d2 added: same size, d2 ready like the others.
            let mut with_d2 = before.clone();
            let mut d2 = with_d2.backends[0].clone();
            d2.addr = t.pod_addr("d2");
            d2.node = Some("node-d".into());
            with_d2.backends.push(d2);
            let new = with_d2.maglev()?;
            let vip = t.vip_dst();
            let moves = |p: u16| t.predict(&old, p, vip) != t.predict(&new, p, vip);

            // Established before: 6 flows the new table sends elsewhere, 6 it keeps.
            let mut moving = t.ports_where(6, |p| Ok(moves(p)))?;
            ensure!(
                moving.len() == 6,
                "only {} ports move with d2",
                moving.len()
            );
            moving.extend(t.ports_where(6, |p| Ok(!moves(p)))?);
            let mut open = Vec::new();
            for &p in &moving {
                let mut c = connect_tcp(t.client(), vip, Some(p), IO_TIMEOUT)?;
                ensure!(Some(c.pod.clone()) == t.predict(&old, p, vip));
                ensure!(c.exchange("3 pods")? == "3 pods");
                open.push(c);
            }

            // Scale up.
            t.set_web(full.clone())?;
            let up = t.wait_programmed("http", &full.ready_addrs())?;
            let up = up.maglev()?;
            ensure!(
                up.table() == new.table(),
                "xlb's table with d2 differs from the one Maglev predicts"
            );
            for c in &mut open {
                ensure!(c.exchange("4 pods")? == "4 pods", "{} moved", c.local);
            }
            let report = tcp_many(t.client(), vip, 60, IO_TIMEOUT);
            ensure!(
                report.failures.is_empty(),
                "after scaling up: {:?}",
                report.failures
            );
            for c in &report.conns {
                ensure!(Some(c.pod.clone()) == t.predict(&up, c.src_port, vip));
            }
            ensure!(
                report.per_pod().len() == 4,
                "new connections reached only {:?}",
                report.per_pod()
            );
            // Established on 4 pods: some on d2, some the 3-pod table sends elsewhere.
            let three_again = before.maglev()?;
            let mut ports4 =
                t.ports_where(4, |p| Ok(t.predict(&up, p, vip).as_deref() == Some("d2")))?;
            ports4.extend(t.ports_where(4, |p| {
                let now = t.predict(&up, p, vip);
                Ok(now.as_deref() != Some("d2") && now != t.predict(&three_again, p, vip))
            })?);
            ports4.extend(t.ports_where(4, |p| {
                Ok(t.predict(&up, p, vip) == t.predict(&three_again, p, vip))
            })?);
            ensure!(
                ports4.len() >= 8,
                "found only {} ports for the 4-pod flows",
                ports4.len()
            );
            for &p in &ports4 {
                let mut c = connect_tcp(t.client(), vip, Some(p), IO_TIMEOUT)?;
                ensure!(Some(c.pod.clone()) == t.predict(&up, p, vip));
                ensure!(c.exchange("4 pods")? == "4 pods");
                open.push(c);
            }
            ensure!(open.iter().any(|c| c.pod == "d2"));

            // Scale back down.
            t.set_web(three.clone())?;
            let down = t.wait_programmed("http", &three.ready_addrs())?.maglev()?;
            ensure!(
                down.table() == old.table(),
                "back at 3 pods, the table is not the old one"
            );
            for round in 0..3 {
                for c in &mut open {
                    let line = format!("3 pods again {round}");
                    ensure!(c.exchange(&line)? == line, "{} on {} moved", c.local, c.pod);
                }
            }
            let report = tcp_many(t.client(), vip, 60, IO_TIMEOUT);
            ensure!(
                report.failures.is_empty(),
                "after scaling down: {:?}",
                report.failures
            );
            for c in &report.conns {
                ensure!(c.pod != "d2", "a new connection reached d2 after it left");
                ensure!(Some(c.pod.clone()) == t.predict(&down, c.src_port, vip));
            }
            ensure!(report.per_pod().len() == 3, "{:?}", report.per_pod());
            // Nothing was re-established: every open connection is still one the pod counts.
            let open_now: usize = t
                .servers
                .servers()
                .iter()
                .map(|s| s.stats.open_connections())
                .sum();
            ensure!(
                open_now >= open.len(),
                "pods hold {open_now} connections, we hold {}",
                open.len()
            );
            Ok(())
        },
    );
}

/// Acceptance 4: a backend node that goes away (node-d's link down). Until the manifest drops
/// its pods, flows xlb sends there are lost; once it does, new connections (TCP and UDP, via
/// the VIP and both NodePorts) avoid them, and established connections to the other node's
/// pods keep working throughout.
#[test]
fn backend_node_down_new_connections_avoid_its_pods() {
    with_dsr_lab(|t| {
        let predictor = t.wait_programmed("http", &t.web.ready_addrs())?.maglev()?;
        let vip = t.vip_dst();
        let mut open = Vec::new();
        for pod in ["c1", "c2"] {
            for p in t.ports_where(2, |p| {
                Ok(t.predict(&predictor, p, vip).as_deref() == Some(pod))
            })? {
                let mut c = connect_tcp(t.client(), vip, Some(p), IO_TIMEOUT)?;
                ensure!(c.pod == pod);
                ensure!(c.exchange("hello")? == "hello");
                open.push(c);
            }
        }
        ensure!(open.len() == 4);

        t.lab.set_uplink("node-d", false)?;
        // node-d is really gone: a new flow xlb still sends to d1 gets nowhere.
        let to_d1 = t.ports_where(1, |p| {
            Ok(t.predict(&predictor, p, vip).as_deref() == Some("d1"))
        })?;
        ensure!(to_d1.len() == 1);
        ensure!(
            connect_tcp(t.client(), vip, Some(to_d1[0]), Duration::from_millis(700)).is_err(),
            "a connection to d1 completed with node-d's link down"
        );
        for c in &mut open {
            ensure!(c.exchange("node-d down")? == "node-d down");
        }

        // The manifest drops node-d's pod.
        let without = t.web.clone().without_pod("d1");
        t.set_web(without.clone())?;
        let after = t
            .wait_programmed("http", &without.ready_addrs())?
            .maglev()?;
        let udp = t.wait_programmed("udp", &without.ready_addrs())?.maglev()?;
        for dst in t.entry_points() {
            let report = tcp_many(t.client(), dst, 20, IO_TIMEOUT);
            ensure!(
                report.failures.is_empty(),
                "to {dst}: {:?}",
                report.failures
            );
            for c in &report.conns {
                ensure!(c.pod != "d1", "a new connection to {dst} reached d1");
                ensure!(Some(c.pod.clone()) == t.predict(&after, c.src_port, dst));
            }
            ensure!(report.per_pod().len() == 2, "{:?}", report.per_pod());
            for _ in 0..5 {
                let port = t.client().alloc_port();
                let r = udp_request(t.client(), dst, Some(port), IO_TIMEOUT)?;
                ensure!(r.pod != "d1" && r.from == dst);
                ensure!(Some(r.pod.clone()) == t.predict(&udp, port, dst));
            }
        }
        for c in &mut open {
            ensure!(c.exchange("still here")? == "still here");
        }
        Ok(())
    });
}

/// MTU: a packet that would not fit the edge's egress MTU once encapsulated is not sent
/// broken: the client gets an ICMP "fragmentation needed" with MTU 1500 - 48 = 1452, its path
/// MTU for the VIP drops to that, the largest datagram that fits gets through, and a TCP
/// transfer of full-size segments to an edge's NodePort completes (path MTU discovery at
/// work).
#[test]
fn oversized_packets_get_fragmentation_needed_with_the_tunnel_mtu() {
    with_dsr_lab(|t| {
        let fits = LINK_MTU - ENCAP_OVERHEAD;
        let vip = t.vip_dst();
        // UDP with DF: a 1500-byte datagram is refused by the edge with ICMP.
        let port = t.client().alloc_port();
        let sock: UdpSocket = udp_connected_df(t.client(), vip, port, IO_TIMEOUT)?;
        ensure!(path_mtu(&sock)? == LINK_MTU);
        sock.send(&vec![b'x'; (LINK_MTU - 28) as usize])?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while path_mtu(&sock)? != fits {
            ensure!(
                Instant::now() < deadline,
                "the client's path MTU to {vip} stayed {} after a {LINK_MTU}-byte datagram (icmp_too_big: {:?})",
                path_mtu(&sock)?,
                t.xlb.counters("icmp_too_big")?
            );
            thread::sleep(Duration::from_millis(20));
        }
        let _ = sock.take_error(); // the EMSGSIZE the ICMP left on the socket
        ensure!(
            t.servers.udp_counts().values().sum::<u64>() == 0,
            "the oversized datagram reached a pod"
        );
        let too_big = sum_over(&t.xlb.counters("icmp_too_big")?, &EDGES);
        ensure!(too_big >= 1, "no edge counted icmp_too_big");
        // The largest datagram that fits once encapsulated gets through, and is answered.
        sock.send(&vec![b'y'; (fits - 28) as usize])?;
        let mut buf = [0u8; 2048];
        let n = sock
            .recv(&mut buf)
            .context("no answer to a datagram of exactly the tunnel MTU")?;
        let (pod, seen) = parse_greeting(&String::from_utf8_lossy(&buf[..n]))?;
        ensure!(
            seen == SocketAddrV4::new(t.client_addr(), port),
            "{pod} saw {seen}"
        );

        // TCP: 20 KB lines in full-size segments, echoed back, through edge-b's NodePort: a
        // destination the client has no path MTU for yet (the ICMP above lowered it for the
        // VIP, on every next hop of its ECMP route), so edge-b must answer with ICMP too.
        let np = t.node_port("edge-b");
        let before = t.xlb.node("edge-b").counter("icmp_too_big")?;
        let mut c = connect_tcp(t.client(), np, None, IO_TIMEOUT)?;
        ensure!(path_mtu(c.stream())? == LINK_MTU);
        let line: String = "z".repeat(20_000);
        ensure!(c.exchange(&line)? == line, "the 20 KB echo differs");
        ensure!(
            path_mtu(c.stream())? == fits,
            "TCP path MTU to {np} is {}, not {fits}",
            path_mtu(c.stream())?
        );
        ensure!(
            t.xlb.node("edge-b").counter("icmp_too_big")? > before,
            "TCP's full-size segments to {np} caused no ICMP from edge-b"
        );
        ensure!(c.exchange(&line)? == line);
        Ok(())
    });
}

/// Decap accepts tunnel packets only from known nodes: a well-formed Geneve packet sent to
/// node-c's tunnel port from the client (not a node) is dropped and counted, while the same
/// kind of packet sent from edge-a (a node) is decapsulated and reaches the pod.
#[test]
fn tunnel_packets_from_unknown_addresses_are_dropped() {
    with_dsr_lab(|t| {
        let node_c = SocketAddrV4::new(t.lab.node_addr("node-c"), GENEVE);
        let c1 = t.pod_addr("c1");
        // Inner packets client -> c1:8080 UDP, as an edge would have DNATed them; the spoofed
        // and the genuine one differ in their source port, which c1 records.
        let (spoofed_port, genuine_port) = (t.client().alloc_port(), t.client().alloc_port());
        let tunnel_packet = |sport: u16, payload: &[u8]| {
            let inner = Frame::udp(t.client_addr(), sport, c1, POD_PORT)
                .ip_id(1)
                .no_udp_checksum()
                .payload(payload)
                .ip_packet();
            frame::geneve(t.vip(), WEB_PORT, 17, &inner)
        };
        let send_from = |host: &Host, pkt: &[u8]| -> Result<()> {
            let s = host.netns().run(|| {
                Ok(UdpSocket::bind(SocketAddrV4::new(
                    Ipv4Addr::UNSPECIFIED,
                    0,
                ))?)
            })?;
            s.send_to(pkt, node_c)?;
            Ok(())
        };
        let unknown = || t.xlb.node("node-c").counter("drop_tunnel_unknown_node");
        let before = unknown()?;
        let spoofed = tunnel_packet(spoofed_port, b"spoofed\n");
        for _ in 0..3 {
            send_from(t.client(), &spoofed)?;
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while unknown()? < before + 3 {
            ensure!(
                Instant::now() < deadline,
                "node-c counted {} unknown-node tunnel drops for 3 packets from the client",
                unknown()? - before
            );
            thread::sleep(Duration::from_millis(20));
        }

        // A tunnel packet from a node, sent only now, is decapsulated and delivered to c1 the
        // way a spoofed one would have been: once it has arrived, any spoofed datagram that got
        // through has arrived before it.
        let decap = || t.xlb.node("node-c").counter("decap");
        let d0 = decap()?;
        send_from(
            t.lab.host("edge-a"),
            &tunnel_packet(genuine_port, b"genuine\n"),
        )?;
        let c1_udp = || {
            t.servers
                .pod("c1")
                .stats
                .peers()
                .into_iter()
                .filter(|(p, _)| *p == Proto::Udp)
                .collect::<Vec<_>>()
        };
        let genuine = (Proto::Udp, SocketAddrV4::new(t.client_addr(), genuine_port));
        let deadline = Instant::now() + Duration::from_secs(3);
        while !c1_udp().contains(&genuine) {
            ensure!(
                Instant::now() < deadline,
                "c1 got nothing from a tunnel packet sent by edge-a (decap {} -> {})",
                d0,
                decap()?
            );
            thread::sleep(Duration::from_millis(20));
        }
        ensure!(decap()? > d0);
        ensure!(
            c1_udp() == [genuine],
            "c1 saw {:?}: a spoofed datagram got through",
            c1_udp()
        );
        Ok(())
    });
}

/// `--tunnel-port` moves the tunnel: with every node on port 6090, connections through an edge
/// reach pods on other nodes, and the edge's tunnel packets go to 6090, none to 6081.
#[test]
fn tunnel_port_flag_moves_the_tunnel() {
    const PORT: u16 = 6090;
    with_dsr_lab_args(
        LabSpec::dsr(),
        ServiceDef::web,
        &["--tunnel-port", &PORT.to_string()],
        |t| {
            let port = t
                .lab
                .fabric_port("edge-a")
                .expect("edges are on the bridge");
            let mut cap = Capture::start(t.lab, "fabric", port, "udp")?;
            let np = t.node_port("edge-a");
            let report = tcp_many(t.client(), np, 10, IO_TIMEOUT);
            ensure!(
                report.failures.is_empty(),
                "connections to {np} failed: {:?}",
                report.failures
            );
            let from_edge = format!("src host {}", t.lab.node_addr("edge-a"));
            let moved = cap.count(&format!("{from_edge} and udp dst port {PORT}"))?;
            ensure!(moved >= 10, "edge-a sent {moved} packets to port {PORT}");
            let default = cap.count(&format!("{from_edge} and udp dst port {GENEVE}"))?;
            ensure!(
                default == 0,
                "edge-a sent {default} packets to port {GENEVE}"
            );
            let decap = sum_over(&t.xlb.counters("decap")?, &["node-c", "node-d"]);
            ensure!(
                decap >= 10,
                "node-c and node-d decapsulated {decap} packets"
            );
            Ok(())
        },
    );
}
#[test]
fn tcpdump_lines_parse() {
    let line = "08:00:00.000001 IP 198.18.0.2.51234 > 198.18.0.4.6081: Geneve, Flags [none], vni 0x0, proto IPv4 (0x0800), options [12 bytes]: IP 198.18.0.10.20001 > 198.18.3.11.8080: Flags [S], seq 1, win 64240, length 0";
    let h = ip_headers(line);
    assert_eq!(
        h,
        [
            (
                "198.18.0.2:51234".parse().unwrap(),
                "198.18.0.4:6081".parse().unwrap()
            ),
            (
                "198.18.0.10:20001".parse().unwrap(),
                "198.18.3.11:8080".parse().unwrap()
            )
        ]
    );
}
