//! The remote-path packet tests' cluster: node-a is the edge, `web` (198.19.255.1:80) has its
//! pod c1 on node-c and `far` (198.19.255.3:80) its pod d1 on node-d. Each test takes the
//! variant it needs ([`Cluster`]); the addresses are the DSR lab's.
#![allow(dead_code)]

pub const EDGE: [u8; 4] = [198, 18, 0, 2];
pub const NODE_C: [u8; 4] = [198, 18, 0, 4];
pub const NODE_D: [u8; 4] = [198, 18, 0, 5];
pub const NODE_C_MAC: [u8; 6] = [2, 0, 0, 0, 0, 4];
pub const POD_C1: [u8; 4] = [198, 18, 4, 11];
pub const POD_D1: [u8; 4] = [198, 18, 5, 11];
pub const FAR_VIP: [u8; 4] = [198, 19, 255, 3];
pub const NODE_PORT: u16 = 30080;

/// Which parts of the cluster a test programs.
#[derive(Clone, Copy, Default)]
pub struct Cluster {
    /// `web`'s port 80 has NodePort 30080.
    pub node_port: bool,
    /// `web` also serves UDP port 53 (targetPort 5353, NodePort 30053).
    pub dns: bool,
    /// node-d and `far`, whose pod runs there.
    pub far: bool,
}

fn node(name: &str, addr: &str) -> String {
    format!(
        "- {{apiVersion: v1, kind: Node, metadata: {{name: {name}}}, status: {{addresses: \
         [{{type: InternalIP, address: {addr}}}]}}}}\n"
    )
}

fn service(name: &str, vip: &str, ports: &[String]) -> String {
    format!(
        "- apiVersion: v1\n  kind: Service\n  metadata: {{name: {name}, namespace: default}}\n  \
         spec:\n    type: LoadBalancer\n    ports: [{}]\n  status: {{loadBalancer: {{ingress: \
         [{{ip: {vip}}}]}}}}\n",
        ports.join(", ")
    )
}

fn slice(name: &str, service: &str, ports: &[&str], pod: &str, node: &str) -> String {
    format!(
        "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: {name}, \
         namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n  addressType: \
         IPv4\n  ports: [{}]\n  endpoints: [{{addresses: [\"{pod}\"], nodeName: {node}}}]\n",
        ports.join(", ")
    )
}

/// The manifest of `c`.
pub fn remote_manifest(c: Cluster) -> String {
    let mut m = String::from("apiVersion: v1\nkind: List\nitems:\n");
    m += &node("node-a", "198.18.0.2");
    m += &node("node-c", "198.18.0.4");
    if c.far {
        m += &node("node-d", "198.18.0.5");
    }
    let node_port = if c.node_port { ", nodePort: 30080" } else { "" };
    let mut ports = vec![format!(
        "{{name: http, port: 80, targetPort: 8080{node_port}, protocol: TCP}}"
    )];
    let mut slice_ports = vec!["{name: http, port: 8080, protocol: TCP}"];
    if c.dns {
        ports
            .push("{name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}".into());
        slice_ports.push("{name: dns, port: 5353, protocol: UDP}");
    }
    m += &service("web", "198.19.255.1", &ports);
    m += &slice("web-c", "web", &slice_ports, "198.18.4.11", "node-c");
    if c.far {
        let http = "{name: http, port: 80, targetPort: 8080, protocol: TCP}".to_string();
        m += &service("far", "198.19.255.3", &[http]);
        m += &slice(
            "far-d",
            "far",
            &["{name: http, port: 8080, protocol: TCP}"],
            "198.18.5.11",
            "node-d",
        );
    }
    m
}
