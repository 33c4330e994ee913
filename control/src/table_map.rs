//! Maglev tables as mmap-able BPF arrays: one memory copy to fill or read a whole table.
//!
//! aya has no mmap support for maps, so the mapping is done here with `libc::mmap` on the map's
//! fd; the kernel allows it because every table carries `BPF_F_MMAPABLE`.
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, bail};
use aya::maps::{Array, IterableMap, MapData};
use lb_common::maps::MAGLEV_INNER_FLAGS;

use crate::datapath::MaglevInner;

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(map: &MapData, entries: u32, writable: bool) -> anyhow::Result<Self> {
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (entries as usize * 4).div_ceil(page) * page;
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array fd of at least `len` bytes; checked for MAP_FAILED.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            bail!("mmap of a Maglev table failed: {}", std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    fn slots(&self, entries: u32) -> &mut [u32] {
        // SAFETY: the mapping covers `entries` u32s and lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u32>(), entries as usize) }
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
    let n = u32::try_from(slots.len()).context("table too large")?;
    let table: MaglevInner =
        Array::create(n, MAGLEV_INNER_FLAGS).context("creating a Maglev table map")?;
    let m = Mapping::new(IterableMap::map(&table), n, true)?;
    m.slots(n).copy_from_slice(slots);
    drop(m);
    Ok(table)
}

/// The slots of an existing table.
pub fn read(table: &MaglevInner) -> anyhow::Result<Vec<u32>> {
    let n = table.len();
    let m = Mapping::new(IterableMap::map(table), n, false)?;
    Ok(m.slots(n).to_vec())
}
