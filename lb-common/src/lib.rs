//! Everything the xlb kernel programs and the `xlb` process must agree on, defined once.
//!
//! * [`maps`]: map names, sizes, keys and values (`#[repr(C)]`, plain old data).
//! * [`layout`]: the older map layouts this build can take a running datapath over from.
//! * [`hash`]: the flow hash and the Maglev permutation hashes, specified bit for bit so that
//!   every node computes the same numbers.
//! * [`maglev`] (feature `std`): the Maglev lookup-table builder.
//! * [`csum`]: Internet checksum updates, the same in the kernel programs and their tests.
//! * [`encap`]: the prepared outer headers of the remote path (user space builds, the kernel
//!   patches).
//! * [`bench`]: the map layouts of the benchmark programs and `xlb-bench`.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod bench;
pub mod csum;
pub mod encap;
pub mod hash;
pub mod layout;
#[cfg(feature = "std")]
pub mod maglev;
pub mod maps;
