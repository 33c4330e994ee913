//! Maglev tables as mmap-able BPF arrays: one memory copy to fill or read a whole table.
//!
//! The kernel allows the mapping because every table carries `BPF_F_MMAPABLE`.
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::Context as _;
use aya::maps::{Array, IterableMap};
use lb_common::maps::{MAGLEV_INNER_FLAGS, MaglevPair};

use crate::{datapath::maps::MaglevInner, sys::mmap::Mapping};

/// Maps the `elems` elements (8 bytes, two words each) of a table.
fn mapping(table: &MaglevInner, elems: u32, writable: bool) -> anyhow::Result<Mapping> {
    let fd = IterableMap::map(table).fd().as_fd();
    Mapping::new(fd, elems as usize * size_of::<MaglevPair>(), writable)
        .context("mapping a Maglev table")
}

/// A new table holding `words` (a table as `lb_common::maglev::encode` lays it out: two words
/// per element), ready to be swapped into `XLB_MAGLEV`.
pub fn create(words: &[u32]) -> anyhow::Result<MaglevInner> {
    let elems = u32::try_from(words.len().div_ceil(2)).context("table too large")?;
    let table: MaglevInner =
        Array::create(elems, MAGLEV_INNER_FLAGS).context("creating a Maglev table map")?;
    let mut map = mapping(&table, elems, true)?;
    let view = map.u32s_mut(2 * elems as usize);
    view[..words.len()].copy_from_slice(words);
    drop(map);
    Ok(table)
}

/// The words of an existing table, as [`create`] wrote them.
pub fn read(table: &MaglevInner) -> anyhow::Result<Vec<u32>> {
    let elems = table.len();
    let map = mapping(table, elems, false)?;
    Ok(map.u32s(2 * elems as usize).to_vec())
}

/// The table of an existing inner map, decoded.
pub fn read_decoded(table: &MaglevInner) -> anyhow::Result<lb_common::maglev::EncodedTable> {
    Ok(lb_common::maglev::decode(&read(table)?)?)
}

/// Entries per `BPF_MAP_UPDATE_BATCH` call.
const BATCH: usize = 4096;

/// Points service ids at their new tables, a batch at a time: the kernel waits for running
/// programs (an RCU grace period, ~10 ms) after every update of a map of maps, so one update per
/// Service would not scale. Each element still changes atomically: a packet sees a Service's
/// old table or its new one.
pub fn swap_all(outer: &std::os::fd::OwnedFd, swaps: &[(u32, MaglevInner)]) -> anyhow::Result<()> {
    for chunk in swaps.chunks(BATCH) {
        let keys: Vec<u32> = chunk.iter().map(|(k, _)| *k).collect();
        let fds: Vec<u32> = chunk
            .iter()
            .map(|(_, t)| IterableMap::map(t).fd().as_fd().as_raw_fd() as u32)
            .collect();
        crate::sys::bpf::map_update_batch(outer.as_fd(), &keys, &fds)
            .with_context(|| format!("swapping {} Maglev tables", keys.len()))?;
    }
    Ok(())
}
