//! The incremental [`Compiler`] gives exactly the plan a full [`compile`] gives, whatever the
//! sequence of changes, and recompiles only what a change touches; what it reports as touched
//! covers every changed Service port, and the reconciler, trusting that report, programs the
//! same maps as a full apply (the last test needs root: it loads the datapath's maps).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus, Service, ServicePort,
    ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use xlb::compile::plan::NodeIdentity;
use xlb::compile::{Compiler, compile};
use xlb::datapath::loader::{self, LoadOptions, Loaded};
use xlb::datapath::maglev_map;
use xlb::datapath::reconcile::Reconciler;
use xlb::source::cluster::{ClusterState, LABEL_SERVICE_NAME};

const SERVICES: [&str; 4] = ["a", "b", "c", "d"];
const NODES: [&str; 3] = ["node-a", "node-c", "node-x"];

#[derive(Debug, Clone)]
enum Op {
    Service {
        name: usize,
        load_balancer: bool,
        lb_ip: u8,
        node_port: u16,
        external_ip: Option<u8>,
        local: bool,
        health: Option<u16>,
        affinity: Option<i32>,
        udp: bool,
        /// The Service port (its targetPort stays 8080).
        port: u16,
        /// Index into `SOURCE_RANGES`.
        source_ranges: Option<usize>,
    },
    DeleteService(usize),
    Slice {
        name: usize,
        service: usize,
        endpoints: Vec<(u8, usize, u8)>,
        /// The pods' port for `http` (the Services target 8080: other ports match nothing).
        port: i32,
    },
    DeleteSlice(usize),
    Node {
        name: usize,
        addr: u8,
    },
    DeleteNode(usize),
    /// The --iface addresses changed.
    Identity(u8),
    /// The Maglev table size M changed (a restart with another --maglev-table-size).
    TableSize(u32),
}

/// `loadBalancerSourceRanges` values: one range, overlapping ones, a host, an invalid entry.
const SOURCE_RANGES: [&[&str]; 4] = [
    &["198.18.0.0/28"],
    &["198.18.0.0/24", "198.18.0.0/16"],
    &["198.18.0.10/32"],
    &["not-a-range", "198.18.0.0/28"],
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            0..SERVICES.len(),
            any::<bool>(),
            0u8..2,
            prop_oneof![Just(30001u16), Just(30002), Just(30003)],
            proptest::option::of(0u8..2),
            any::<bool>(),
            proptest::option::of(prop_oneof![Just(32000u16), Just(32001)]),
            proptest::option::of(prop_oneof![Just(60), Just(0)]),
            any::<bool>(),
            prop_oneof![Just(80u16), Just(81)],
            proptest::option::of(0..SOURCE_RANGES.len()),
        )
            .prop_map(
                |(
                    name,
                    load_balancer,
                    lb_ip,
                    node_port,
                    external_ip,
                    local,
                    health,
                    affinity,
                    udp,
                    port,
                    source_ranges,
                )| {
                    Op::Service {
                        name,
                        load_balancer,
                        lb_ip,
                        node_port,
                        external_ip,
                        local,
                        health,
                        affinity,
                        udp,
                        port,
                        source_ranges,
                    }
                }
            ),
        1 => (0..SERVICES.len()).prop_map(Op::DeleteService),
        6 => (
            0..6usize,
            0..SERVICES.len(),
            proptest::collection::vec((0u8..6, 0..NODES.len(), 0u8..4), 0..5),
            prop_oneof![4 => Just(8080), 1 => Just(8081)],
        )
            .prop_map(|(name, service, endpoints, port)| Op::Slice {
                name,
                service,
                endpoints,
                port,
            }),
        1 => (0..6usize).prop_map(Op::DeleteSlice),
        2 => (0..NODES.len(), 0u8..3).prop_map(|(name, addr)| Op::Node { name, addr }),
        1 => (0..NODES.len()).prop_map(Op::DeleteNode),
        1 => (0u8..3).prop_map(Op::Identity),
        // Caps below the ladder, on it and above its steps these Services reach.
        1 => prop_oneof![
            Just(31u32),
            Just(13),
            Just(251),
            Just(509),
            Just(1021),
            Just(16_381)
        ]
        .prop_map(Op::TableSize),
    ]
}

fn meta(name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn apply(state: &mut ClusterState, node: &mut NodeIdentity, op: &Op) {
    match op {
        Op::Service {
            name,
            load_balancer,
            lb_ip,
            node_port,
            external_ip,
            local,
            health,
            affinity,
            udp,
            port,
            source_ranges,
        } => {
            let mut ports = vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(*port),
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(8080)),
                node_port: Some(i32::from(*node_port)),
                ..Default::default()
            }];
            if *udp {
                ports.push(ServicePort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Some("UDP".into()),
                    target_port: Some(IntOrString::String("dns".into())),
                    node_port: Some(i32::from(*node_port)),
                    ..Default::default()
                });
            }
            let service = Service {
                metadata: meta(SERVICES[*name], BTreeMap::new()),
                spec: Some(ServiceSpec {
                    type_: Some(
                        if *load_balancer {
                            "LoadBalancer"
                        } else {
                            "NodePort"
                        }
                        .into(),
                    ),
                    ports: Some(ports),
                    external_ips: external_ip.map(|i| vec![format!("198.19.254.{i}")]),
                    external_traffic_policy: Some(if *local { "Local" } else { "Cluster" }.into()),
                    health_check_node_port: health.map(i32::from),
                    load_balancer_source_ranges: source_ranges
                        .map(|i| SOURCE_RANGES[i].iter().map(|r| r.to_string()).collect()),
                    session_affinity: affinity.map(|_| "ClientIP".into()),
                    session_affinity_config: affinity.map(|t| {
                        k8s_openapi::api::core::v1::SessionAffinityConfig {
                            client_ip: Some(k8s_openapi::api::core::v1::ClientIPConfig {
                                timeout_seconds: Some(t),
                            }),
                        }
                    }),
                    ..Default::default()
                }),
                status: Some(ServiceStatus {
                    load_balancer: Some(LoadBalancerStatus {
                        ingress: Some(vec![LoadBalancerIngress {
                            ip: Some(format!("198.19.255.{lb_ip}")),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                }),
            };
            state.upsert_service(service).unwrap();
        }
        Op::DeleteService(name) => {
            state.delete_service("default", SERVICES[*name]);
        }
        Op::Slice {
            name,
            service,
            endpoints,
            port,
        } => {
            let labels = [(
                LABEL_SERVICE_NAME.to_string(),
                SERVICES[*service].to_string(),
            )]
            .into();
            let conditions = |c: u8| match c {
                0 => (Some(true), Some(true), Some(false)),
                1 => (Some(false), Some(true), Some(true)),
                2 => (Some(false), Some(false), Some(true)),
                _ => (Some(false), Some(false), Some(false)),
            };
            let slice = EndpointSlice {
                metadata: meta(&format!("slice-{name}"), labels),
                address_type: "IPv4".into(),
                ports: Some(vec![
                    EndpointPort {
                        name: Some("http".into()),
                        port: Some(*port),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    },
                    EndpointPort {
                        name: Some("dns".into()),
                        port: Some(5353),
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    },
                ]),
                endpoints: Some(
                    endpoints
                        .iter()
                        .map(|&(addr, node, c)| {
                            let (ready, serving, terminating) = conditions(c);
                            Endpoint {
                                addresses: vec![format!("198.18.{}.{addr}", 10 + node)],
                                node_name: Some(NODES[node].into()),
                                conditions: Some(EndpointConditions {
                                    ready,
                                    serving,
                                    terminating,
                                }),
                                ..Default::default()
                            }
                        })
                        .collect(),
                ),
            };
            state.upsert_endpoint_slice(slice).unwrap();
        }
        Op::DeleteSlice(name) => {
            state.delete_endpoint_slice("default", &format!("slice-{name}"));
        }
        Op::Node { name, addr } => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(NODES[*name].into()),
                    ..Default::default()
                },
                status: Some(NodeStatus {
                    addresses: Some(vec![NodeAddress {
                        type_: "InternalIP".into(),
                        address: format!("198.18.0.{}", 10 * (*name as u8 + 1) + addr),
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            state.upsert_node(node).unwrap();
        }
        Op::DeleteNode(name) => {
            state.delete_node(NODES[*name]);
        }
        Op::Identity(i) => {
            node.extra_local_addrs = (0..*i).map(|j| [198, 18, 0, 200 + j].into()).collect();
        }
        Op::TableSize(m) => node.table_size = *m,
    }
}

fn identity() -> NodeIdentity {
    NodeIdentity {
        node_name: "node-a".into(),
        table_size: lb_common::maps::MAGLEV_DEFAULT_TABLE_SIZE,
        extra_local_addrs: vec![],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn incremental_equals_full(ops in proptest::collection::vec(op(), 1..40)) {
        let mut state = ClusterState::new();
        let mut node = identity();
        let mut compiler = Compiler::new();
        for (i, op) in ops.iter().enumerate() {
            apply(&mut state, &mut node, op);
            // Sometimes let changes pile up over several operations, as a burst would; the
            // last operation always ends in a comparison.
            if i % 3 == 1 && i + 1 < ops.len() {
                continue;
            }
            let changes = state.take_changes();
            let incremental = compiler.update(&state, &node, &changes).clone();
            let full = compile(&state, &node);
            prop_assert_eq!(&incremental, &full, "after op {} {:?}", i, op);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every Service port whose plan entry changed, appeared or left is in `last_touched`.
    #[test]
    fn touched_covers_every_change(ops in proptest::collection::vec(op(), 1..40)) {
        let mut state = ClusterState::new();
        let mut node = identity();
        let mut compiler = Compiler::new();
        let mut before = compiler.plan().clone();
        for (i, op) in ops.iter().enumerate() {
            apply(&mut state, &mut node, op);
            let changes = state.take_changes();
            let after = compiler.update(&state, &node, &changes).clone();
            if let Some(touched) = compiler.last_touched() {
                for (key, svc) in &after.services {
                    if before.services.get(key) != Some(svc) {
                        prop_assert!(
                            touched.contains(key),
                            "after op {} {:?}: {} changed but is not touched", i, op, key
                        );
                    }
                }
                // A port that left the plan is touched too: the reconciler removes its share.
                for key in before.services.keys() {
                    if !after.services.contains_key(key) {
                        prop_assert!(
                            touched.contains(key),
                            "after op {} {:?}: {} left the plan but is not touched", i, op, key
                        );
                    }
                }
            }
            before = after;
        }
    }
}

/// Tables and snapshot of every Service port the reconciler holds, read back from the maps:
/// the whole inner map (header, backend ids, slots), and its M as the snapshot says.
fn programmed(rec: &Reconciler) -> Vec<(String, u32, u32, Vec<u32>)> {
    rec.snapshot()
        .services
        .iter()
        .map(|s| {
            let inner = rec.maps.maglev.get(&s.service_id, 0).expect("table");
            let words = maglev_map::read(&inner).expect("read");
            let decoded = lb_common::maglev::decode(&words).expect("decode");
            assert_eq!(decoded.m, s.table_size, "{}", s.name);
            (s.name.clone(), s.service_id, s.table_size, words)
        })
        .collect()
}

/// Everything else the reconciler writes, read back from the maps: frontends (with their ids),
/// members, source ranges, tunnel pairs and local addresses.
fn contents(rec: &Reconciler) -> Vec<String> {
    let m = &rec.maps;
    let mut out = Vec::new();
    for kv in m.frontends.iter() {
        let (k, v) = kv.unwrap();
        out.push(format!("frontend {k:?} {v:?}"));
    }
    for k in m.svc_backends.keys() {
        out.push(format!("member {:?}", k.unwrap()));
    }
    for k in m.src_ranges.keys() {
        let k = k.unwrap();
        out.push(format!("range {:?}/{}", k.data(), k.prefix_len()));
    }
    for k in m.local_backends.keys() {
        out.push(format!("pair {:?}", k.unwrap()));
    }
    for k in m.local_addrs.keys() {
        out.push(format!("local {:?}", k.unwrap()));
    }
    out.sort();
    out
}

fn load() -> Loaded {
    loader::load(&LoadOptions {
        pin_dir: None,
        conntrack_size: 1024,
    })
    .expect("loading the datapath (needs root)")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// `apply_changed` with the compiler's touched set, which compares and writes only those
    /// ports' share of the maps, programs exactly what a full `apply` of the same plans
    /// programs: same ids, same snapshot, same table in every slot, the same frontends,
    /// members, source ranges and tunnel pairs.
    #[test]
    fn apply_changed_equals_apply(ops in proptest::collection::vec(op(), 1..30)) {
        let (Loaded { ebpf: _a, maps: ma, .. }, Loaded { ebpf: _b, maps: mb, .. }) = (load(), load());
        let mut incremental = Reconciler::adopt(ma).unwrap();
        let mut full = Reconciler::adopt(mb).unwrap();
        let mut state = ClusterState::new();
        let mut node = identity();
        let mut compiler = Compiler::new();
        for (i, op) in ops.iter().enumerate() {
            apply(&mut state, &mut node, op);
            if i % 3 == 1 && i + 1 < ops.len() {
                continue;
            }
            let changes = state.take_changes();
            compiler.update(&state, &node, &changes);
            let plan = compiler.plan();
            incremental.apply_changed(plan, compiler.last_touched()).unwrap();
            full.apply(plan).unwrap();
            prop_assert_eq!(incremental.snapshot(), full.snapshot(), "after op {} {:?}", i, op);
            prop_assert_eq!(programmed(&incremental), programmed(&full), "after op {} {:?}", i, op);
            prop_assert_eq!(contents(&incremental), contents(&full), "after op {} {:?}", i, op);
        }
    }
}

/// A Service grows one endpoint at a time through seven steps of the size ladder and shrinks
/// back: at every step `apply_changed` programs what a full `apply` programs, the table is the
/// one the plan predicts, and the size is the ladder's.
#[test]
fn apply_changed_equals_apply_across_the_ladder() {
    use lb_common::maglev::{MAGLEV_LADDER, table_size_for};
    let (
        Loaded {
            ebpf: _a, maps: ma, ..
        },
        Loaded {
            ebpf: _b, maps: mb, ..
        },
    ) = (load(), load());
    let mut incremental = Reconciler::adopt(ma).unwrap();
    let mut full = Reconciler::adopt(mb).unwrap();
    let mut state = ClusterState::new();
    let mut node = identity();
    let mut compiler = Compiler::new();
    let service = Op::Service {
        name: 0,
        load_balancer: true,
        lb_ip: 0,
        node_port: 30001,
        external_ip: None,
        local: false,
        health: None,
        affinity: None,
        udp: true,
        port: 80,
        source_ranges: None,
    };
    apply(&mut state, &mut node, &service);
    apply(&mut state, &mut node, &Op::Node { name: 0, addr: 0 });
    let mut sizes = std::collections::BTreeSet::new();
    let counts: Vec<u8> = (0..=45).chain((0..45).rev()).collect();
    for &n in &counts {
        // Two slices so that a step also moves backends between them.
        for (slice, range) in [(0usize, 0..n.min(20)), (1, 20.min(n)..n)] {
            let op = Op::Slice {
                name: slice,
                service: 0,
                endpoints: range.map(|a| (a, 0, 0)).collect(),
                port: 8080,
            };
            apply(&mut state, &mut node, &op);
        }
        let changes = state.take_changes();
        compiler.update(&state, &node, &changes);
        let plan = compiler.plan();
        assert_eq!(plan, &compile(&state, &node), "{n} endpoints");
        incremental
            .apply_changed(plan, compiler.last_touched())
            .unwrap();
        full.apply(plan).unwrap();
        assert_eq!(incremental.snapshot(), full.snapshot(), "{n} endpoints");
        assert_eq!(programmed(&incremental), programmed(&full), "{n} endpoints");
        for svc in plan.services.values() {
            let m = table_size_for(&svc.maglev_backends(), node.table_size);
            assert_eq!(svc.table_size, m, "{n} endpoints");
            assert_eq!(svc.backends.len(), n as usize);
            sizes.insert(m);
        }
        // The kernel's table is the plan's, slot by slot.
        for s in incremental.snapshot().services.iter() {
            let (_, svc) = plan
                .services
                .iter()
                .find(|(k, _)| k.to_string() == s.name)
                .unwrap();
            let table = svc.maglev_table().unwrap();
            let inner = incremental.maps.maglev.get(&s.service_id, 0).unwrap();
            let live = maglev_map::read_decoded(&inner).unwrap();
            let ids: Vec<u32> = s.backends.iter().map(|b| b.backend_id).collect();
            assert_eq!(live.ids, ids);
            for slot in 0..table.size() {
                let want = table.slots()[slot as usize];
                let got = live.id_at(slot);
                assert_eq!(got, (want != u32::MAX).then(|| ids[want as usize]));
            }
        }
    }
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), MAGLEV_LADDER[..7]);
}

#[test]
fn one_endpoint_slice_change_recompiles_one_service() {
    let mut state = ClusterState::new();
    let mut node = identity();
    for name in 0..SERVICES.len() {
        let ops = [
            Op::Service {
                name,
                load_balancer: true,
                lb_ip: name as u8,
                node_port: 30010 + name as u16,
                external_ip: None,
                local: false,
                health: None,
                affinity: None,
                udp: false,
                port: 80,
                source_ranges: None,
            },
            Op::Slice {
                name,
                service: name,
                endpoints: vec![(1, 0, 0), (2, 1, 0)],
                port: 8080,
            },
        ];
        for op in &ops {
            apply(&mut state, &mut node, op);
        }
    }
    apply(&mut state, &mut node, &Op::Node { name: 0, addr: 0 });
    apply(&mut state, &mut node, &Op::Node { name: 1, addr: 0 });
    let mut compiler = Compiler::new();
    let changes = state.take_changes();
    compiler.update(&state, &node, &changes);
    assert_eq!(compiler.last_compiled(), SERVICES.len());

    let slice = Op::Slice {
        name: 2,
        service: 2,
        endpoints: vec![(1, 0, 0), (3, 1, 0)],
        port: 8080,
    };
    apply(&mut state, &mut node, &slice);
    let changes = state.take_changes();
    compiler.update(&state, &node, &changes);
    assert_eq!(compiler.last_compiled(), 1);
    assert_eq!(compiler.plan(), &compile(&state, &node));

    // The same object again (a resync) changes nothing and compiles nothing.
    apply(&mut state, &mut node, &slice);
    let changes = state.take_changes();
    assert!(changes.is_empty(), "{changes:?}");
    compiler.update(&state, &node, &changes);
    assert_eq!(compiler.last_compiled(), 0);

    // A Node's address recompiles the Services with endpoints there (all four, node-c),
    // another node's nothing.
    apply(&mut state, &mut node, &Op::Node { name: 2, addr: 1 });
    let changes = state.take_changes();
    compiler.update(&state, &node, &changes);
    assert_eq!(compiler.last_compiled(), 0);
    apply(&mut state, &mut node, &Op::Node { name: 1, addr: 1 });
    let changes = state.take_changes();
    compiler.update(&state, &node, &changes);
    assert_eq!(compiler.last_compiled(), SERVICES.len());
    assert_eq!(compiler.plan(), &compile(&state, &node));
}
