//! The benchmark's own kernel programs (crate `xlb-xdp-bench`): their objects, their map
//! layouts, and loading and attaching them inside lab namespaces.
//!
//! `build.rs` builds the programs and this binary embeds them, so `xlb-bench` needs no build
//! output of `xlb` (which carries only the datapath).
//!
//! Attachments are `bpf_link`s owned by the loaded object: dropping a [`Sink`] or [`Forwarder`]
//! detaches it, and so does the end of the process or the deletion of the lab namespace.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::Ebpf;
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};

use crate::lab::Host;

/// A benchmark program's object, built by `build.rs`.
pub struct Object {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! object {
    ($name:literal) => {
        Object {
            name: $name,
            bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $name)),
        }
    };
}

/// The traffic generator (`xlb_gen`), run with live frames.
pub const GEN: Object = object!("xlb-gen");
/// The count-and-drop sink on pod interfaces (`xlb_sink`).
pub const SINK: Object = object!("xlb-sink");
/// The bare forwarder, the ceiling of `forward` (`xlb_fwd`).
pub const FWD: Object = object!("xlb-fwd");
/// The floor of the micro benchmark (`xlb_floor`: the datapath's parser, then `XDP_TX`).
pub const FLOOR: Object = object!("xlb-floor");
pub const PROG_FLOOR: &str = "xlb_floor";
/// The frame-restoring wrapper of the micro benchmark (`xlb_restore`).
pub const RESTORE: Object = object!("xlb-restore");
pub const PROG_RESTORE: &str = "xlb_restore";

/// The generator's source prefix, 198.18.128.0/17 (the sink counts only these).
pub const GEN_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 0);
pub const GEN_PREFIX: u8 = 17;

// The benchmark programs' map layouts, defined once in lb-common.
pub use lb_common::bench::{
    FWD_MAX_PORTS, FwdPort, GEN_HDR_WORDS, GenConfig, SINK_BYTES, SINK_PACKETS, SINK_PASSED,
    SINK_TCP_SYN, SINK_TO_OTHER, SINK_TO_POD, SINK_UDP, SinkConfig,
};

/// A raw packet word (what an XDP program reads with an unaligned `u32` load) for an address.
pub fn raw_addr(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// A raw packet word for a port (or any 16-bit big-endian field).
pub fn raw_port(p: u16) -> u16 {
    u16::from_ne_bytes(p.to_be_bytes())
}

/// The port `xlb-fwd` (xdp-bench/src/bin/fwd.rs) picks for a flow among `ports`: the same mix of the
/// raw packet words, so a scenario knows which pods the forwarder can reach.
pub fn fwd_pick(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, ports: u32) -> u32 {
    let words = ((raw_port(sport) as u32) << 16) | raw_port(dport) as u32;
    let x = (raw_addr(saddr) ^ raw_addr(daddr).rotate_left(16) ^ words).wrapping_mul(0x9e37_79b1);
    (x >> 16) % ports.max(1)
}

impl Object {
    /// Loads the object (its maps are created, its programs are not loaded yet).
    pub fn load(&self) -> Result<Ebpf> {
        if self.bytes.is_empty() {
            bail!(
                "this xlb-bench was built with AYA_BUILD_SKIP and carries no {} program",
                self.name
            );
        }
        Ebpf::load(self.bytes).with_context(|| format!("loading {}", self.name))
    }
}

/// Loads program `prog` of `ebpf` (an XDP program).
pub fn xdp_prog<'a>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut Xdp> {
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .with_context(|| format!("object has no program {prog}"))?
        .try_into()?;
    Ok(p)
}

/// Sums a per-CPU `u64` counter.
pub fn percpu_sum(ebpf: &Ebpf, map: &str, index: u32) -> Result<u64> {
    let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
        ebpf.map(map)
            .with_context(|| format!("object has no map {map}"))?,
    )?;
    Ok(m.get(&index, 0)?.iter().sum())
}

/// Attaches `prog` to `iface` inside `host`'s namespace (native XDP; veth supports it).
fn attach_in(host: &Host, prog: &mut Xdp, iface: &str) -> Result<()> {
    attach_mode_in(host, prog, iface, XdpMode::Driver)
}

/// Attaches `prog` to `iface` inside `host`'s namespace in `mode`.
fn attach_mode_in(host: &Host, prog: &mut Xdp, iface: &str, mode: XdpMode) -> Result<()> {
    let iface = iface.to_string();
    host.netns()
        .run(move || {
            prog.attach(&iface, mode)
                .with_context(|| format!("attaching XDP to {iface}"))?;
            Ok(())
        })
        .with_context(|| format!("in {}", host.name()))
}

/// The count-and-drop sink on one pod's interface.
pub struct Sink {
    pub pod: String,
    ebpf: Ebpf,
}

/// Counters of one or more sinks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkCounts {
    pub packets: u64,
    pub bytes: u64,
    pub to_pod: u64,
    pub to_other: u64,
    pub tcp_syn: u64,
    pub udp: u64,
    pub passed: u64,
}

impl SinkCounts {
    pub fn since(&self, before: &SinkCounts) -> SinkCounts {
        SinkCounts {
            packets: self.packets - before.packets,
            bytes: self.bytes - before.bytes,
            to_pod: self.to_pod - before.to_pod,
            to_other: self.to_other - before.to_other,
            tcp_syn: self.tcp_syn - before.tcp_syn,
            udp: self.udp - before.udp,
            passed: self.passed - before.passed,
        }
    }

    pub fn add(&mut self, o: &SinkCounts) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.to_pod += o.to_pod;
        self.to_other += o.to_other;
        self.tcp_syn += o.tcp_syn;
        self.udp += o.udp;
        self.passed += o.passed;
    }
}

impl Sink {
    /// Loads a sink and attaches it to `iface` of `host`; packets count as `to_pod` when
    /// addressed to `pod_addr:pod_port`. `native`: in the driver, where it sees XDP frames
    /// (and gives a veth the NAPI that XDP frames redirected into its peer need); otherwise in
    /// generic mode, where it sees every skb the interface receives, also those put into its
    /// namespace by `bpf_redirect_peer`, and leaves the veth as a pod's ordinarily is.
    pub fn attach(
        host: &Host,
        iface: &str,
        pod_addr: Ipv4Addr,
        pod_port: u16,
        native: bool,
    ) -> Result<Sink> {
        let mut ebpf = SINK.load()?;
        {
            let mut cfg: Array<&mut MapData, SinkConfig> =
                Array::try_from(ebpf.map_mut("XLB_SINK_CONFIG").context("XLB_SINK_CONFIG")?)?;
            cfg.set(
                0,
                SinkConfig {
                    pod_addr: raw_addr(pod_addr),
                    pod_port: raw_port(pod_port),
                    _pad: 0,
                },
                0,
            )?;
        }
        let prog = xdp_prog(&mut ebpf, "xlb_sink")?;
        prog.load().context("loading xlb_sink")?;
        let mode = if native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        attach_mode_in(host, prog, iface, mode)?;
        Ok(Sink {
            pod: host.name().to_string(),
            ebpf,
        })
    }

    pub fn counts(&self) -> Result<SinkCounts> {
        let g = |i| percpu_sum(&self.ebpf, "XLB_SINK_STATS", i);
        Ok(SinkCounts {
            packets: g(SINK_PACKETS)?,
            bytes: g(SINK_BYTES)?,
            to_pod: g(SINK_TO_POD)?,
            to_other: g(SINK_TO_OTHER)?,
            tcp_syn: g(SINK_TCP_SYN)?,
            udp: g(SINK_UDP)?,
            passed: g(SINK_PASSED)?,
        })
    }
}

/// Sinks on every pod of a lab.
pub struct Sinks {
    pub sinks: Vec<Sink>,
}

impl Sinks {
    pub fn total(&self) -> Result<SinkCounts> {
        let mut t = SinkCounts::default();
        for s in &self.sinks {
            t.add(&s.counts()?);
        }
        Ok(t)
    }

    pub fn per_pod(&self) -> Result<Vec<(String, SinkCounts)>> {
        self.sinks
            .iter()
            .map(|s| Ok((s.pod.clone(), s.counts()?)))
            .collect()
    }
}

/// The bare XDP forwarder (the ceiling) on a node's uplink.
pub struct Forwarder {
    ebpf: Ebpf,
}

impl Forwarder {
    /// Attaches to `iface` of `node`, forwarding to `ports` (node-side veth ifindex, pod MAC,
    /// node-side veth MAC).
    pub fn attach(node: &Host, iface: &str, ports: &[FwdPort]) -> Result<Forwarder> {
        if ports.is_empty() || ports.len() > FWD_MAX_PORTS as usize {
            bail!(
                "the forwarder takes 1 to {FWD_MAX_PORTS} ports, not {}",
                ports.len()
            );
        }
        let mut ebpf = FWD.load()?;
        {
            let mut p: Array<&mut MapData, FwdPort> =
                Array::try_from(ebpf.map_mut("XLB_FWD_PORTS").context("XLB_FWD_PORTS")?)?;
            for (i, port) in ports.iter().enumerate() {
                p.set(i as u32, *port, 0)?;
            }
        }
        {
            let mut c: Array<&mut MapData, u32> =
                Array::try_from(ebpf.map_mut("XLB_FWD_CONFIG").context("XLB_FWD_CONFIG")?)?;
            c.set(0, ports.len() as u32, 0)?;
        }
        let prog = xdp_prog(&mut ebpf, "xlb_fwd")?;
        prog.load().context("loading xlb_fwd")?;
        attach_in(node, prog, iface)?;
        Ok(Forwarder { ebpf })
    }

    /// (redirected, passed).
    pub fn counts(&self) -> Result<(u64, u64)> {
        Ok((
            percpu_sum(&self.ebpf, "XLB_FWD_STATS", 0)?,
            percpu_sum(&self.ebpf, "XLB_FWD_STATS", 1)?,
        ))
    }
}

/// An interface's index and MAC address inside `host`'s namespace (`ip -j link show`).
pub fn link_info(host: &Host, iface: &str) -> Result<(u32, [u8; 6])> {
    let out = host.netns().ip(&["-j", "link", "show", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let l = v.get(0).ok_or_else(|| anyhow!("no link {iface}"))?;
    let idx = l
        .get("ifindex")
        .and_then(|i| i.as_u64())
        .ok_or_else(|| anyhow!("no ifindex for {iface}: {out}"))? as u32;
    let mac = l
        .get("address")
        .and_then(|a| a.as_str())
        .ok_or_else(|| anyhow!("no MAC for {iface}: {out}"))?;
    Ok((idx, parse_mac(mac)?))
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s:?}"))?;
    parts
        .try_into()
        .map_err(|_| anyhow!("bad MAC {s:?}: not 6 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_words_match_packet_bytes() {
        let a = Ipv4Addr::new(198, 18, 128, 1);
        assert_eq!(raw_addr(a).to_ne_bytes(), [198, 18, 128, 1]);
        assert_eq!(raw_port(8080).to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(
            parse_mac("02:aa:00:10:ff:01").unwrap(),
            [2, 0xaa, 0, 0x10, 0xff, 1]
        );
        assert!(parse_mac("02:aa").is_err());
    }
}
