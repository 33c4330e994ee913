//! The traffic generator: `xlb-gen` run with `BPF_PROG_TEST_RUN` and
//! `BPF_F_TEST_XDP_LIVE_FRAMES` from a thread inside the client namespace, so every generated
//! frame leaves on the client's uplink (`XDP_TX`) as if a NIC had sent it.
//!
//! Bounded twice: at most `max_packets` frames and at most `max_time` (checked between calls
//! of [`CHUNK`] frames; one call takes a few milliseconds). Frames only leave on the client's
//! uplink, a veth whose peer is a lab node, with sources in 198.18.128.0/17 and destinations
//! the lab's VIPs (198.19.0.0/16) or pods: nothing reaches the root namespace.
//!
//! Mixes: `established` (TCP ACKs over N flows, cycling), `syn` (TCP SYNs, a random source
//! address and port per packet), `udp` (datagrams over N flows, cycling). Frame size counts
//! the 4-byte FCS a NIC would add: 64 B frames are 60 bytes on the veth.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use aya::maps::{Array, MapData};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};

use crate::bpf::{self, GenConfig, raw_addr, raw_port};
use crate::frame::Frame;
use crate::lab::Host;

/// Frames per `BPF_PROG_TEST_RUN` call.
pub const CHUNK: u32 = 65_536;
/// Live-frames batch size (frames transmitted per batch inside one call).
pub const BATCH: u32 = 64;
/// Hard upper bounds whatever the caller asks.
pub const MAX_PACKETS: u64 = 2_000_000_000;
pub const MAX_TIME: Duration = Duration::from_secs(600);

/// First VIP of the benchmark Services: Service `s` is `198.19.(s / 250).(s % 250 + 1)`.
pub const VIP_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Most Services the VIP scheme addresses (198.19.0.1 .. 198.19.254.250).
pub const MAX_SERVICES: u32 = 250 * 255;
/// Ports of the benchmark Services.
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
/// Sources of the cycling mixes: `src_count` addresses from 198.18.128.1, ports from 10000.
pub const SRC_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 1);
pub const SRC_COUNT: u32 = 32_000;
pub const SPORT_BASE: u16 = 10_000;
pub const SPORT_COUNT: u32 = 50_000;

/// Fails unless every count in `services` is one the VIP scheme can address.
pub fn check_service_counts(services: &[u32]) -> Result<()> {
    if let Some(&n) = services.iter().find(|&&n| n == 0 || n > MAX_SERVICES) {
        bail!("{n} Services: use 1..={MAX_SERVICES}");
    }
    Ok(())
}

/// The VIP of benchmark Service `s`.
pub fn vip(s: u32) -> Ipv4Addr {
    let b = u32::from(VIP_BASE);
    Ipv4Addr::from(b + 256 * (s / 250) + s % 250)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// TCP ACKs over N flows (after the first packet of each flow: conntrack hits).
    Established,
    /// TCP SYNs from a random source address and port each (new flows only).
    Syn,
    /// UDP datagrams over N flows.
    Udp,
}

impl Mix {
    pub fn name(&self) -> &'static str {
        match self {
            Mix::Established => "established",
            Mix::Syn => "syn",
            Mix::Udp => "udp",
        }
    }
    pub fn proto(&self) -> u8 {
        match self {
            Mix::Udp => 17,
            _ => 6,
        }
    }
    /// `TCP` or `UDP`, as a Service port says it.
    pub fn protocol(&self) -> &'static str {
        match self {
            Mix::Udp => "UDP",
            _ => "TCP",
        }
    }
}

/// What to send.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Traffic {
    pub mix: Mix,
    /// Distinct flows of the cycling mixes.
    pub flows: u32,
    /// Services whose VIPs the flows are spread over (flow `i` goes to Service `i % services`).
    pub services: u32,
    /// Frame size on the wire including the FCS (64 .. 1518).
    pub frame_size: u16,
    /// Destination MAC (the node's uplink) and source MAC (the client's).
    #[serde(skip)]
    pub dst_mac: [u8; 6],
    #[serde(skip)]
    pub src_mac: [u8; 6],
}

/// An IPv4 frame: Ethernet, IPv4 (DF), TCP (20 bytes) or UDP, payload filling the frame; with
/// correct checksums.
pub fn build_frame(
    t: &Traffic,
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Result<Vec<u8>> {
    if !(64..=1518).contains(&t.frame_size) {
        bail!("frame size {} is outside 64..=1518 bytes", t.frame_size);
    }
    let len = t.frame_size as usize - 4;
    let tcp = || Frame::tcp(saddr, sport, daddr, dport).seq(1_000_000);
    let f = match t.mix {
        Mix::Established => tcp().ack(2_000_000),
        // The same acknowledgment number, without the ACK flag.
        Mix::Syn => tcp().ack_number(2_000_000).syn(),
        Mix::Udp => Frame::udp(saddr, sport, daddr, dport),
    };
    let headers = 14 + 20 + if t.mix.proto() == 6 { 20 } else { 8 };
    // Minimum-size TCP frames carry no payload (the 6 bytes after the headers are Ethernet
    // padding, as on a real link): a same-sequence payload would look like retransmitted data.
    let payload_len = if t.mix.proto() == 6 && len <= 60 {
        0
    } else {
        len - headers
    };
    let payload: Vec<u8> = (0..payload_len)
        .map(|i| (i as u8).wrapping_mul(7))
        .collect();
    Ok(f.macs(t.src_mac, t.dst_mac)
        .ip_id(0x1234)
        .payload(&payload)
        .pad_to(len)
        .build())
}

/// The generator's template frame and its configuration.
pub fn template(t: &Traffic) -> Result<(Vec<u8>, GenConfig)> {
    check_service_counts(&[t.services])?;
    if t.flows == 0 {
        bail!("flows must be at least 1");
    }
    let (saddr, daddr, sport) = (SRC_BASE, vip(0), SPORT_BASE);
    let f = build_frame(t, saddr, daddr, sport, SERVICE_PORT)?;
    let l4_csum_off: u16 = if t.mix.proto() == 6 { 50 } else { 40 };
    let rd16 = |o: usize| u16::from_ne_bytes([f[o], f[o + 1]]);
    let cfg = GenConfig {
        random: (t.mix == Mix::Syn) as u32,
        flows: t.flows,
        services: t.services,
        src_base: u32::from(SRC_BASE),
        src_count: if t.mix == Mix::Syn {
            // The whole /17 but .0 and the top address.
            (1 << (32 - bpf::GEN_PREFIX)) - 2
        } else {
            SRC_COUNT
        },
        sport_base: SPORT_BASE as u32,
        sport_count: SPORT_COUNT,
        vip_base: u32::from(VIP_BASE),
        t_saddr: raw_addr(saddr),
        t_daddr: raw_addr(daddr),
        t_sport: raw_port(sport),
        t_ip_csum: rd16(24),
        t_l4_csum: rd16(l4_csum_off as usize),
        l4_csum_off,
        l4_csum_zero: 0,
        hdr_tail: u32::from_ne_bytes([f[56], f[57], f[58], f[59]]),
    };
    debug_assert!(bpf::GEN_NET.octets()[..2] == saddr.octets()[..2]);
    Ok((f, cfg))
}

/// What the generator computes for flow `i` (mirrors `xdp-bench/src/bin/gen.rs`), as
/// (source, source port, destination VIP).
pub fn flow(cfg: &GenConfig, i: u32) -> (Ipv4Addr, u16, Ipv4Addr) {
    let services = cfg.services.max(1);
    let s = i % services;
    let src_count = cfg.src_count.max(1);
    let saddr = Ipv4Addr::from(cfg.src_base + i % src_count);
    let sport = (cfg.sport_base + (i / src_count) % cfg.sport_count.max(1)) as u16;
    let daddr = Ipv4Addr::from(cfg.vip_base + 256 * (s / 250) + s % 250);
    (saddr, sport, daddr)
}

/// A loaded generator.
pub struct Generator {
    ebpf: Ebpf,
    frame: Vec<u8>,
    pub config: GenConfig,
    chunk: u32,
    pause: Duration,
}

/// What one [`Generator::run`] did.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct GenRun {
    /// Frames the program ran on (each one transmitted with `XDP_TX`).
    pub sent: u64,
    pub elapsed: Duration,
}

impl GenRun {
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Generator {
    pub fn new(t: &Traffic) -> Result<Generator> {
        let (frame, config) = template(t)?;
        let mut ebpf = bpf::GEN.load()?;
        {
            let mut c: Array<&mut MapData, GenConfig> =
                Array::try_from(ebpf.map_mut("XLB_GEN_CONFIG").context("XLB_GEN_CONFIG")?)?;
            c.set(0, config, 0)?;
            let mut words = [0u64; bpf::GEN_HDR_WORDS];
            for (k, w) in words.iter_mut().enumerate() {
                *w = u64::from_ne_bytes(frame[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
            }
            let mut h: Array<&mut MapData, [u64; bpf::GEN_HDR_WORDS]> =
                Array::try_from(ebpf.map_mut("XLB_GEN_HEADER").context("XLB_GEN_HEADER")?)?;
            h.set(0, words, 0)?;
        }
        bpf::xdp_prog(&mut ebpf, "xlb_gen")?
            .load()
            .context("loading xlb_gen")?;
        Ok(Generator {
            ebpf,
            frame,
            config,
            chunk: CHUNK,
            pause: Duration::ZERO,
        })
    }

    /// Paced sending: `chunk` frames per call (at most [`CHUNK`]), then `pause`. For runs that
    /// check exact counts, where no queue may overflow.
    pub fn pace(&mut self, chunk: u32, pause: Duration) {
        self.chunk = chunk.clamp(1, CHUNK);
        self.pause = pause.min(Duration::from_secs(1));
    }

    /// Frames generated so far (over all CPUs).
    pub fn generated(&self) -> Result<u64> {
        bpf::percpu_sum(&self.ebpf, "XLB_GEN_STATS", 0)
    }

    /// Sends up to `max_packets` frames for up to `max_time` out of `iface` of `client`, from
    /// `threads` threads pinned to CPUs `0..threads` (each entering the client namespace).
    pub fn run(
        &self,
        client: &Host,
        iface: &str,
        max_packets: u64,
        max_time: Duration,
        threads: usize,
    ) -> Result<GenRun> {
        let max_packets = max_packets.min(MAX_PACKETS);
        let max_time = max_time.min(MAX_TIME);
        let (ifindex, _) = bpf::link_info(client, iface)?;
        let prog: &aya::programs::Xdp = self
            .ebpf
            .program("xlb_gen")
            .context("no xlb_gen")?
            .try_into()?;
        let threads = threads.clamp(1, num_cpus());
        let before = self.generated()?;
        let start = Instant::now();
        let per_thread = max_packets.div_ceil(threads as u64);
        let frame = &self.frame;
        let (chunk, pause) = (self.chunk, self.pause);
        let results: Vec<Result<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|cpu| {
                    s.spawn(move || -> Result<u64> {
                        crate::lab::netns::enter(client.netns().path())?;
                        pin_to_cpu(cpu)?;
                        send_loop(
                            prog, frame, ifindex, per_thread, start, max_time, chunk, pause,
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| bail!("generator thread panicked"))
                })
                .collect()
        });
        let elapsed = start.elapsed();
        for r in results {
            r?;
        }
        let sent = self.generated()? - before;
        Ok(GenRun { sent, elapsed })
    }
}

#[allow(clippy::too_many_arguments)]
fn send_loop(
    prog: &aya::programs::Xdp,
    frame: &[u8],
    ifindex: u32,
    packets: u64,
    start: Instant,
    max_time: Duration,
    chunk: u32,
    pause: Duration,
) -> Result<u64> {
    let ctx = crate::frame::xdp_md(frame.len(), ifindex);
    let mut done = 0u64;
    while done < packets && start.elapsed() < max_time {
        crate::lab::check_interrupted()?;
        let n = (packets - done).min(chunk as u64) as u32;
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: n,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN (live frames) of xlb_gen")?;
        done += n as u64;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(done)
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn traffic(mix: Mix) -> Traffic {
        Traffic {
            mix,
            flows: 1000,
            services: 300,
            frame_size: 64,
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
        }
    }

    /// Checks a frame's IPv4 and L4 checksums.
    fn check(f: &[u8], proto: u8) {
        assert_eq!(f[23], proto);
        assert_eq!(frame::checksum(&f[14..34]), 0, "IPv4 checksum");
        let ip_len = u16::from_be_bytes([f[16], f[17]]) as usize;
        assert_eq!(
            frame::l4_checksum(&f[14..34], &f[34..14 + ip_len]),
            0,
            "L4 checksum"
        );
    }

    #[test]
    fn frames_have_valid_checksums_and_sizes() {
        for mix in [Mix::Established, Mix::Syn, Mix::Udp] {
            let t = traffic(mix);
            let (f, cfg) = template(&t).unwrap();
            assert_eq!(f.len(), 60);
            check(&f, mix.proto());
            assert_eq!(f[23], mix.proto());
            assert_eq!(
                cfg.l4_csum_off as usize,
                if mix == Mix::Udp { 40 } else { 50 }
            );
            let mut big = t.clone();
            big.frame_size = 1518;
            let (f, _) = template(&big).unwrap();
            assert_eq!(f.len(), 1514);
            check(&f, mix.proto());
        }
        let mut t = traffic(Mix::Udp);
        t.frame_size = 63;
        assert!(template(&t).is_err());
    }

    /// The kernel program patches the template with RFC 1624 updates; doing the same here and
    /// comparing with a frame built from scratch checks the configuration it is given.
    #[test]
    fn incremental_patch_equals_fresh_frame() {
        // The datapath's own arithmetic, which the generator program uses.
        use lb_common::csum::{replace2, replace4};
        for mix in [Mix::Established, Mix::Udp] {
            let t = traffic(mix);
            let (_, cfg) = template(&t).unwrap();
            for i in [0u32, 1, 299, 300, 12345, 999_999, u32::MAX] {
                let (s, sp, d) = flow(&cfg, i);
                assert!(crate::lab::topology::Cidr::new(bpf::GEN_NET, bpf::GEN_PREFIX).contains(s));
                assert_ne!(d.octets()[3], 0);
                assert_ne!(d.octets()[3], 255);
                let fresh = build_frame(&t, s, d, sp, SERVICE_PORT).unwrap();
                let (rs, rd, rp) = (raw_addr(s), raw_addr(d), raw_port(sp));
                let ip = replace4(replace4(cfg.t_ip_csum, cfg.t_saddr, rs), cfg.t_daddr, rd);
                let l4 = replace2(
                    replace4(replace4(cfg.t_l4_csum, cfg.t_saddr, rs), cfg.t_daddr, rd),
                    cfg.t_sport,
                    rp,
                );
                let o = cfg.l4_csum_off as usize;
                assert_eq!(ip.to_ne_bytes(), [fresh[24], fresh[25]], "flow {i} IP csum");
                assert_eq!(
                    l4.to_ne_bytes(),
                    [fresh[o], fresh[o + 1]],
                    "flow {i} L4 csum"
                );
            }
        }
    }

    #[test]
    fn vips_skip_network_and_broadcast_like_addresses() {
        assert_eq!(vip(0), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(vip(249), Ipv4Addr::new(198, 19, 0, 250));
        assert_eq!(vip(250), Ipv4Addr::new(198, 19, 1, 1));
        assert_eq!(vip(9999), Ipv4Addr::new(198, 19, 39, 250));
        assert_eq!(vip(MAX_SERVICES - 1), Ipv4Addr::new(198, 19, 254, 250));
    }
}
