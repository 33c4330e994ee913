//! What the datapath needs to encapsulate and decapsulate: this node's own address (the outer
//! source) and the addresses of every cluster node (the only accepted tunnel sources). A pure
//! function of the cluster state, like `compile()`.
use std::{collections::BTreeSet, net::Ipv4Addr};

use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

use crate::source::cluster::ClusterState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelPlan {
    /// Outer source address; `None` leaves remote backends unreachable (counted drops).
    pub node_addr: Option<Ipv4Addr>,
    /// InternalIPs of all Nodes: tunnel packets from anywhere else are dropped.
    pub nodes: BTreeSet<Ipv4Addr>,
    /// Geneve UDP port.
    pub port: u16,
    pub warnings: Vec<String>,
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// This node's address is its Node's first IPv4 InternalIP, else the first address of its
/// `--iface` interfaces (`iface_addrs`).
pub fn tunnel_plan(
    state: &ClusterState,
    node_name: &str,
    port: u16,
    iface_addrs: &[Ipv4Addr],
) -> TunnelPlan {
    let mut warnings = Vec::new();
    let nodes: BTreeSet<Ipv4Addr> = state.nodes().filter_map(|(_, n)| internal_ip(n)).collect();
    let node_addr = match state.node(node_name).and_then(internal_ip) {
        Some(a) => Some(a),
        None => {
            let fallback = iface_addrs.first().copied();
            warnings.push(match fallback {
                Some(a) => format!(
                    "Node {node_name} has no IPv4 InternalIP: encapsulating from {a}, the first --iface address"
                ),
                None => format!(
                    "Node {node_name} has no IPv4 InternalIP and the interfaces have no IPv4 address: remote backends are unreachable"
                ),
            });
            fallback
        }
    };
    TunnelPlan {
        node_addr,
        nodes,
        port,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn own_address_and_known_nodes_come_from_the_node_objects() {
        let mut state = ClusterState::new();
        state.upsert_node(node("edge-a", "198.18.0.2")).unwrap();
        state.upsert_node(node("node-c", "198.18.0.4")).unwrap();
        let p = tunnel_plan(&state, "edge-a", 6081, &["198.18.9.9".parse().unwrap()]);
        assert_eq!(p.node_addr, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(p.nodes.len(), 2);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn missing_node_falls_back_to_the_interface_with_a_warning() {
        let state = ClusterState::new();
        let p = tunnel_plan(&state, "edge-a", 6081, &["198.18.9.9".parse().unwrap()]);
        assert_eq!(p.node_addr, Some("198.18.9.9".parse().unwrap()));
        assert_eq!(p.warnings.len(), 1);
        let p = tunnel_plan(&state, "edge-a", 6081, &[]);
        assert_eq!(p.node_addr, None);
    }
}
