//! Time to program N Services × 10 endpoints from scratch through the real path (manifest
//! parse → compile → reconcile into private maps), the cost of a no-change resync, and of
//! one EndpointSlice change through `xlb run`'s incremental path (state diff → incremental
//! compile → apply of the touched Service ports) (`cargo bench -p xlb --bench program [-- N]`;
//! needs root).
use std::time::{Duration, Instant};

use lb_common::maglev::{self, MaglevBackend};
use xlb::{
    compile::plan::NodeIdentity,
    compile::{Compiler, compile},
    datapath::capacity::Capacity,
    datapath::loader::{self, LoadOptions, Loaded},
    datapath::reconcile::Reconciler,
    source::cluster::ClusterState,
    source::manifest,
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

/// The value after `--name`, if any.
fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

/// `VmHWM` of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    // The first bare number is N; `--table-size M` sets M.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || args[i - 1] != "--table-size")
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(1000);
    let table_size: u32 = flag("--table-size")
        .and_then(|v| v.parse().ok())
        .unwrap_or(16381);
    let node = NodeIdentity {
        node_name: "node-a".into(),
        table_size,
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
    // How much of the compile is Maglev: the same tables built again, one after another.
    let t = Instant::now();
    for svc in plan.services.values() {
        let b: Vec<MaglevBackend> = svc
            .backends
            .iter()
            .map(|b| MaglevBackend::from_ipv4(b.addr, b.port, b.weight))
            .collect();
        std::hint::black_box(maglev::build_table(&b, svc.table_size).unwrap());
    }
    let maglev_t = t.elapsed();
    // Capacities for N beyond the defaults (the maps are created at load time).
    let defaults = Capacity::default();
    let capacity = Capacity {
        services: defaults.services.max(n as u32),
        frontends: defaults.frontends.max(n as u32),
        backends: defaults.backends.max((n * ENDPOINTS) as u32),
    };
    let t = Instant::now();
    let Loaded {
        ebpf: _ebpf, maps, ..
    } = loader::load_sized(
        &LoadOptions {
            pin_dir: None,
            conntrack_size: 1024,
        },
        &capacity,
    )
    .unwrap();
    let mut rec = Reconciler::adopt(maps).unwrap();
    let load_t = t.elapsed();
    let t = Instant::now();
    let first = rec.apply(&plan).unwrap();
    let apply = t.elapsed();
    assert_eq!(first.tables_swapped, n);
    let t = Instant::now();
    assert!(rec.apply(&plan).unwrap().is_empty());
    let resync = t.elapsed();
    println!("{n} Services x {ENDPOINTS} endpoints, M = {table_size}");
    println!("  parse manifests     {parse:>12.3?}");
    println!("  compile             {compile_t:>12.3?}");
    println!("    Maglev tables alone, built again one by one {maglev_t:>12.3?}");
    println!("  load + adopt        {load_t:>12.3?}");
    println!("  apply (from empty)  {apply:>12.3?}");
    println!("  resync (no change)  {resync:>12.3?}");
    println!("  peak RSS            {:>9.0} MiB", peak_rss_mib());

    // One endpoint of one Service changes: diff the state, compile what changed, apply the
    // touched Service ports, as `xlb run` does on a change of its manifests.
    let mut cluster = ClusterState::new();
    cluster.replace_all(state).unwrap();
    let changes = cluster.take_changes();
    let mut compiler = Compiler::new();
    compiler.update(&cluster, &node, &changes);
    assert!(rec.apply(compiler.plan()).unwrap().is_empty());
    let rounds = 20;
    let (mut lat, mut full) = (Vec::new(), Vec::new());
    let mut stages: [Vec<Duration>; 3] = Default::default();
    for r in 0..rounds {
        let state = manifest::load_str(
            std::path::Path::new("bench.yaml"),
            &manifests(n, Some(((r * 7919) % n, r % ENDPOINTS))),
        )
        .unwrap()
        .state;
        let t = Instant::now();
        cluster.replace_all(state).unwrap();
        let changes = cluster.take_changes();
        let t1 = Instant::now();
        compiler.update(&cluster, &node, &changes);
        let t2 = Instant::now();
        let report = rec
            .apply_changed(compiler.plan(), compiler.last_touched())
            .unwrap();
        lat.push(t.elapsed());
        stages[0].push(t1 - t);
        stages[1].push(t2 - t1);
        stages[2].push(t2.elapsed());
        // This round's change, plus undoing the previous round's.
        assert!(
            (1..=2).contains(&(report.tables_swapped + report.tables_patched)),
            "{report:?}"
        );
        // The baseline, in the same run: a full apply of the same plan, which rebuilds and
        // compares every table (what every change cost before `apply_changed`), here finding
        // nothing left to write.
        let t = Instant::now();
        assert!(rec.apply(compiler.plan()).unwrap().is_empty());
        full.push(t.elapsed());
    }
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    let (f50, f99) = (percentile(&mut full, 0.5), percentile(&mut full, 0.99));
    println!(
        "  one endpoint change: state diff + compile + apply_changed p50 {p50:.3?}, p99 {p99:.3?} ({rounds} changes)"
    );
    let [diff, upd, app] = &mut stages;
    println!(
        "    of which (p50): state diff {:.3?}, compile {:.3?}, apply_changed {:.3?}",
        percentile(diff, 0.5),
        percentile(upd, 0.5),
        percentile(app, 0.5)
    );
    println!(
        "  baseline: full apply (every table rebuilt and compared) p50 {f50:.3?}, p99 {f99:.3?}; ratio p50 {:.3}",
        p50.as_secs_f64() / f50.as_secs_f64()
    );
}
