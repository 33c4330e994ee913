//! Builders for the `k8s-openapi` objects the fake API server serves.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus, Service, ServicePort,
    ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(str::to_string),
        name: Some(name.to_string()),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        }),
        ..Default::default()
    }
}

/// A Node with one InternalIP.
pub fn node(name: &str, internal_ip: &str) -> Node {
    Node {
        metadata: meta(None, name, &[]),
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: internal_ip.into(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            ..Default::default()
        }),
    }
}

/// One service port: name, port, targetPort (number or name), nodePort, protocol.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: &'static str,
    pub port: i32,
    pub target: IntOrString,
    pub node_port: Option<i32>,
    pub protocol: &'static str,
}

pub fn tcp_port(name: &'static str, port: i32, target: i32, node_port: i32) -> Port {
    Port {
        name,
        port,
        target: IntOrString::Int(target),
        node_port: Some(node_port),
        protocol: "TCP",
    }
}

/// A `type: LoadBalancer` Service in `default` with ingress IP `vip`.
pub fn load_balancer(name: &str, vip: &str, ports: &[Port]) -> Service {
    Service {
        metadata: meta(Some("default"), name, &[]),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            cluster_ip: Some("198.19.128.10".into()),
            ip_families: Some(vec!["IPv4".into()]),
            external_traffic_policy: Some("Cluster".into()),
            ports: Some(
                ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.into()),
                        port: p.port,
                        target_port: Some(p.target.clone()),
                        node_port: p.node_port,
                        protocol: Some(p.protocol.into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(vip.into()),
                    ip_mode: Some("VIP".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        }),
    }
}

/// Endpoint conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Ready,
    /// Terminating, still serving.
    Terminating,
    /// Neither ready nor terminating (starting, failing its probe).
    NotReady,
}

pub fn endpoint(addr: &str, node: &str, cond: Cond) -> Endpoint {
    let (ready, serving, terminating) = match cond {
        Cond::Ready => (true, true, false),
        Cond::Terminating => (false, true, true),
        Cond::NotReady => (false, false, false),
    };
    Endpoint {
        addresses: vec![addr.into()],
        node_name: Some(node.into()),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        ..Default::default()
    }
}

/// An IPv4 EndpointSlice of `default/SERVICE` with ports `(name, number, protocol)`.
pub fn slice(
    name: &str,
    service: &str,
    ports: &[(&str, i32, &str)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            Some("default"),
            name,
            &[
                ("kubernetes.io/service-name", service),
                (
                    "endpointslice.kubernetes.io/managed-by",
                    "endpointslice-controller.k8s.io",
                ),
            ],
        ),
        address_type: "IPv4".into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p, proto)| EndpointPort {
                    name: Some(n.to_string()),
                    port: Some(*p),
                    protocol: Some(proto.to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: Some(endpoints),
    }
}
