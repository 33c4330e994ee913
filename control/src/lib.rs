//! The `xlb` control process, in layers. Each layer uses only the layers above it in this list
//! (`tests/layers.rs` checks it):
//!
//! ```text
//! sys       raw system calls and OS queries (bpf(2) commands aya lacks, interface addresses)
//! source    where the cluster comes from: Kubernetes watchers or manifest files → ClusterState
//! compile   the pure step: ClusterState + this node → DatapathPlan (frontends, backends, tables)
//! datapath  the kernel side as user space sees it: loading, pins, links, maps, the reconciler
//!           that writes a plan into them, and the one conntrack walk
//! observe   reading the datapath for people and machines: counters, metrics, health, logs
//! cli       the inspection commands and their arguments and output contracts
//! daemon    `xlb run` and `xlb down`: wires sources → compile → datapath, serves observe
//! ```
pub mod sys;

pub mod source;

pub mod compile;

pub mod datapath;

pub mod observe;

pub mod cli;

pub mod daemon;
