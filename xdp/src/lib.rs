#![no_std]
// The kernel programs live in the `xlb-xdp` binary target; this library target exists so that
// `control/build.rs` can depend on the crate and be rebuilt when it changes.
