//! The interfaces of this network namespace, over rtnetlink: the one request loop ([`ask`],
//! also used by `neigh`), the interface list and an interface's XDP attachment, and the link
//! notifications (`RTNLGRP_LINK`) by which `xlb run` learns at once that an interface went away
//! or came back, instead of finding out from lost traffic.
use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// What the kernel said about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created or changed (name, flags, attachment): `RTM_NEWLINK`.
    Changed { index: u32, name: Option<String> },
    /// Deleted (or moved to another namespace): `RTM_DELLINK`.
    Removed { index: u32, name: Option<String> },
    /// The socket's buffer overflowed (`ENOBUFS`): notifications were lost, so every interface
    /// must be looked at again.
    Lost,
}

/// A non-blocking rtnetlink socket subscribed to link notifications.
pub struct LinkEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkEvents {
    /// Subscribes to this namespace's link notifications (needs no privilege).
    pub fn open() -> io::Result<LinkEvents> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        socket.add_membership(libc::RTNLGRP_LINK)?;
        socket.set_non_blocking(true)?;
        Ok(LinkEvents {
            socket,
            // A link message with every attribute is a few KiB; a datagram may hold several.
            buf: vec![0; 64 * 1024],
        })
    }

    /// Every notification received since the last call, without waiting.
    pub fn drain(&mut self) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        loop {
            let mut chunk: &mut [u8] = &mut self.buf[..];
            match self.socket.recv(&mut chunk, 0) {
                Ok(0) => break,
                Ok(n) => parse_datagram(&self.buf[..n.min(self.buf.len())], &mut events),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => events.push(LinkEvent::Lost),
                // Any other error: the caller re-reads every interface, as after an overflow.
                Err(_) => {
                    events.push(LinkEvent::Lost);
                    break;
                }
            }
        }
        events
    }
}

/// An interface of this namespace and the id of the XDP program attached to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    /// `None`: no XDP program.
    pub xdp_prog_id: Option<u32>,
    /// A veth (or netkit) whose peer lives in another network namespace (the kernel names that
    /// namespace, `IFLA_LINK_NETNSID`): the host side of a pod's interface.
    pub peer_elsewhere: bool,
}

/// Every interface of this network namespace (`RTM_GETLINK` dump).
pub fn interfaces() -> io::Result<Vec<Interface>> {
    Ok(
        ask(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)?
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => interface(l),
                _ => None,
            })
            .collect(),
    )
}

/// `XDP_ATTACHED_*` of `IFLA_XDP_ATTACHED`: how an XDP program is attached.
pub const XDP_ATTACHED_DRV: u8 = 1;
pub const XDP_ATTACHED_SKB: u8 = 2;
pub const XDP_ATTACHED_HW: u8 = 3;
pub const XDP_ATTACHED_MULTI: u8 = 4;
/// Not the kernel's: attached in a mode this build cannot name.
pub const XDP_ATTACHED_UNKNOWN: u8 = u8::MAX;

/// The mode of the XDP program attached to interface `ifindex` (`XDP_ATTACHED_*`), or `None`.
pub fn xdp_attached(ifindex: u32) -> io::Result<Option<u8>> {
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    let answers = ask(RouteNetlinkMessage::GetLink(request), false)?;
    let attached = answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .flat_map(|l| &l.attributes)
        .filter_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        })
        .flatten()
        .find_map(|x| match x {
            LinkXdp::Attached(a) => Some(a),
            _ => None,
        });
    Ok(match attached {
        None | Some(XdpAttached::None) => None,
        Some(XdpAttached::Driver) => Some(XDP_ATTACHED_DRV),
        Some(XdpAttached::SocketBuffer) => Some(XDP_ATTACHED_SKB),
        Some(XdpAttached::Hardware) => Some(XDP_ATTACHED_HW),
        Some(XdpAttached::Multiple) => Some(XDP_ATTACHED_MULTI),
        Some(XdpAttached::Other(mode)) => Some(*mode),
        // A mode a later version of the crate names: attached all the same.
        Some(_) => Some(XDP_ATTACHED_UNKNOWN),
    })
}

/// The name of interface `ifindex` in this namespace, if it exists.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Sends one request and collects the answers: every message of a dump, or the one answer.
pub(crate) fn ask(msg: RouteNetlinkMessage, dump: bool) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut data = &datagram[..];
        while data.len() >= 16 {
            let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if len < 16 || len > data.len() {
                return Err(io::Error::other("truncated rtnetlink message"));
            }
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len])
                .map_err(|e| io::Error::other(format!("parsing an rtnetlink answer: {e}")))?;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(out),
                    };
                }
                NetlinkPayload::InnerMessage(m) => {
                    out.push(m);
                    if !dump {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            data = &data[((len + 3) & !3).min(data.len())..];
        }
    }
}

fn interface(m: &LinkMessage) -> Option<Interface> {
    let mut name = None;
    let mut xdp_prog_id = None;
    let (mut paired, mut netns_elsewhere) = (false, false);
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                paired = infos.iter().any(|i| {
                    matches!(
                        i,
                        LinkInfo::Kind(InfoKind::Veth) | LinkInfo::Kind(InfoKind::Netkit)
                    )
                });
            }
            LinkAttribute::LinkNetNsId(_) => netns_elsewhere = true,
            LinkAttribute::Xdp(xdp) => {
                xdp_prog_id = xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Some(Interface {
        index: m.header.index,
        name: name?,
        xdp_prog_id,
        peer_elsewhere: paired && netns_elsewhere,
    })
}

/// The link messages of one datagram (several netlink messages may share it).
fn parse_datagram(mut data: &[u8], events: &mut Vec<LinkEvent>) {
    const HEADER: usize = 16;
    while data.len() >= HEADER {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < HEADER || len > data.len() {
            events.push(LinkEvent::Lost);
            return;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len]) {
            Ok(msg) => events.extend(link_event(msg)),
            // A message this crate cannot parse may still be about a link we track.
            Err(_) => events.push(LinkEvent::Lost),
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        data = &data[next.min(data.len())..];
    }
}

fn link_event(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkEvent> {
    let name = |m: &LinkMessage| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
    };
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => Some(LinkEvent::Changed {
            index: m.header.index,
            name: name(&m),
        }),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => Some(LinkEvent::Removed {
            index: m.header.index,
            name: name(&m),
        }),
        NetlinkPayload::Overrun(_) => Some(LinkEvent::Lost),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A veth created, renamed and deleted in a namespace of its own: the socket reports each
    /// step with the interface's index and name.
    #[test]
    fn reports_links_created_and_deleted() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("needs root (a private network namespace); not run");
            return;
        }
        let result = std::thread::spawn(|| -> anyhow::Result<Vec<LinkEvent>> {
            // SAFETY: unshare affects only this thread, which ends with the test.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                anyhow::bail!("unshare: {}", io::Error::last_os_error());
            }
            let mut events = LinkEvents::open()?;
            let ip = |args: &[&str]| -> anyhow::Result<()> {
                // `ip` runs in the thread's namespace: it is spawned from this thread.
                let st = std::process::Command::new("ip").args(args).status()?;
                anyhow::ensure!(st.success(), "ip {args:?} failed");
                Ok(())
            };
            ip(&[
                "link", "add", "xlbw0", "type", "veth", "peer", "name", "xlbw1",
            ])?;
            ip(&["link", "del", "xlbw0"])?;
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline
                && !seen
                    .iter()
                    .any(|e| matches!(e, LinkEvent::Removed { name: Some(n), .. } if n == "xlbw1"))
            {
                seen.extend(events.drain());
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(seen)
        })
        .join()
        .expect("thread");
        let seen = result.expect("namespace test");
        let named = |want: &str, removed: bool| {
            seen.iter().any(|e| match e {
                LinkEvent::Changed {
                    name: Some(n),
                    index,
                } => !removed && n == want && *index > 0,
                LinkEvent::Removed {
                    name: Some(n),
                    index,
                } => removed && n == want && *index > 0,
                _ => false,
            })
        };
        assert!(named("xlbw0", false), "{seen:?}");
        assert!(named("xlbw1", false), "{seen:?}");
        assert!(named("xlbw0", true), "{seen:?}");
        assert!(named("xlbw1", true), "{seen:?}");
        assert!(!seen.contains(&LinkEvent::Lost), "{seen:?}");
    }
}
