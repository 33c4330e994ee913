//! Pieces shared by the benchmark programs (the binary targets `xlb-floor`, `xlb-gen`,
//! `xlb-sink`, `xlb-fwd`, `xlb-restore`). Not part of the datapath: `xlb-xdp` never links this.
#![no_std]

/// Generator traffic comes from this prefix (198.18.128.0/17, network order when compared via
/// [`from_generator`]); the sink counts and drops only such packets, everything else passes.
pub const GEN_NET: u32 = 0xc612_8000;
pub const GEN_MASK: u32 = 0xffff_8000;

/// Whether a source address (network order, as read from the packet) is the generator's.
#[inline(always)]
pub fn from_generator(saddr_be: u32) -> bool {
    u32::from_be(saddr_be) & GEN_MASK == GEN_NET
}

// The datapath's parser, wire formats and RFC 1624 checksum updates.
pub use xlb_xdp::{csum, net, parse};
