//! xlb-bench: lab topologies in network namespaces, traffic, and the demo.
//!
//! [`lab`] builds labs (namespaces, veths, routes), runs pod servers and the real `xlb` binary
//! in them, and drives traffic; the end-to-end tests in `tests/` and `xlb-bench demo` use it.

pub mod lab;
