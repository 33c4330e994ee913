//! The Kubernetes source against a fake API server that speaks the real list/watch protocol,
//! driven like a cluster: Services come and go, endpoints turn ready and terminating, watches
//! break, expire (410 Gone) and the server goes away for a while. Each step is checked on the
//! maps the real programs use (loaded with private maps) and with packets run through the XDP
//! program (`BPF_PROG_TEST_RUN`).
//!
//! The loop here is `xlb run`'s: [`KubeConfigSource`] → [`Compiler::update`] →
//! [`Reconciler::apply`]. Needs root (it loads BPF programs).

mod kube_fake;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_fake::objects::*;
use kube_fake::{FakeApiServer, Outage, Res};
use lb_common::maps::Reason;
use xlb::compile::Compiler;
use xlb::compile::plan::{BackendState, DatapathPlan, NodeIdentity};
use xlb::datapath::loader::{self, LoadOptions};
use xlb::datapath::reconcile::{ApplyReport, Reconciler};
use xlb::observe::health::{HealthServer, Readiness};
use xlb::source::cluster::Changes;
use xlb::source::kube::KubeOptions;
use xlb::source::{ConfigSource, KubeConfigSource, Poll};
use xlb_bench::frame::tcp;

const M: u32 = 251;
const VIP: [u8; 4] = [198, 19, 255, 1];
const NODE_ADDR: &str = "198.18.0.2";
const CLIENT: [u8; 4] = [198, 18, 0, 10];
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// How long a change may take to reach the maps before a test fails.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// The fake API server, the watchers, and the datapath they program.
struct Harness {
    server: FakeApiServer,
    runtime: tokio::runtime::Runtime,
    source: KubeConfigSource,
    compiler: Compiler,
    rec: Reconciler,
    ebpf: aya::Ebpf,
    node: NodeIdentity,
    /// Reports of every successful apply, in order.
    reports: Vec<ApplyReport>,
    dir: std::path::PathBuf,
}

impl Harness {
    fn new(name: &str) -> Harness {
        Harness::with_server(name, |_| {})
    }

    /// Like [`Harness::new`], with `setup` run on the server before the watchers start.
    fn with_server(name: &str, setup: impl FnOnce(&FakeApiServer)) -> Harness {
        let server = FakeApiServer::start();
        setup(&server);
        let dir = std::env::temp_dir().join(format!("xlb-kube-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let source = KubeConfigSource::start(
            runtime.handle(),
            &KubeOptions {
                kubeconfig: Some(kubeconfig),
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_millis(400),
                watch_timeout: Duration::from_secs(60),
            },
        )
        .expect("starting the Kubernetes source");
        let loaded = loader::load(&LoadOptions {
            pin_dir: None,
            conntrack_size: 4096,
        })
        .expect("loading the programs (root?)");
        let rec = Reconciler::adopt(loaded.maps).expect("adopt");
        Harness {
            server,
            runtime,
            source,
            compiler: Compiler::new(),
            rec,
            ebpf: loaded.ebpf,
            node: NodeIdentity {
                node_name: "node-a".into(),
                table_size: M,
                extra_local_addrs: vec![],
            },
            reports: Vec::new(),
            dir,
        }
    }

    /// One turn of `xlb run`'s loop: waits up to `timeout` for a change and programs it.
    /// Returns whether something was programmed.
    fn turn(&mut self, timeout: Duration) -> bool {
        match self.source.poll(timeout) {
            Poll::Changed { changes, .. } => {
                self.program(&changes);
                true
            }
            Poll::Unchanged => false,
            Poll::Failed(e) => panic!("the Kubernetes source failed: {e}"),
        }
    }

    fn program(&mut self, changes: &Changes) {
        self.compiler
            .update(self.source.state(), &self.node, changes);
        let plan = self.compiler.plan();
        self.rec
            .check_capacity(plan, self.compiler.last_touched())
            .unwrap();
        // As `xlb run` does: only the touched Service ports' tables are rebuilt.
        let report = self
            .rec
            .apply_changed(plan, self.compiler.last_touched())
            .expect("apply");
        self.reports.push(report);
    }

    fn plan(&self) -> &DatapathPlan {
        self.compiler.plan()
    }

    /// Runs the loop until `done` holds (checked after every turn).
    fn sync_until(&mut self, what: &str, done: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; plan: {:#?}; watchers: {:?}",
                self.plan().services.keys().collect::<Vec<_>>(),
                self.source.watchers().status()
            );
            self.turn(Duration::from_millis(100));
        }
    }

    /// Runs the loop for `period`; returns how many times it programmed.
    fn idle(&mut self, period: Duration) -> usize {
        let deadline = Instant::now() + period;
        let mut programmed = 0;
        while Instant::now() < deadline {
            programmed += usize::from(self.turn(Duration::from_millis(50)));
        }
        programmed
    }

    fn xdp(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = loader::xdp_program(&mut self.ebpf).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("test_run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Sends a TCP segment from CLIENT:sport to VIP:80; returns the verdict and, when
    /// forwarded, the pod address it was rewritten to.
    fn send_to_vip(&mut self, sport: u16, syn: bool) -> (u32, Option<Ipv4Addr>) {
        let (verdict, out) = self.xdp(&tcp(CLIENT, sport, VIP, 80, syn));
        let dst = (verdict == XDP_TX || verdict == XDP_PASS)
            .then(|| Ipv4Addr::new(out[30], out[31], out[32], out[33]))
            .filter(|a| a.octets() != VIP);
        (verdict, dst)
    }

    fn counter(&self, reason: Reason) -> u64 {
        self.rec.maps.global(reason).unwrap()
    }

    /// The state and weight of each backend of `default/web:http/TCP`, by address.
    fn web_backends(&self) -> BTreeMap<Ipv4Addr, (BackendState, u32)> {
        self.plan()
            .services
            .iter()
            .find(|(k, _)| k.to_string() == "default/web:http/TCP")
            .map(|(_, s)| {
                s.backends
                    .iter()
                    .map(|b| (b.addr, (b.state, b.weight)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn programmed_services(&self) -> Vec<String> {
        self.rec
            .snapshot()
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn web() -> Service {
    load_balancer("web", "198.19.255.1", &[tcp_port("http", 80, 8080, 30080)])
}

fn web_slice(endpoints: Vec<k8s_openapi::api::discovery::v1::Endpoint>) -> EndpointSlice {
    slice("web-abc", "web", &[("http", 8080, "TCP")], endpoints)
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A cluster with node-a and web's three pods on it, synced.
fn synced_cluster(name: &str) -> Harness {
    let mut h = Harness::new(name);
    h.server.apply(&node("node-a", NODE_ADDR));
    h.server.apply(&web());
    h.server.apply(&web_slice(vec![
        endpoint("198.18.1.11", "node-a", Cond::Ready),
        endpoint("198.18.1.12", "node-a", Cond::Ready),
        endpoint("198.18.1.13", "node-a", Cond::Ready),
    ]));
    h.sync_until("web with three backends", |h| h.web_backends().len() == 3);
    assert!(h.server.wait_for_watches(SYNC_TIMEOUT), "watches not open");
    h
}

#[test]
fn a_service_is_created_gets_endpoints_drains_one_and_is_deleted() {
    let mut h = Harness::new("lifecycle");
    h.server.apply(&node("node-a", NODE_ADDR));
    // Nothing about web yet: the VIP is not ours.
    h.sync_until("the first sync", |h| h.reports.len() == 1);
    assert_eq!(h.send_to_vip(40000, true).0, XDP_PASS);

    // The Service alone: its frontends are programmed with an empty table (drop, counted).
    h.server.apply(&web());
    h.sync_until("web's frontends", |h| {
        h.programmed_services() == ["default/web:http/TCP"]
    });
    let drops = h.counter(Reason::DropNoBackend);
    assert_eq!(h.send_to_vip(40001, true).0, XDP_DROP);
    assert_eq!(h.counter(Reason::DropNoBackend), drops + 1);

    // Endpoints: two ready pods, one starting (not a backend).
    h.server.apply(&web_slice(vec![
        endpoint("198.18.1.11", "node-a", Cond::Ready),
        endpoint("198.18.1.12", "node-a", Cond::Ready),
        endpoint("198.18.1.13", "node-a", Cond::NotReady),
    ]));
    h.sync_until("two ready backends", |h| h.web_backends().len() == 2);
    let svc = &h.plan().services.values().next().unwrap().clone();
    let mut by_pod: BTreeMap<Ipv4Addr, Vec<u16>> = BTreeMap::new();
    for sport in 41000..41040 {
        let (verdict, pod) = h.send_to_vip(sport, true);
        assert_ne!(verdict, XDP_DROP, "SYN from {sport} dropped");
        let pod = pod.expect("rewritten to a pod");
        // The pod is the one the plan's Maglev table names.
        let hash = lb_common::hash::flow_hash(
            u32::from_be_bytes(CLIENT),
            u32::from_be_bytes(VIP),
            sport,
            80,
            6,
        );
        let table = svc.maglev_table().expect("table");
        let b = table.lookup(hash).expect("a backend");
        assert_eq!(pod, b.ipv4(), "source port {sport}");
        by_pod.entry(pod).or_default().push(sport);
    }
    assert_eq!(by_pod.len(), 2, "{by_pod:?}");

    // 198.18.1.12 starts terminating: it keeps its open flows, gets no new ones.
    let draining = ip("198.18.1.12");
    let open_port = by_pod[&draining][0];
    h.server.apply(&web_slice(vec![
        endpoint("198.18.1.11", "node-a", Cond::Ready),
        endpoint("198.18.1.12", "node-a", Cond::Terminating),
        endpoint("198.18.1.13", "node-a", Cond::Ready),
    ]));
    h.sync_until("one terminating backend", |h| {
        h.web_backends().get(&draining) == Some(&(BackendState::Terminating, 0))
    });
    assert_eq!(h.web_backends().len(), 3);
    assert_eq!(
        h.send_to_vip(open_port, false).1,
        Some(draining),
        "the open flow left its terminating pod"
    );
    for sport in 42000..42060 {
        let pod = h.send_to_vip(sport, true).1.expect("forwarded");
        assert_ne!(
            pod, draining,
            "a new flow from {sport} went to the terminating pod"
        );
    }
    let snapshot = h.rec.snapshot().services[0].clone();
    let state = snapshot
        .backends
        .iter()
        .find(|b| b.addr == draining)
        .unwrap();
    assert_eq!((state.state.as_str(), state.slots), ("terminating", 0));

    // The Service is deleted: its frontends go, the VIP is passed to the kernel again.
    h.server.delete::<Service>("default", "web");
    h.sync_until("web removed", |h| h.programmed_services().is_empty());
    assert_eq!(h.send_to_vip(43000, true).0, XDP_PASS);
    // Its EndpointSlice alone programs nothing.
    assert!(h.plan().services.is_empty());
}

#[test]
fn a_cut_watch_resumes_from_its_version_without_listing_again() {
    let mut h = synced_cluster("resume");
    let lists = [Res::Services, Res::EndpointSlices, Res::Nodes].map(|r| h.server.lists(r));
    let swapped_before: usize = h
        .reports
        .iter()
        .map(|r| r.tables_swapped + r.tables_patched)
        .sum();

    h.server.close_watches();
    // A change made while the watchers reconnect is not lost.
    h.server.apply(&web_slice(vec![
        endpoint("198.18.1.11", "node-a", Cond::Ready),
        endpoint("198.18.1.12", "node-a", Cond::Ready),
    ]));
    h.sync_until("the change after the cut", |h| h.web_backends().len() == 2);
    assert!(h.server.wait_for_watches(SYNC_TIMEOUT));
    let lists_after = [Res::Services, Res::EndpointSlices, Res::Nodes].map(|r| h.server.lists(r));
    assert_eq!(
        lists,
        lists_after,
        "a cut watch relisted: {:?}",
        h.server.requests()
    );
    // Exactly one table changed.
    let swapped: usize = h
        .reports
        .iter()
        .map(|r| r.tables_swapped + r.tables_patched)
        .sum();
    assert_eq!(swapped, swapped_before + 1);
    // Bookmarks are accepted (and change nothing).
    h.server.bookmark();
    assert_eq!(h.idle(Duration::from_millis(300)), 0);
}

#[test]
fn gone_relists_and_rewrites_only_what_changed() {
    let mut h = synced_cluster("gone");
    h.server.apply(&load_balancer(
        "api",
        "198.19.255.2",
        &[tcp_port("http", 80, 9090, 30081)],
    ));
    h.server.apply(&slice(
        "api-abc",
        "api",
        &[("http", 9090, "TCP")],
        vec![endpoint("198.18.1.21", "node-a", Cond::Ready)],
    ));
    h.sync_until("api", |h| h.programmed_services().len() == 2);
    // The Service and its slice may arrive in separate updates: let the rest land before
    // checking that an empty relist programs nothing.
    h.idle(Duration::from_millis(500));
    // An open flow through web, to check that conntrack survives the relist.
    let (_, pod) = h.send_to_vip(44000, true);
    let pod = pod.expect("forwarded");
    let hits = h.counter(Reason::CtHit);

    // 410 Gone with nothing changed: a relist, and nothing to program at all.
    let lists = h.server.lists(Res::Services);
    h.server.expire_watches();
    let deadline = Instant::now() + SYNC_TIMEOUT;
    while h.server.lists(Res::Services) == lists
        || h.source.watchers().status().iter().any(|s| s.lists < 2)
    {
        assert!(Instant::now() < deadline, "no relist after 410");
        assert!(
            !h.turn(Duration::from_millis(50)),
            "programmed after an empty relist"
        );
    }
    assert_eq!(h.idle(Duration::from_millis(300)), 0);

    // 410 after changes the watchers missed: the relist finds them; only api's table is new,
    // and a deletion seen only through the relist (web's slice) is applied.
    h.server.close_watches();
    h.server.set_outage(Outage::Refuse);
    h.server.apply(&slice(
        "api-abc",
        "api",
        &[("http", 9090, "TCP")],
        vec![
            endpoint("198.18.1.21", "node-a", Cond::Ready),
            endpoint("198.18.1.22", "node-a", Cond::Ready),
        ],
    ));
    h.server.compact();
    h.server.set_outage(Outage::None);
    let before = h.reports.len();
    h.sync_until("api's second backend", |h| {
        h.plan()
            .services
            .iter()
            .any(|(k, s)| k.name == "api" && s.backends.len() == 2)
    });
    let after: Vec<&ApplyReport> = h.reports[before..].iter().collect();
    assert_eq!(
        after.iter().map(|r| r.tables_swapped).sum::<usize>(),
        1,
        "{after:?}"
    );
    // The flow opened before all this still reaches its pod, through conntrack.
    assert_eq!(h.send_to_vip(44000, false).1, Some(pod));
    assert_eq!(h.counter(Reason::CtHit), hits + 1);
}

#[test]
fn the_datapath_keeps_serving_while_the_api_is_away() {
    let mut h = synced_cluster("outage");
    // Whatever the first sync still has on its way is applied before the outages begin.
    h.idle(Duration::from_millis(500));
    let before = h.web_backends();
    for (outage, what) in [
        (Outage::Refuse, "connections refused"),
        (Outage::Status(503), "503 answers"),
    ] {
        h.server.set_outage(outage);
        // Open watch streams would still deliver the change below: cut them, so that every
        // reconnect meets the outage.
        h.server.close_watches();
        // The server changes while xlb cannot see it.
        h.server.apply(&web_slice(vec![
            endpoint("198.18.1.11", "node-a", Cond::Ready),
            endpoint("198.18.1.14", "node-a", Cond::Ready),
        ]));
        let start = Instant::now();
        let mut errors_seen = false;
        while start.elapsed() < Duration::from_millis(1500) {
            match h.source.poll(Duration::from_millis(50)) {
                Poll::Unchanged => {}
                Poll::Changed { changes, .. } => panic!(
                    "programmed during {what}: {changes:?}; the server's last requests: {:?}",
                    h.server
                        .requests()
                        .iter()
                        .rev()
                        .take(12)
                        .collect::<Vec<_>>()
                ),
                Poll::Failed(e) => panic!("the Kubernetes source failed: {e}"),
            }
            errors_seen |= h
                .source
                .watchers()
                .status()
                .iter()
                .any(|s| s.error.is_some());
        }
        assert!(errors_seen, "no watcher noticed {what}");
        // Still the old state, still forwarding.
        assert_eq!(h.web_backends(), before);
        let (verdict, pod) = h.send_to_vip(45000, true);
        assert_ne!(verdict, XDP_DROP);
        assert!(before.contains_key(&pod.unwrap()));

        h.server.set_outage(Outage::None);
        h.sync_until(&format!("recovery after {what}"), |h| {
            h.web_backends().contains_key(&ip("198.18.1.14"))
        });
        // The watcher that received something since is no longer in error (the others say
        // so at their next event).
        assert!(h.source.watchers().status()[1].error.is_none());
        // Back to three pods for the next round.
        h.server.apply(&web_slice(vec![
            endpoint("198.18.1.11", "node-a", Cond::Ready),
            endpoint("198.18.1.12", "node-a", Cond::Ready),
            endpoint("198.18.1.13", "node-a", Cond::Ready),
        ]));
        h.sync_until("three pods again", |h| h.web_backends() == before);
    }
}

#[test]
fn nothing_is_programmed_before_every_kind_is_listed() {
    let mut h = Harness::with_server("first-sync", |server| {
        server.hold(Res::Nodes, true);
        server.apply(&node("node-a", NODE_ADDR));
        server.apply(&web());
        server.apply(&web_slice(vec![endpoint(
            "198.18.1.11",
            "node-a",
            Cond::Ready,
        )]));
    });
    assert_eq!(h.idle(Duration::from_millis(1500)), 0);
    assert!(!h.source.watchers().synced());
    assert!(h.rec.snapshot().services.is_empty());
    h.server.hold(Res::Nodes, false);
    h.sync_until("the first full sync", |h| h.web_backends().len() == 1);
    assert_eq!(
        h.reports.len(),
        1,
        "the first sync was programmed in pieces"
    );
    assert!(h.plan().local_addrs.contains(&ip(NODE_ADDR)));
}

#[test]
fn a_burst_of_endpoint_changes_is_coalesced() {
    let mut h = synced_cluster("burst");
    let before = h.reports.len();
    // 200 changes as fast as the server takes them, while the loop is busy elsewhere.
    for i in 0..200u32 {
        let last = 20 + (i % 200) as u8;
        h.server.apply(&web_slice(vec![
            endpoint("198.18.1.11", "node-a", Cond::Ready),
            endpoint(&format!("198.18.2.{last}"), "node-a", Cond::Ready),
        ]));
    }
    let last = ip(&format!("198.18.2.{}", 20 + 199));
    h.sync_until("the last change of the burst", |h| {
        h.web_backends().contains_key(&last)
    });
    let programs = h.reports.len() - before;
    assert!(
        programs <= 20,
        "{programs} programs for a burst of 200 changes"
    );
    assert_eq!(h.web_backends().len(), 2);
}

#[test]
fn labels_select_like_kube_proxy() {
    let mut h = synced_cluster("labels");
    // Another proxy takes web over: the API stops sending it (DELETED), xlb lets it go.
    let mut taken = web();
    taken.metadata.labels = Some(
        [(
            "service.kubernetes.io/service-proxy-name".to_string(),
            "other".to_string(),
        )]
        .into(),
    );
    h.server.apply(&taken);
    h.sync_until("web released", |h| h.programmed_services().is_empty());
    assert!(
        h.server
            .requests()
            .iter()
            .filter(|r| r.contains("watch="))
            .all(|r| r.contains("service-proxy-name") || r.contains("/nodes")),
        "watches without the selector: {:?}",
        h.server.requests()
    );
    // And back.
    h.server.apply(&web());
    h.sync_until("web again", |h| h.web_backends().len() == 3);
}

#[test]
fn local_policy_and_its_health_check_follow_the_endpoints() {
    let mut h = synced_cluster("local");
    let readiness = Readiness::new();
    readiness.set_ready();
    let mut health = HealthServer::new(h.runtime.handle().clone(), readiness, Ipv4Addr::LOCALHOST);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut local = web();
    let spec = local.spec.as_mut().unwrap();
    spec.external_traffic_policy = Some("Local".into());
    spec.health_check_node_port = Some(i32::from(port));
    h.server.apply(&local);
    h.server.apply(&node("node-c", "198.18.0.3"));
    h.server.apply(&web_slice(vec![
        endpoint("198.18.1.11", "node-a", Cond::Ready),
        endpoint("198.18.3.11", "node-c", Cond::Ready),
    ]));
    h.sync_until("the local policy", |h| {
        h.plan().services.values().any(|s| s.local_only) && h.web_backends().len() == 1
    });
    assert!(health.update(&h.plan().health_check_node_ports).is_empty());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (status, body) = http_get(addr);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"localEndpoints\": 1"), "{body}");
    // Every flow stays on this node's pod.
    for sport in 46000..46020 {
        assert_eq!(h.send_to_vip(sport, true).1, Some(ip("198.18.1.11")));
    }

    // The local pod goes: 503 for the cloud load balancer, and packets are dropped here.
    h.server.apply(&web_slice(vec![endpoint(
        "198.18.3.11",
        "node-c",
        Cond::Ready,
    )]));
    h.sync_until("no local endpoint", |h| h.web_backends().is_empty());
    health.update(&h.plan().health_check_node_ports);
    let (status, body) = http_get(addr);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\": 0"), "{body}");
    assert_eq!(h.send_to_vip(46100, true).0, XDP_DROP);
}

fn http_get(addr: SocketAddr) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out[9..12].parse().unwrap(), out)
}

#[test]
fn nodes_and_their_addresses_are_followed() {
    let mut h = synced_cluster("nodes");
    h.server.apply(&node("node-c", "198.18.0.3"));
    h.server.apply(&web_slice(vec![
        endpoint("198.18.1.11", "node-a", Cond::Ready),
        endpoint("198.18.3.11", "node-c", Cond::Ready),
    ]));
    h.sync_until("a remote backend with its node address", |h| {
        h.plan().services.values().any(|s| {
            s.backends
                .iter()
                .any(|b| b.node_addr == Some(ip("198.18.0.3")))
        })
    });
    // A node's new address reaches the backends on it.
    h.server.apply(&node("node-c", "198.18.0.4"));
    h.sync_until("node-c's new address", |h| {
        h.plan().services.values().any(|s| {
            s.backends
                .iter()
                .any(|b| b.node_addr == Some(ip("198.18.0.4")))
        })
    });
    // This node's own addresses are NodePort addresses.
    h.server.apply(&node("node-a", "198.18.0.5"));
    h.sync_until("node-a's new address", |h| {
        h.plan().local_addrs.contains(&ip("198.18.0.5"))
    });
    h.server.delete::<Node>("", "node-c");
    h.sync_until("node-c gone", |h| {
        h.plan().warnings.iter().any(|w| w.contains("node-c"))
    });
}
