//! Manifests for `xlb run --manifests DIR`: Services, EndpointSlices and Nodes as
//! `kubectl get -o yaml` would print them, written atomically so a reload never sees half a file.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::servers::POD_PORT;
use super::topology::LabSpec;

/// Name of the default lab Service (in namespace `default`).
pub const WEB_SERVICE: &str = "web";
/// The default Service's port, node port and target port.
pub const WEB_PORT: u16 = 80;
pub const WEB_NODE_PORT: u16 = 30080;

/// One Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDef {
    pub name: String,
    /// `TCP` or `UDP`.
    pub protocol: String,
    pub port: u16,
    pub target_port: u16,
    pub node_port: Option<u16>,
}

/// One endpoint of the Service's EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDef {
    pub addr: Ipv4Addr,
    pub node: String,
    /// Pod name, for `targetRef`.
    pub pod: String,
    pub ready: bool,
    pub terminating: bool,
}

/// A Service and its single EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDef {
    pub namespace: String,
    pub name: String,
    /// `LoadBalancer` or `NodePort`.
    pub service_type: String,
    pub cluster_ip: Option<Ipv4Addr>,
    pub lb_ingress: Vec<Ipv4Addr>,
    pub external_ips: Vec<Ipv4Addr>,
    pub ports: Vec<PortDef>,
    pub endpoints: Vec<EndpointDef>,
}

impl ServiceDef {
    /// `default/web`: LoadBalancer at the lab's first VIP, port 80 → 8080, node port 30080, for
    /// both TCP (`http`) and UDP (`udp`), with every pod of the lab as a ready endpoint.
    pub fn web(spec: &LabSpec) -> ServiceDef {
        let port = |name: &str, protocol: &str| PortDef {
            name: name.into(),
            protocol: protocol.into(),
            port: WEB_PORT,
            target_port: POD_PORT,
            node_port: Some(WEB_NODE_PORT),
        };
        ServiceDef {
            namespace: "default".into(),
            name: WEB_SERVICE.into(),
            service_type: "LoadBalancer".into(),
            cluster_ip: None,
            lb_ingress: spec.vips.first().copied().into_iter().collect(),
            external_ips: vec![],
            ports: vec![port("http", "TCP"), port("udp", "UDP")],
            endpoints: spec
                .pods()
                .map(|(n, p)| EndpointDef {
                    addr: p.addr,
                    node: n.name.clone(),
                    pod: p.name.clone(),
                    ready: true,
                    terminating: false,
                })
                .collect(),
        }
    }

    /// The name `xlb services` gives the Service port `port_name`: `ns/name:port/PROTO`.
    pub fn port_key(&self, port_name: &str) -> String {
        let p = self
            .ports
            .iter()
            .find(|p| p.name == port_name)
            .expect("no such port");
        format!("{}/{}:{}/{}", self.namespace, self.name, p.name, p.protocol)
    }

    /// Drops the endpoint of pod `pod` (as if the pod were deleted).
    pub fn without_pod(mut self, pod: &str) -> ServiceDef {
        self.endpoints.retain(|e| e.pod != pod);
        self
    }

    /// Addresses of the ready, non-terminating endpoints.
    pub fn ready_addrs(&self) -> Vec<Ipv4Addr> {
        self.endpoints
            .iter()
            .filter(|e| e.ready && !e.terminating)
            .map(|e| e.addr)
            .collect()
    }

    /// The Service and its EndpointSlice as one YAML stream.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        let ns = &self.namespace;
        let name = &self.name;
        writeln!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}"
        )
        .unwrap();
        writeln!(y, "spec:\n  type: {}", self.service_type).unwrap();
        if let Some(ip) = self.cluster_ip {
            writeln!(y, "  clusterIP: {ip}\n  clusterIPs:\n  - {ip}").unwrap();
        }
        writeln!(
            y,
            "  externalTrafficPolicy: Cluster\n  selector:\n    app: {name}"
        )
        .unwrap();
        if !self.external_ips.is_empty() {
            writeln!(y, "  externalIPs:").unwrap();
            for ip in &self.external_ips {
                writeln!(y, "  - {ip}").unwrap();
            }
        }
        writeln!(y, "  ports:").unwrap();
        for p in &self.ports {
            writeln!(
                y,
                "  - name: {}\n    protocol: {}\n    port: {}\n    targetPort: {}",
                p.name, p.protocol, p.port, p.target_port
            )
            .unwrap();
            if let Some(np) = p.node_port {
                writeln!(y, "    nodePort: {np}").unwrap();
            }
        }
        if self.lb_ingress.is_empty() {
            writeln!(y, "status:\n  loadBalancer: {{}}").unwrap();
        } else {
            writeln!(y, "status:\n  loadBalancer:\n    ingress:").unwrap();
            for ip in &self.lb_ingress {
                writeln!(y, "    - ip: {ip}").unwrap();
            }
        }
        writeln!(y, "---").unwrap();
        writeln!(
            y,
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-lab\n  namespace: {ns}\n  \
             labels:\n    kubernetes.io/service-name: {name}\n    endpointslice.kubernetes.io/managed-by: xlb-lab\n\
             addressType: IPv4"
        )
        .unwrap();
        writeln!(y, "ports:").unwrap();
        for p in &self.ports {
            writeln!(
                y,
                "- name: {}\n  protocol: {}\n  port: {}",
                p.name, p.protocol, p.target_port
            )
            .unwrap();
        }
        if self.endpoints.is_empty() {
            writeln!(y, "endpoints: []").unwrap();
        } else {
            writeln!(y, "endpoints:").unwrap();
            for e in &self.endpoints {
                writeln!(
                    y,
                    "- addresses:\n  - {}\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: {}\n  \
                     nodeName: {}\n  targetRef:\n    kind: Pod\n    name: {}\n    namespace: {ns}",
                    e.addr,
                    e.ready,
                    e.ready || e.terminating,
                    e.terminating,
                    e.node,
                    e.pod
                )
                .unwrap();
            }
        }
        y
    }
}

/// A Node object: name and InternalIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDef {
    pub name: String,
    pub internal_ip: Ipv4Addr,
}

impl NodeDef {
    pub fn to_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {0}\n  labels:\n    kubernetes.io/hostname: {0}\n\
             status:\n  addresses:\n  - type: InternalIP\n    address: {1}\n  - type: Hostname\n    address: {0}\n",
            self.name, self.internal_ip
        )
    }
}

/// Everything xlb reads, for one lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestSet {
    pub services: Vec<ServiceDef>,
    pub nodes: Vec<NodeDef>,
}

impl ManifestSet {
    /// The default Service `web` over every pod, and every node of the lab.
    pub fn web(spec: &LabSpec) -> ManifestSet {
        ManifestSet {
            services: vec![ServiceDef::web(spec)],
            nodes: Self::nodes_of(spec),
        }
    }

    pub fn nodes_of(spec: &LabSpec) -> Vec<NodeDef> {
        spec.nodes
            .iter()
            .map(|n| NodeDef {
                name: n.name.clone(),
                internal_ip: n.addr,
            })
            .collect()
    }
}

/// A directory `xlb run --manifests` reads: `nodes.yaml` plus one `svc-<ns>-<name>.yaml` per
/// Service.
#[derive(Debug)]
pub struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    /// Creates (or reuses) `path`.
    pub fn create(path: impl Into<PathBuf>) -> Result<ManifestDir> {
        let path = path.into();
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ManifestDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `set`, replacing whatever the directory held (each file atomically: a dotfile
    /// renamed into place; files of Services no longer in `set` are removed).
    pub fn write(&self, set: &ManifestSet) -> Result<()> {
        let mut nodes = String::new();
        for (i, n) in set.nodes.iter().enumerate() {
            if i > 0 {
                nodes.push_str("---\n");
            }
            nodes.push_str(&n.to_yaml());
        }
        let mut wanted = vec![("nodes.yaml".to_string(), nodes)];
        for s in &set.services {
            wanted.push((format!("svc-{}-{}.yaml", s.namespace, s.name), s.to_yaml()));
        }
        for (name, text) in &wanted {
            self.write_file(name, text)?;
        }
        for entry in fs::read_dir(&self.path)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && !wanted.iter().any(|(w, _)| *w == name) {
                fs::remove_file(self.path.join(&name))?;
            }
        }
        Ok(())
    }

    /// Writes one file atomically.
    pub fn write_file(&self, name: &str, text: &str) -> Result<()> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        let dst = self.path.join(name);
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &dst).with_context(|| format!("renaming into {}", dst.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_service_yaml() {
        let spec = LabSpec::single_node();
        let svc = ServiceDef::web(&spec);
        assert_eq!(svc.port_key("http"), "default/web:http/TCP");
        assert_eq!(svc.port_key("udp"), "default/web:udp/UDP");
        let y = svc.to_yaml();
        assert!(y.contains("type: LoadBalancer"));
        assert!(y.contains("nodePort: 30080"));
        assert!(y.contains("    - ip: 198.19.255.1"));
        assert!(y.contains("kubernetes.io/service-name: web"));
        assert_eq!(y.matches("nodeName: node-a").count(), 3);
        let fewer = svc.without_pod("pod-2");
        assert_eq!(
            fewer.ready_addrs(),
            [Ipv4Addr::new(198, 18, 1, 11), Ipv4Addr::new(198, 18, 1, 13)]
        );
        let node = ManifestSet::web(&spec).nodes[0].to_yaml();
        assert!(node.contains("type: InternalIP\n    address: 198.18.0.2"));
    }
}
