//! `xlb-bench gen`: the generator's own maximum rate on this machine. The generator sends from
//! the client of a single-node lab straight into a count-and-drop sink on the node's uplink
//! (no forwarding at all), for each method: XDP live frames (`BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`) and AF_XDP transmit (copy mode on the veth).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::afxdp;
use crate::bpf::{self, Sink, SinkCounts};
use crate::lab::{Lab, UPLINK};
use crate::say;
use crate::scenarios::{Machine, si};
use crate::traffic::{self, Generator, Mix, Traffic};

#[derive(Clone, Debug, serde::Serialize)]
pub struct GenOptions {
    pub mix: Mix,
    pub flows: u32,
    pub frame_size: u16,
    pub seconds: f64,
    pub max_packets: u64,
    pub threads: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GenMeasurement {
    pub method: &'static str,
    pub threads: usize,
    pub sent: u64,
    pub elapsed_s: f64,
    pub sent_pps: f64,
    pub received: SinkCounts,
    pub received_pps: f64,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GenReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub options: GenOptions,
    pub runs: Vec<GenMeasurement>,
    /// The method with the higher received rate.
    pub faster: String,
}

pub fn run(opts: &GenOptions) -> Result<GenReport> {
    let mut runs = Vec::new();
    for threads in [1, opts.threads.max(1)] {
        runs.push(one(opts, "xdp-live-frames", threads)?);
        if opts.threads <= 1 {
            break;
        }
    }
    runs.push(one(opts, "af-xdp", 1)?);
    let faster = runs
        .iter()
        .max_by(|a, b| a.received_pps.total_cmp(&b.received_pps))
        .map(|m| m.method.to_string())
        .unwrap_or_default();
    Ok(GenReport {
        scenario: "gen",
        machine: Machine::this(),
        options: opts.clone(),
        runs,
        faster,
    })
}

fn one(opts: &GenOptions, method: &'static str, threads: usize) -> Result<GenMeasurement> {
    crate::lab::check_interrupted()?;
    let lab = Lab::new(crate::lab::LabSpec::single_node().for_benchmarks())?;
    let node = lab.host(&lab.spec().nodes[0].name);
    let sink = Sink::attach(node, UPLINK, node.addr(), traffic::SERVICE_PORT, true)?;
    let (_, node_mac) = bpf::link_info(node, UPLINK)?;
    let (_, client_mac) = bpf::link_info(lab.client(), UPLINK)?;
    let t = Traffic {
        mix: opts.mix,
        flows: opts.flows,
        services: 1,
        frame_size: opts.frame_size,
        dst_mac: node_mac,
        src_mac: client_mac,
    };
    let max_time = Duration::from_secs_f64(opts.seconds);
    let before = sink.counts()?;
    let (sent, elapsed) = match method {
        "af-xdp" => {
            let r = afxdp::transmit(lab.client(), UPLINK, &t, opts.max_packets, max_time)?;
            (r.sent, r.elapsed)
        }
        _ => {
            let g = Generator::new(&t)?;
            let start = Instant::now();
            let r = g.run(lab.client(), UPLINK, opts.max_packets, max_time, threads)?;
            let _ = start;
            (r.sent, r.elapsed)
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let received = sink.counts()?.since(&before);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut problems = Vec::new();
    if received.packets > sent {
        problems.push(format!("received {} > sent {sent}", received.packets));
    }
    if received.packets == 0 {
        problems.push("nothing arrived".into());
    }
    Ok(GenMeasurement {
        method,
        threads,
        sent,
        elapsed_s: secs,
        sent_pps: sent as f64 / secs,
        received_pps: received.packets as f64 / secs,
        received,
        problems,
    })
}

pub fn print(rep: &GenReport) {
    let o = &rep.options;
    say!(
        "gen: the generator alone, client → sink on the node's uplink (mix {}, {} flows, {} B frames, {:.1} s, {} CPUs)",
        o.mix.name(),
        o.flows,
        o.frame_size,
        o.seconds,
        rep.machine.cpus
    );
    say!(
        "{:<16} {:>7} {:>11} {:>12} {:>7}  checks",
        "method",
        "threads",
        "sent/s",
        "received/s",
        "loss"
    );
    for m in &rep.runs {
        let loss = 1.0 - m.received.packets as f64 / (m.sent.max(1)) as f64;
        say!(
            "{:<16} {:>7} {:>11} {:>12} {:>6.1}%  {}",
            m.method,
            m.threads,
            si(m.sent_pps),
            si(m.received_pps),
            loss * 100.0,
            if m.problems.is_empty() {
                "ok".into()
            } else {
                m.problems.join("; ")
            }
        );
    }
    say!("faster here: {}", rep.faster);
}
