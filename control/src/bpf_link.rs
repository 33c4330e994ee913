//! The one fact about a pinned `bpf_link` that aya 0.14 does not expose: which interface it is
//! attached to (`bpf_link_info.{xdp,tcx}.ifindex`), read with two raw `bpf(2)` calls.
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

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

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> std::io::Result<libc::c_long> {
    // SAFETY: attr points to a properly sized, initialised attribute struct for `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The ifindex a pinned XDP or TCX link is attached to; 0 when its interface is gone (the
/// kernel detaches a link whose device is unregistered).
pub fn pinned_link_ifindex(pin: &Path) -> std::io::Result<u32> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(
        BPF_OBJ_GET,
        (&mut get as *mut ObjGetAttr).cast(),
        size_of::<ObjGetAttr>(),
    )?;
    // SAFETY: BPF_OBJ_GET returned a new fd that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<LinkInfoHead>() as u32,
        info: (&mut info as *mut LinkInfoHead) as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&mut attr as *mut InfoAttr).cast(),
        size_of::<InfoAttr>(),
    )?;
    Ok(info.ifindex)
}
