//! A pass-through XDP program (`return XDP_PASS`, two instructions) for the bridge side of the
//! lab's fabric links.
//!
//! Why: when an XDP program on a node's uplink (a veth) answers `XDP_TX`, the kernel's veth
//! driver queues the frame on the peer's receive ring, but kicks the peer's NAPI only if the
//! peer has an XDP program of its own (`veth_xdp_flush`: "xdp_ring is initialized on receive
//! side?"); GRO on the peer enables its NAPI but does not kick it. Without a program there, the
//! frames wait until some unrelated packet schedules that NAPI, or are never seen. Real NICs
//! have no such peer. The lab attaches this program to every bridge port, so `XDP_TX` from a
//! node reaches the fabric at once, as it would leave a physical port.
//!
//! The program is loaded with `bpf(BPF_PROG_LOAD)` and attached with `bpf(BPF_LINK_CREATE)`
//! from a thread inside the port's namespace; the link lives as long as its file descriptor,
//! which the [`super::Lab`] holds: nothing is pinned, and nothing outlives the lab or the
//! process.

use std::mem;
use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result, bail};

use super::netns::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;
const XDP_PASS: i32 = 2;

/// `union bpf_attr`, as raw bytes (the fields used are written at their offsets).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32_at(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn u64_at(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<OwnedFd> {
    // SAFETY: bpf(2) with a zero-initialised attribute block of the size we pass; the kernel
    // reads (and for these commands does not write beyond) it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor the kernel handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the program: `r0 = XDP_PASS; exit`.
pub fn load() -> Result<OwnedFd> {
    // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; }
    let mut insns = [0u8; 16];
    insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    insns[4..8].copy_from_slice(&XDP_PASS.to_ne_bytes());
    insns[8] = 0x95; // BPF_JMP | BPF_EXIT
    let license = b"GPL\0";
    let mut attr = Attr::new();
    attr.u32_at(0, BPF_PROG_TYPE_XDP); // prog_type
    attr.u32_at(4, 2); // insn_cnt
    attr.u64_at(8, insns.as_ptr() as u64); // insns
    attr.u64_at(16, license.as_ptr() as u64); // license
    attr.0[48..56].copy_from_slice(b"lab_pass"); // prog_name
    bpf(BPF_PROG_LOAD, &mut attr).context("loading the lab's XDP pass program (bpf BPF_PROG_LOAD)")
}

/// Attaches `prog` to interface `ifname` of `ns` (an XDP link, driver mode where the driver
/// supports it); detached when the returned descriptor is closed or the interface goes away.
pub fn attach(ns: &Netns, prog: &OwnedFd, ifname: &str) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let prog_fd = prog.as_raw_fd() as u32;
    let name = std::ffi::CString::new(ifname)?;
    ns.run(move || {
        // SAFETY: a NUL-terminated name; the thread is inside the namespace of the interface.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname:?}");
        }
        let mut attr = Attr::new();
        attr.u32_at(0, prog_fd); // prog_fd
        attr.u32_at(4, ifindex); // target_ifindex
        attr.u32_at(8, BPF_XDP); // attach_type
        Ok(bpf(BPF_LINK_CREATE, &mut attr)?)
    })
    .with_context(|| {
        format!(
            "attaching the XDP pass program to {ifname} in {}",
            ns.name()
        )
    })
}
