//! A 100,000-Service manifest set (one file per Service, two pods each) is read, compiled and
//! programmed into maps sized for it, without error. How long that takes and how much memory it
//! needs are benchmark figures (`docs/benchmarks.md`), not asserted here.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use xlb::compile::Compiler;
use xlb::compile::plan::NodeIdentity;
use xlb::datapath::capacity::Capacity;
use xlb::datapath::loader::{self, LoadOptions};
use xlb::datapath::reconcile::Reconciler;
use xlb::source::{ConfigSource, ManifestSource, Poll};

const SERVICES: usize = 100_000;
const ENDPOINTS: usize = 2;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Service `i`: VIP and port from 65,536 addresses × a port per block of them; its pods are
/// distinct (address, target port) pairs, all on this node.
fn service_yaml(i: usize) -> String {
    let j = i % 65_536;
    let vip = Ipv4Addr::new(198, 19, (j / 256) as u8, (j % 256) as u8);
    let port = 80 + i / 65_536;
    // 65,536 pod addresses per target port.
    let per_block = 65_536 / ENDPOINTS;
    let target = 8080 + i / per_block;
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
         spec:\n  type: LoadBalancer\n  ports: [{{name: http, port: {port}, targetPort: {target}, protocol: TCP}}]\n\
         status: {{loadBalancer: {{ingress: [{{ip: {vip}}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: s{i}-a, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {target}, protocol: TCP}}]\nendpoints:\n"
    );
    for e in 0..ENDPOINTS {
        let k = (i % per_block) * ENDPOINTS + e;
        y.push_str(&format!(
            "- {{addresses: [\"198.18.{}.{}\"], nodeName: node-a}}\n",
            k / 256,
            k % 256
        ));
    }
    y
}

#[test]
fn a_hundred_thousand_services_program_without_error() {
    let dir = TempDir(std::env::temp_dir().join(format!("xlb-scale-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    for i in 0..SERVICES {
        std::fs::write(dir.0.join(format!("s{i}.yaml")), service_yaml(i)).unwrap();
    }
    let capacity = Capacity {
        services: SERVICES as u32,
        frontends: SERVICES as u32,
        backends: (SERVICES * ENDPOINTS) as u32,
    };
    let loaded = loader::load_sized(
        &LoadOptions {
            pin_dir: None,
            conntrack_size: 1024,
        },
        &capacity,
    )
    .expect("loading the datapath (needs root)");
    assert_eq!(loaded.capacity, capacity);
    let mut rec = Reconciler::adopt(loaded.maps).unwrap();

    let mut source = ManifestSource::new(dir.0.clone());
    let changes = match source.poll(Duration::from_millis(10)) {
        Poll::Changed {
            changes, warnings, ..
        } => {
            assert!(
                warnings.is_empty(),
                "{:?}",
                &warnings[..warnings.len().min(5)]
            );
            changes
        }
        other => panic!("the manifest source read nothing: {other:?}"),
    };
    let node = NodeIdentity {
        node_name: "node-a".into(),
        table_size: 251,
        extra_local_addrs: vec![],
    };
    let mut compiler = Compiler::new();
    compiler.update(source.state(), &node, &changes);
    let plan = compiler.plan();
    assert_eq!(plan.services.len(), SERVICES);
    // Warnings (endpoints on a Node the manifests do not list) are not errors.
    let report = rec
        .apply_changed(plan, compiler.last_touched())
        .expect("programming 100,000 Services");
    assert_eq!(report.frontends_written, SERVICES);
    assert_eq!(report.tables_swapped, SERVICES);
    assert_eq!(report.backends_written, SERVICES * ENDPOINTS);
    assert_eq!(rec.snapshot().services.len(), SERVICES);

    // Every frontend is in the map and points at a table.
    let mut seen = 0;
    for kv in rec.maps.frontends.iter() {
        let (_, v) = kv.unwrap();
        rec.maps.maglev.get(&v.service_id, 0).expect("a table");
        seen += 1;
    }
    assert_eq!(seen, SERVICES);
    // A second apply of the same plan writes nothing.
    let again = rec.apply(compiler.plan()).unwrap();
    assert!(again.is_empty(), "{again:?}");
}
