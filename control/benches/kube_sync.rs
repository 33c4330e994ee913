//! The Kubernetes source's figures (root; `cargo bench -p xlb --bench kube_sync`):
//!
//! * `latency`: a cluster of `--services` Services × `--endpoints` endpoints is synced from the
//!   fake API server (`tests/kube_fake`) into the real programs (private maps), then
//!   `--changes` EndpointSlice changes are made one after another; for each, the time from the
//!   API server committing it to `Reconciler::apply_changed` returning with it in the maps,
//!   through `xlb run`'s own path (HTTP watch → KubeConfigSource → Compiler::update →
//!   `check_capacity` → `Reconciler::apply_tunnel` → `Reconciler::apply_changed`), and then
//!   the time `xlb run` spends writing its state file for the CLI (the snapshot as JSON).
//! * `full-sync`: the real `xlb run --kubeconfig` (release build, `$XLB_BIN` or next to this
//!   bench) in a scratch network namespace on a veth interface (generic XDP), the fake API
//!   server holding `--services` × `--endpoints` inside that namespace: seconds from start to
//!   `/readyz`, and the process's peak RSS (`VmHWM`).
//!
//! With no mode, both run at the sizes the docs report. Output: a table and one JSON line per
//! figure.

#[path = "../tests/kube_fake/mod.rs"]
mod kube_fake;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_fake::FakeApiServer;
use kube_fake::objects::*;
use xlb::compile::Compiler;
use xlb::compile::plan::NodeIdentity;
use xlb::datapath::loader::{self, LoadOptions};
use xlb::datapath::reconcile::Reconciler;
use xlb::source::kube::KubeOptions;
use xlb::source::{ConfigSource, KubeConfigSource, Poll};

const NODES: usize = 20;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pod `i` of the cluster: 10 bits of node, the rest of the pod.
fn pod_addr(i: usize) -> String {
    let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 0x1_0000 + i as u32);
    a.to_string()
}

/// Service `i`: a VIP of 198.19.0.0/16, on port 80 for the first 65,536 Services, 81 for the
/// next, and so on (100,000 Services stay within the lab's range).
fn service(i: usize) -> Service {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + (i % 65_536) as u32);
    let port = 80 + (i / 65_536) as i32;
    load_balancer(
        &format!("svc-{i}"),
        &vip.to_string(),
        &[tcp_port("http", port, 8080, 0)],
    )
    .tap_no_node_port()
}

trait NoNodePort {
    fn tap_no_node_port(self) -> Self;
}

impl NoNodePort for Service {
    /// NodePorts are 30000-32767: 10,000 Services could not all have one; the LoadBalancer
    /// frontend is what is measured.
    fn tap_no_node_port(mut self) -> Service {
        for p in self.spec.as_mut().unwrap().ports.as_mut().unwrap() {
            p.node_port = None;
        }
        self
    }
}

/// Service `i`'s slice: `endpoints` pods out of a pool of `pool` (spread over NODES nodes),
/// with `extra` shifting one of them (a change).
fn service_slice(i: usize, endpoints: usize, pool: usize, extra: usize) -> EndpointSlice {
    let eps = (0..endpoints)
        .map(|j| {
            let pod = (i * endpoints + j + if j == 0 { extra } else { 0 }) % pool;
            endpoint(
                &pod_addr(pod),
                &format!("node-{}", pod % NODES),
                Cond::Ready,
            )
        })
        .collect();
    slice(
        &format!("svc-{i}-abcde"),
        &format!("svc-{i}"),
        &[("http", 8080, "TCP")],
        eps,
    )
}

fn populate(server: &FakeApiServer, services: usize, endpoints: usize, pool: usize) {
    for n in 0..NODES {
        server.apply(&node(
            &format!("node-{n}"),
            &Ipv4Addr::new(198, 18, 0, 10 + n as u8).to_string(),
        ));
    }
    for i in 0..services {
        server.apply(&service(i));
        server.apply(&service_slice(i, endpoints, pool, 0));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latency(services: usize, endpoints: usize, changes: usize, table_size: u32) {
    let server = FakeApiServer::start();
    let pool = (services * endpoints).min(50_000);
    populate(&server, services, endpoints, pool);
    let dir = std::env::temp_dir().join(format!("xlb-kube-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut source = KubeConfigSource::start(
        runtime.handle(),
        &KubeOptions {
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        },
    )
    .unwrap();
    let loaded = loader::load(&LoadOptions {
        pin_dir: None,
        conntrack_size: 4096,
    })
    .expect("loading the programs (root?)");
    let mut rec = Reconciler::adopt(loaded.maps).unwrap();
    let mut compiler = Compiler::new();
    let node = NodeIdentity {
        node_name: "node-0".into(),
        table_size,
        extra_local_addrs: vec![],
    };
    // `xlb run`'s state file (under /run/xlb, named after this scratch directory).
    let mut state = xlb::daemon::state::StateWriter::default();
    let state_dir = xlb::datapath::pins::state_file(&dir)
        .parent()
        .unwrap()
        .to_path_buf();
    // As `xlb run`'s `program`: the tunnel settings, the compile, the capacity check, the
    // tunnel apply, the apply; then the state file. Returns (compile, apply, state file, when
    // the apply returned).
    let mut program = |source: &mut KubeConfigSource,
                       timeout: Duration|
     -> Option<(Duration, Duration, Duration, Instant)> {
        match source.poll(timeout) {
            Poll::Changed { changes, .. } => {
                let t = Instant::now();
                let tunnel = xlb::compile::tunnel::tunnel_plan(
                    source.state(),
                    &node.node_name,
                    lb_common::maps::GENEVE_PORT,
                    &[],
                );
                compiler.update(source.state(), &node, &changes);
                let compiled = t.elapsed();
                let plan = compiler.plan();
                rec.check_capacity(plan, compiler.last_touched()).unwrap();
                rec.apply_tunnel(&tunnel).unwrap();
                rec.apply_changed(plan, compiler.last_touched()).unwrap();
                let done = Instant::now();
                let applied = done - t - compiled;
                state.write(&dir, rec.snapshot()).unwrap();
                Some((compiled, applied, done.elapsed(), done))
            }
            Poll::Unchanged => None,
            Poll::Failed(e) => panic!("{e}"),
        }
    };
    let start = Instant::now();
    let (first_compile, first_apply, _, _) = loop {
        if let Some(t) = program(&mut source, Duration::from_secs(1)) {
            break t;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no first sync");
    };
    let first_sync = start.elapsed();
    eprintln!(
        "first sync: {:.2} s (compile {:.2} s, apply {:.2} s)",
        first_sync.as_secs_f64(),
        first_compile.as_secs_f64(),
        first_apply.as_secs_f64()
    );

    let mut total = Vec::with_capacity(changes);
    let mut compile_t = Vec::with_capacity(changes);
    let mut apply_t = Vec::with_capacity(changes);
    let mut state_t = Vec::with_capacity(changes);
    let mut state_x = 0u64;
    for c in 0..changes {
        // A pseudo-random Service gets one endpoint moved to a new pod.
        state_x = state_x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = (state_x >> 33) as usize % services;
        let rv = server.apply(&service_slice(i, endpoints, pool, 1 + c));
        let emitted = server.emitted_at(rv).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (compiled, applied, state, done) = loop {
            if let Some(t) = program(&mut source, Duration::from_secs(1)) {
                break t;
            }
            assert!(Instant::now() < deadline, "change {c} never arrived");
        };
        total.push(done - emitted);
        compile_t.push(compiled);
        apply_t.push(applied);
        state_t.push(state);
    }
    for v in [&mut total, &mut compile_t, &mut apply_t, &mut state_t] {
        v.sort();
    }
    println!(
        "EndpointSlice change -> maps, {services} Services x {endpoints} endpoints, M = {table_size}, \
         {changes} changes (first sync {:.2} s):",
        first_sync.as_secs_f64()
    );
    println!(
        "  total (API server commit -> apply returned): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&total, 50.0)),
        ms(percentile(&total, 99.0)),
        ms(*total.last().unwrap())
    );
    println!(
        "  of which compile: p50 {:.2} ms, p99 {:.2} ms; reconcile apply: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&compile_t, 50.0)),
        ms(percentile(&compile_t, 99.0)),
        ms(percentile(&apply_t, 50.0)),
        ms(percentile(&apply_t, 99.0)),
    );
    println!(
        "  then the state file: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&state_t, 50.0)),
        ms(percentile(&state_t, 99.0)),
    );
    println!(
        "{}",
        serde_json::json!({
            "figure": "endpointslice_change_to_maps",
            "services": services, "endpoints": endpoints, "table_size": table_size,
            "changes": changes,
            "p50_ms": ms(percentile(&total, 50.0)), "p99_ms": ms(percentile(&total, 99.0)),
            "compile_p50_ms": ms(percentile(&compile_t, 50.0)),
            "apply_p50_ms": ms(percentile(&apply_t, 50.0)),
            "apply_p99_ms": ms(percentile(&apply_t, 99.0)),
            "state_p50_ms": ms(percentile(&state_t, 50.0)),
            "state_p99_ms": ms(percentile(&state_t, 99.0)),
            "first_sync_s": first_sync.as_secs_f64(),
        })
    );
    drop(source);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state_dir);
}

/// A scratch network namespace with a veth pair; removed on drop.
struct Scratch {
    name: String,
}

impl Scratch {
    fn new() -> Scratch {
        let name = format!("xlbkbench-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let scratch = Scratch { name: name.clone() };
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // A veth pair inside the namespace (the dummy module is not on every kernel).
        ip(&[
            "-n", &name, "link", "add", "xlb0", "type", "veth", "peer", "name", "xlb1",
        ]);
        ip(&["-n", &name, "link", "set", "xlb1", "up"]);
        ip(&["-n", &name, "addr", "add", "198.18.0.10/24", "dev", "xlb0"]);
        ip(&["-n", &name, "link", "set", "xlb0", "up"]);
        scratch
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// A listener bound to 127.0.0.1 inside the namespace.
    fn listen(&self) -> TcpListener {
        let path = self.path();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on this helper thread only.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns");
            TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap()
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// GET inside the namespace; the status code.
    fn get(&self, addr: SocketAddr, path: &str) -> Option<u16> {
        let ns = self.path();
        let path = path.to_string();
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let f = std::fs::File::open(&ns).ok()?;
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on this helper thread only.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(s, "GET {path} HTTP/1.1\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.get(9..12)?.parse().ok()
        })
        .join()
        .ok()
        .flatten()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

struct Xlb {
    child: Child,
    bin: PathBuf,
    scratch_path: PathBuf,
}

impl Drop for Xlb {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("nsenter")
            .arg(format!("--net={}", self.scratch_path.display()))
            .arg("--")
            .arg(&self.bin)
            .args(["down", "--iface", "xlb0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/kube_sync-* -> target/release/xlb
    exe.parent().unwrap().parent().unwrap().join("xlb")
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// `--max-*` flags for a cluster beyond the default capacities (none within them, so that a
/// build from before the flags existed can be measured too).
fn capacity_args(services: usize, endpoints: usize) -> Vec<String> {
    use lb_common::maps::{MAX_BACKENDS, MAX_SERVICES};
    let backends = services * endpoints;
    if services < MAX_SERVICES as usize && backends < MAX_BACKENDS as usize {
        return vec![];
    }
    let with_room = |n: usize| (n + n / 10).to_string();
    vec![
        "--max-services".into(),
        with_room(services),
        "--max-frontends".into(),
        with_room(services),
        "--max-backends".into(),
        with_room(backends),
    ]
}

fn full_sync(services: usize, endpoints: usize, table_size: u32) {
    let bin = xlb_bin();
    assert!(
        bin.is_file(),
        "no xlb binary at {} (set XLB_BIN)",
        bin.display()
    );
    let scratch = Scratch::new();
    let server = FakeApiServer::start_on(scratch.listen());
    let pool = (services * endpoints).min(50_000);
    let t = Instant::now();
    populate(&server, services, endpoints, pool);
    eprintln!(
        "fake API server: {services} Services, {services} EndpointSlices, {NODES} Nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir = std::env::temp_dir().join(format!("xlb-kube-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let log = dir.join("xlb.log");
    let health: SocketAddr = "127.0.0.1:10356".parse().unwrap();
    let started = Instant::now();
    let child = scratch
        .command(&bin)
        .args([
            "run",
            "--iface",
            "xlb0",
            "--node-name",
            "node-0",
            "--xdp-mode",
            "generic",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--health-addr", "127.0.0.1:10356"])
        .args(["--maglev-table-size", &table_size.to_string()])
        .args(capacity_args(services, endpoints))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("xlb.err")).unwrap())
        .spawn()
        .expect("starting xlb run");
    let mut xlb = Xlb {
        child,
        bin: bin.clone(),
        scratch_path: scratch.path(),
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut peak = 0.0f64;
    loop {
        if let Some(st) = xlb.child.try_wait().unwrap() {
            let err = std::fs::read_to_string(dir.join("xlb.err")).unwrap_or_default();
            panic!(
                "xlb run exited ({st}): {}",
                &err[err.len().saturating_sub(3000)..]
            );
        }
        peak = peak.max(peak_rss_mib(xlb.child.id()).unwrap_or(0.0));
        if scratch.get(health, "/readyz") == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "xlb never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = started.elapsed();
    // nsenter execs xlb: the child's pid is xlb's.
    let peak = peak.max(peak_rss_mib(xlb.child.id()).unwrap_or(0.0));
    let err = std::fs::read_to_string(dir.join("xlb.err")).unwrap_or_default();
    let programmed = err
        .lines()
        .find(|l| l.contains("programmed generation 1") || l.contains("programmed"))
        .unwrap_or("")
        .to_string();
    println!(
        "full sync, {services} Services x {endpoints} endpoints ({} distinct pods), M = {table_size}: \
         ready {:.2} s after start, peak RSS {:.0} MiB",
        pool.min(services * endpoints),
        ready.as_secs_f64(),
        peak
    );
    println!("  xlb: {}", programmed.trim());
    println!(
        "{}",
        serde_json::json!({
            "figure": "full_sync",
            "services": services, "endpoints": endpoints, "distinct_pods": pool,
            "table_size": table_size,
            "ready_s": ready.as_secs_f64(), "peak_rss_mib": peak,
        })
    );
    drop(xlb);
    drop(server);
    drop(scratch);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let mode = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-') && a.parse::<usize>().is_err())
        .cloned()
        .unwrap_or_default();
    let m = arg(
        "--table-size",
        lb_common::maps::MAGLEV_DEFAULT_TABLE_SIZE as usize,
    ) as u32;
    let endpoints = arg("--endpoints", 10);
    if mode.is_empty() || mode == "latency" {
        latency(
            arg("--services", 1_000),
            endpoints,
            arg("--changes", 1_000),
            m,
        );
    }
    if mode.is_empty() || mode == "full-sync" {
        full_sync(arg("--services", 10_000), endpoints, m);
    }
}
