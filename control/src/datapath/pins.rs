//! Where the datapath's pins live, and the checks that make failures there readable.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use lb_common::maps::LAYOUT_VERSION;

pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory for this process's network namespace:
/// `/sys/fs/bpf/xlb/ns-<netns cookie>/<layout version>`, so several lab nodes on one host (one
/// `xlb run` per namespace) never share maps, and a CLI started in a namespace finds that
/// namespace's datapath without flags.
///
/// The key is the namespace's cookie, not its inode: the kernel reuses the inode of a deleted
/// namespace at once, so a new namespace would find (and adopt) the pins a killed run left in
/// an old one. Cookies are never reused while the system runs.
pub fn default_pin_dir() -> anyhow::Result<PathBuf> {
    let cookie = netns_cookie().context("reading this network namespace's cookie")?;
    Ok(PathBuf::from(BPFFS_ROOT)
        .join("xlb")
        .join(format!("ns-{cookie}"))
        .join(LAYOUT_VERSION))
}

/// `SO_NETNS_COOKIE` (Linux 5.14) of a throwaway socket: the current network namespace's cookie.
pub fn netns_cookie() -> std::io::Result<u64> {
    // SAFETY: plain socket/getsockopt/close on an fd we own, with a correctly sized buffer.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

pub fn resolve(pin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    match pin_dir {
        Some(p) => Ok(p.to_path_buf()),
        None => default_pin_dir(),
    }
}

/// Fails with one clear line unless `dir`'s filesystem (or its nearest existing parent's) is
/// bpffs.
pub fn require_bpffs(dir: &Path) -> anyhow::Result<()> {
    let mut probe = dir;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(p) => p,
            None => break,
        };
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs writes into the zeroed struct we own; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "cannot stat {}: {}",
            probe.display(),
            std::io::Error::last_os_error()
        );
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a BPF filesystem (bpffs not mounted? run `mount -t bpf bpf {BPFFS_ROOT}`; \
             inside a lab namespace use `nsenter --net=...`, not `ip netns exec`, which hides it)",
            probe.display()
        );
    }
    Ok(())
}

pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

pub fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    maps_dir(pin_dir).join(name)
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

pub fn xdp_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("xdp-{iface}"))
}

pub fn tc_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("tc-egress-{iface}"))
}

pub fn tc_ingress_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("tc-ingress-{iface}"))
}

/// Names and ids the maps cannot hold (Service names, backend ownership) are written by
/// `xlb run` here, next to nothing on bpffs, which only holds BPF objects.
pub fn state_file(pin_dir: &Path) -> PathBuf {
    let flat: String = pin_dir
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    PathBuf::from("/run/xlb").join(flat).join("state.json")
}

/// The connection census `xlb run` publishes for `xlb services` and `xlb top`, next to its
/// state file (see `observe::census`).
pub fn census_file(pin_dir: &Path) -> PathBuf {
    state_file(pin_dir).with_file_name("census.json")
}

/// The lock an `xlb run` holds (shared) for as long as it runs on `pin_dir`, next to its state
/// file: a datapath whose links lost their interface is still in use while it is held (its
/// `xlb run` attaches again when the interface comes back), so no other run removes it.
pub fn run_lock(pin_dir: &Path) -> PathBuf {
    state_file(pin_dir).with_file_name("run.lock")
}

/// Takes a shared hold of `pin_dir`'s run lock; it lasts while the returned file is open.
pub fn hold_run_lock(pin_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = run_lock(pin_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_SH) } != 0 {
        bail!(
            "locking {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(file)
}

/// Whether an `xlb run` holds `pin_dir`'s run lock now.
pub fn in_use(pin_dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(run_lock(pin_dir)) else {
        return false;
    };
    // SAFETY: flock on an fd we own; closing it releases a lock we got.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    rc != 0
}
