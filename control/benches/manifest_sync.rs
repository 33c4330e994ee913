//! The manifest source's change latency (root; `cargo bench -p xlb --bench manifest_sync --
//! --services N --changes C --poll-ms P`): a directory of one file per Service (N LoadBalancer
//! Services × `--endpoints` endpoints, a Service and its EndpointSlice per file) plus one Node
//! file, read by `ManifestSource` → `Compiler::update` → `Reconciler::apply_changed` into the
//! real programs' (private) maps, the run loop's path, on a thread of its own that polls the
//! source as `xlb run` does (`poll(--poll-ms)`). Then `--changes` times, after a random pause
//! (a random phase of any polling interval), one Service's file is replaced the way editors
//! and `kubectl`-style tools write (a hidden temporary file renamed over it) with one endpoint
//! moved, and the time from just before the rename to the apply returning with it is taken.
//!
//! Output: a line of figures and one JSON line.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use xlb::compile::Compiler;
use xlb::compile::plan::NodeIdentity;
use xlb::datapath::loader::{self, LoadOptions};
use xlb::datapath::reconcile::Reconciler;
use xlb::source::{ConfigSource, ManifestSource, Poll};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Service `i`'s file: the Service and its EndpointSlice; `shift` moves its first endpoint.
fn service_file(i: usize, endpoints: usize, shift: usize) -> String {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i as u32);
    let mut text = String::new();
    let _ = write!(
        text,
        "apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: default}}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  ports: [{{name: http, port: 80, targetPort: 8080}}]
status:
  loadBalancer:
    ingress: [{{ip: {vip}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{i}-abcde
  namespace: default
  labels: {{kubernetes.io/service-name: svc-{i}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
"
    );
    for j in 0..endpoints {
        let pod = (i * endpoints + j + if j == 0 { shift } else { 0 }) % 50_000;
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 0x1_0000 + pod as u32);
        let _ = writeln!(
            text,
            "- {{addresses: [{addr}], nodeName: node-{}}}",
            pod % 20
        );
    }
    text
}

fn node_file() -> String {
    let mut text = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for n in 0..20 {
        let _ = writeln!(
            text,
            "- {{apiVersion: v1, kind: Node, metadata: {{name: node-{n}}}, status: {{addresses: [{{type: InternalIP, address: 198.18.0.{}}}]}}}}",
            10 + n
        );
    }
    text
}

fn file_of(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("svc-{i}.yaml"))
}

fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let services = arg("--services", 10_000);
    let endpoints = arg("--endpoints", 10);
    let changes = arg("--changes", 100);
    let poll_ms = arg("--poll-ms", 1000) as u64;
    let table_size = arg("--table-size", 16_381) as u32;
    let dir = std::env::temp_dir().join(format!("xlb-manifest-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("00-nodes.yaml"), node_file()).unwrap();
    for i in 0..services {
        std::fs::write(file_of(&dir, i), service_file(i, endpoints, 0)).unwrap();
    }

    // The run loop, on its own thread: it reports when each programming pass returned.
    let (done_tx, done) = mpsc::channel::<(Instant, Duration)>();
    let root = dir.clone();
    std::thread::spawn(move || {
        let loaded = loader::load(&LoadOptions {
            pin_dir: None,
            conntrack_size: 4096,
        })
        .expect("loading the programs (root?)");
        let mut rec = Reconciler::adopt(loaded.maps).unwrap();
        let mut compiler = Compiler::new();
        let mut source = ManifestSource::new(root);
        let node = NodeIdentity {
            node_name: "node-0".into(),
            table_size,
            extra_local_addrs: vec![],
        };
        loop {
            match source.poll(Duration::from_millis(poll_ms)) {
                Poll::Changed { changes, .. } => {
                    let t = Instant::now();
                    compiler.update(source.state(), &node, &changes);
                    rec.check_capacity(compiler.plan(), compiler.last_touched())
                        .unwrap();
                    rec.apply_changed(compiler.plan(), compiler.last_touched())
                        .unwrap();
                    if done_tx.send((Instant::now(), t.elapsed())).is_err() {
                        return;
                    }
                }
                Poll::Unchanged => {}
                Poll::Failed(e) => panic!("{e}"),
            }
        }
    });
    let start = Instant::now();
    done.recv_timeout(Duration::from_secs(900))
        .expect("no first sync");
    let first = start.elapsed();
    eprintln!(
        "{} files loaded and programmed in {:.2} s",
        services + 1,
        first.as_secs_f64()
    );

    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut total = Vec::with_capacity(changes);
    let mut work = Vec::with_capacity(changes);
    for c in 0..changes {
        std::thread::sleep(Duration::from_micros(next() % (poll_ms * 1000).max(1)));
        let i = next() as usize % services;
        let text = service_file(i, endpoints, 1 + c);
        let t0 = Instant::now();
        rename_over(&file_of(&dir, i), &text);
        let (at, took) = done
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("change {c} never programmed"));
        total.push(at.duration_since(t0).as_secs_f64() * 1e3);
        work.push(took.as_secs_f64() * 1e3);
    }
    for v in [&mut total, &mut work] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "manifest change -> maps, {} files ({services} Services x {endpoints} endpoints), --poll-ms {poll_ms}, {changes} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (compile + apply p50 {:.2} ms); first load {:.2} s",
        services + 1,
        percentile(&total, 50.0),
        percentile(&total, 99.0),
        total.last().unwrap(),
        percentile(&work, 50.0),
        first.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({
            "figure": "manifest_change_to_maps",
            "files": services + 1, "services": services, "endpoints": endpoints,
            "poll_ms": poll_ms, "changes": changes,
            "p50_ms": percentile(&total, 50.0), "p99_ms": percentile(&total, 99.0),
            "max_ms": total.last().unwrap(),
            "compile_apply_p50_ms": percentile(&work, 50.0),
            "first_load_s": first.as_secs_f64(),
        })
    );
    drop(done);
    let _ = std::fs::remove_dir_all(&dir);
}
