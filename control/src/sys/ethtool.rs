//! The ethtool ioctl (`SIOCETHTOOL`): a driver's name and its own statistics, as `ethtool -i` and
//! `ethtool -S` show them.
//!
//! Raw ioctls rather than a crate: driver-specific statistics (veth's `xdp_tx_errors`, a NIC's
//! XDP redirect errors) exist only behind `ETHTOOL_GSTRINGS`/`ETHTOOL_GSTATS`; the ethtool
//! netlink family carries only the standard statistics groups, and the Rust ethtool crates
//! speak that family over an async runtime. Three small ioctls are less than either.
use std::{ffi::c_void, io};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// Room for statistics a driver adds between our count and our read (a veth gaining queues):
/// the kernel writes as many strings as it has now.
const SLACK: usize = 64;

#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut c_void,
    _pad: [u8; 16],
}

/// Runs one ethtool command whose buffer starts at `data`.
fn ioctl(iface: &str, data: *mut c_void) -> io::Result<()> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data,
        _pad: [0; 16],
    };
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    req.name[..name.len()].copy_from_slice(name);
    // SAFETY: a datagram socket we own and close; the ioctl reads `req` and reads/writes the
    // buffer `data` points to, which the callers size for the command.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(err);
        }
    }
    Ok(())
}

fn drvinfo(iface: &str) -> io::Result<DrvInfo> {
    // SAFETY: all-zero is a valid DrvInfo.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    ioctl(iface, (&mut info as *mut DrvInfo).cast())?;
    Ok(info)
}

/// The interface's driver name (`veth`, `mlx5_core`, ...).
pub fn driver(iface: &str) -> io::Result<String> {
    let info = drvinfo(iface)?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Every driver statistic of `iface`, by its ethtool name, in the driver's order.
pub fn stats(iface: &str) -> io::Result<Vec<(String, u64)>> {
    let n = drvinfo(iface)?.n_stats as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let cap = n + SLACK;
    // struct ethtool_gstrings { cmd, string_set, len; u8 data[] } as u32 words.
    let mut strings = vec![0u32; 3 + cap * ETH_GSTRING_LEN / 4];
    strings[0] = ETHTOOL_GSTRINGS;
    strings[1] = ETH_SS_STATS;
    strings[2] = n as u32;
    ioctl(iface, strings.as_mut_ptr().cast())?;
    let names_n = (strings[2] as usize).min(cap);
    // struct ethtool_stats { cmd, n_stats; u64 data[] } as u64 words.
    let mut values = vec![0u64; 1 + cap];
    values[0] = ETHTOOL_GSTATS as u64 | ((n as u64) << 32);
    ioctl(iface, values.as_mut_ptr().cast())?;
    let values_n = ((values[0] >> 32) as usize).min(cap);
    // SAFETY: viewing the u32 buffer as bytes.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts(strings.as_ptr().cast::<u8>(), strings.len() * 4) };
    let names = &bytes[12..];
    Ok((0..names_n.min(values_n))
        .map(|i| {
            let raw = &names[i * ETH_GSTRING_LEN..(i + 1) * ETH_GSTRING_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(ETH_GSTRING_LEN);
            (
                String::from_utf8_lossy(&raw[..end]).into_owned(),
                values[1 + i],
            )
        })
        .collect())
}

/// Whether an ethtool statistic counts XDP frames a driver failed to transmit or redirect
/// (veth's `rx_queue_0_xdp_tx_errors`, `tx_queue_0_xdp_xmit_errors`, a NIC's `rx_xdp_tx_err`,
/// `rx_xdp_redirect_err`, ...).
pub fn is_xdp_error(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("xdp") && n.contains("err")
}

/// The XDP error statistics of `iface` (see [`is_xdp_error`]).
pub fn xdp_errors(iface: &str) -> io::Result<Vec<(String, u64)>> {
    Ok(stats(iface)?
        .into_iter()
        .filter(|(name, _)| is_xdp_error(name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_error_names() {
        for yes in [
            "rx_queue_0_xdp_tx_errors",
            "tx_queue_3_xdp_xmit_errors",
            "rx_xdp_tx_err",
            "rx_xdp_redirect_err",
        ] {
            assert!(is_xdp_error(yes), "{yes}");
        }
        for no in [
            "rx_queue_0_xdp_tx",
            "rx_queue_0_xdp_drops",
            "rx_errors",
            "peer_ifindex",
        ] {
            assert!(!is_xdp_error(no), "{no}");
        }
    }
}
