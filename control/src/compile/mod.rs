//! The pure step: cluster state and this node's identity in, [`plan::DatapathPlan`] out. No
//! I/O, no clock, ordered iteration only, so every node given the same objects builds the same
//! tables.
pub mod plan;
mod services;
pub mod tunnel;

pub use services::{Compiler, DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT, compile};
