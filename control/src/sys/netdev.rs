//! The generic netlink family `netdev` (Linux 6.3): the XDP actions an interface's driver
//! supports (`NETDEV_A_DEV_XDP_FEATURES`). For a veth, `NETDEV_XDP_ACT_NDO_XMIT` says whether
//! its peer takes XDP frames (runs XDP or has GRO on), wherever that peer lives.
//!
//! Written here over a raw socket because no crate models this family (netlink-packet-generic
//! knows only the controller, which resolves the family's id): two requests, a few attributes.
//! Everything rtnetlink goes through netlink-packet-route in [`super::links`].
use std::io;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `NETDEV_XDP_ACT_NDO_XMIT`: the driver transmits XDP frames redirected to it.
pub const XDP_ACT_NDO_XMIT: u64 = 4;

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closing the fd we own.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open(protocol: libc::c_int) -> io::Result<Socket> {
        // SAFETY: plain socket call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    /// Sends one request of `kind` with `body` and returns the body of its one answer.
    fn ask(&self, kind: u16, body: &[u8]) -> io::Result<Vec<u8>> {
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
        msg.extend_from_slice(body);
        // SAFETY: sending our buffer on our socket (to the kernel: a zeroed sockaddr_nl).
        let sent = unsafe {
            let mut to: libc::sockaddr_nl = std::mem::zeroed();
            to.nl_family = libc::AF_NETLINK as _;
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as _,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: receiving into our buffer of that length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        if buf.len() < 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short netlink answer",
            ));
        }
        let len = (u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize).min(buf.len());
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == NLMSG_ERROR {
            let code = buf
                .get(16..20)
                .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                .unwrap_or(-libc::EIO);
            return Err(io::Error::from_raw_os_error(-code));
        }
        if kind == NLMSG_DONE {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(buf[16..len].to_vec())
    }
}

/// The attributes in `buf`, as (type, payload).
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        let step = (len + 3) & !3;
        buf = &buf[step.min(buf.len())..];
    }
    out
}

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

/// The driver's XDP features of interface `ifindex` (`NETDEV_XDP_ACT_*` bits), or `None` on a
/// kernel without the `netdev` family (before 6.3).
pub fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    let sock = Socket::open(libc::NETLINK_GENERIC)?;
    // struct genlmsghdr { cmd, version, reserved }, then the family name.
    let mut body = vec![CTRL_CMD_GETFAMILY, 1, 0, 0];
    body.extend(attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"));
    let family = match sock.ask(GENL_ID_CTRL, &body) {
        Ok(a) => attrs(a.get(4..).unwrap_or_default())
            .into_iter()
            .find(|(k, p)| *k == CTRL_ATTR_FAMILY_ID && p.len() >= 2)
            .map(|(_, p)| u16::from_ne_bytes([p[0], p[1]])),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
        Err(e) => return Err(e),
    };
    let Some(family) = family else {
        return Ok(None);
    };
    let mut body = vec![NETDEV_CMD_DEV_GET, 1, 0, 0];
    body.extend(attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()));
    let answer = sock.ask(family, &body)?;
    Ok(attrs(answer.get(4..).unwrap_or_default())
        .into_iter()
        .find(|(k, p)| *k == NETDEV_A_DEV_XDP_FEATURES && p.len() >= 8)
        .map(|(_, p)| u64::from_ne_bytes(p[..8].try_into().unwrap())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        let mut buf = attr(7, b"abc");
        buf.extend(attr(9, &5u32.to_ne_bytes()));
        let got = attrs(&buf);
        assert_eq!(got, vec![(7, &b"abc"[..]), (9, &5u32.to_ne_bytes()[..])]);
    }

    #[test]
    fn truncated_attributes_stop_the_walk() {
        let mut buf = attr(7, b"abcd");
        buf.truncate(6);
        assert!(attrs(&buf).is_empty());
    }
}
