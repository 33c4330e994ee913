//! Pieces of xlb's kernel programs that more than one program uses. The programs themselves
//! are the binary targets: `xlb-xdp` (the datapath) and `xlb-floor` (the benchmark floor).
#![no_std]

pub use lb_common::csum;
pub mod parse;
