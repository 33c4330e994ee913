//! `compile()`: the pure step from cluster state to what one node's datapath should hold.
//!
//! [`compile`] reads Services, EndpointSlices and Nodes from a [`ClusterState`] and produces a
//! [`DatapathPlan`]: per service port its frontends, its backends in canonical Maglev order and
//! its Maglev table size (the table itself is built when it is written to the maps). It does no I/O, reads no clock and iterates only ordered maps, so the same
//! state and identity give the same plan on every call and every node.
//!
//! The semantics are kube-proxy's wherever kube-proxy defines them (see `docs/manifests.md` for
//! the full list):
//!
//! * Skipped entirely: Services labelled `service.kubernetes.io/service-proxy-name` (another
//!   proxy owns them), `type: ExternalName`, headless Services (`clusterIP: None`), and
//!   single-stack IPv6 Services.
//! * Frontends per `spec.ports[]` entry (TCP or UDP; default TCP): the IPv4
//!   `status.loadBalancer.ingress[].ip`s of a `LoadBalancer` Service (except `ipMode: Proxy`),
//!   the IPv4 `spec.externalIPs` of any Service, and the `nodePort` of a `NodePort` or
//!   `LoadBalancer` Service whenever it is set (also with `allocateLoadBalancerNodePorts: false`).
//! * Backends from the Service's IPv4 EndpointSlices: the slice port with the service port's name
//!   and protocol gives the target port for that slice's endpoints. Ready endpoints take new
//!   flows; with none ready, serving+terminating ones do; other terminating ones stay listed with
//!   weight 0 so established flows keep them.
//! * `externalTrafficPolicy: Local` (on a Service reachable from outside): only this node's
//!   endpoints, the same fallback computed over them; no local endpoint leaves an empty table
//!   (the datapath drops). A `LoadBalancer` Service of this policy gets its `healthCheckNodePort`
//!   served with the number of local ready endpoints.
//! * `sessionAffinity: ClientIP` carries its timeout (default 10800 s) into the plan.
//! * `loadBalancerSourceRanges` apply to the load-balancer frontends only.
//!
//! Input that cannot be used is skipped with a line in [`DatapathPlan::warnings`]; compile never
//! fails.
//!
//! # Incremental compilation
//!
//! A Service compiles on its own, from its object, its EndpointSlices and the Nodes its
//! endpoints name; only one thing couples Services: a frontend (address, port, protocol) that
//! two service ports claim goes to the first in `namespace/name`, `spec.ports` order. [`Compiler`]
//! exploits this: it keeps the last plan and, given the [`Changes`] a [`ClusterState`] recorded,
//! recompiles only the Services that changed (and those that compete with them for a
//! frontend, and those with endpoints on a Node whose addresses changed), then re-resolves the
//! claims. [`compile`] is the same code with every Service dirty, so both give the same plan for
//! the same state (`tests/compile_incremental.rs` checks this on random change sequences).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::Endpoint;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lb_common::maglev::{self, MaglevBackend};
use lb_common::maps::MAGLEV_DEFAULT_TABLE_SIZE;

use crate::compile::plan::{
    BackendPlan, BackendState, DatapathPlan, FrontendKind, FrontendPlan, HealthCheckPlan,
    NodeIdentity, Protocol, ServicePlan, ServicePortKey,
};
use crate::source::cluster::{Changes, ClusterState, LABEL_SERVICE_PROXY_NAME, ObjectKey};

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (Kubernetes' default, 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The largest `timeoutSeconds` the API accepts (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// Compiles the cluster state into this node's datapath plan. Pure and deterministic.
pub fn compile(state: &ClusterState, node: &NodeIdentity) -> DatapathPlan {
    let mut compiler = Compiler::new();
    compiler.update(state, node, &Changes::default());
    compiler.into_plan()
}

/// Keeps the last plan and recompiles only what changed. See the module documentation.
///
/// Feed it every change: [`Compiler::update`] with the [`Changes`] that
/// [`ClusterState::take_changes`] returned since the previous update. The first update (and any
/// update after a change of the node's name or table size) compiles everything.
#[derive(Debug, Default)]
pub struct Compiler {
    /// The identity of the last update; `None` before the first.
    node: Option<NodeIdentity>,
    plan: DatapathPlan,
    services: BTreeMap<ObjectKey, CompiledService>,
    /// Every claim on a datapath frontend, by the ports that want it, in compile order.
    claims: BTreeMap<Claim, Claimants>,
    /// Node name -> Services with endpoints naming it.
    by_node: BTreeMap<String, BTreeSet<ObjectKey>>,
    /// How many Services the last update compiled (for logs and tests).
    last_compiled: usize,
    /// The Service ports whose plan entry the last update wrote; `None` when it rebuilt the
    /// whole plan.
    touched: Option<BTreeSet<ServicePortKey>>,
}

/// A datapath frontend key: address (`None` = NodePort on every local address), port, protocol.
type Claim = (Option<Ipv4Addr>, u16, Protocol);

/// Where a port comes in compile order: its Service, then its index in `spec.ports`.
type PortOrder = (ObjectKey, usize);

/// The ports that claim one frontend, in compile order (the first one gets it). Almost always
/// one: a sorted vector, where a map would allocate a node for eleven per frontend (14 MiB of
/// the compiler's memory at 10,000 Services).
#[derive(Debug, Default)]
struct Claimants(Vec<(PortOrder, ServicePortKey)>);

impl Claimants {
    fn insert(&mut self, order: PortOrder, key: ServicePortKey) {
        match self.0.binary_search_by(|(o, _)| o.cmp(&order)) {
            Ok(i) => self.0[i].1 = key,
            Err(i) => self.0.insert(i, (order, key)),
        }
    }

    fn remove(&mut self, order: &PortOrder) {
        if let Ok(i) = self.0.binary_search_by(|(o, _)| o.cmp(order)) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The port that gets the frontend.
    fn first(&self) -> Option<(&PortOrder, &ServicePortKey)> {
        self.0.first().map(|(o, k)| (o, k))
    }

    fn orders(&self) -> impl Iterator<Item = &PortOrder> {
        self.0.iter().map(|(o, _)| o)
    }
}

/// What the compiler remembers of a Service between updates.
#[derive(Debug, Default)]
struct CompiledService {
    /// The frontends each port wants, for the claims index.
    wants: Vec<(PortOrder, Vec<Claim>)>,
    /// Its warnings in the plan, claims resolved.
    warnings: Vec<String>,
    /// The keys it holds in `plan.services`.
    planned: Vec<ServicePortKey>,
    health_check: Option<(u16, HealthCheckPlan)>,
    /// Nodes named by its endpoints (any port, any condition).
    nodes: BTreeSet<String>,
    /// Nodes not in the state that its planned backends run on.
    unknown_nodes: BTreeSet<String>,
}

/// A Service compiled on its own, before frontend claims are resolved.
struct ServiceOutput {
    items: Vec<Item>,
    health_check: Option<(u16, HealthCheckPlan)>,
    nodes: BTreeSet<String>,
}

/// Warnings and ports, in the order compile met them.
enum Item {
    Warning(String),
    Port(Box<PortOutput>),
}

struct PortOutput {
    order: PortOrder,
    key: ServicePortKey,
    /// The frontends this port wants, sorted by (kind, addr, port), possibly with repeats.
    wants: Vec<FrontendPlan>,
    /// Everything but the frontends (filled in once claims are resolved).
    plan: ServicePlan,
    /// Warnings about its backends; emitted only if the port keeps a frontend.
    backend_warnings: Vec<String>,
    unknown_nodes: BTreeSet<String>,
}

impl Compiler {
    pub fn new() -> Compiler {
        Compiler::default()
    }

    /// The plan of the last update.
    pub fn plan(&self) -> &DatapathPlan {
        &self.plan
    }

    pub fn into_plan(self) -> DatapathPlan {
        self.plan
    }

    /// How many Services the last update compiled.
    pub fn last_compiled(&self) -> usize {
        self.last_compiled
    }

    /// The Service ports whose plan entry the last update (re)wrote or removed, or `None` if
    /// it rebuilt the whole plan. Every other entry of [`Compiler::plan`] is the very one the
    /// update before left, which lets the reconciler skip rebuilding its Maglev table
    /// ([`crate::datapath::reconcile::Reconciler::apply_changed`]).
    pub fn last_touched(&self) -> Option<&BTreeSet<ServicePortKey>> {
        self.touched.as_ref()
    }

    /// Brings the plan up to date with `state`, given what changed since the last update.
    pub fn update(
        &mut self,
        state: &ClusterState,
        node: &NodeIdentity,
        changes: &Changes,
    ) -> &DatapathPlan {
        let mut header = Vec::new();
        let table_size = match maglev::check_table_size(node.table_size) {
            Ok(()) => node.table_size,
            Err(e) => {
                // The CLI validates the size; this keeps the plan well-formed if it did not.
                header.push(format!(
                    "{e}; using the default table size {MAGLEV_DEFAULT_TABLE_SIZE}"
                ));
                MAGLEV_DEFAULT_TABLE_SIZE
            }
        };
        let everything = self.node.as_ref().is_none_or(|last| {
            last.node_name != node.node_name || last.table_size != node.table_size
        });
        let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
        if everything {
            self.services.clear();
            self.claims.clear();
            self.by_node.clear();
            self.plan.services.clear();
            dirty.extend(state.services().map(|(k, _)| k.clone()));
        } else {
            dirty.extend(changes.services.iter().cloned());
            for name in &changes.nodes {
                dirty.extend(self.by_node.get(name).into_iter().flatten().cloned());
            }
        }
        self.node = Some(node.clone());
        self.touched = if everything {
            None
        } else {
            Some(BTreeSet::new())
        };

        // Forget what the dirty Services held; note the frontends they claimed.
        let mut contested: BTreeSet<Claim> = BTreeSet::new();
        for key in &dirty {
            if let Some(old) = self.forget(key) {
                contested.extend(old.wants.into_iter().flat_map(|(_, c)| c));
            }
        }
        // Compile them afresh and index what they want.
        let mut outputs: BTreeMap<ObjectKey, ServiceOutput> = BTreeMap::new();
        for key in &dirty {
            if let Some(service) = state.service(&key.namespace, &key.name) {
                let output = compile_service(state, node, table_size, key, service);
                for (order, port_key, claims) in output.wants() {
                    for claim in claims {
                        contested.insert(claim);
                        self.claims
                            .entry(claim)
                            .or_default()
                            .insert(order.clone(), port_key.clone());
                    }
                }
                outputs.insert(key.clone(), output);
            }
        }
        // Services competing for a frontend a dirty one claimed (or gave up) resolve again. Their
        // own input did not change, so neither do their claims: no further propagation.
        let rivals: BTreeSet<ObjectKey> = contested
            .iter()
            .filter_map(|c| self.claims.get(c))
            .flat_map(|ports| ports.orders().map(|(key, _)| key.clone()))
            .filter(|key| !outputs.contains_key(key))
            .collect();
        for key in rivals {
            if let (Some(service), Some(_)) = (
                state.service(&key.namespace, &key.name),
                self.forget_plan(&key),
            ) {
                outputs.insert(
                    key.clone(),
                    compile_service(state, node, table_size, &key, service),
                );
            }
        }
        self.last_compiled = outputs.len();

        for (key, output) in outputs {
            let compiled = self.assemble(output);
            for name in &compiled.nodes {
                self.by_node
                    .entry(name.clone())
                    .or_default()
                    .insert(key.clone());
            }
            self.services.insert(key, compiled);
        }

        // The plan-wide parts are cheap and recomputed every time.
        self.plan.local_addrs = BTreeSet::new();
        match state.node(&node.node_name) {
            Some(this) => {
                let addrs = node_addresses(this, &["InternalIP", "ExternalIP"]);
                self.plan.local_addrs.extend(addrs);
            }
            None => header.push(format!(
                "Node {} is not in the cluster state: NodePorts match only the --iface addresses",
                node.node_name
            )),
        }
        self.plan
            .local_addrs
            .extend(node.extra_local_addrs.iter().copied());
        let mut warnings = header;
        let mut unknown_nodes = BTreeSet::new();
        let mut health_checks: BTreeMap<u16, HealthCheckPlan> = BTreeMap::new();
        let mut health_warnings = Vec::new();
        for compiled in self.services.values() {
            warnings.extend(compiled.warnings.iter().cloned());
            unknown_nodes.extend(compiled.unknown_nodes.iter().cloned());
            if let Some((port, check)) = &compiled.health_check {
                match health_checks.get(port) {
                    Some(first) => health_warnings.push(format!(
                        "{}/{}: healthCheckNodePort {port} is already used by {}/{}; ignored here",
                        check.namespace, check.name, first.namespace, first.name
                    )),
                    None => {
                        health_checks.insert(*port, check.clone());
                    }
                }
            }
        }
        if !unknown_nodes.is_empty() {
            let names: Vec<&str> = unknown_nodes.iter().map(String::as_str).collect();
            warnings.push(format!(
                "backends run on Node(s) not in the cluster state, so without a node address: {}",
                names.join(", ")
            ));
        }
        warnings.extend(health_warnings);
        self.plan.warnings = warnings;
        self.plan.health_check_node_ports = health_checks;
        &self.plan
    }

    /// Removes a Service from the plan, the claims index and the node index.
    fn forget(&mut self, key: &ObjectKey) -> Option<CompiledService> {
        let old = self.services.remove(key)?;
        for key in &old.planned {
            self.plan.services.remove(key);
            if let Some(touched) = &mut self.touched {
                touched.insert(key.clone());
            }
        }
        for (order, claims) in &old.wants {
            for claim in claims {
                if let Some(ports) = self.claims.get_mut(claim) {
                    ports.remove(order);
                    if ports.is_empty() {
                        self.claims.remove(claim);
                    }
                }
            }
        }
        for name in &old.nodes {
            if let Some(keys) = self.by_node.get_mut(name) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_node.remove(name);
                }
            }
        }
        Some(old)
    }

    /// Removes a Service's ports from the plan but keeps its claims (they do not change).
    fn forget_plan(&mut self, key: &ObjectKey) -> Option<()> {
        let old = self.services.get(key)?;
        for key in &old.planned {
            self.plan.services.remove(key);
            if let Some(touched) = &mut self.touched {
                touched.insert(key.clone());
            }
        }
        Some(())
    }

    /// Resolves a compiled Service's frontend claims and moves its ports into the plan.
    fn assemble(&mut self, output: ServiceOutput) -> CompiledService {
        let mut compiled = CompiledService {
            wants: output
                .wants()
                .map(|(order, _, claims)| (order.clone(), claims))
                .collect(),
            health_check: output.health_check,
            nodes: output.nodes,
            ..CompiledService::default()
        };
        for item in output.items {
            let port = match item {
                Item::Warning(w) => {
                    compiled.warnings.push(w);
                    continue;
                }
                Item::Port(port) => *port,
            };
            let PortOutput {
                order,
                key,
                wants,
                mut plan,
                backend_warnings,
                unknown_nodes,
            } = port;
            let mut kept: Vec<FrontendPlan> = Vec::with_capacity(wants.len());
            for frontend in wants {
                let shown = show_frontend(&frontend, key.protocol);
                if let Some(first) = kept
                    .iter()
                    .find(|k| (k.addr, k.port) == (frontend.addr, frontend.port))
                {
                    // The same address listed twice is harmless; as both kinds, the
                    // load-balancer one (sorted first) wins, so its source ranges stay enforced.
                    if first.kind != frontend.kind {
                        compiled.warnings.push(format!(
                            "{key}: {shown} is both a load-balancer ingress IP and an external IP; \
                             kept as load-balancer"
                        ));
                    }
                    continue;
                }
                let claim = (frontend.addr, frontend.port, key.protocol);
                let owner = self.claims.get(&claim).and_then(Claimants::first);
                if let Some((owner_order, owner)) = owner
                    && *owner_order != order
                {
                    compiled.warnings.push(format!(
                        "{key}: frontend {shown} is already used by {owner}; ignored here"
                    ));
                    continue;
                }
                kept.push(frontend);
            }
            if kept.is_empty() {
                continue;
            }
            compiled.warnings.extend(backend_warnings);
            compiled.unknown_nodes.extend(unknown_nodes);
            if !kept.iter().any(|f| f.source_ranges_apply) {
                plan.source_ranges = Vec::new();
            }
            plan.frontends = kept;
            compiled.planned.push(key.clone());
            if let Some(touched) = &mut self.touched {
                touched.insert(key.clone());
            }
            self.plan.services.insert(key, plan);
        }
        compiled
    }
}

impl ServiceOutput {
    /// Each port's compile order, key and the claims of the frontends it wants.
    fn wants(&self) -> impl Iterator<Item = (&PortOrder, &ServicePortKey, Vec<Claim>)> + '_ {
        self.items.iter().filter_map(|item| match item {
            Item::Port(port) => {
                let mut claims: Vec<Claim> = port
                    .wants
                    .iter()
                    .map(|f| (f.addr, f.port, port.key.protocol))
                    .collect();
                claims.sort();
                claims.dedup();
                Some((&port.order, &port.key, claims))
            }
            Item::Warning(_) => None,
        })
    }
}

/// What a Service contributes to all of its ports.
struct ServiceFrontends {
    lb_ips: Vec<Ipv4Addr>,
    external_ips: Vec<Ipv4Addr>,
    node_ports: bool,
    source_ranges: Vec<(Ipv4Addr, u8)>,
    local_only: bool,
    affinity_timeout: Option<u32>,
}

/// An endpoint's conditions, best first (the order matters: duplicates keep the best).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Condition {
    Ready,
    ServingTerminating,
    Terminating,
}

#[derive(Debug)]
struct Candidate {
    condition: Condition,
    node_name: Option<String>,
}

/// Compiles one Service on its own: everything but the resolution of frontend claims.
fn compile_service(
    state: &ClusterState,
    node: &NodeIdentity,
    table_size: u32,
    key: &ObjectKey,
    service: &Service,
) -> ServiceOutput {
    let mut c = ServiceCompiler {
        state,
        node,
        table_size,
        output: ServiceOutput {
            items: Vec::new(),
            health_check: None,
            nodes: BTreeSet::new(),
        },
        local_ready: BTreeSet::new(),
    };
    c.service(key, service);
    c.output
}

struct ServiceCompiler<'a> {
    state: &'a ClusterState,
    node: &'a NodeIdentity,
    table_size: u32,
    output: ServiceOutput,
    /// Distinct addresses of this node's ready endpoints, over all ports (the health check).
    local_ready: BTreeSet<Ipv4Addr>,
}

impl ServiceCompiler<'_> {
    fn warn(&mut self, message: String) {
        self.output.items.push(Item::Warning(message));
    }

    fn service(&mut self, key: &ObjectKey, service: &Service) {
        if service
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME))
        {
            return;
        }
        let Some(spec) = service.spec.as_ref() else {
            return;
        };
        let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
        if service_type == "ExternalName" || spec.cluster_ip.as_deref() == Some("None") {
            return;
        }
        let is_load_balancer = service_type == "LoadBalancer";
        let is_node_port = is_load_balancer || service_type == "NodePort";
        let has_external_ips = spec
            .external_ips
            .as_ref()
            .is_some_and(|ips| !ips.is_empty());
        if !serves_ipv4(spec) {
            if is_node_port || has_external_ips {
                self.warn(format!(
                    "{key}: single-stack IPv6 Service: xlb load-balances IPv4 only; skipped"
                ));
            }
            return;
        }

        let mut ipv6_ignored = Vec::new();
        let mut frontends = ServiceFrontends {
            lb_ips: Vec::new(),
            external_ips: Vec::new(),
            node_ports: is_node_port,
            source_ranges: Vec::new(),
            // kube-proxy's ExternalPolicyLocal: the policy counts only for Services reachable
            // from outside, which for xlb is every frontend it programs.
            local_only: (is_node_port || has_external_ips)
                && spec.external_traffic_policy.as_deref() == Some("Local"),
            affinity_timeout: None,
        };
        if is_load_balancer {
            let ingress = service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            for ingress in ingress.into_iter().flatten() {
                // kube-proxy programs only VIP-mode ingress IPs: with `ipMode: Proxy` the load
                // balancer proxies and packets arrive addressed to the node.
                if ingress.ip_mode.as_deref() == Some("Proxy") {
                    continue;
                }
                let Some(ip) = ingress.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                    continue;
                };
                match ip.trim().parse::<IpAddr>() {
                    Ok(IpAddr::V4(v4)) => frontends.lb_ips.push(v4),
                    Ok(IpAddr::V6(_)) => ipv6_ignored.push(format!("load-balancer ingress {ip}")),
                    Err(_) => self.warn(format!(
                        "{key}: invalid load-balancer ingress IP {ip:?} ignored"
                    )),
                }
            }
            for range in spec.load_balancer_source_ranges.iter().flatten() {
                match parse_cidr(range) {
                    Ok(Some(cidr)) => frontends.source_ranges.push(cidr),
                    Ok(None) => ipv6_ignored.push(format!("source range {range}")),
                    Err(()) => self.warn(format!(
                        "{key}: invalid loadBalancerSourceRanges entry {range:?} ignored"
                    )),
                }
            }
            frontends.source_ranges.sort();
            frontends.source_ranges.dedup();
        }
        for ip in spec.external_ips.iter().flatten() {
            match ip.trim().parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => frontends.external_ips.push(v4),
                Ok(IpAddr::V6(_)) => ipv6_ignored.push(format!("external IP {ip}")),
                Err(_) => self.warn(format!("{key}: invalid externalIPs entry {ip:?} ignored")),
            }
        }
        if !ipv6_ignored.is_empty() {
            self.warn(format!(
                "{key}: IPv6 is not load-balanced; ignored {}",
                ipv6_ignored.join(", ")
            ));
        }
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            frontends.affinity_timeout = Some(match configured {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT as i32).contains(&t) => t as u32,
                Some(t) => {
                    self.warn(format!(
                        "{key}: sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside \
                         1..={MAX_AFFINITY_TIMEOUT}; using {DEFAULT_AFFINITY_TIMEOUT}"
                    ));
                    DEFAULT_AFFINITY_TIMEOUT
                }
            });
        }

        let mut seen_ports = BTreeSet::new();
        for (index, port) in spec.ports.iter().flatten().enumerate() {
            let port_name = port.name.clone().unwrap_or_default();
            let shown = if port_name.is_empty() {
                format!("ports[{index}]")
            } else {
                format!("port {port_name:?}")
            };
            let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
            let Some(protocol) = Protocol::from_k8s(protocol_name) else {
                self.warn(format!(
                    "{key}: {shown}: protocol {protocol_name} is not supported (TCP and UDP are); \
                     skipped"
                ));
                continue;
            };
            let port_key = ServicePortKey {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                port_name,
                protocol,
            };
            if !seen_ports.insert(port_key.clone()) {
                self.warn(format!(
                    "{port_key}: defined twice in spec.ports; the first one is used"
                ));
                continue;
            }
            self.service_port((key.clone(), index), port_key, port, &frontends);
        }

        // kube-proxy serves a healthCheckNodePort for LoadBalancer Services with the Local
        // policy (the API allocates one only for those).
        if is_load_balancer
            && frontends.local_only
            && let Some(port) = spec.health_check_node_port.filter(|&p| p != 0)
        {
            match valid_port(port) {
                Some(port) => {
                    self.output.health_check = Some((
                        port,
                        HealthCheckPlan {
                            namespace: key.namespace.clone(),
                            name: key.name.clone(),
                            local_endpoints: self.local_ready.len() as u32,
                        },
                    ))
                }
                None => self.warn(format!(
                    "{key}: healthCheckNodePort {port} is out of range; ignored"
                )),
            }
        }
    }

    fn service_port(
        &mut self,
        order: PortOrder,
        key: ServicePortKey,
        port: &ServicePort,
        svc: &ServiceFrontends,
    ) {
        let Some(service_port) = valid_port(port.port) else {
            self.warn(format!(
                "{key}: port {} is out of range; skipped",
                port.port
            ));
            return;
        };

        // ---- frontends (claims are resolved by the Compiler) ----
        let ranges_apply = !svc.source_ranges.is_empty();
        let mut frontends: Vec<FrontendPlan> = Vec::new();
        for &ip in &svc.lb_ips {
            frontends.push(FrontendPlan {
                addr: Some(ip),
                port: service_port,
                kind: FrontendKind::LoadBalancer,
                source_ranges_apply: ranges_apply,
            });
        }
        for &ip in &svc.external_ips {
            frontends.push(FrontendPlan {
                addr: Some(ip),
                port: service_port,
                kind: FrontendKind::ExternalIp,
                source_ranges_apply: false,
            });
        }
        match port.node_port {
            None | Some(0) => {}
            Some(node_port) if svc.node_ports => match valid_port(node_port) {
                Some(node_port) => frontends.push(FrontendPlan {
                    addr: None,
                    port: node_port,
                    kind: FrontendKind::NodePort,
                    source_ranges_apply: false,
                }),
                None => self.warn(format!("{key}: nodePort {node_port} is out of range; ignored")),
            },
            Some(node_port) => self.warn(format!(
                "{key}: nodePort {node_port} ignored: only NodePort and LoadBalancer Services get NodePorts"
            )),
        }
        frontends.sort_by_key(|f| (f.kind, f.addr, f.port));

        // ---- backends ----
        let mut backend_warnings = Vec::new();
        let candidates = self.candidates(&key, port, &mut backend_warnings);
        for ((addr, _), candidate) in &candidates {
            if let Some(name) = &candidate.node_name {
                self.output.nodes.insert(name.clone());
            }
            if candidate.condition == Condition::Ready
                && candidate.node_name.as_deref() == Some(self.node.node_name.as_str())
            {
                self.local_ready.insert(*addr);
            }
        }
        if frontends.is_empty() {
            // Nothing reaches this port; its endpoints still count for the health check.
            return;
        }
        let candidates = if svc.local_only {
            // kube-proxy computes the Local policy's endpoints, terminating fallback included,
            // over this node's endpoints only.
            candidates
                .into_iter()
                .filter(|(_, c)| c.node_name.as_deref() == Some(self.node.node_name.as_str()))
                .collect()
        } else {
            candidates
        };
        let mut unknown_nodes = BTreeSet::new();
        let mut backends = self.select_backends(candidates, &mut unknown_nodes);

        backends.sort_by_key(|b| (b.addr, b.port));
        let maglev_backends: Vec<MaglevBackend> = backends
            .iter()
            .map(|b| MaglevBackend::from_ipv4(b.addr, b.port, b.weight))
            .collect();
        let table_size = maglev::table_size_for(&maglev_backends, self.table_size);
        self.output.items.push(Item::Port(Box::new(PortOutput {
            order,
            key,
            wants: frontends,
            plan: ServicePlan {
                frontends: Vec::new(),
                backends,
                table_size,
                source_ranges: svc.source_ranges.clone(),
                local_only: svc.local_only,
                affinity_timeout: svc.affinity_timeout,
            },
            backend_warnings,
            unknown_nodes,
        })));
    }

    /// The endpoints of a service port, deduplicated by address and target port, with their best
    /// condition. Not-ready endpoints that are not terminating are left out.
    fn candidates(
        &mut self,
        key: &ServicePortKey,
        port: &ServicePort,
        warnings: &mut Vec<String>,
    ) -> BTreeMap<(Ipv4Addr, u16), Candidate> {
        // The target port to use when a slice's matching port entry has no number.
        let fallback_target = match &port.target_port {
            None => valid_port(port.port),
            Some(IntOrString::Int(n)) => valid_port(*n),
            Some(IntOrString::String(s)) => s.parse::<i32>().ok().and_then(valid_port),
        };
        let mut found: BTreeMap<(Ipv4Addr, u16), Candidate> = BTreeMap::new();
        for slice in self.state.endpoint_slices_for(&key.namespace, &key.name) {
            if slice.address_type != "IPv4" {
                continue;
            }
            let slice_name = slice.metadata.name.as_deref().unwrap_or_default();
            // kube-proxy matches slice ports to service ports by name and protocol; the slice's
            // number is the resolved targetPort (named or not) for the endpoints in this slice.
            let entry = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or_default() == key.port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == key.protocol.as_str()
            });
            let Some(entry) = entry else { continue };
            let target = match entry.port {
                Some(n) => match valid_port(n) {
                    Some(p) => p,
                    None => {
                        warnings.push(format!(
                            "{key}: EndpointSlice {slice_name}: port {n} is out of range; slice ignored"
                        ));
                        continue;
                    }
                },
                None => match fallback_target {
                    Some(p) => p,
                    None => {
                        warnings.push(format!(
                            "{key}: EndpointSlice {slice_name} gives no port number for the named targetPort; \
                             slice ignored"
                        ));
                        continue;
                    }
                },
            };
            for endpoint in slice.endpoints.iter().flatten() {
                let Some(condition) = condition(endpoint) else {
                    continue;
                };
                let Some(address) = endpoint.addresses.first() else {
                    continue;
                };
                // Consumers use only the first address (the API says they are fungible).
                let addr = match address.parse::<Ipv4Addr>() {
                    Ok(a) => a,
                    Err(_) => {
                        warnings.push(format!(
                            "{key}: EndpointSlice {slice_name}: endpoint address {address:?} is not IPv4; ignored"
                        ));
                        continue;
                    }
                };
                let candidate = Candidate {
                    condition,
                    node_name: endpoint.node_name.clone(),
                };
                match found.get_mut(&(addr, target)) {
                    // The same endpoint in two slices (slices being rebalanced): keep the best
                    // condition, like kube-proxy where the ready copy wins.
                    Some(existing) => {
                        if candidate.condition < existing.condition {
                            *existing = Candidate {
                                node_name: candidate.node_name.or(existing.node_name.take()),
                                ..candidate
                            };
                        } else if existing.node_name.is_none() {
                            existing.node_name = candidate.node_name;
                        }
                    }
                    None => {
                        found.insert((addr, target), candidate);
                    }
                }
            }
        }
        found
    }

    /// Weights and states: ready endpoints take new flows; with none ready, serving+terminating
    /// ones do (kube-proxy's fallback); every other terminating endpoint is kept with weight 0.
    fn select_backends(
        &self,
        candidates: BTreeMap<(Ipv4Addr, u16), Candidate>,
        unknown_nodes: &mut BTreeSet<String>,
    ) -> Vec<BackendPlan> {
        let any_ready = candidates.values().any(|c| c.condition == Condition::Ready);
        candidates
            .into_iter()
            .map(|((addr, port), candidate)| {
                let (state, weight) = match candidate.condition {
                    Condition::Ready => (BackendState::Ready, 1),
                    Condition::ServingTerminating if !any_ready => (BackendState::Terminating, 1),
                    Condition::ServingTerminating | Condition::Terminating => {
                        (BackendState::Terminating, 0)
                    }
                };
                let local = candidate.node_name.as_deref() == Some(self.node.node_name.as_str());
                let node_addr =
                    candidate
                        .node_name
                        .as_deref()
                        .and_then(|name| match self.state.node(name) {
                            Some(node) => node_addresses(node, &["InternalIP"]).into_iter().next(),
                            None => {
                                if !local {
                                    unknown_nodes.insert(name.to_owned());
                                }
                                None
                            }
                        });
                BackendPlan {
                    addr,
                    port,
                    node_name: candidate.node_name,
                    node_addr,
                    local,
                    weight,
                    state,
                }
            })
            .collect()
    }
}

/// An endpoint's condition as kube-proxy reads it (`ready` and `serving` unset mean true,
/// `terminating` unset means false); `None` for one that is neither ready nor terminating.
fn condition(endpoint: &Endpoint) -> Option<Condition> {
    let c = endpoint.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    match (ready, serving, terminating) {
        (true, _, _) => Some(Condition::Ready),
        (false, true, true) => Some(Condition::ServingTerminating),
        (false, false, true) => Some(Condition::Terminating),
        (false, _, false) => None,
    }
}

/// Whether kube-proxy's IPv4 proxier would handle the Service: `ipFamilies` lists IPv4, or
/// (without `ipFamilies`) the cluster IP(s) include an IPv4 address, or (without either, as in a
/// hand-written manifest) it is assumed IPv4.
fn serves_ipv4(spec: &ServiceSpec) -> bool {
    if let Some(families) = spec.ip_families.as_ref().filter(|f| !f.is_empty()) {
        return families.iter().any(|f| f == "IPv4");
    }
    let ips: Vec<&str> = match spec.cluster_ips.as_ref().filter(|ips| !ips.is_empty()) {
        Some(ips) => ips.iter().map(String::as_str).collect(),
        None => spec.cluster_ip.iter().map(String::as_str).collect(),
    };
    let ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    ips.is_empty() || ips.iter().any(IpAddr::is_ipv4)
}

/// The IPv4 addresses of a Node of the given `status.addresses` types, in the Node's order.
fn node_addresses(node: &Node, types: &[&str]) -> Vec<Ipv4Addr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| types.contains(&a.type_.as_str()))
        .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
        .collect()
}

fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// Parses a CIDR like Go's `net.ParseCIDR` (host bits are masked off): `Ok(Some)` for IPv4,
/// `Ok(None)` for a valid IPv6 CIDR, `Err` for anything else.
fn parse_cidr(s: &str) -> Result<Option<(Ipv4Addr, u8)>, ()> {
    let (addr, len) = s.trim().split_once('/').ok_or(())?;
    let len: u8 = if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) {
        len.parse().map_err(|_| ())?
    } else {
        return Err(());
    };
    match addr.parse::<IpAddr>().map_err(|_| ())? {
        IpAddr::V4(v4) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Ok(Some((Ipv4Addr::from(u32::from(v4) & mask), len)))
        }
        IpAddr::V6(_) if len <= 128 => Ok(None),
        _ => Err(()),
    }
}

fn show_frontend(frontend: &FrontendPlan, protocol: Protocol) -> String {
    match frontend.addr {
        Some(addr) => format!("{addr}:{}/{protocol}", frontend.port),
        None => format!("NodePort {}/{protocol}", frontend.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointConditions;

    #[test]
    fn cidrs_parse_like_go() {
        assert_eq!(
            parse_cidr("198.18.0.0/15"),
            Ok(Some((Ipv4Addr::new(198, 18, 0, 0), 15)))
        );
        assert_eq!(
            parse_cidr(" 198.18.7.9/16 "),
            Ok(Some((Ipv4Addr::new(198, 18, 0, 0), 16)))
        );
        assert_eq!(
            parse_cidr("0.0.0.0/0"),
            Ok(Some((Ipv4Addr::UNSPECIFIED, 0)))
        );
        assert_eq!(
            parse_cidr("198.18.0.1/32"),
            Ok(Some((Ipv4Addr::new(198, 18, 0, 1), 32)))
        );
        assert_eq!(parse_cidr("2001:db8::/32"), Ok(None));
        assert_eq!(parse_cidr("198.18.0.1"), Err(()));
        assert_eq!(parse_cidr("198.18.0.0/33"), Err(()));
        assert_eq!(parse_cidr("198.18.0.0/+8"), Err(()));
        assert_eq!(parse_cidr("nonsense/8"), Err(()));
    }

    #[test]
    fn conditions_follow_kube_proxy() {
        let ep = |ready, serving, terminating| Endpoint {
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            ..Default::default()
        };
        assert_eq!(condition(&Endpoint::default()), Some(Condition::Ready));
        assert_eq!(condition(&ep(None, None, None)), Some(Condition::Ready));
        assert_eq!(
            condition(&ep(Some(true), Some(true), Some(false))),
            Some(Condition::Ready)
        );
        assert_eq!(condition(&ep(Some(false), Some(false), Some(false))), None);
        assert_eq!(
            condition(&ep(Some(false), Some(true), Some(true))),
            Some(Condition::ServingTerminating)
        );
        assert_eq!(
            condition(&ep(Some(false), None, Some(true))),
            Some(Condition::ServingTerminating)
        );
        assert_eq!(
            condition(&ep(Some(false), Some(false), Some(true))),
            Some(Condition::Terminating)
        );
    }

    #[test]
    fn ports_are_validated() {
        assert_eq!(valid_port(80), Some(80));
        assert_eq!(valid_port(0), None);
        assert_eq!(valid_port(65536), None);
        assert_eq!(valid_port(-1), None);
    }

    #[test]
    fn ip_family_detection() {
        let spec = |families: Option<Vec<&str>>, cluster_ip: Option<&str>| ServiceSpec {
            ip_families: families.map(|f| f.into_iter().map(String::from).collect()),
            cluster_ip: cluster_ip.map(String::from),
            ..Default::default()
        };
        assert!(serves_ipv4(&spec(None, None)));
        assert!(serves_ipv4(&spec(Some(vec!["IPv4"]), None)));
        assert!(serves_ipv4(&spec(Some(vec!["IPv6", "IPv4"]), None)));
        assert!(!serves_ipv4(&spec(Some(vec!["IPv6"]), None)));
        assert!(serves_ipv4(&spec(None, Some("198.18.100.10"))));
        assert!(!serves_ipv4(&spec(None, Some("fd00::10"))));
    }
}
