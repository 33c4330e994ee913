//! Time to program N Services × 10 endpoints from scratch through the real path (manifest
//! parse → compile → reconcile into private maps), the cost of a no-change resync, and of
//! one EndpointSlice change (`cargo bench -p xlb --bench program [-- N]`; needs root).
use std::time::{Duration, Instant};

use xlb::{
    compile::compile,
    loader::{self, LoadOptions, Loaded},
    manifest,
    plan::NodeIdentity,
    reconcile::Reconciler,
};

const ENDPOINTS: usize = 10;

fn manifests(n: usize, changed: Option<(usize, usize)>) -> String {
    let mut y = String::new();
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
             spec:\n  type: LoadBalancer\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n\
             status: {{loadBalancer: {{ingress: [{{ip: 198.19.{a}.{b}}}]}}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: s{i}-a, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        ));
        for e in 0..ENDPOINTS {
            // Distinct pod addresses in 198.18.0.0/15; a "change" moves one endpoint.
            let k = i * ENDPOINTS
                + e
                + if changed == Some((i, e)) {
                    n * ENDPOINTS
                } else {
                    0
                };
            y.push_str(&format!(
                "- {{addresses: [\"198.{}.{}.{}\"], nodeName: node-a}}\n",
                18 + k / 65536 % 2,
                k / 256 % 256,
                k % 256
            ));
        }
    }
    y
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let node = NodeIdentity {
        node_name: "node-a".into(),
        table_size: 16381,
        extra_local_addrs: vec![],
    };
    let text = manifests(n, None);
    let t = Instant::now();
    let state = manifest::load_str(std::path::Path::new("bench.yaml"), &text)
        .unwrap()
        .state;
    let parse = t.elapsed();
    let t = Instant::now();
    let plan = compile(&state, &node);
    let compile_t = t.elapsed();
    let Loaded { ebpf: _ebpf, maps } = loader::load(&LoadOptions {
        pin_dir: None,
        conntrack_size: 1024,
    })
    .unwrap();
    let mut rec = Reconciler::adopt(maps).unwrap();
    let t = Instant::now();
    let first = rec.apply(&plan).unwrap();
    let apply = t.elapsed();
    assert_eq!(first.tables_swapped, n);
    let t = Instant::now();
    assert!(rec.apply(&plan).unwrap().is_empty());
    let resync = t.elapsed();
    println!("{n} Services x {ENDPOINTS} endpoints, M = 16381");
    println!("  parse manifests     {parse:>12.3?}");
    println!("  compile             {compile_t:>12.3?}");
    println!("  apply (from empty)  {apply:>12.3?}");
    println!("  resync (no change)  {resync:>12.3?}");

    // One endpoint of one Service changes: compile + apply, as `xlb run` does on a change.
    let rounds = 20;
    let mut lat = Vec::new();
    for r in 0..rounds {
        let state = manifest::load_str(
            std::path::Path::new("bench.yaml"),
            &manifests(n, Some(((r * 7919) % n, r % ENDPOINTS))),
        )
        .unwrap()
        .state;
        let t = Instant::now();
        let plan = compile(&state, &node);
        let report = rec.apply(&plan).unwrap();
        lat.push(t.elapsed());
        // This round's change, plus undoing the previous round's.
        assert!((1..=2).contains(&report.tables_swapped), "{report:?}");
    }
    println!(
        "  one endpoint change: compile + apply p50 {:.3?}, p99 {:.3?} ({rounds} changes)",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99)
    );
}
