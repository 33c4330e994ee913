//! The `bpf(2)` commands aya 0.14 does not expose: which interface and program a pinned link has
//! (`BPF_OBJ_GET` + `BPF_OBJ_GET_INFO_BY_FD`), pinning an object at a second path
//! (`BPF_OBJ_PIN`), a map's shape, batched map reads and updates on raw records
//! (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`, `BPF_MAP_UPDATE_ELEM`), which the upgrade
//! uses on maps of an older layout that have no Rust type in this build, and the system's links
//! by id, detached by id (`BPF_LINK_GET_NEXT_ID`, `BPF_LINK_DETACH`).
//! Every raw `bpf(2)` call of the control process is in this file.
use std::{
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// `BPF_NOEXIST`: create only, keep an entry that exists.
pub const BPF_NOEXIST: u64 = 1;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_link_info`: type, id, prog_id, then (8-aligned) the per-type union,
/// whose first field is the ifindex for both XDP and TCX links.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    _rest: [u32; 11],
}

/// The start of `struct bpf_map_info`.
#[repr(C)]
#[derive(Default)]
struct MapInfoHead {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    _rest: [u32; 20],
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
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

/// `bpf(cmd, attr, sizeof *attr)`.
fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialised attribute struct of the layout `cmd` expects.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the BPF object (map, program or link) pinned at `pin`.
pub fn obj_get(pin: &Path) -> std::io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object `fd` at `pin` as well (an object may have several pins; it lives while one
/// remains or a process holds it).
pub fn obj_pin(fd: BorrowedFd<'_>, pin: &Path) -> std::io::Result<()> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr)?;
    Ok(())
}

fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> std::io::Result<()> {
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<T>() as u32,
        info: (info as *mut T) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(())
}

/// The ifindex a pinned XDP or TCX link is attached to; 0 when its interface is gone (the
/// kernel detaches a link whose device is unregistered).
pub fn pinned_link_ifindex(pin: &Path) -> std::io::Result<u32> {
    let fd = obj_get(pin)?;
    let mut info = LinkInfoHead::default();
    obj_info(fd.as_fd(), &mut info)?;
    Ok(info.ifindex)
}

/// The id of the program a pinned link runs.
pub fn pinned_link_prog_id(pin: &Path) -> std::io::Result<u32> {
    let fd = obj_get(pin)?;
    let mut info = LinkInfoHead::default();
    obj_info(fd.as_fd(), &mut info)?;
    Ok(info.prog_id)
}

/// A map's type and record sizes as the kernel has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

pub fn map_shape(map: BorrowedFd<'_>) -> std::io::Result<MapShape> {
    let mut info = MapInfoHead::default();
    obj_info(map, &mut info)?;
    Ok(MapShape {
        map_type: info.map_type,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
    })
}

/// Reads every entry of the hash map `map` (records of `shape`'s sizes) with
/// `BPF_MAP_LOOKUP_BATCH`, `chunk` entries per call, handing each `(key, value)` to `each`.
/// Entries added or removed meanwhile may or may not be seen, as with any walk of a live map.
pub fn map_lookup_batch(
    map: BorrowedFd<'_>,
    shape: MapShape,
    chunk: u32,
    mut each: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let (ks, vs) = (shape.key_size as usize, shape.value_size as usize);
    let mut keys = vec![0u8; ks * chunk as usize];
    let mut values = vec![0u8; vs * chunk as usize];
    // The hash maps' batch cursor is a bucket index; a key-sized buffer holds any cursor.
    let mut cursor = vec![0u8; ks.max(8)];
    let mut first = true;
    let mut seen = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
            out_batch: cursor.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => anyhow::bail!("BPF_MAP_LOOKUP_BATCH after {seen} entries: {e}"),
        };
        for i in 0..attr.count as usize {
            each(&keys[i * ks..(i + 1) * ks], &values[i * vs..(i + 1) * vs])?;
        }
        seen += attr.count as u64;
        if done {
            return Ok(seen);
        }
        first = false;
    }
}

/// Reads indexes `0..n` of the per-CPU array `map` with `BPF_MAP_LOOKUP_BATCH`, `chunk` per
/// call, handing each index and its values on the `cpus` possible CPUs (each `value_size`
/// bytes, at a stride rounded up to 8, as the kernel lays them out) to `each`.
pub fn percpu_array_lookup_batch(
    map: BorrowedFd<'_>,
    value_size: usize,
    cpus: usize,
    n: u32,
    chunk: u32,
    mut each: impl FnMut(u32, &[u8]),
) -> anyhow::Result<()> {
    let per_elem = value_size.div_ceil(8) * 8 * cpus;
    let chunk = chunk.clamp(1, n.max(1));
    let mut keys = vec![0u32; chunk as usize];
    let mut values = vec![0u8; per_elem * chunk as usize];
    // An array's batch cursor is the next index (a u32); room for any cursor.
    let mut cursor = [0u8; 8];
    let mut seen = 0u32;
    while seen < n {
        let mut attr = BatchAttr {
            in_batch: if seen == 0 { 0 } else { cursor.as_ptr() as u64 },
            out_batch: cursor.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk.min(n - seen),
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => anyhow::bail!("BPF_MAP_LOOKUP_BATCH after {seen} entries: {e}"),
        };
        for i in 0..attr.count as usize {
            each(keys[i], &values[i * per_elem..(i + 1) * per_elem]);
        }
        seen += attr.count;
        if done || attr.count == 0 {
            break;
        }
    }
    Ok(())
}

/// Writes `count` records (`keys` and `values` laid end to end) into `map` with one
/// `BPF_MAP_UPDATE_BATCH`.
pub fn map_update_batch_raw(
    map: BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    count: u32,
) -> anyhow::Result<()> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| {
        anyhow::anyhow!(
            "BPF_MAP_UPDATE_BATCH of {count} entries ({} done): {e}",
            attr.count
        )
    })?;
    Ok(())
}

/// Writes one record; with [`BPF_NOEXIST`], returns `Ok(false)` when the key is already there.
pub fn map_update_raw(
    map: BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
    flags: u64,
) -> std::io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
        ..Default::default()
    };
    match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `keys[i] → values[i]` into the map `map` in one `BPF_MAP_UPDATE_BATCH`. On failure the
/// error says how many entries the kernel wrote first.
pub fn map_update_batch(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> anyhow::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| {
        anyhow::anyhow!(
            "BPF_MAP_UPDATE_BATCH of {} entries ({} done): {e}",
            keys.len(),
            attr.count
        )
    })?;
    Ok(())
}

/// A batch write that stopped part way: how many entries the kernel wrote before `error`.
#[derive(Debug)]
pub struct BatchFailed {
    pub done: usize,
    pub error: std::io::Error,
}

impl std::fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BPF_MAP_UPDATE_BATCH stopped after {} entries: {}",
            self.done, self.error
        )
    }
}

impl std::error::Error for BatchFailed {}

/// Entries per `BPF_MAP_UPDATE_BATCH` of [`update_batch`]: large enough that the syscall cost
/// vanishes, small enough that one call holds the CPU for well under a millisecond.
const UPDATE_CHUNK: usize = 8192;

/// Writes `keys[i] → values[i * per_key .. (i + 1) * per_key]` into `map` (`BPF_ANY`), a few
/// thousand entries per `BPF_MAP_UPDATE_BATCH`. `per_key` is 1, or the number of possible CPUs
/// for a per-CPU map (whose values must then be 8-byte multiples). The kernel writes the
/// entries in order; on failure, [`BatchFailed::done`] says how many of `keys` are written.
pub fn update_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
    per_key: usize,
) -> Result<(), BatchFailed> {
    assert_eq!(keys.len() * per_key, values.len(), "per_key values per key");
    let mut done = 0;
    for (ks, vs) in keys
        .chunks(UPDATE_CHUNK)
        .zip(values.chunks(UPDATE_CHUNK * per_key))
    {
        let mut attr = BatchAttr {
            keys: ks.as_ptr() as u64,
            values: vs.as_ptr() as u64,
            count: ks.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        if let Err(error) = bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            return Err(BatchFailed {
                done: done + attr.count as usize,
                error,
            });
        }
        done += ks.len();
    }
    Ok(())
}

/// Every entry of `map` (an array or a hash map whose records are `K` and `V`), read with
/// `BPF_MAP_LOOKUP_BATCH`, `chunk` entries per call.
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    chunk: u32,
    mut each: impl FnMut(K, V),
) -> anyhow::Result<u64> {
    let shape = map_shape(map)?;
    if (shape.key_size as usize, shape.value_size as usize) != (size_of::<K>(), size_of::<V>()) {
        anyhow::bail!(
            "map records are {}/{} bytes, not {}/{}",
            shape.key_size,
            shape.value_size,
            size_of::<K>(),
            size_of::<V>()
        );
    }
    map_lookup_batch(map, shape, chunk, |k, v| {
        // SAFETY: the slices are exactly size_of::<K>() and size_of::<V>() bytes (checked above)
        // of plain-data records; read_unaligned copes with the byte buffer's alignment.
        let (k, v) = unsafe {
            (
                std::ptr::read_unaligned(k.as_ptr() as *const K),
                std::ptr::read_unaligned(v.as_ptr() as *const V),
            )
        };
        each(k, v);
        Ok(())
    })
}

const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `BPF_LINK_TYPE_XDP`.
pub const LINK_TYPE_XDP: u32 = 6;
/// `BPF_LINK_TYPE_TCX`.
pub const LINK_TYPE_TCX: u32 = 11;

#[repr(C)]
#[derive(Default)]
struct IdAttr {
    /// `start_id` for `*_GET_NEXT_ID`, `link_id` for `BPF_LINK_GET_FD_BY_ID`.
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// A bpf_link as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkSummary {
    pub id: u32,
    /// `BPF_LINK_TYPE_*`.
    pub link_type: u32,
    pub prog_id: u32,
    /// For XDP and TCX links: the interface, an index of the link's own network namespace
    /// (0 once detached).
    pub ifindex: u32,
}

fn link_fd(id: u32) -> std::io::Result<OwnedFd> {
    let mut attr = IdAttr {
        id,
        ..Default::default()
    };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: BPF_LINK_GET_FD_BY_ID returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Every bpf_link of the system (links freed while we walk are skipped).
pub fn links() -> std::io::Result<Vec<LinkSummary>> {
    let mut out = Vec::new();
    let mut next = IdAttr::default();
    loop {
        match bpf(BPF_LINK_GET_NEXT_ID, &mut next) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        let id = next.next_id;
        next = IdAttr {
            id,
            ..Default::default()
        };
        let Ok(fd) = link_fd(id) else { continue };
        let mut info = LinkInfoHead::default();
        let mut attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: size_of::<LinkInfoHead>() as u32,
            info: (&mut info as *mut LinkInfoHead) as u64,
        };
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_ok() {
            out.push(LinkSummary {
                id: info.id,
                link_type: info.link_type,
                prog_id: info.prog_id,
                ifindex: info.ifindex,
            });
        }
    }
}

/// Detaches link `id` from its hook (`BPF_LINK_DETACH`); whoever holds it keeps a defunct link.
pub fn detach_link(id: u32) -> std::io::Result<()> {
    let fd = link_fd(id)?;
    let mut attr = LinkDetachAttr {
        link_fd: fd.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr)?;
    Ok(())
}
