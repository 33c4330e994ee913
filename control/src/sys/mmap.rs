//! A shared mapping of a BPF map's fd (aya 0.14 has no mmap support for maps).
use std::os::fd::{AsRawFd as _, BorrowedFd};

use anyhow::bail;

/// `len` bytes (rounded up to pages) of a `BPF_F_MMAPABLE` map, unmapped on drop.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    pub fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> anyhow::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = len.div_ceil(page) * page;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping a BPF map fd of at least `len` bytes; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of a BPF map failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { ptr, len })
    }

    /// The first `n` u32s of the mapping.
    pub fn u32s_mut(&mut self, n: usize) -> &mut [u32] {
        assert!(n * 4 <= self.len, "{n} u32s exceed the mapping");
        // SAFETY: the mapping covers `n` u32s (checked) and lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u32>(), n) }
    }

    /// The first `n` u32s as atomics: for words a running program may read while they are
    /// stored (each store is one aligned 32-bit write, in program order where asked).
    pub fn atomic_u32s(&mut self, n: usize) -> &[std::sync::atomic::AtomicU32] {
        assert!(n * 4 <= self.len, "{n} u32s exceed the mapping");
        // SAFETY: as above; the mapping is page-aligned, so every u32 is aligned, and AtomicU32
        // has u32's layout.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<std::sync::atomic::AtomicU32>(), n) }
    }

    pub fn u32s(&self, n: usize) -> &[u32] {
        assert!(n * 4 <= self.len, "{n} u32s exceed the mapping");
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
