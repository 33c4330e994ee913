//! `compile()` semantics, one test per rule, on manifests as kubectl prints them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use lb_common::maglev::{MAGLEV_LADDER, MaglevBackend, table_size_for};
use lb_common::maps::NO_BACKEND;
use xlb::compile::compile;
use xlb::compile::plan::{
    BackendPlan, BackendState, DatapathPlan, FrontendKind, FrontendPlan, HealthCheckPlan,
    NodeIdentity, Protocol, ServicePlan, ServicePortKey,
};
use xlb::source::cluster::ClusterState;
use xlb::source::manifest;

const M: u32 = 251;

fn node_a() -> NodeIdentity {
    NodeIdentity {
        node_name: "node-a".into(),
        table_size: M,
        extra_local_addrs: vec![],
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// What compile gets. Objects the manifest source would refuse go in too: compile must cope
/// with whatever a source hands it, and these tests hold it to that.
fn state(yaml: &str) -> ClusterState {
    let loaded = manifest::load_str(Path::new("test.yaml"), yaml).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let mut state = loaded.state;
    for rejected in loaded.rejected {
        rejected.object.upsert_into(&mut state);
    }
    state
}

fn plan(yaml: &str) -> DatapathPlan {
    compile(&state(&format!("{NODES}---\n{yaml}")), &node_a())
}

fn key(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortKey {
    ServicePortKey {
        namespace: ns.into(),
        name: name.into(),
        port_name: port.into(),
        protocol,
    }
}

fn tcp(name: &str, port: &str) -> ServicePortKey {
    key("default", name, port, Protocol::Tcp)
}

fn lb(addr: &str, port: u16, ranges: bool) -> FrontendPlan {
    FrontendPlan {
        addr: Some(ip(addr)),
        port,
        kind: FrontendKind::LoadBalancer,
        source_ranges_apply: ranges,
    }
}

fn external(addr: &str, port: u16) -> FrontendPlan {
    FrontendPlan {
        addr: Some(ip(addr)),
        port,
        kind: FrontendKind::ExternalIp,
        source_ranges_apply: false,
    }
}

fn node_port(port: u16) -> FrontendPlan {
    FrontendPlan {
        addr: None,
        port,
        kind: FrontendKind::NodePort,
        source_ranges_apply: false,
    }
}

/// A backend on node-a (local) or node-c (remote, InternalIP 198.18.0.13).
fn backend(addr: &str, port: u16, node: &str, weight: u32, state: BackendState) -> BackendPlan {
    let node_addr = match node {
        "node-a" => Some(ip("198.18.0.11")),
        "node-c" => Some(ip("198.18.0.13")),
        _ => None,
    };
    BackendPlan {
        addr: ip(addr),
        port,
        node_name: Some(node.into()),
        node_addr,
        local: node == "node-a",
        weight,
        state,
    }
}

fn ready(addr: &str, port: u16, node: &str) -> BackendPlan {
    backend(addr, port, node, 1, BackendState::Ready)
}

/// The table size the ladder gives these backends under the cap `M`, as compile must plan it.
fn size_for(backends: &[BackendPlan]) -> u32 {
    let mb: Vec<_> = backends
        .iter()
        .map(|b| MaglevBackend::from_ipv4(b.addr, b.port, b.weight))
        .collect();
    table_size_for(&mb, M)
}

fn service_plan(frontends: Vec<FrontendPlan>, backends: Vec<BackendPlan>) -> ServicePlan {
    ServicePlan {
        frontends,
        table_size: size_for(&backends),
        backends,
        source_ranges: vec![],
        local_only: false,
        affinity_timeout: None,
    }
}

/// How many table slots each backend owns.
fn slot_counts(plan: &ServicePlan) -> Vec<usize> {
    let table = plan.maglev_table().unwrap();
    (0..plan.backends.len())
        .map(|i| table.slots().iter().filter(|&&s| s == i as u32).count())
        .collect()
}

/// The plan's table is all "no backend", at the bottom of the ladder.
fn assert_empty_table(plan: &ServicePlan) {
    assert_eq!(plan.table_size, MAGLEV_LADDER[0]);
    let table = plan.maglev_table().unwrap();
    assert_eq!(table.slots(), vec![NO_BACKEND; MAGLEV_LADDER[0] as usize]);
}

const NODES: &str = "\
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.11}
  - {type: ExternalIP, address: 198.19.0.11}
  - {type: Hostname, address: node-a}
---
apiVersion: v1
kind: Node
metadata: {name: node-c}
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.13}
";

/// A NodePort Service `default/NAME` with one TCP port `http` 80 -> targetPort, nodePort.
fn node_port_service(name: &str, target_port: &str, node_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: NodePort
  clusterIP: 198.19.128.20
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: {target_port}, nodePort: {node_port}}}
"
    )
}

/// An IPv4 EndpointSlice for `default/SERVICE` with one port and the given endpoints
/// (`addr node conditions` lines already in YAML flow form).
fn slice(
    name: &str,
    service: &str,
    port_name: &str,
    port: &str,
    protocol: &str,
    endpoints: &[&str],
) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports:
- {{name: {port_name:?}, port: {port}, protocol: {protocol}}}
endpoints:
"
    );
    if endpoints.is_empty() {
        s = s.replace("endpoints:\n", "endpoints: []\n");
    }
    for e in endpoints {
        s.push_str(&format!("- {e}\n"));
    }
    s
}

fn ep(addr: &str, node: &str, conditions: &str) -> String {
    format!("{{addresses: [{addr}], nodeName: {node}, conditions: {{{conditions}}}}}")
}

fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

// ---- the nginx example, end to end from the kubectl fixtures ----

#[test]
fn nginx_example_full_plan() {
    let loaded =
        manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx"))
            .unwrap();
    let node = NodeIdentity {
        extra_local_addrs: vec![ip("198.18.0.100")],
        ..node_a()
    };
    let plan = compile(&loaded.state, &node);

    let backends = vec![
        ready("198.18.10.11", 8080, "node-a"),
        ready("198.18.20.12", 8080, "node-c"),
        ready("198.18.20.13", 8080, "node-c"),
    ];
    let expected = DatapathPlan {
        services: [(
            tcp("nginx", "http"),
            service_plan(
                vec![lb("198.19.255.1", 80, false), node_port(30080)],
                backends,
            ),
        )]
        .into(),
        local_addrs: [ip("198.18.0.11"), ip("198.19.0.11"), ip("198.18.0.100")].into(),
        health_check_node_ports: Default::default(),
        warnings: vec![],
    };
    assert_eq!(plan, expected);

    let svc = &plan.services[&tcp("nginx", "http")];
    let counts = slot_counts(svc);
    assert_eq!(
        counts.iter().sum::<usize>(),
        svc.table_size as usize,
        "every slot is owned"
    );
    assert!(counts.iter().all(|&c| (80..=88).contains(&c)), "{counts:?}");

    // The plan serialises as JSON with readable keys.
    let json = serde_json::to_value(&plan).unwrap();
    let svc_json = &json["services"]["default/nginx:http/TCP"];
    assert_eq!(svc_json["frontends"][0]["addr"], "198.19.255.1");
    assert_eq!(svc_json["frontends"][1]["kind"], "NodePort");
    assert_eq!(svc_json["backends"][0]["state"], "Ready");
}

#[test]
fn service_port_key_display_and_protocol_numbers() {
    assert_eq!(tcp("nginx", "http").to_string(), "default/nginx:http/TCP");
    assert_eq!(
        key("kube-system", "dns", "", Protocol::Udp).to_string(),
        "kube-system/dns/UDP"
    );
    assert_eq!(Protocol::Tcp.number(), 6);
    assert_eq!(Protocol::Udp.number(), 17);
    let mut keys = [
        key("b", "x", "http", Protocol::Tcp),
        key("a", "z", "", Protocol::Udp),
        key("a", "z", "y", Protocol::Tcp),
        key("a", "z", "", Protocol::Tcp),
    ];
    keys.sort();
    let shown: Vec<_> = keys.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["a/z/TCP", "a/z/UDP", "a/z:y/TCP", "b/x:http/TCP"]);
}

// ---- targetPort ----

#[test]
fn named_target_port_resolves_per_slice() {
    // Pods of two versions name different container ports "web": each slice carries its number.
    let plan = plan(&docs(&[
        node_port_service("web", "web", 30081),
        slice(
            "web-v1",
            "web",
            "http",
            "8080",
            "TCP",
            &[&ep("198.18.10.21", "node-a", "ready: true")],
        ),
        slice(
            "web-v2",
            "web",
            "http",
            "9090",
            "TCP",
            &[&ep("198.18.20.22", "node-c", "ready: true")],
        ),
        // A slice without a port named "http" contributes nothing to that service port.
        slice(
            "web-other",
            "web",
            "metrics",
            "9100",
            "TCP",
            &[&ep("198.18.20.23", "node-c", "ready: true")],
        ),
    ]));
    let svc = &plan.services[&tcp("web", "http")];
    assert_eq!(
        svc.backends,
        vec![
            ready("198.18.10.21", 8080, "node-a"),
            ready("198.18.20.22", 9090, "node-c")
        ]
    );
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
}

#[test]
fn slice_port_number_wins_and_targetport_fills_a_missing_one() {
    // The EndpointSlice controller resolved the target port: compile trusts the slice.
    let p = plan(&docs(&[
        node_port_service("web", "8080", 30081),
        slice(
            "web-1",
            "web",
            "http",
            "8081",
            "TCP",
            &[&ep("198.18.10.21", "node-a", "")],
        ),
    ]));
    assert_eq!(
        p.services[&tcp("web", "http")].backends,
        vec![ready("198.18.10.21", 8081, "node-a")]
    );

    // A matching slice port without a number: the numeric targetPort, or `port` when absent.
    let unnumbered = |svc: &str| {
        docs(&[
            svc.to_owned(),
            slice(
                "web-1",
                "web",
                "http",
                "null",
                "TCP",
                &[&ep("198.18.10.21", "node-a", "")],
            ),
        ])
    };
    let p = plan(&unnumbered(&node_port_service("web", "8080", 30081)));
    assert_eq!(
        p.services[&tcp("web", "http")].backends,
        vec![ready("198.18.10.21", 8080, "node-a")]
    );
    let no_target = node_port_service("web", "8080", 30081).replace(", targetPort: 8080", "");
    let p = plan(&unnumbered(&no_target));
    assert_eq!(
        p.services[&tcp("web", "http")].backends,
        vec![ready("198.18.10.21", 80, "node-a")]
    );
    // A named targetPort cannot be resolved without the slice's number.
    let p = plan(&unnumbered(&node_port_service("web", "web", 30081)));
    assert!(p.services[&tcp("web", "http")].backends.is_empty());
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("no port number for the named targetPort")),
        "{:?}",
        p.warnings
    );
}

// ---- endpoint conditions ----

#[test]
fn ready_endpoints_take_flows_terminating_ones_keep_theirs() {
    let plan = plan(&docs(&[
        node_port_service("web", "8080", 30081),
        slice(
            "web-1",
            "web",
            "http",
            "8080",
            "TCP",
            &[
                &ep(
                    "198.18.10.1",
                    "node-a",
                    "ready: true, serving: true, terminating: false",
                ),
                &ep("198.18.10.2", "node-a", ""), // all conditions unset: ready
                &ep(
                    "198.18.20.3",
                    "node-c",
                    "ready: false, serving: true, terminating: true",
                ),
                &ep(
                    "198.18.20.4",
                    "node-c",
                    "ready: false, serving: false, terminating: true",
                ),
                &ep(
                    "198.18.20.5",
                    "node-c",
                    "ready: false, serving: false, terminating: false",
                ), // starting
            ],
        ),
    ]));
    let svc = &plan.services[&tcp("web", "http")];
    let expected = vec![
        ready("198.18.10.1", 8080, "node-a"),
        ready("198.18.10.2", 8080, "node-a"),
        backend("198.18.20.3", 8080, "node-c", 0, BackendState::Terminating),
        backend("198.18.20.4", 8080, "node-c", 0, BackendState::Terminating),
    ];
    assert_eq!(*svc, service_plan(vec![node_port(30081)], expected));
    let counts = slot_counts(svc);
    assert!(counts[0] > 0 && counts[1] > 0);
    assert_eq!(
        &counts[2..],
        [0, 0],
        "terminating backends get no new flows"
    );
}

#[test]
fn serving_terminating_endpoints_are_the_fallback() {
    let plan = plan(&docs(&[
        node_port_service("web", "8080", 30081),
        slice(
            "web-1",
            "web",
            "http",
            "8080",
            "TCP",
            &[
                &ep(
                    "198.18.20.3",
                    "node-c",
                    "ready: false, serving: true, terminating: true",
                ),
                &ep(
                    "198.18.20.4",
                    "node-c",
                    "ready: false, serving: false, terminating: true",
                ),
                &ep("198.18.20.5", "node-c", "ready: false, terminating: true"), // serving unset = true
                &ep("198.18.20.6", "node-c", "ready: false"),
            ],
        ),
    ]));
    let svc = &plan.services[&tcp("web", "http")];
    let expected = vec![
        backend("198.18.20.3", 8080, "node-c", 1, BackendState::Terminating),
        backend("198.18.20.4", 8080, "node-c", 0, BackendState::Terminating),
        backend("198.18.20.5", 8080, "node-c", 1, BackendState::Terminating),
    ];
    assert_eq!(*svc, service_plan(vec![node_port(30081)], expected));
    let counts = slot_counts(svc);
    assert_eq!(counts[1], 0);
    assert_eq!(counts[0] + counts[2], svc.table_size as usize);
}

#[test]
fn no_endpoints_still_program_the_frontend_with_an_empty_table() {
    let plan = plan(&node_port_service("web", "8080", 30081));
    let svc = &plan.services[&tcp("web", "http")];
    assert_eq!(svc.frontends, vec![node_port(30081)]);
    assert!(svc.backends.is_empty());
    assert_empty_table(svc);
}

#[test]
fn duplicate_endpoints_across_slices_are_merged_ready_wins() {
    let plan = plan(&docs(&[
        node_port_service("web", "8080", 30081),
        slice(
            "web-a",
            "web",
            "http",
            "8080",
            "TCP",
            &[&ep(
                "198.18.20.3",
                "node-c",
                "ready: false, terminating: true",
            )],
        ),
        slice(
            "web-b",
            "web",
            "http",
            "8080",
            "TCP",
            &[&ep("198.18.20.3", "node-c", "ready: true")],
        ),
        // Same address, other port: a different backend.
        slice(
            "web-c",
            "web",
            "http",
            "8081",
            "TCP",
            &[&ep("198.18.20.3", "node-c", "ready: true")],
        ),
    ]));
    assert_eq!(
        plan.services[&tcp("web", "http")].backends,
        vec![
            ready("198.18.20.3", 8080, "node-c"),
            ready("198.18.20.3", 8081, "node-c")
        ]
    );
}

// ---- which Services ----

#[test]
fn service_proxy_name_label_skips_the_service() {
    let svc = node_port_service("web", "8080", 30081).replace(
        "metadata: {name: web, namespace: default}",
        "metadata:
  name: web
  namespace: default
  labels: {service.kubernetes.io/service-proxy-name: other-proxy}",
    );
    let plan = plan(&docs(&[
        svc,
        slice(
            "web-1",
            "web",
            "http",
            "8080",
            "TCP",
            &[&ep("198.18.10.1", "node-a", "")],
        ),
    ]));
    assert!(plan.services.is_empty());
    assert!(plan.warnings.is_empty());
}

#[test]
fn external_name_and_headless_services_are_skipped() {
    let external_name = "\
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: example.invalid
  externalIPs: [198.18.5.5]
  ports: [{port: 80}]
";
    let headless = "\
apiVersion: v1
kind: Service
metadata: {name: hl, namespace: default}
spec: {clusterIP: None, externalIPs: [198.18.5.6], ports: [{port: 80}]}
";
    let plan = plan(&docs(&[external_name.into(), headless.into()]));
    assert!(plan.services.is_empty());
}

#[test]
fn cluster_ip_service_without_external_ips_produces_nothing() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: internal, namespace: default}\nspec:\n  clusterIP: 198.19.128.30\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";
    let plan = plan(&docs(&[
        svc.into(),
        slice(
            "internal-1",
            "internal",
            "http",
            "8080",
            "TCP",
            &[&ep("198.18.10.1", "node-a", "")],
        ),
    ]));
    assert!(plan.services.is_empty());
    assert!(plan.warnings.is_empty());
}

#[test]
fn external_ips_on_a_cluster_ip_service() {
    let svc = "\
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 198.19.128.31
  externalIPs: [198.18.50.1, 198.18.50.2]
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30099}
";
    let plan = plan(&docs(&[
        svc.into(),
        slice(
            "legacy-1",
            "legacy",
            "http",
            "8080",
            "TCP",
            &[&ep("198.18.10.1", "node-a", "")],
        ),
    ]));
    let expected = service_plan(
        vec![external("198.18.50.1", 80), external("198.18.50.2", 80)],
        vec![ready("198.18.10.1", 8080, "node-a")],
    );
    assert_eq!(plan.services[&tcp("legacy", "http")], expected);
    // A nodePort on a ClusterIP Service is not programmed.
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(plan.warnings[0].contains("nodePort 30099 ignored"));
}

#[test]
fn load_balancer_frontends_and_allocate_node_ports() {
    let lb_service = |extra_spec: &str, node_port: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: vip, namespace: default}}
spec:
  type: LoadBalancer
  {extra_spec}
  ports:
  - {{name: http, port: 80, targetPort: 8080{node_port}}}
status:
  loadBalancer:
    ingress:
    - {{ip: 198.19.255.2}}
    - {{ip: 198.19.255.3, ipMode: VIP}}
    - {{ip: 198.19.255.4, ipMode: Proxy}}
    - {{hostname: lb.example.invalid}}
"
        )
    };
    let eps = slice(
        "vip-1",
        "vip",
        "http",
        "8080",
        "TCP",
        &[&ep("198.18.10.1", "node-a", "")],
    );

    // Default (allocateLoadBalancerNodePorts unset = true): LB IPs (VIP mode only) + NodePort.
    let p = plan(&docs(&[lb_service("", ", nodePort: 30100"), eps.clone()]));
    assert_eq!(
        p.services[&tcp("vip", "http")].frontends,
        vec![
            lb("198.19.255.2", 80, false),
            lb("198.19.255.3", 80, false),
            node_port(30100)
        ]
    );

    // allocateLoadBalancerNodePorts: false and no nodePort: LB IPs only.
    let p = plan(&docs(&[
        lb_service("allocateLoadBalancerNodePorts: false", ""),
        eps.clone(),
    ]));
    assert_eq!(
        p.services[&tcp("vip", "http")].frontends,
        vec![lb("198.19.255.2", 80, false), lb("198.19.255.3", 80, false)]
    );

    // allocateLoadBalancerNodePorts: false but the API kept a nodePort: programmed (kube-proxy).
    let p = plan(&docs(&[
        lb_service("allocateLoadBalancerNodePorts: false", ", nodePort: 30101"),
        eps.clone(),
    ]));
    assert_eq!(
        p.services[&tcp("vip", "http")].frontends,
        vec![
            lb("198.19.255.2", 80, false),
            lb("198.19.255.3", 80, false),
            node_port(30101)
        ]
    );

    // A NodePort Service ignores a leftover load-balancer status.
    let p = plan(&docs(&[
        lb_service("", ", nodePort: 30102").replace("type: LoadBalancer", "type: NodePort"),
        eps,
    ]));
    assert_eq!(
        p.services[&tcp("vip", "http")].frontends,
        vec![node_port(30102)]
    );
}

// ---- loadBalancerSourceRanges ----

#[test]
fn source_ranges_apply_to_load_balancer_frontends_only() {
    let svc = "\
apiVersion: v1
kind: Service
metadata: {name: guarded, namespace: default}
spec:
  type: LoadBalancer
  externalIPs: [198.18.50.9]
  loadBalancerSourceRanges:
  - 198.18.7.0/24
  - 198.18.0.0/16
  - 198.18.7.7/24
  - 2001:db8::/32
  - not-a-cidr
  - 198.18.1.1
  ports:
  - {name: https, port: 443, targetPort: 8443, nodePort: 30443}
status:
  loadBalancer:
    ingress: [{ip: 198.19.255.9}]
";
    let plan = plan(&docs(&[
        svc.into(),
        slice(
            "guarded-1",
            "guarded",
            "https",
            "8443",
            "TCP",
            &[&ep("198.18.10.1", "node-a", "")],
        ),
    ]));
    let svc = &plan.services[&tcp("guarded", "https")];
    assert_eq!(
        svc.frontends,
        vec![
            lb("198.19.255.9", 443, true),
            external("198.18.50.9", 443),
            node_port(30443)
        ]
    );
    // Masked, sorted, deduplicated; IPv6 and invalid entries dropped.
    assert_eq!(
        svc.source_ranges,
        vec![(ip("198.18.0.0"), 16), (ip("198.18.7.0"), 24)]
    );
    let warnings = plan.warnings.join("\n");
    assert!(
        warnings.contains("invalid loadBalancerSourceRanges entry \"not-a-cidr\""),
        "{warnings}"
    );
    assert!(
        warnings.contains("invalid loadBalancerSourceRanges entry \"198.18.1.1\""),
        "{warnings}"
    );
    assert!(
        warnings.contains("source range 2001:db8::/32"),
        "{warnings}"
    );
}

#[test]
fn all_invalid_source_ranges_allow_everything() {
    let svc = "\
apiVersion: v1
kind: Service
metadata: {name: guarded, namespace: default}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [bogus, 300.1.2.3/8]
  ports: [{port: 443, nodePort: 30443}]
status: {loadBalancer: {ingress: [{ip: 198.19.255.9}]}}
";
    let plan = plan(svc);
    let svc = &plan.services[&tcp("guarded", "")];
    assert_eq!(
        svc.frontends,
        vec![lb("198.19.255.9", 443, false), node_port(30443)]
    );
    assert!(svc.source_ranges.is_empty());
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
}

// ---- protocols ----

#[test]
fn udp_ports_match_udp_slice_ports() {
    let svc = "\
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  type: NodePort
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353, nodePort: 30054}
";
    let eps = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: default, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports:
- {name: dns, port: 5353, protocol: UDP}
- {name: dns-tcp, port: 5354, protocol: TCP}
- {name: dns, port: 9999, protocol: TCP}
endpoints:
- {addresses: [198.18.10.53], nodeName: node-a}
";
    let plan = plan(&docs(&[svc.into(), eps.into()]));
    let udp = key("default", "dns", "dns", Protocol::Udp);
    assert_eq!(
        plan.services[&udp],
        service_plan(
            vec![node_port(30053)],
            vec![ready("198.18.10.53", 5353, "node-a")]
        )
    );
    assert_eq!(
        plan.services[&tcp("dns", "dns-tcp")],
        service_plan(
            vec![node_port(30054)],
            vec![ready("198.18.10.53", 5354, "node-a")]
        )
    );
    assert_eq!(plan.services.len(), 2);
}

#[test]
fn sctp_ports_are_skipped_with_a_warning() {
    let svc = "\
apiVersion: v1
kind: Service
metadata: {name: mixed, namespace: default}
spec:
  type: NodePort
  ports:
  - {name: sig, port: 3868, protocol: SCTP, nodePort: 30868}
  - {name: http, port: 80, nodePort: 30080}
";
    let plan = plan(svc);
    let keys: Vec<_> = plan.services.keys().map(ToString::to_string).collect();
    assert_eq!(keys, ["default/mixed:http/TCP"]);
    assert_eq!(plan.warnings.len(), 1);
    assert!(
        plan.warnings[0].contains("default/mixed: port \"sig\": protocol SCTP is not supported"),
        "{:?}",
        plan.warnings
    );
}

// ---- IPv6 ----

#[test]
fn ipv6_is_ignored_with_one_warning_per_service() {
    let svc = "\
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv6, IPv4]
  clusterIP: fd00::20
  clusterIPs: [fd00::20, 198.19.128.20]
  externalIPs: [2001:db8::5, 198.18.50.5]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 2001:db8::1}, {ip: 198.19.255.5}]
";
    let slices = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-v6, namespace: default, labels: {kubernetes.io/service-name: dual}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: ['fd00:10::1'], nodeName: node-a}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-v4, namespace: default, labels: {kubernetes.io/service-name: dual}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [198.18.10.1], nodeName: node-a}]
";
    let v6_only = "\
apiVersion: v1
kind: Service
metadata: {name: v6only, namespace: default}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  clusterIP: fd00::21
  ports: [{port: 80, nodePort: 30081}]
";
    let plan = plan(&docs(&[svc.into(), slices.into(), v6_only.into()]));
    assert_eq!(
        plan.services[&tcp("dual", "http")],
        service_plan(
            vec![
                lb("198.19.255.5", 80, false),
                external("198.18.50.5", 80),
                node_port(30080)
            ],
            vec![ready("198.18.10.1", 8080, "node-a")]
        )
    );
    assert_eq!(plan.services.len(), 1);
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    assert!(plan.warnings[0].starts_with("default/dual: IPv6 is not load-balanced; ignored load-balancer ingress 2001:db8::1, external IP 2001:db8::5"), "{:?}", plan.warnings);
    assert!(
        plan.warnings[1].starts_with("default/v6only: single-stack IPv6 Service"),
        "{:?}",
        plan.warnings
    );
}

// ---- node addresses ----

#[test]
fn local_addresses_and_backend_node_addresses() {
    let node = NodeIdentity {
        extra_local_addrs: vec![ip("198.18.0.200")],
        ..node_a()
    };
    let yaml = docs(&[
        NODES.into(),
        node_port_service("web", "8080", 30081),
        slice(
            "web-1",
            "web",
            "http",
            "8080",
            "TCP",
            &[
                &ep("198.18.10.1", "node-a", ""),
                &ep("198.18.30.1", "node-x", ""),
                "{addresses: [198.18.40.1]}",
            ],
        ),
    ]);
    let plan = compile(&state(&yaml), &node);
    assert_eq!(
        plan.local_addrs,
        BTreeSet::from([ip("198.18.0.11"), ip("198.19.0.11"), ip("198.18.0.200")])
    );
    let backends = &plan.services[&tcp("web", "http")].backends;
    assert_eq!(backends[0], ready("198.18.10.1", 8080, "node-a"));
    // A Node the state does not hold: no node address, one warning naming it.
    assert_eq!(backends[1], ready("198.18.30.1", 8080, "node-x"));
    assert_eq!(backends[1].node_addr, None);
    // No nodeName at all.
    assert_eq!(
        backends[2],
        BackendPlan {
            node_name: None,
            node_addr: None,
            local: false,
            ..ready("198.18.40.1", 8080, "")
        }
    );
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(plan.warnings[0].contains("node-x"));

    // Without this node's Node object only the --iface addresses count, with a warning.
    let other = NodeIdentity {
        node_name: "node-z".into(),
        ..node
    };
    let plan = compile(&state(&yaml), &other);
    assert_eq!(plan.local_addrs, BTreeSet::from([ip("198.18.0.200")]));
    assert!(
        plan.warnings[0].contains("Node node-z is not in the cluster state"),
        "{:?}",
        plan.warnings
    );
    assert!(
        plan.services[&tcp("web", "http")]
            .backends
            .iter()
            .all(|b| !b.local)
    );
}

// ---- conflicts and odd input ----

#[test]
fn a_frontend_claimed_twice_goes_to_the_first_service_port() {
    let plan = plan(&docs(&[
        node_port_service("b-web", "8080", 30081),
        node_port_service("a-web", "8080", 30081),
    ]));
    assert_eq!(plan.services.len(), 1);
    assert!(plan.services.contains_key(&tcp("a-web", "http")));
    assert_eq!(plan.warnings.len(), 1);
    assert!(plan.warnings[0].contains("default/b-web:http/TCP: frontend NodePort 30081/TCP is already used by default/a-web:http/TCP"));
}

#[test]
fn an_invalid_table_size_falls_back_to_the_default() {
    let node = NodeIdentity {
        table_size: 250,
        ..node_a()
    };
    let plan = compile(
        &state(&docs(&[
            NODES.into(),
            node_port_service("web", "8080", 30081),
        ])),
        &node,
    );
    let svc = &plan.services[&tcp("web", "http")];
    // No endpoint: the bottom of the ladder, whatever the cap.
    assert_eq!(svc.table_size, MAGLEV_LADDER[0]);
    assert!(
        plan.warnings[0].contains("not prime")
            && plan.warnings[0].contains("using the default table size 16381"),
        "{:?}",
        plan.warnings
    );
}

// ---- determinism ----

#[test]
fn same_input_same_plan_whatever_the_order() {
    let parts = vec![
        NODES.to_owned(),
        node_port_service("web", "8080", 30081),
        node_port_service("api", "9000", 30082),
        slice(
            "web-b",
            "web",
            "http",
            "8080",
            "TCP",
            &[
                &ep("198.18.20.3", "node-c", ""),
                &ep("198.18.10.1", "node-a", ""),
            ],
        ),
        slice(
            "web-a",
            "web",
            "http",
            "8080",
            "TCP",
            &[
                &ep("198.18.20.9", "node-c", "ready: false, terminating: true"),
                &ep("198.18.10.1", "node-a", ""),
            ],
        ),
        slice(
            "api-a",
            "api",
            "http",
            "9000",
            "TCP",
            &[&ep("198.18.20.7", "node-c", "")],
        ),
    ];
    let forward = state(&docs(&parts));
    let mut reversed_parts = parts.clone();
    reversed_parts.reverse();
    // Endpoints listed in another order inside the slices, too.
    let reversed_parts: Vec<String> = reversed_parts
        .into_iter()
        .map(|p| {
            if p.contains("name: web-b") {
                slice(
                    "web-b",
                    "web",
                    "http",
                    "8080",
                    "TCP",
                    &[
                        &ep("198.18.10.1", "node-a", ""),
                        &ep("198.18.20.3", "node-c", ""),
                    ],
                )
            } else {
                p
            }
        })
        .collect();
    let reversed = state(&docs(&reversed_parts));

    let first = compile(&forward, &node_a());
    assert_eq!(compile(&forward, &node_a()), first, "same input twice");
    assert_eq!(
        compile(&reversed, &node_a()),
        first,
        "input order does not matter"
    );
    assert_eq!(
        serde_json::to_string(&compile(&reversed, &node_a())).unwrap(),
        serde_json::to_string(&first).unwrap()
    );
    assert_eq!(first.services.len(), 2);
    assert_eq!(first.services[&tcp("web", "http")].backends.len(), 3);
}

// ---- the example in docs/manifests.md ----

#[test]
fn docs_example_compiles_as_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join("tests/fixtures/docs-example.yaml");
    // The fixture is the document's example, verbatim.
    let doc = std::fs::read_to_string(root.join("../docs/manifests.md")).unwrap();
    let text = std::fs::read_to_string(&fixture).unwrap();
    let example = text.split_once('\n').unwrap().1;
    assert!(
        doc.contains(&format!("```yaml\n{example}```")),
        "docs example and fixture differ"
    );

    let loaded = manifest::load(&fixture).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let plan = compile(&loaded.state, &node_a());
    let backends = vec![
        ready("198.18.10.11", 8080, "node-a"),
        ready("198.18.20.12", 8080, "node-c"),
        backend("198.18.20.13", 8080, "node-c", 0, BackendState::Terminating),
    ];
    let expected = DatapathPlan {
        services: [(
            tcp("nginx", "http"),
            ServicePlan {
                source_ranges: vec![(ip("198.18.0.0"), 15)],
                ..service_plan(
                    vec![lb("198.19.255.1", 80, true), node_port(30080)],
                    backends,
                )
            },
        )]
        .into(),
        local_addrs: [ip("198.18.0.11"), ip("198.19.0.11")].into(),
        health_check_node_ports: Default::default(),
        warnings: vec![],
    };
    assert_eq!(plan, expected);
    let svc = &plan.services[&tcp("nginx", "http")];
    let counts = slot_counts(svc);
    assert_eq!(counts[2], 0);
    assert_eq!(counts[0] + counts[1], svc.table_size as usize);
}

// ---- externalTrafficPolicy, healthCheckNodePort, sessionAffinity ----

/// A LoadBalancer Service `default/NAME` (VIP 198.19.255.9) with `http` 80 -> 8080 (nodePort
/// 30090) and `https` 443 -> 8443 (nodePort 30091), and the given extra `spec` lines.
fn lb_service(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 198.19.128.30
{extra_spec}  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30090}}
  - {{name: https, port: 443, protocol: TCP, targetPort: 8443, nodePort: 30091}}
status:
  loadBalancer:
    ingress: [{{ip: 198.19.255.9}}]
"
    )
}

fn lb_frontends() -> Vec<FrontendPlan> {
    vec![lb("198.19.255.9", 80, false), node_port(30090)]
}

/// Endpoints on both nodes for `default/web`, ports `http` 8080 and `https` 8443.
fn mixed_endpoints(endpoints: &[&str]) -> String {
    let mut s = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: https, port: 8443, protocol: TCP}
endpoints:
"
    .to_string();
    for e in endpoints {
        s.push_str(&format!("- {e}\n"));
    }
    s
}

#[test]
fn local_traffic_policy_keeps_only_this_nodes_endpoints() {
    let plan = plan(&docs(&[
        lb_service("web", "  externalTrafficPolicy: Local\n"),
        mixed_endpoints(&[
            &ep("198.18.10.1", "node-a", "ready: true"),
            &ep("198.18.20.1", "node-c", "ready: true"),
            &ep(
                "198.18.10.2",
                "node-a",
                "ready: false, serving: true, terminating: true",
            ),
            &ep(
                "198.18.20.2",
                "node-c",
                "ready: false, serving: true, terminating: true",
            ),
        ]),
    ]));
    let svc = &plan.services[&tcp("web", "http")];
    let expected = vec![
        ready("198.18.10.1", 8080, "node-a"),
        backend("198.18.10.2", 8080, "node-a", 0, BackendState::Terminating),
    ];
    assert_eq!(
        *svc,
        ServicePlan {
            local_only: true,
            ..service_plan(lb_frontends(), expected)
        }
    );
    assert_eq!(slot_counts(svc), [svc.table_size as usize, 0]);
    assert!(svc.backends.iter().all(|b| b.local));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
}

#[test]
fn local_traffic_policy_falls_back_to_local_terminating_endpoints_only() {
    // A ready endpoint elsewhere does not stop the fallback: kube-proxy computes it over the
    // local endpoints.
    let plan = plan(&docs(&[
        lb_service("web", "  externalTrafficPolicy: Local\n"),
        mixed_endpoints(&[
            &ep("198.18.20.1", "node-c", "ready: true"),
            &ep(
                "198.18.10.2",
                "node-a",
                "ready: false, serving: true, terminating: true",
            ),
            &ep(
                "198.18.10.3",
                "node-a",
                "ready: false, serving: false, terminating: true",
            ),
        ]),
    ]));
    let svc = &plan.services[&tcp("web", "https")];
    let expected = vec![
        backend("198.18.10.2", 8443, "node-a", 1, BackendState::Terminating),
        backend("198.18.10.3", 8443, "node-a", 0, BackendState::Terminating),
    ];
    assert_eq!(
        *svc,
        ServicePlan {
            local_only: true,
            ..service_plan(
                vec![lb("198.19.255.9", 443, false), node_port(30091)],
                expected
            )
        }
    );
    assert_eq!(slot_counts(svc), [svc.table_size as usize, 0]);
}

#[test]
fn local_traffic_policy_without_a_local_endpoint_drops() {
    // The frontends stay, with an empty table: the datapath drops (drop_no_backend) rather than
    // passing the packet to the kernel or sending it to another node.
    let plan = plan(&docs(&[
        lb_service("web", "  externalTrafficPolicy: Local\n"),
        mixed_endpoints(&[&ep("198.18.20.1", "node-c", "ready: true")]),
    ]));
    let svc = &plan.services[&tcp("web", "http")];
    assert_eq!(svc.frontends, lb_frontends());
    assert!(svc.backends.is_empty());
    assert!(svc.local_only);
    assert_empty_table(svc);
}

#[test]
fn cluster_traffic_policy_is_the_default_and_local_needs_an_external_frontend() {
    for extra in ["", "  externalTrafficPolicy: Cluster\n"] {
        let plan = plan(&docs(&[
            lb_service("web", extra),
            mixed_endpoints(&[
                &ep("198.18.10.1", "node-a", "ready: true"),
                &ep("198.18.20.1", "node-c", "ready: true"),
            ]),
        ]));
        let svc = &plan.services[&tcp("web", "http")];
        assert!(!svc.local_only);
        assert_eq!(svc.backends.len(), 2, "{extra:?}");
        assert!(plan.health_check_node_ports.is_empty());
    }
    // externalIPs make a ClusterIP Service external: the policy applies to them.
    let plan = plan(&docs(&[
        "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.19.128.31
  externalIPs: [198.19.254.1]
  externalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080}
"
        .into(),
        mixed_endpoints(&[
            &ep("198.18.10.1", "node-a", "ready: true"),
            &ep("198.18.20.1", "node-c", "ready: true"),
        ]),
    ]));
    let svc = &plan.services[&tcp("web", "http")];
    assert_eq!(
        *svc,
        ServicePlan {
            local_only: true,
            ..service_plan(
                vec![external("198.19.254.1", 80)],
                vec![ready("198.18.10.1", 8080, "node-a")]
            )
        }
    );
}

#[test]
fn health_check_node_port_counts_local_ready_addresses() {
    let plan = plan(&docs(&[
        lb_service(
            "web",
            "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n",
        ),
        mixed_endpoints(&[
            // Two ports each, counted once per address.
            &ep("198.18.10.1", "node-a", "ready: true"),
            &ep("198.18.10.2", "node-a", ""), // conditions unset: ready
            // Terminating (even serving) and remote endpoints do not count.
            &ep(
                "198.18.10.3",
                "node-a",
                "ready: false, serving: true, terminating: true",
            ),
            &ep("198.18.10.4", "node-a", "ready: false"),
            &ep("198.18.20.1", "node-c", "ready: true"),
        ]),
    ]));
    assert_eq!(
        plan.health_check_node_ports,
        [(
            32100,
            HealthCheckPlan {
                namespace: "default".into(),
                name: "web".into(),
                local_endpoints: 2,
            }
        )]
        .into()
    );
}

#[test]
fn health_check_node_port_without_local_endpoints_reports_zero() {
    let plan = plan(&docs(&[
        lb_service(
            "web",
            "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n",
        ),
        mixed_endpoints(&[
            &ep("198.18.20.1", "node-c", "ready: true"),
            &ep(
                "198.18.10.3",
                "node-a",
                "ready: false, serving: true, terminating: true",
            ),
        ]),
    ]));
    assert_eq!(plan.health_check_node_ports[&32100].local_endpoints, 0);
    // ... while traffic still goes to the local terminating endpoint (the fallback).
    let svc = &plan.services[&tcp("web", "http")];
    assert_eq!(svc.backends.len(), 1);
    assert_eq!(svc.backends[0].weight, 1);
}

#[test]
fn health_check_node_ports_only_for_local_load_balancers() {
    // A NodePort Service with the Local policy has no health check (the API allocates none;
    // a hand-written one is ignored), nor has a Cluster-policy LoadBalancer.
    let node_port_local = node_port_service("np", "8080", 30081).replace(
        "  type: NodePort\n",
        "  type: NodePort\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32101\n",
    );
    let plan = plan(&docs(&[
        node_port_local,
        lb_service("web", "  healthCheckNodePort: 32102\n"),
    ]));
    assert!(plan.health_check_node_ports.is_empty());
    assert!(plan.services[&tcp("np", "http")].local_only);
}

#[test]
fn a_health_check_node_port_claimed_twice_goes_to_the_first_service() {
    let local = "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n";
    let plan = plan(&docs(&[
        lb_service("web-b", local)
            .replace("198.19.255.9", "198.19.255.8")
            .replace("30090", "30190")
            .replace("30091", "30191"),
        lb_service("web-a", local),
    ]));
    assert_eq!(plan.health_check_node_ports[&32100].name, "web-a");
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(
        plan.warnings[0]
            .contains("default/web-b: healthCheckNodePort 32100 is already used by default/web-a"),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn session_affinity_client_ip_carries_its_timeout() {
    let cases = [
        ("", None, false),
        ("  sessionAffinity: None\n", None, false),
        ("  sessionAffinity: ClientIP\n", Some(10_800), false),
        (
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
            Some(60),
            false,
        ),
        (
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}\n",
            Some(86_400),
            false,
        ),
        (
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n",
            Some(10_800),
            true,
        ),
    ];
    for (extra, want, warned) in cases {
        let plan = plan(&docs(&[
            lb_service("web", extra),
            mixed_endpoints(&[&ep("198.18.10.1", "node-a", "ready: true")]),
        ]));
        for port in ["http", "https"] {
            assert_eq!(
                plan.services[&tcp("web", port)].affinity_timeout,
                want,
                "{extra:?}"
            );
        }
        assert_eq!(!plan.warnings.is_empty(), warned, "{:?}", plan.warnings);
        if warned {
            assert!(plan.warnings[0].contains("timeoutSeconds 0 is outside 1..=86400"));
        }
    }
}

#[test]
fn allocate_load_balancer_node_ports_false_without_a_node_port() {
    // The API allocates no nodePort then: only the load-balancer frontend.
    let plan = plan(
        &lb_service("web", "  allocateLoadBalancerNodePorts: false\n")
            .replace(", nodePort: 30090", "")
            .replace(", nodePort: 30091", ""),
    );
    assert_eq!(
        plan.services[&tcp("web", "http")].frontends,
        vec![lb("198.19.255.9", 80, false)]
    );
}
