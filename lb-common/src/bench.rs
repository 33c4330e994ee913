//! The map layouts of the benchmark programs (`xdp-bench/src/bin/{gen,sink,fwd,restore}.rs`) that
//! `xlb-bench` and the `micro` benchmark fill and read. Not part of the datapath, but defined once
//! here for the same reason as [`crate::maps`]: kernel and user space must agree byte for byte.

/// `XLB_GEN_CONFIG[0]` of the generator, written before a run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// 0: cycle through `flows` flows; 1: a random flow per packet.
    pub random: u32,
    pub flows: u32,
    pub services: u32,
    pub src_base: u32,
    pub src_count: u32,
    pub sport_base: u32,
    pub sport_count: u32,
    pub vip_base: u32,
    /// The template frame's own fields (raw packet words) and checksums.
    pub t_saddr: u32,
    pub t_daddr: u32,
    pub t_sport: u16,
    pub t_ip_csum: u16,
    pub t_l4_csum: u16,
    /// Offset of the L4 checksum (TCP 50, UDP 40 for an untagged frame).
    pub l4_csum_off: u16,
    /// Whether the L4 checksum covers the pseudo header (UDP checksum 0 stays 0).
    pub l4_csum_zero: u32,
    /// Bytes 56..60 of the template (the rest of its headers are in `XLB_GEN_HEADER`).
    pub hdr_tail: u32,
}

/// Words of the template header the generator writes back into every frame (`XLB_GEN_HEADER`:
/// bytes 0..56; bytes 56..60 are [`GenConfig::hdr_tail`]).
pub const GEN_HDR_WORDS: usize = 7;

/// `XLB_SINK_CONFIG[0]`: the address and port a load balancer must have rewritten generator
/// packets to (raw packet words).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkConfig {
    pub pod_addr: u32,
    pub pod_port: u16,
    pub _pad: u16,
}

/// `XLB_SINK_STATS` indices (per-CPU `u64`s).
pub const SINK_PACKETS: u32 = 0;
pub const SINK_BYTES: u32 = 1;
/// Addressed to this pod's address and port (a DNAT load balancer delivered it).
pub const SINK_TO_POD: u32 = 2;
/// Addressed elsewhere (the VIP, for a forwarder that does not rewrite).
pub const SINK_TO_OTHER: u32 = 3;
pub const SINK_TCP_SYN: u32 = 4;
pub const SINK_UDP: u32 = 5;
/// Not generator traffic: passed.
pub const SINK_PASSED: u32 = 6;
/// Entries of `XLB_SINK_STATS`.
pub const SINK_STATS: u32 = 8;

/// `XLB_FWD_PORTS[i]` of the bare forwarder: one pod, the veth to redirect into and the MACs to
/// write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdPort {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// Entries of `XLB_FWD_PORTS`.
pub const FWD_MAX_PORTS: u32 = 64;

/// Longest frame the restoring wrapper (`xlb-restore`) puts back before each run.
pub const RESTORE_MAX_FRAME: usize = 256;

/// `XLB_RESTORE_FRAME[0]`: the original frame.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RestoreFrame {
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; RESTORE_MAX_FRAME],
}

const _: () = assert!(core::mem::size_of::<GenConfig>() == 56);
const _: () = assert!(core::mem::size_of::<SinkConfig>() == 8);
const _: () = assert!(core::mem::size_of::<FwdPort>() == 16);
const _: () = assert!(core::mem::size_of::<RestoreFrame>() == 8 + RESTORE_MAX_FRAME);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)] plain old data with explicit padding fields (sizes asserted above),
    // valid for any bit pattern.
    unsafe impl aya::Pod for GenConfig {}
    unsafe impl aya::Pod for SinkConfig {}
    unsafe impl aya::Pod for FwdPort {}
    unsafe impl aya::Pod for RestoreFrame {}
}
