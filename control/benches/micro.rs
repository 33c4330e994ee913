//! BPF_PROG_TEST_RUN ns/packet of the datapath's paths against a floor program, measured in
//! the same run and interleaved (`cargo bench -p xlb --bench micro`; needs root;
//! `xlb-bench micro` runs it and prints the table).
//!
//! `repeat > 1` runs the program on its own output from the second iteration on. Two ways
//! around that, both used here:
//!
//! * fixed points: the frontend's only backend is the frontend address itself, so the DNAT
//!   writes back the bytes it read and every iteration takes the same path (the original rows);
//! * the frame-restoring wrapper `xlb_restore` (`xdp-bench/src/bin/restore.rs`): it writes the
//!   original frame back, then tail-calls the program under test, so rewriting paths can be
//!   timed with a real backend. Its own cost is the wrapper row (wrapper + floor) minus the
//!   floor, measured in the same run and subtracted from the wrapped rows.
//!
//! Counters prove the path of every iteration: after each run the path's global counter must
//! have grown by exactly `repeat` (and the wrapper's restore counter too), and the output frame
//! must be what the path produces (the input for fixed points and drops, the DNATed frame for
//! wrapped rows). Encap/decap rows come with remote backends (issue 3). The encapsulation rows
//! come twice: with node-c's prepared next hop (`XLB_NODE_HOPS`), and by lookup on a second
//! node-a datapath whose prepared hops were removed (what every packet paid before them); both
//! must send the same bytes, and the path's counter proves the way taken.
#[path = "../tests/common/fib_netns.rs"]
mod fib_netns;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use fib_netns::FibNetns;
use lb_common::bench::{RESTORE_MAX_FRAME, RestoreFrame};
use lb_common::maps::Reason;
use xlb::{
    compile::compile,
    compile::plan::NodeIdentity,
    datapath::loader::{self, LoadOptions, Loaded},
    datapath::reconcile::Reconciler,
    source::manifest,
};
use xlb_bench::bpf::{FLOOR, PROG_FLOOR, PROG_RESTORE, RESTORE};
use xlb_bench::frame::{Frame, xdp_md};

const REPEAT: u32 = 200_000;
const RUNS: usize = 5;

const VIP: [u8; 4] = [198, 19, 255, 1];
const VIP_REAL: [u8; 4] = [198, 19, 255, 2];
const VIP_DENIED: [u8; 4] = [198, 19, 255, 3];
const POD: [u8; 4] = [198, 18, 1, 11];

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
---
apiVersion: v1
kind: Service
metadata: {name: real, namespace: default}
spec:
  type: LoadBalancer
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
status: {loadBalancer: {ingress: [{ip: 198.19.255.2}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: real-a, namespace: default, labels: {kubernetes.io/service-name: real}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: ["198.18.1.11"], nodeName: node-a}]
---
apiVersion: v1
kind: Service
metadata: {name: walled, namespace: default}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: ["198.18.200.0/24"]
  ports: [{name: http, port: 80, targetPort: 80, protocol: TCP}]
status: {loadBalancer: {ingress: [{ip: 198.19.255.3}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: walled-a, namespace: default, labels: {kubernetes.io/service-name: walled}}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints: [{addresses: ["198.19.255.3"], nodeName: node-a}]
---
apiVersion: v1
kind: Service
metadata: {name: remote, namespace: default}
spec:
  type: LoadBalancer
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
status: {loadBalancer: {ingress: [{ip: 198.19.255.4}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: remote-c, namespace: default, labels: {kubernetes.io/service-name: remote}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: ["198.18.4.11"], nodeName: node-c}]
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-c}
status: {addresses: [{type: InternalIP, address: 198.18.0.4}]}
"#;

const VIP_REMOTE: [u8; 4] = [198, 19, 255, 4];

static IFINDEX: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A segment from the client's 198.18.0.10:40000: a SYN, or an ACK; sequence 1, no payload.
fn frame(dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    let f = Frame::tcp([198, 18, 0, 10], 40000, dst, dport).seq(1);
    if syn { f.syn() } else { f.ack(1) }.build()
}

/// An ACK from the client's 198.18.0.10:40000 carrying `len` bytes of payload.
fn data_frame(dst: [u8; 4], dport: u16, len: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    Frame::tcp([198, 18, 0, 10], 40000, dst, dport)
        .seq(1)
        .ack(1)
        .payload(&body)
        .build()
}

/// `f` as a sender with TX checksum offload hands it over: the TCP checksum field holds only
/// the folded pseudo-header sum.
fn partial(f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    let tot = u16::from_be_bytes([v[16], v[17]]) as u64;
    let p = lb_common::csum::fold(xlb_bench::frame::sum16(&v[26..34], 6 + tot - 20));
    v[50..52].copy_from_slice(&p.to_be_bytes());
    v
}

/// `f` with Ethernet padding to a multiple of 8 bytes (what the restore wrapper takes).
fn padded(f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    v.resize(f.len().div_ceil(8) * 8, 0);
    v
}

/// One run of `REPEAT` iterations: (verdict, mean ns per iteration, output frame).
fn time(prog: &Xdp, input: &[u8]) -> (u32, f64, Vec<u8>) {
    run(prog, input, REPEAT)
}

/// `repeat` iterations on `input` arriving on the bench namespace's uplink.
fn run(prog: &Xdp, input: &[u8], repeat: u32) -> (u32, f64, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 128];
    let ctx = xdp_md(
        input.len(),
        IFINDEX.load(std::sync::atomic::Ordering::Relaxed),
    );
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
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

/// Which program a row runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prog {
    Floor,
    Xlb,
    /// The wrapper, tail-calling the floor.
    WrapFloor,
    /// The wrapper, tail-calling xlb.
    WrapXlb,
    /// The wrapper, tail-calling node-c's xlb (the backend node of the remote Service).
    WrapXlbC,
    /// The wrapper, tail-calling a second node-a xlb without prepared next hops: the remote
    /// path by lookup (`bpf_fib_lookup` per packet), as before `XLB_NODE_HOPS`.
    WrapXlbLookup,
}

struct Row {
    name: &'static str,
    prog: Prog,
    input: Vec<u8>,
    reason: Option<Reason>,
    /// A second counter every iteration must grow (the remote path's way to the node).
    via: Option<Reason>,
    /// Expected output frame.
    output: Vec<u8>,
    /// Expected verdict.
    verdict: u32,
    /// The SYN-flood guard engaged for every new flow (rate 1/s): a SYN gets no conntrack
    /// write. The first new flow of each one-second window is recorded, so the row's counter
    /// may fall short of `repeat` by the windows the run crosses.
    guard: bool,
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn restore_count(wrap: &Ebpf) -> u64 {
    let m: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(wrap.map("XLB_RESTORE_STATS").unwrap()).unwrap();
    m.get(&0, 0).unwrap().iter().sum()
}

fn set_restore(wrap: &mut Ebpf, input: &[u8], target: &Xdp) {
    let mut f = RestoreFrame {
        len: input.len() as u32,
        _pad: 0,
        bytes: [0; RESTORE_MAX_FRAME],
    };
    f.bytes[..input.len()].copy_from_slice(input);
    let mut frames: Array<&mut MapData, RestoreFrame> =
        Array::try_from(wrap.map_mut("XLB_RESTORE_FRAME").unwrap()).unwrap();
    frames.set(0, f, 0).unwrap();
    let mut progs: ProgramArray<&mut MapData> =
        ProgramArray::try_from(wrap.map_mut("XLB_RESTORE_PROGS").unwrap()).unwrap();
    progs.set(0, target.fd().unwrap(), 0).unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Loaded { mut ebpf, maps, .. } = loader::load(&LoadOptions {
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
    // The bench runs in a private namespace whose uplink has a permanent neighbour entry for
    // node-c, so the encapsulation's FIB lookup succeeds (XDP_TX) the same way on any machine.
    let netns = FibNetns::new("micro");
    netns.enter();
    IFINDEX.store(netns.ifindex, std::sync::atomic::Ordering::Relaxed);
    rec.apply_tunnel(&xlb::compile::tunnel::tunnel_plan(
        &state,
        "node-a",
        lb_common::maps::GENEVE_PORT,
        &[],
    ))
    .expect("apply tunnel");
    rec.apply(&compile(&state, &node)).expect("apply");
    // node-c's datapath, for the decapsulation rows.
    let Loaded {
        ebpf: mut ebpf_c,
        maps: maps_c,
        ..
    } = loader::load(&LoadOptions {
        pin_dir: None,
        conntrack_size: 65536,
    })
    .expect("load node-c");
    let mut rec_c = Reconciler::adopt(maps_c).expect("adopt node-c");
    let node_c = NodeIdentity {
        node_name: "node-c".into(),
        ..node.clone()
    };
    rec_c
        .apply_tunnel(&xlb::compile::tunnel::tunnel_plan(
            &state,
            "node-c",
            lb_common::maps::GENEVE_PORT,
            &[],
        ))
        .expect("apply node-c tunnel");
    rec_c
        .apply(&compile(&state, &node_c))
        .expect("apply node-c");

    // node-a again, without prepared next hops: the lookup path, measured in the same run.
    let Loaded {
        ebpf: mut ebpf_l,
        maps: maps_l,
        ..
    } = loader::load(&LoadOptions {
        pin_dir: None,
        conntrack_size: 65536,
    })
    .expect("load node-a (lookup)");
    let mut rec_l = Reconciler::adopt(maps_l).expect("adopt node-a (lookup)");
    rec_l
        .apply_tunnel(&xlb::compile::tunnel::tunnel_plan(
            &state,
            "node-a",
            lb_common::maps::GENEVE_PORT,
            &[],
        ))
        .expect("apply tunnel (lookup)");
    rec_l
        .apply(&compile(&state, &node))
        .expect("apply (lookup)");
    let hopped: Vec<u32> = rec_l.maps.node_hops.keys().map(|k| k.unwrap()).collect();
    assert!(
        !hopped.is_empty(),
        "node-c's neighbour is permanent: its hop must be prepared"
    );
    for k in hopped {
        rec_l.maps.node_hops.remove(&k).unwrap();
    }

    let mut floor_obj = EbpfLoader::new().load(FLOOR.bytes).expect("load floor");
    let floor: &mut Xdp = floor_obj
        .program_mut(PROG_FLOOR)
        .unwrap()
        .try_into()
        .unwrap();
    floor.load().expect("load floor program");
    let mut wrap_obj = EbpfLoader::new()
        .load(RESTORE.bytes)
        .expect("load the restore wrapper");
    let wrap: &mut Xdp = wrap_obj
        .program_mut(PROG_RESTORE)
        .unwrap()
        .try_into()
        .unwrap();
    wrap.load().expect("load the restore wrapper program");

    let syn = frame(VIP, 80, true);
    let ack = frame(VIP, 80, false);
    let other = frame([198, 18, 0, 99], 80, true);
    // The node's own traffic: to its address, on a port no frontend uses (ssh).
    let own = frame([198, 18, 0, 2], 22, false);
    let denied = frame(VIP_DENIED, 80, true);
    let real_syn = padded(&frame(VIP_REAL, 80, true));
    let real_ack = padded(&frame(VIP_REAL, 80, false));
    let syn_padded = padded(&syn);
    // What xlb makes of them: DNAT to the pod's 8080, checksums fixed.
    let dnat = |f: &[u8]| -> Vec<u8> {
        let syn = f[34 + 13] & 0x02 != 0; // the TCP flags' SYN bit
        padded(&frame(POD, 8080, syn))
    };
    // The remote Service: encapsulated to node-c. The expected outputs are what one wrapped
    // run makes; every timed run must make exactly the same bytes.
    let remote_syn = padded(&frame(VIP_REMOTE, 80, true));
    let remote_ack = padded(&frame(VIP_REMOTE, 80, false));
    let once = |wrap_obj: &mut Ebpf, target: &Xdp, input: &[u8]| -> Vec<u8> {
        set_restore(wrap_obj, input, target);
        let (verdict, _, out) = run(
            wrap_obj.program(PROG_RESTORE).unwrap().try_into().unwrap(),
            input,
            1,
        );
        assert!(
            verdict == XDP_TX || verdict == XDP_PASS,
            "setup run: verdict {verdict}"
        );
        out
    };
    let encap_syn = once(
        &mut wrap_obj,
        loader::xdp_program(&mut ebpf).unwrap(),
        &remote_syn,
    );
    assert_eq!(
        encap_syn.len(),
        remote_syn.len() + lb_common::maps::ENCAP_OVERHEAD as usize
    );
    let encap_ack = once(
        &mut wrap_obj,
        loader::xdp_program(&mut ebpf).unwrap(),
        &remote_ack,
    );
    for (input, want) in [(&remote_syn, &encap_syn), (&remote_ack, &encap_ack)] {
        let looked_up = once(
            &mut wrap_obj,
            loader::xdp_program(&mut ebpf_l).unwrap(),
            input,
        );
        assert_eq!(
            &looked_up, want,
            "the lookup path sends what the prepared one does"
        );
    }
    let decap_out = once(
        &mut wrap_obj,
        loader::xdp_program(&mut ebpf_c).unwrap(),
        &encap_syn,
    );
    assert_eq!(
        &decap_out[14..],
        &encap_syn[14 + lb_common::maps::ENCAP_OVERHEAD as usize..]
    );
    // Segments with payload, their checksum full or partial: 1,400 bytes on the fixed-point
    // Service (the partial one is summed to be told from a full one and stays partial, for the
    // kernel's skb), and 150 bytes to the remote Service, which fits the wrapper (the partial
    // one is completed for XDP_TX).
    let big_full = data_frame(VIP, 80, 1400);
    let big_partial = partial(&big_full);
    let remote_full = padded(&data_frame(VIP_REMOTE, 80, 150));
    let remote_partial = padded(&partial(&data_frame(VIP_REMOTE, 80, 150)));
    let encap_full = once(
        &mut wrap_obj,
        loader::xdp_program(&mut ebpf).unwrap(),
        &remote_full,
    );
    let encap_completed = once(
        &mut wrap_obj,
        loader::xdp_program(&mut ebpf).unwrap(),
        &remote_partial,
    );
    assert_eq!(
        encap_completed, encap_full,
        "a completed partial checksum is the full one"
    );
    // Open both flows once so the ACK paths are conntrack hits.
    for f in [&syn, &real_syn] {
        loader::xdp_program(&mut ebpf)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(f),
                ..TestRunOptions::new()
            })
            .unwrap();
    }

    let rows = [
        Row {
            name: "floor (parse + XDP_TX)",
            prog: Prog::Floor,
            input: syn.clone(),
            reason: None,
            via: None,
            output: syn.clone(),
            verdict: XDP_TX,
            guard: false,
        },
        Row {
            name: "established TCP (conntrack hit)",
            prog: Prog::Xlb,
            input: ack.clone(),
            reason: Some(Reason::CtHit),
            via: None,
            output: ack.clone(),
            verdict: XDP_PASS,
            guard: false,
        },
        Row {
            name: "new-flow SYN (Maglev + conntrack insert)",
            prog: Prog::Xlb,
            input: syn.clone(),
            reason: Some(Reason::CtNew),
            via: None,
            output: syn.clone(),
            verdict: XDP_PASS,
            guard: false,
        },
        Row {
            name: "non-frontend pass",
            prog: Prog::Xlb,
            input: other.clone(),
            reason: Some(Reason::PassNoFrontend),
            via: None,
            output: other.clone(),
            verdict: XDP_PASS,
            guard: false,
        },
        Row {
            name: "non-frontend pass, a port no frontend uses",
            prog: Prog::Xlb,
            input: own.clone(),
            reason: Some(Reason::PassNoFrontend),
            via: None,
            output: own.clone(),
            verdict: XDP_PASS,
            guard: false,
        },
        Row {
            name: "denied source (loadBalancerSourceRanges)",
            prog: Prog::Xlb,
            input: denied.clone(),
            reason: Some(Reason::DropSourceRange),
            via: None,
            output: denied.clone(),
            verdict: XDP_DROP,
            guard: false,
        },
        Row {
            name: "restore wrapper + floor",
            prog: Prog::WrapFloor,
            input: syn_padded.clone(),
            reason: None,
            via: None,
            output: syn_padded.clone(),
            verdict: XDP_TX,
            guard: false,
        },
        Row {
            name: "established TCP, real DNAT (wrapped)",
            prog: Prog::WrapXlb,
            input: real_ack.clone(),
            reason: Some(Reason::CtHit),
            via: None,
            output: dnat(&real_ack),
            verdict: XDP_PASS,
            guard: false,
        },
        Row {
            name: "new-flow SYN, real DNAT (wrapped)",
            prog: Prog::WrapXlb,
            input: real_syn.clone(),
            reason: Some(Reason::CtNew),
            via: None,
            output: dnat(&real_syn),
            verdict: XDP_PASS,
            guard: false,
        },
        Row {
            name: "encap: established TCP to a remote pod (wrapped)",
            prog: Prog::WrapXlb,
            input: remote_ack.clone(),
            reason: Some(Reason::CtHit),
            via: Some(Reason::EncapPrepared),
            output: encap_ack.clone(),
            verdict: XDP_TX,
            guard: false,
        },
        Row {
            name: "encap: new-flow SYN to a remote pod (wrapped)",
            prog: Prog::WrapXlb,
            input: remote_syn.clone(),
            reason: Some(Reason::CtNew),
            via: Some(Reason::EncapPrepared),
            output: encap_syn.clone(),
            verdict: XDP_TX,
            guard: false,
        },
        Row {
            name: "encap by lookup: established TCP (wrapped)",
            prog: Prog::WrapXlbLookup,
            input: remote_ack.clone(),
            reason: Some(Reason::CtHit),
            via: Some(Reason::EncapHopFallback),
            output: encap_ack.clone(),
            verdict: XDP_TX,
            guard: false,
        },
        Row {
            name: "encap by lookup: new-flow SYN (wrapped)",
            prog: Prog::WrapXlbLookup,
            input: remote_syn.clone(),
            reason: Some(Reason::CtNew),
            via: Some(Reason::EncapHopFallback),
            output: encap_syn.clone(),
            verdict: XDP_TX,
            guard: false,
        },
        Row {
            name: "new-flow SYN, real DNAT, SYN guard engaged (wrapped)",
            prog: Prog::WrapXlb,
            input: real_syn.clone(),
            reason: Some(Reason::SynGuarded),
            via: None,
            output: dnat(&real_syn),
            verdict: XDP_PASS,
            guard: true,
        },
        Row {
            name: "encap: new-flow SYN, SYN guard engaged (wrapped)",
            prog: Prog::WrapXlb,
            input: remote_syn.clone(),
            reason: Some(Reason::SynGuarded),
            via: None,
            output: encap_syn.clone(),
            verdict: XDP_TX,
            guard: true,
        },
        Row {
            name: "established TCP, 1400 B, full checksum",
            prog: Prog::Xlb,
            input: big_full.clone(),
            reason: Some(Reason::CtHit),
            via: None,
            output: big_full.clone(),
            verdict: XDP_PASS,
            guard: false,
        },
        Row {
            name: "established TCP, 1400 B, partial checksum",
            prog: Prog::Xlb,
            input: big_partial.clone(),
            reason: Some(Reason::L4CsumPartialKept),
            via: None,
            output: big_partial.clone(),
            verdict: XDP_PASS,
            guard: false,
        },
        Row {
            name: "encap: established, 150 B, full checksum (wrapped)",
            prog: Prog::WrapXlb,
            input: remote_full.clone(),
            reason: Some(Reason::CtHit),
            via: None,
            output: encap_full.clone(),
            verdict: XDP_TX,
            guard: false,
        },
        Row {
            name: "encap: established, 150 B, partial checksum (wrapped)",
            prog: Prog::WrapXlb,
            input: remote_partial.clone(),
            reason: Some(Reason::L4CsumCompleted),
            via: None,
            output: encap_full.clone(),
            verdict: XDP_TX,
            guard: false,
        },
        Row {
            name: "decap on the backend's node (wrapped)",
            prog: Prog::WrapXlbC,
            input: encap_syn.clone(),
            reason: Some(Reason::Decap),
            via: None,
            output: decap_out.clone(),
            verdict: XDP_PASS,
            guard: false,
        },
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for _ in 0..RUNS {
        for (i, row) in rows.iter().enumerate() {
            rec.set_syn_guard_rate(if row.guard { 1 } else { 0 })
                .expect("setting the SYN guard");
            let counters = match row.prog {
                Prog::WrapXlbC => &rec_c,
                Prog::WrapXlbLookup => &rec_l,
                _ => &rec,
            };
            let before = row.reason.map(|r| counters.maps.global(r).unwrap());
            let via_before = row.via.map(|r| counters.maps.global(r).unwrap());
            let wrapped = matches!(
                row.prog,
                Prog::WrapFloor | Prog::WrapXlb | Prog::WrapXlbC | Prog::WrapXlbLookup
            );
            if wrapped {
                let target: &Xdp = match row.prog {
                    Prog::WrapFloor => floor_obj.program(PROG_FLOOR).unwrap().try_into().unwrap(),
                    Prog::WrapXlbC => loader::xdp_program(&mut ebpf_c).unwrap(),
                    Prog::WrapXlbLookup => loader::xdp_program(&mut ebpf_l).unwrap(),
                    _ => loader::xdp_program(&mut ebpf).unwrap(),
                };
                set_restore(&mut wrap_obj, &row.input, target);
            }
            let restored_before = restore_count(&wrap_obj);
            let (verdict, ns, out) = match row.prog {
                Prog::Floor => time(
                    floor_obj.program(PROG_FLOOR).unwrap().try_into().unwrap(),
                    &row.input,
                ),
                Prog::Xlb => time(loader::xdp_program(&mut ebpf).unwrap(), &row.input),
                Prog::WrapFloor | Prog::WrapXlb | Prog::WrapXlbC | Prog::WrapXlbLookup => time(
                    wrap_obj.program(PROG_RESTORE).unwrap().try_into().unwrap(),
                    &row.input,
                ),
            };
            let name = row.name;
            assert_eq!(verdict, row.verdict, "{name}: verdict");
            assert_eq!(
                out, row.output,
                "{name}: the output is not what this path makes"
            );
            if let (Some(r), Some(b)) = (row.reason, before) {
                let grown = counters.maps.global(r).unwrap() - b;
                let slack = if row.guard { 8 } else { 0 };
                assert!(
                    grown <= REPEAT as u64 && grown + slack >= REPEAT as u64,
                    "{name}: not every iteration took this path ({grown} of {REPEAT})"
                );
            }
            if let (Some(r), Some(b)) = (row.via, via_before) {
                let grown = counters.maps.global(r).unwrap() - b;
                assert_eq!(
                    grown, REPEAT as u64,
                    "{name}: not every iteration took this way to the node"
                );
            }
            if wrapped {
                assert_eq!(
                    restore_count(&wrap_obj) - restored_before,
                    REPEAT as u64,
                    "{name}: not every iteration was restored"
                );
            }
            samples[i].push(ns);
        }
    }
    let med: Vec<f64> = samples.iter().map(|s| median(s.clone())).collect();
    let floor_ns = med[0];
    let wrapper_row = rows
        .iter()
        .position(|r| r.prog == Prog::WrapFloor)
        .expect("the wrapper row");
    let wrapper_ns = med[wrapper_row] - floor_ns;
    println!(
        "BPF_PROG_TEST_RUN, {REPEAT} iterations per run, median of {RUNS} interleaved runs; \
         wrapped rows less the wrapper's own {wrapper_ns:.0} ns"
    );
    println!(
        "{:<42} {:>8} {:>12} {:>9}",
        "path", "ns/pkt", "over floor", "x floor"
    );
    let mut json = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let wrapped = matches!(
            row.prog,
            Prog::WrapXlb | Prog::WrapXlbC | Prog::WrapXlbLookup
        );
        let m = if wrapped { med[i] - wrapper_ns } else { med[i] };
        println!(
            "{:<42} {:>8.0} {:>12.0} {:>9.2}",
            row.name,
            m,
            m - floor_ns,
            m / floor_ns.max(1.0)
        );
        json.push(serde_json::json!({
            "path": row.name, "ns_per_packet": m, "runs": samples[i], "floor_ns": floor_ns,
            "wrapped": wrapped, "wrapper_ns": if wrapped { wrapper_ns } else { 0.0 },
            "counter": row.reason.map(|r| r.name()),
        }));
    }
    let out = std::env::var_os("XLB_BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xlb-bench")
        });
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("micro.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}
