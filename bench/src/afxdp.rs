//! AF_XDP transmit, the generator's other method: an XDP socket bound (copy mode) to the
//! client's uplink, a UMEM holding one prebuilt frame per flow, and a loop that posts TX
//! descriptors and reclaims completions. Bounded in frames and time like the live-frames
//! generator; only ever bound to an interface inside a lab namespace.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::lab::Host;
use crate::traffic::{self, Traffic, build_frame, flow, template};

const FRAME: usize = 2048;
const NFRAMES: usize = 4096;
const RING: u32 = 2048;

/// What [`transmit`] did.
#[derive(Clone, Copy, Debug)]
pub struct AfXdpRun {
    /// Frames the kernel completed (sent).
    pub sent: u64,
    pub elapsed: Duration,
}

struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mmap {
    fn new(fd: Option<i32>, len: usize, offset: u64) -> Result<Mmap> {
        // SAFETY: a fresh shared mapping (anonymous, or of an XDP socket ring at `offset`).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                match fd {
                    Some(_) => libc::MAP_SHARED | libc::MAP_POPULATE,
                    None => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                },
                fd.unwrap_or(-1),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap");
        }
        Ok(Mmap { ptr, len })
    }
    fn at<T>(&self, off: u64) -> *mut T {
        // SAFETY: callers pass offsets the kernel reported for this mapping.
        unsafe { (self.ptr as *mut u8).add(off as usize) as *mut T }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn setsockopt<T>(fd: i32, opt: i32, v: &T) -> Result<()> {
    // SAFETY: v points to a T of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setsockopt SOL_XDP {opt}"));
    }
    Ok(())
}

/// Sends up to `max_packets` frames of `t` for up to `max_time` from `iface` of `client`.
pub fn transmit(
    client: &Host,
    iface: &str,
    t: &Traffic,
    max_packets: u64,
    max_time: Duration,
) -> Result<AfXdpRun> {
    let max_packets = max_packets.min(traffic::MAX_PACKETS);
    let max_time = max_time.min(traffic::MAX_TIME);
    let (ifindex, _) = crate::bpf::link_info(client, iface)?;
    let (_, cfg) = template(t)?;
    let mut frames = Vec::new();
    for i in 0..(t.flows as usize).min(NFRAMES) {
        let (s, sp, d) = flow(&cfg, i as u32);
        frames.push(build_frame(t, s, d, sp, traffic::SERVICE_PORT)?);
    }
    let t = t.clone();
    client.netns().run(move || {
        crate::traffic::pin_to_cpu(0)?;
        // SAFETY: plain socket(2); wrapped at once.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_XDP)");
        }
        // SAFETY: fresh fd we own.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let fd = sock.as_raw_fd();
        let umem = Mmap::new(None, FRAME * NFRAMES, 0)?;
        let n = frames.len();
        for (k, f) in frames.iter().enumerate() {
            // SAFETY: frame k lies inside the UMEM; frames are at most 1514 < FRAME bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    f.as_ptr(),
                    umem.at::<u8>((k * FRAME) as u64),
                    f.len(),
                )
            };
        }
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr as u64,
            len: (FRAME * NFRAMES) as u64,
            chunk_size: FRAME as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(fd, libc::XDP_UMEM_REG, &reg)?;
        setsockopt(fd, libc::XDP_UMEM_FILL_RING, &RING)?;
        setsockopt(fd, libc::XDP_UMEM_COMPLETION_RING, &RING)?;
        setsockopt(fd, libc::XDP_TX_RING, &RING)?;
        // SAFETY: zeroed plain struct, filled by getsockopt.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: out-parameter of the given size.
        if unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                &mut off as *mut _ as *mut libc::c_void,
                &mut len,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error()).context("XDP_MMAP_OFFSETS");
        }
        let tx = Mmap::new(
            Some(fd),
            off.tx.desc as usize + RING as usize * std::mem::size_of::<libc::xdp_desc>(),
            libc::XDP_PGOFF_TX_RING as u64,
        )?;
        let cr = Mmap::new(
            Some(fd),
            off.cr.desc as usize + RING as usize * 8,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: 0,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: valid sockaddr_xdp.
        if unsafe {
            libc::bind(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_xdp>() as u32,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error()).context("bind(AF_XDP) in copy mode");
        }
        // SAFETY: the ring words are u32 atomics inside the mappings, at the kernel's offsets.
        let (tx_prod, tx_cons, tx_desc) = unsafe {
            (
                &*tx.at::<AtomicU32>(off.tx.producer),
                &*tx.at::<AtomicU32>(off.tx.consumer),
                tx.at::<libc::xdp_desc>(off.tx.desc),
            )
        };
        let (cr_prod, cr_cons) = unsafe {
            (
                &*cr.at::<AtomicU32>(off.cr.producer),
                &*cr.at::<AtomicU32>(off.cr.consumer),
            )
        };
        let frame_len = frames[0].len() as u32;
        let start = Instant::now();
        let (mut posted, mut completed, mut next) = (0u64, 0u64, 0usize);
        let mut polls = 0u32;
        loop {
            // Reclaim completions.
            let p = cr_prod.load(Ordering::Acquire);
            let c = cr_cons.load(Ordering::Relaxed);
            if p != c {
                completed += p.wrapping_sub(c) as u64;
                cr_cons.store(p, Ordering::Release);
            }
            let done = posted >= max_packets || start.elapsed() >= max_time;
            if done && completed >= posted {
                break;
            }
            if !done {
                let prod = tx_prod.load(Ordering::Relaxed);
                let free = RING - prod.wrapping_sub(tx_cons.load(Ordering::Acquire));
                let in_flight = (posted - completed) as u32;
                let k = free
                    .min(RING - in_flight.min(RING))
                    .min((max_packets - posted).min(256) as u32);
                for j in 0..k {
                    let idx = (prod.wrapping_add(j) & (RING - 1)) as usize;
                    // SAFETY: idx < RING, inside the descriptor array.
                    unsafe {
                        *tx_desc.add(idx) = libc::xdp_desc {
                            addr: (next * FRAME) as u64,
                            len: frame_len,
                            options: 0,
                        };
                    }
                    next = (next + 1) % n;
                }
                if k > 0 {
                    tx_prod.store(prod.wrapping_add(k), Ordering::Release);
                    posted += k as u64;
                }
            } else {
                polls += 1;
                if polls > 100_000 || start.elapsed() > max_time + Duration::from_secs(2) {
                    bail!("AF_XDP: {} frames never completed", posted - completed);
                }
            }
            // Kick the kernel (copy mode sends from sendto).
            // SAFETY: sendto with no buffer on our socket.
            let r = unsafe {
                libc::sendto(
                    fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => {}
                    _ => return Err(e).context("sendto(AF_XDP)"),
                }
            }
        }
        let _ = &t;
        drop(tx);
        drop(cr);
        drop(sock);
        drop(umem);
        Ok(AfXdpRun {
            sent: completed,
            elapsed: start.elapsed(),
        })
    })
}
