//! The `xlb` control process: config sources, the pure compile step, the map reconciler, the
//! loader and the CLI's inspection commands.
pub mod bpf_link;
pub mod cli;
pub mod cli_docs;
pub mod cluster;
pub mod compile;
pub mod conntrack;
pub mod counters;
pub mod datapath;
pub mod flows;
pub mod health;
pub mod ifaddrs;
pub mod inspect;
pub mod kube_source;
pub mod loader;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod output;
pub mod pins;
pub mod plan;
pub mod reconcile;
pub mod run;
pub mod source;
pub mod table_map;
pub mod top;
pub mod tunnel;
