//! Maglev tables as mmap-able BPF arrays: one memory copy to fill or read a whole table.
//!
//! aya has no mmap support for maps, so the mapping is done here with `libc::mmap` on the map's
//! fd; the kernel allows it because every table carries `BPF_F_MMAPABLE`.
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, bail};
use aya::maps::{Array, IterableMap, MapData};
use lb_common::maps::{
    MAGLEV_INNER_FLAGS, MAGLEV_SLOTS_PER_ELEM, MaglevPair, NO_BACKEND, maglev_elems,
};

use crate::datapath::MaglevInner;

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// Maps `elems` elements of 8 bytes (two slots each).
    fn new(map: &MapData, elems: u32, writable: bool) -> anyhow::Result<Self> {
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (elems as usize * size_of::<MaglevPair>()).div_ceil(page) * page;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array fd of at least `len` bytes; checked for MAP_FAILED.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of a Maglev table failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { ptr, len })
    }

    /// The slots of `elems` elements: element stride is 8 bytes, so they are contiguous u32s.
    fn slots_mut(&mut self, elems: u32) -> &mut [u32] {
        let n = (elems * MAGLEV_SLOTS_PER_ELEM) as usize;
        // SAFETY: the mapping covers `elems` 8-byte elements and lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u32>(), n) }
    }

    fn slots(&self, elems: u32) -> &[u32] {
        let n = (elems * MAGLEV_SLOTS_PER_ELEM) as usize;
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u32>(), n) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A new table of `slots.len()` entries holding `slots`, ready to be swapped into `XLB_MAGLEV`.
pub fn create(slots: &[u32]) -> anyhow::Result<MaglevInner> {
    let m = u32::try_from(slots.len()).context("table too large")?;
    let elems = maglev_elems(m);
    let table: MaglevInner =
        Array::create(elems, MAGLEV_INNER_FLAGS).context("creating a Maglev table map")?;
    let mut map = Mapping::new(IterableMap::map(&table), elems, true)?;
    let view = map.slots_mut(elems);
    view[..slots.len()].copy_from_slice(slots);
    view[slots.len()..].fill(NO_BACKEND);
    drop(map);
    Ok(table)
}

/// The first `m` slots of an existing table (`m` = the table size its frontends carry).
pub fn read(table: &MaglevInner, m: u32) -> anyhow::Result<Vec<u32>> {
    let elems = table.len();
    if maglev_elems(m) > elems {
        anyhow::bail!("Maglev table has {elems} elements, fewer than {m} slots need");
    }
    let map = Mapping::new(IterableMap::map(table), elems, false)?;
    Ok(map.slots(elems)[..m as usize].to_vec())
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries per `BPF_MAP_UPDATE_BATCH` call.
const BATCH: usize = 4096;

/// Points service ids at their new tables, `BPF_MAP_UPDATE_BATCH` at a time. The kernel waits
/// for running programs (an RCU grace period, ~10 ms) after every update of a map of maps; one
/// update per Service made programming 10,000 Services take minutes, one per batch takes a
/// second. Each element still changes atomically: a packet sees a Service's old table or its
/// new one. aya 0.14 has no batch operations, hence the raw `bpf(2)` call.
pub fn swap_all(outer: &std::os::fd::OwnedFd, swaps: &[(u32, MaglevInner)]) -> anyhow::Result<()> {
    for chunk in swaps.chunks(BATCH) {
        let keys: Vec<u32> = chunk.iter().map(|(k, _)| *k).collect();
        let fds: Vec<u32> = chunk
            .iter()
            .map(|(_, t)| IterableMap::map(t).fd().as_fd().as_raw_fd() as u32)
            .collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: fds.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: outer.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points to key and value arrays of `count` u32s that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        if rc != 0 {
            bail!(
                "swapping {} Maglev tables (BPF_MAP_UPDATE_BATCH, {} done): {}",
                keys.len(),
                attr.count,
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}
