//! Local interfaces: their index by name, and their IPv4 addresses (NodePorts match on them as
//! kube-proxy's do).
use std::net::Ipv4Addr;

use anyhow::bail;

/// IPv4 addresses configured on `iface` in this network namespace.
pub fn ipv4_addrs(iface: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        bail!("getifaddrs: {}", std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur walks the list getifaddrs returned; fields are valid until freeifaddrs.
        unsafe {
            let ifa = &*cur;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if name == iface
                && !ifa.ifa_addr.is_null()
                && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Fails with one clear line when `iface` does not exist in this network namespace.
pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(iface)
        .map_err(|_| anyhow::anyhow!("interface name {iface:?} contains NUL"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("unknown interface {iface:?} in this network namespace");
    }
    Ok(idx)
}
