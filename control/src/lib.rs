//! The `xlb` control process: config sources, the pure compile step, the map reconciler, the
//! loader and the CLI's inspection commands.
pub mod bpf_link;
pub mod cli;
pub mod cluster;
pub mod compile;
pub mod conntrack;
pub mod datapath;
pub mod ifaddrs;
pub mod inspect;
pub mod loader;
pub mod manifest;
pub mod pins;
pub mod plan;
pub mod reconcile;
pub mod run;
pub mod table_map;
pub mod tunnel;
