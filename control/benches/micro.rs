//! BPF_PROG_TEST_RUN ns/packet of the datapath's paths against a floor program, measured in
//! the same run and interleaved (`cargo bench -p xlb --bench micro`; needs root).
//!
//! `repeat > 1` runs the program on its own output from the second iteration on. Each frame is
//! therefore chosen to be a fixed point of the path it times: the frontend's only backend is
//! the frontend address itself, so the DNAT writes back the bytes it read and every iteration
//! takes the same path. The counters prove it: after each run the path's counter must have
//! grown by exactly `repeat`, and the output frame must equal the input.
use aya::{
    EbpfLoader,
    programs::{TestRun, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;
use lb_common::maps::Reason;
use xlb::{
    compile::compile,
    loader::{self, FLOOR_OBJECT, LoadOptions, Loaded, PROG_FLOOR},
    manifest,
    plan::NodeIdentity,
    reconcile::Reconciler,
};

const REPEAT: u32 = 200_000;
const RUNS: usize = 5;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: default}
spec:
  type: LoadBalancer
  ports: [{name: http, port: 80, targetPort: 80, protocol: TCP}]
status: {loadBalancer: {ingress: [{ip: 198.19.255.1}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-a, namespace: default, labels: {kubernetes.io/service-name: bench}}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints: [{addresses: ["198.19.255.1"], nodeName: node-a}]
"#;

fn frame(dst: [u8; 4], syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 18, 0, 10], dst, 64)
        .tcp(40000, 80, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// One run of `REPEAT` iterations: (verdict, mean ns per iteration, output frame).
fn time(prog: &Xdp, input: &[u8]) -> (u32, f64, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 64];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat: REPEAT,
            ..TestRunOptions::new()
        })
        .expect("test_run");
    out.truncate(r.data_size_out as usize);
    (r.return_value, r.duration.as_nanos() as f64, out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Loaded { mut ebpf, maps } = loader::load(&LoadOptions {
        pin_dir: None,
        conntrack_size: 65536,
    })
    .expect("load");
    let mut rec = Reconciler::adopt(maps).expect("adopt");
    let state = manifest::load_str(std::path::Path::new("bench.yaml"), MANIFEST)
        .unwrap()
        .state;
    let node = NodeIdentity {
        node_name: "node-a".into(),
        table_size: 16381,
        extra_local_addrs: vec![],
    };
    rec.apply(&compile(&state, &node)).expect("apply");

    let mut floor_obj = EbpfLoader::new().load(FLOOR_OBJECT).expect("load floor");
    let floor: &mut Xdp = floor_obj
        .program_mut(PROG_FLOOR)
        .unwrap()
        .try_into()
        .unwrap();
    floor.load().expect("load floor program");

    let vip = [198, 19, 255, 1];
    let syn = frame(vip, true);
    let ack = frame(vip, false);
    let other = frame([198, 18, 0, 99], true);
    // Open the flow once so the ACK path is a conntrack hit.
    loader::xdp_program(&mut ebpf)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&syn),
            ..TestRunOptions::new()
        })
        .unwrap();

    let paths: [(&str, &[u8], Option<Reason>); 4] = [
        ("floor (parse + XDP_TX)", &syn, None),
        ("established TCP (conntrack hit)", &ack, Some(Reason::CtHit)),
        (
            "new-flow SYN (Maglev + conntrack insert)",
            &syn,
            Some(Reason::CtNew),
        ),
        ("non-frontend pass", &other, Some(Reason::PassNoFrontend)),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..RUNS {
        for (i, (name, input, reason)) in paths.iter().enumerate() {
            let before = reason.map(|r| rec.maps.global(r).unwrap());
            let (_, ns, out) = match reason {
                None => time(
                    floor_obj.program(PROG_FLOOR).unwrap().try_into().unwrap(),
                    input,
                ),
                Some(_) => time(loader::xdp_program(&mut ebpf).unwrap(), input),
            };
            assert_eq!(
                &out[..],
                *input,
                "{name}: the output differs from the input"
            );
            if let (Some(r), Some(b)) = (reason, before) {
                let grown = rec.maps.global(*r).unwrap() - b;
                assert_eq!(
                    grown, REPEAT as u64,
                    "{name}: not every iteration took this path"
                );
            }
            samples[i].push(ns);
        }
    }
    let floor_ns = median(samples[0].clone());
    println!("BPF_PROG_TEST_RUN, {REPEAT} iterations per run, median of {RUNS} interleaved runs");
    println!(
        "{:<42} {:>8} {:>12} {:>9}",
        "path", "ns/pkt", "over floor", "x floor"
    );
    let mut json = Vec::new();
    for (i, (name, _, _)) in paths.iter().enumerate() {
        let m = median(samples[i].clone());
        println!(
            "{:<42} {:>8.0} {:>12.0} {:>9.2}",
            name,
            m,
            m - floor_ns,
            m / floor_ns.max(1.0)
        );
        json.push(serde_json::json!({
            "path": name, "ns_per_packet": m, "runs": samples[i], "floor_ns": floor_ns,
        }));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xlb-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("micro.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}
