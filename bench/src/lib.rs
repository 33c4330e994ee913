//! xlb-bench: lab topologies in network namespaces, traffic, and the demo.
//!
//! [`lab`] builds labs (namespaces, veths, routes), runs pod servers and the real `xlb` binary
//! in them, and drives traffic; the end-to-end tests in `tests/` and [`demo`] use it.
//! [`traffic`] (with [`bpf`] and [`afxdp`]) is the packet generator and sink, [`baseline`] the
//! kube-proxy-shaped rules xlb is compared with, [`scenarios`] the benchmarks. [`frame`] builds
//! and checks the frames of the generator and of the packet tests.

pub mod afxdp;
pub mod baseline;
pub mod bpf;
pub mod demo;
pub mod frame;
pub mod lab;
pub mod scenarios;
pub mod traffic;
