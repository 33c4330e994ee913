//! System calls and OS queries the crates we use do not offer; every `unsafe` call into the
//! kernel of the control process is here.
pub mod bpf;
pub mod clock;
pub mod ethtool;
pub mod ifaddrs;
pub mod links;
pub mod memory;
pub mod mmap;
pub mod neigh;
pub mod netdev;
