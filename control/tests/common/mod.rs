//! Packet-test fixtures: the real programs loaded with private maps, programmed through the real
//! manifest → compile → reconcile path, and frames from `xlb_bench::frame`.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::maps::Reason;
use xlb::{
    compile::compile,
    compile::plan::{DatapathPlan, NodeIdentity},
    datapath::loader::{self, LoadOptions, Loaded},
    datapath::reconcile::Reconciler,
    source::manifest,
};
use xlb_bench::frame;

pub const CLIENT: [u8; 4] = [198, 18, 0, 10];
pub const NODE: [u8; 4] = [198, 18, 0, 2];
pub const VIP: [u8; 4] = [198, 19, 255, 1];
pub const PODS: [[u8; 4]; 3] = [[198, 18, 1, 11], [198, 18, 1, 12], [198, 18, 1, 13]];
pub const TABLE_SIZE: u32 = 251;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The nginx-style example: LoadBalancer VIP:80 → pods:8080, NodePort 30080, TCP and UDP ports,
/// and a second Service restricted by loadBalancerSourceRanges.
pub fn manifest(pods: &[[u8; 4]], terminating: &[[u8; 4]]) -> String {
    let mut endpoints = String::new();
    for p in pods {
        let ip = Ipv4Addr::from(*p);
        let term = terminating.contains(p);
        endpoints.push_str(&format!(
            "  - addresses: [\"{ip}\"]\n    nodeName: node-a\n    conditions: {{ready: {}, serving: true, terminating: {}}}\n",
            !term, term
        ));
    }
    format!(
        r#"apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status:
  addresses:
  - {{type: InternalIP, address: 198.18.0.2}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: LoadBalancer
  ports:
  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}}
status:
  loadBalancer:
    ingress: [{{ip: 198.19.255.1}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
endpoints:
{endpoints}---
apiVersion: v1
kind: Service
metadata: {{name: restricted, namespace: default}}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: ["198.18.0.0/28"]
  ports:
  - {{name: http, port: 80, targetPort: 8080, nodePort: 30081, protocol: TCP}}
status:
  loadBalancer:
    ingress: [{{ip: 198.19.255.2}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: restricted-abc
  namespace: default
  labels: {{kubernetes.io/service-name: restricted}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
- addresses: ["198.18.1.11"]
  nodeName: node-a
  conditions: {{ready: true}}
"#
    )
}

pub fn plan_for(yaml: &str) -> DatapathPlan {
    plan_for_node(yaml, "node-a")
}

pub fn plan_for_node(yaml: &str, node_name: &str) -> DatapathPlan {
    let loaded = manifest::load_str(std::path::Path::new("test.yaml"), yaml).expect("manifest");
    assert!(loaded.rejected.is_empty(), "{:?}", loaded.rejected);
    let node = NodeIdentity {
        node_name: node_name.into(),
        table_size: TABLE_SIZE,
        extra_local_addrs: vec![],
    };
    compile(&loaded.state, &node)
}

pub fn tunnel_for_node(yaml: &str, node_name: &str) -> xlb::compile::tunnel::TunnelPlan {
    let loaded = manifest::load_str(std::path::Path::new("test.yaml"), yaml).expect("manifest");
    assert!(loaded.rejected.is_empty(), "{:?}", loaded.rejected);
    xlb::compile::tunnel::tunnel_plan(&loaded.state, node_name, lb_common::maps::GENEVE_PORT, &[])
}

pub struct Fixture {
    pub ebpf: aya::Ebpf,
    pub rec: Reconciler,
    pub plan: DatapathPlan,
}

impl Fixture {
    pub fn new(yaml: &str) -> Self {
        Self::for_node(yaml, "node-a")
    }

    /// The datapath of node `node_name`, programmed from `yaml` (services and tunnel settings).
    pub fn for_node(yaml: &str, node_name: &str) -> Self {
        Self::load(
            &LoadOptions {
                pin_dir: None,
                conntrack_size: 4096,
            },
            yaml,
            node_name,
        )
    }

    /// As [`Fixture::for_node`], loaded with `opts` (pinned maps, for one).
    pub fn load(opts: &LoadOptions, yaml: &str, node_name: &str) -> Self {
        let Loaded { ebpf, maps, .. } = loader::load(opts).expect("load programs");
        let mut rec = Reconciler::adopt(maps).expect("adopt");
        let plan = plan_for_node(yaml, node_name);
        rec.apply_tunnel(&tunnel_for_node(yaml, node_name))
            .expect("apply tunnel");
        rec.apply(&plan).expect("apply");
        Fixture { ebpf, rec, plan }
    }

    pub fn reprogram(&mut self, yaml: &str) {
        self.plan = plan_for(yaml);
        self.rec.apply(&self.plan).expect("apply");
    }

    /// Runs the XDP program once on `frame`: (action, output frame).
    pub fn xdp(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let before = self.exits();
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
        self.assert_one_exit(&before);
        (r.return_value, out)
    }

    /// Runs the XDP program once as if `frame` arrived on interface `ifindex` of the calling
    /// thread's network namespace (FIB lookups happen there): (action, output frame).
    pub fn xdp_on(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        self.xdp_with_metadata(frame, ifindex, 0)
    }

    /// As [`Fixture::xdp_on`], with `meta_len` bytes of XDP metadata in front of the frame.
    /// They come out of the 256 bytes of headroom BPF_PROG_TEST_RUN gives, so a large
    /// metadata area leaves the program as little headroom as a frugal driver would. The
    /// output frame starts with the metadata.
    pub fn xdp_with_metadata(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        meta_len: u32,
    ) -> (u32, Vec<u8>) {
        let before = self.exits();
        let prog = loader::xdp_program(&mut self.ebpf).unwrap();
        let mut data = vec![0u8; meta_len as usize];
        data.extend_from_slice(frame);
        let mut out = vec![0u8; data.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; data and data_end are offsets into data_in, after the metadata.
        let md: [u32; 6] = [meta_len, data.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&data),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .expect("test_run");
        out.truncate(r.data_size_out as usize);
        self.assert_one_exit(&before);
        (r.return_value, out)
    }

    /// Runs the TC egress program once: (verdict, output frame).
    pub fn tc(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let before = self.exits();
        let prog = loader::tc_program(&mut self.ebpf).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("test_run");
        out.truncate(r.data_size_out as usize);
        self.assert_one_exit(&before);
        (r.return_value, out)
    }

    pub fn counter(&self, reason: Reason) -> u64 {
        self.rec.maps.global(reason).unwrap()
    }

    fn exits(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .filter(|&&r| is_exit(r))
            .map(|&r| (r, self.counter(r)))
            .collect()
    }

    /// Every run of a program ends in exactly one exit reason: one counter moved by one, no
    /// other exit counter moved.
    fn assert_one_exit(&self, before: &[(Reason, u64)]) {
        let moved: Vec<(Reason, u64)> = self
            .exits()
            .iter()
            .zip(before)
            .filter(|((_, a), (_, b))| a != b)
            .map(|(&(r, a), &(_, b))| (r, a - b))
            .collect();
        assert!(
            matches!(moved.as_slice(), [(_, 1)]),
            "one run must count exactly one exit reason, counted {moved:?}"
        );
    }

    /// The pod Maglev assigns to a flow, computed in user space from the plan.
    pub fn predict(
        &self,
        service: &str,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        proto: u8,
    ) -> (Ipv4Addr, u16) {
        let svc = self
            .plan
            .services
            .iter()
            .find(|(k, _)| k.to_string() == service)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("no service {service}"));
        let h = lb_common::hash::flow_hash(
            u32::from_be_bytes(src),
            u32::from_be_bytes(dst),
            sport,
            dport,
            proto,
        );
        let table = svc.maglev_table().expect("table");
        let b = table.lookup(h).expect("a backend");
        (b.ipv4(), b.port)
    }
}

/// Counters that name where a packet's walk ended. The others (conntrack and affinity events)
/// count on the way and come with one of these.
pub fn is_exit(reason: Reason) -> bool {
    !matches!(
        reason,
        Reason::CtNew
            | Reason::CtHit
            | Reason::CtStaleBackend
            | Reason::CtInsertFailed
            | Reason::AffinityHit
            | Reason::L4CsumCompleted
            | Reason::L4CsumPartialKept
            | Reason::DeliverPod
            | Reason::DeliverKernelNoRoute
            | Reason::DeliverKernelNoNeigh
            | Reason::DeliverKernelNotPod
            | Reason::DeliverKernelOther
            | Reason::SynGuarded
            | Reason::CtClosing
            | Reason::CtMissMidFlow
            | Reason::EncapPrepared
            | Reason::EncapHopFallback
    )
}

// Not every test binary sends both.
#[allow(unused_imports)]
pub use xlb_bench::frame::{tcp, udp};

pub struct Ipv4View {
    pub l3: usize,
    pub ihl: usize,
}

/// Skips the VLAN tags (802.1Q and 802.1ad) in front of the IPv4 header.
pub fn ipv4_view(frame: &[u8]) -> Ipv4View {
    let mut l3 = 14;
    while matches!(
        u16::from_be_bytes([frame[l3 - 2], frame[l3 - 1]]),
        0x8100 | 0x88a8
    ) {
        l3 += 4;
    }
    Ipv4View {
        l3,
        ihl: ((frame[l3] & 0x0f) as usize) * 4,
    }
}

pub fn dst(frame: &[u8]) -> (Ipv4Addr, u16) {
    let v = ipv4_view(frame);
    let a = Ipv4Addr::new(
        frame[v.l3 + 16],
        frame[v.l3 + 17],
        frame[v.l3 + 18],
        frame[v.l3 + 19],
    );
    let l4 = v.l3 + v.ihl;
    (a, u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]))
}

pub fn src(frame: &[u8]) -> (Ipv4Addr, u16) {
    let v = ipv4_view(frame);
    let a = Ipv4Addr::new(
        frame[v.l3 + 12],
        frame[v.l3 + 13],
        frame[v.l3 + 14],
        frame[v.l3 + 15],
    );
    let l4 = v.l3 + v.ihl;
    (a, u16::from_be_bytes([frame[l4], frame[l4 + 1]]))
}

/// Asserts the IPv4 header checksum and the TCP/UDP checksum (pseudo-header included) verify.
/// A UDP checksum of zero ("none") fails too: a test whose input carried none asserts that it
/// still does on its own.
pub fn assert_checksums(frame: &[u8]) {
    let v = ipv4_view(frame);
    let ip = &frame[v.l3..v.l3 + v.ihl];
    assert_eq!(frame::checksum(ip), 0, "IPv4 header checksum");
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let l4 = &frame[v.l3 + v.ihl..v.l3 + tot];
    let proto = ip[9];
    assert!(
        !(proto == 17 && l4[6] == 0 && l4[7] == 0),
        "UDP checksum zeroed (\"none\") where the input had one"
    );
    assert_eq!(frame::l4_checksum(ip, l4), 0, "L4 checksum (proto {proto})");
}
