//! Pieces of xlb's kernel programs that more than one program uses: the wire formats and the
//! parser (also used by the benchmark programs in `xdp-bench`). The datapath itself is the
//! binary target `xlb-xdp`.
#![no_std]

pub use lb_common::csum;
pub mod net;
pub mod parse;
