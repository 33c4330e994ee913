//! `xlb run` and `xlb down`: attach the datapath, then feed it from a source through compile
//! and the reconciler for as long as the process runs, serving metrics and health on the side.
pub mod hops;
pub mod links;
pub mod run;
pub mod state;
