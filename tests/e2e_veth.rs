//! The DSR lab as kind and container networks build it: plain veths on a plain bridge, no XDP
//! program but xlb's, default offloads (the client's TX checksum offload on, so its segments
//! carry partial checksums). Connections through the edges must work, the pods must count no
//! checksum errors, and what xlb counts as sent must arrive:
//! * bridge ports without NAPI: the edges' XDP frames would be dropped, so xlb sends them
//!   through the TC path (`forward_encap_skb`);
//! * bridge ports with GRO on: the kernel says the peer takes XDP frames, but not whether from
//!   GRO alone (which did not deliver them here), so xlb still takes the TC path.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use xlb_bench::lab::*;
use xlb_e2e::*;

const BACKEND_NODES: [&str; 2] = ["node-c", "node-d"];
const PODS: [&str; 3] = ["c1", "c2", "d1"];

/// `TcpInCsumErrors` of `/proc/net/snmp` in `host`'s namespace.
fn tcp_csum_errors(host: &Host) -> Result<u64> {
    let snmp = host.netns().exec("cat", &["/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().context("no Tcp: header")?,
        tcp.next().context("no Tcp: values")?,
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InCsumErrors")
        .map(|(_, v)| v.parse().context("InCsumErrors"))
        .context("no InCsumErrors in /proc/net/snmp")?
}

fn csum_errors(t: &Dsr<'_, '_>) -> Result<BTreeMap<String, u64>> {
    PODS.iter()
        .map(|p| Ok((p.to_string(), tcp_csum_errors(t.lab.host(p))?)))
        .collect()
}

/// Encapsulated packets an edge counted as sent, any way.
fn sent(t: &Dsr<'_, '_>, edge: &str) -> Result<u64> {
    let p = t.xlb.node(edge);
    Ok(p.counter("forward_encap_tx")?
        + p.counter("forward_encap_redirect")?
        + p.counter("forward_encap_skb")?
        + p.counter("encap_fib_pass")?)
}

fn totals(t: &Dsr<'_, '_>) -> Result<(u64, u64)> {
    let mut encap = 0;
    for e in EDGES {
        encap += sent(t, e)?;
    }
    let mut decap = 0;
    for n in BACKEND_NODES {
        decap += t.xlb.node(n).counter("decap")?;
    }
    Ok((encap, decap))
}

/// TCP connections through the VIP and both NodePorts, each with lines both ways (one of
/// 1,000 bytes), then the checks every variant shares. Returns the edges' `xlb stats`.
fn traffic_and_checks(t: &mut Dsr<'_, '_>) -> Result<Vec<xlb_api::StatsOutput>> {
    let offload = t
        .client()
        .netns()
        .exec("ethtool", &["-k", UPLINK])?
        .lines()
        .any(|l| l.trim() == "tx-checksumming: on");
    ensure!(offload, "the client's TX checksum offload is not on");
    let errors_before = csum_errors(t)?;
    let (encap_before, decap_before) = totals(t)?;
    let client = t.client();
    for dst in t.entry_points() {
        for _ in 0..4 {
            let mut c = connect_tcp(client, dst, None, IO_TIMEOUT)
                .with_context(|| format!("connecting to {dst}"))?;
            for i in 0..3 {
                let line = format!("line {i} to {dst}");
                ensure!(c.exchange(&line)? == line);
            }
            let long = format!("{dst} {}", "y".repeat(1000));
            ensure!(
                c.exchange(&long)
                    .with_context(|| format!("a 1,000-byte line through {dst}"))?
                    == long
            );
        }
    }
    let errors_after = csum_errors(t)?;
    ensure!(
        errors_after == errors_before,
        "pods counted TCP checksum errors: before {errors_before:?}, after {errors_after:?}"
    );
    // Every packet an edge counted as sent was decapsulated by a backend node (the last
    // segments of the closed connections may still be on their way: a short bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (encap, decap) = totals(t)?;
        let (encap, decap) = (encap - encap_before, decap - decap_before);
        ensure!(encap > 0, "the edges encapsulated nothing");
        if encap == decap {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the edges counted {encap} packets sent, the backend nodes decapsulated {decap}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut stats = Vec::new();
    for e in EDGES {
        let s = t.xlb.node(e).stats()?;
        let up = s
            .interfaces
            .iter()
            .find(|i| i.name.as_deref() == Some(UPLINK))
            .with_context(|| format!("{e}: `xlb stats` shows no {UPLINK}: {:?}", s.interfaces))?;
        ensure!(
            up.xdp_errors.values().all(|v| *v == 0) && !up.xdp_errors.is_empty(),
            "{e}: {UPLINK}'s driver counted XDP errors: {:?}",
            up.xdp_errors
        );
        stats.push(s);
    }
    Ok(stats)
}

fn uplink(s: &xlb_api::StatsOutput) -> &xlb_api::InterfaceStatus {
    s.interfaces
        .iter()
        .find(|i| i.name.as_deref() == Some(UPLINK))
        .expect("checked by traffic_and_checks")
}

#[test]
fn plain_veth_edges_send_through_the_kernel_and_count_honestly() {
    with_dsr_lab(|t| {
        let stats = traffic_and_checks(t)?;
        for (e, s) in EDGES.iter().zip(&stats) {
            let up = uplink(s);
            ensure!(
                (up.path.as_str(), up.reason.as_str())
                    == ("tc-redirect", "veth_peer_without_xdp_or_gro"),
                "{e}: {UPLINK} takes {} ({})",
                up.path,
                up.reason
            );
            for c in ["forward_encap_tx", "forward_encap_redirect"] {
                ensure!(
                    s.counters.get(c) == Some(&0),
                    "{e}: {c} = {:?} on a path without XDP frames",
                    s.counters.get(c)
                );
            }
            ensure!(
                s.counters.get("forward_encap_skb").is_some_and(|v| *v > 0),
                "{e} sent nothing through the TC path"
            );
        }
        Ok(())
    });
}

#[test]
fn edges_whose_fabric_has_gro_on_still_deliver() {
    with_dsr_lab_spec(LabSpec::dsr().with_fabric_gro(), ServiceDef::web, |t| {
        let stats = traffic_and_checks(t)?;
        for (e, s) in EDGES.iter().zip(&stats) {
            let up = uplink(s);
            ensure!(
                (up.path.as_str(), up.reason.as_str()) == ("tc-redirect", "veth_peer_unverified"),
                "{e}: {UPLINK} takes {} ({})",
                up.path,
                up.reason
            );
        }
        Ok(())
    });
}
