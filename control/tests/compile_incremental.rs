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
use xlb::cluster::{ClusterState, LABEL_SERVICE_NAME};
use xlb::compile::{Compiler, compile};
use xlb::loader::{self, LoadOptions, Loaded};
use xlb::plan::NodeIdentity;
use xlb::reconcile::Reconciler;
use xlb::table_map;

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
    },
    DeleteService(usize),
    Slice {
        name: usize,
        service: usize,
        endpoints: Vec<(u8, usize, u8)>,
    },
    DeleteSlice(usize),
    Node {
        name: usize,
        addr: u8,
    },
    DeleteNode(usize),
    /// The --iface addresses changed.
    Identity(u8),
}

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
        )
            .prop_map(
                |(name, load_balancer, lb_ip, node_port, external_ip, local, health, affinity, udp)| {
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
                    }
                }
            ),
        1 => (0..SERVICES.len()).prop_map(Op::DeleteService),
        6 => (
            0..6usize,
            0..SERVICES.len(),
            proptest::collection::vec((0u8..6, 0..NODES.len(), 0u8..4), 0..5),
        )
            .prop_map(|(name, service, endpoints)| Op::Slice {
                name,
                service,
                endpoints
            }),
        1 => (0..6usize).prop_map(Op::DeleteSlice),
        2 => (0..NODES.len(), 0u8..3).prop_map(|(name, addr)| Op::Node { name, addr }),
        1 => (0..NODES.len()).prop_map(Op::DeleteNode),
        1 => (0u8..3).prop_map(Op::Identity),
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
        } => {
            let mut ports = vec![ServicePort {
                name: Some("http".into()),
                port: 80,
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
                        port: Some(8080),
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
    }
}

fn identity() -> NodeIdentity {
    NodeIdentity {
        node_name: "node-a".into(),
        table_size: 31,
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
            // Sometimes let changes pile up over several operations, as a burst would.
            if i % 3 == 1 {
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

    /// Every Service port whose plan entry changed (or appeared) is in `last_touched`.
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
            }
            before = after;
        }
    }
}

/// Tables and snapshot of every Service port the reconciler holds, read back from the maps.
fn programmed(rec: &Reconciler) -> Vec<(String, u32, Vec<u32>)> {
    rec.snapshot()
        .services
        .iter()
        .map(|s| {
            let inner = rec.maps.maglev.get(&s.service_id, 0).expect("table");
            let slots = table_map::read(&inner, s.table_size).expect("read");
            (s.name.clone(), s.service_id, slots)
        })
        .collect()
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

    /// `apply_changed` with the compiler's touched set programs exactly what a full `apply` of
    /// the same plans programs: same ids, same snapshot, same table in every slot.
    #[test]
    fn apply_changed_equals_apply(ops in proptest::collection::vec(op(), 1..30)) {
        let (Loaded { ebpf: _a, maps: ma }, Loaded { ebpf: _b, maps: mb }) = (load(), load());
        let mut incremental = Reconciler::adopt(ma).unwrap();
        let mut full = Reconciler::adopt(mb).unwrap();
        let mut state = ClusterState::new();
        let mut node = identity();
        let mut compiler = Compiler::new();
        for (i, op) in ops.iter().enumerate() {
            apply(&mut state, &mut node, op);
            if i % 3 == 1 {
                continue;
            }
            let changes = state.take_changes();
            compiler.update(&state, &node, &changes);
            let plan = compiler.plan();
            incremental.apply_changed(plan, compiler.last_touched()).unwrap();
            full.apply(plan).unwrap();
            prop_assert_eq!(incremental.snapshot(), full.snapshot(), "after op {} {:?}", i, op);
            prop_assert_eq!(programmed(&incremental), programmed(&full), "after op {} {:?}", i, op);
        }
    }
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
            },
            Op::Slice {
                name,
                service: name,
                endpoints: vec![(1, 0, 0), (2, 1, 0)],
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
