//! Client helpers: TCP connections and UDP requests from a lab namespace, with explicit source
//! ports (so a test can predict the Maglev backend of each flow) and timeouts everywhere.

use std::collections::BTreeMap;
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use super::Host;

/// Longest time any single helper call waits for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// An open TCP connection to a pod server, after its greeting.
#[derive(Debug)]
pub struct TcpConn {
    /// The pod that answered.
    pub pod: String,
    /// The client address the pod saw.
    pub seen: SocketAddrV4,
    /// Our own address.
    pub local: SocketAddrV4,
    /// Where we connected to.
    pub dst: SocketAddrV4,
    reader: BufReader<TcpStream>,
}

impl TcpConn {
    /// Sends `line` and returns the pod's echo without the pod prefix; fails if another pod
    /// answers or nothing comes back within the stream's read timeout.
    pub fn exchange(&mut self, line: &str) -> Result<String> {
        let stream = self.reader.get_mut();
        stream.write_all(format!("{line}\n").as_bytes())?;
        let reply = read_line(&mut self.reader).with_context(|| {
            let shown: String = line.chars().take(60).collect();
            let more = line.chars().count().saturating_sub(60);
            if more > 0 {
                format!("reading the echo of {shown:?}... ({more} more characters)")
            } else {
                format!("reading the echo of {shown:?}")
            }
        })?;
        let (pod, rest) = reply
            .split_once(' ')
            .ok_or_else(|| anyhow!("malformed echo {reply:?}"))?;
        if pod != self.pod {
            bail!(
                "echo came from {pod}, but the connection was answered by {}",
                self.pod
            );
        }
        Ok(rest.to_string())
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    let n = r.read_line(&mut line)?;
    if n == 0 {
        bail!("connection closed by the peer");
    }
    if !line.ends_with('\n') {
        bail!("incomplete line {line:?}");
    }
    Ok(line.trim_end().to_string())
}

/// Parses a pod greeting `<pod> <ip>:<port>`.
pub fn parse_greeting(line: &str) -> Result<(String, SocketAddrV4)> {
    let (pod, addr) = line
        .trim()
        .split_once(' ')
        .ok_or_else(|| anyhow!("malformed greeting {line:?}"))?;
    let addr: SocketAddrV4 = addr
        .parse()
        .with_context(|| format!("malformed greeting {line:?}"))?;
    Ok((pod.to_string(), addr))
}

fn clamp(t: Duration) -> Duration {
    t.min(MAX_TIMEOUT).max(Duration::from_millis(10))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut s: libc::sockaddr_in = unsafe { mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr = libc::in_addr {
        s_addr: u32::from(*a.ip()).to_be(),
    };
    s
}

/// A socket of `ty` created inside `host`'s namespace, bound to `src_port` (0: any) with
/// `SO_REUSEADDR`.
fn socket_in(host: &Host, ty: libc::c_int, src_port: u16) -> Result<OwnedFd> {
    host.netns().run(move || {
        // SAFETY: plain socket(2); the fd is wrapped at once.
        let fd = cvt(unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if src_port != 0 {
            let one: libc::c_int = 1;
            // SAFETY: valid fd, pointer to an int of the given size.
            cvt(unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    &one as *const _ as *const libc::c_void,
                    mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            })?;
            let sa = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, src_port));
            // SAFETY: valid fd and sockaddr_in.
            cvt(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sa as *const _ as *const libc::sockaddr,
                    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            })
            .with_context(|| format!("binding source port {src_port}"))?;
        }
        Ok(fd)
    })
}

fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
    Ok(())
}

/// Connects from `host` (source port `src_port`, or any if `None`) to `dst`, and reads the
/// pod's greeting. Every step (connect, greeting, later reads and writes) is bounded by
/// `timeout` (at most [`MAX_TIMEOUT`]).
pub fn connect_tcp(
    host: &Host,
    dst: SocketAddrV4,
    src_port: Option<u16>,
    timeout: Duration,
) -> Result<TcpConn> {
    let timeout = clamp(timeout);
    let what = || {
        format!(
            "TCP {}:{} -> {dst}",
            host.name(),
            src_port.map_or("*".into(), |p| p.to_string())
        )
    };
    let fd = socket_in(host, libc::SOCK_STREAM, src_port.unwrap_or(0)).with_context(what)?;
    let raw = fd.as_raw_fd();
    set_nonblocking(raw, true)?;
    let sa = sockaddr(dst);
    // SAFETY: valid fd and sockaddr_in.
    let r = unsafe {
        libc::connect(
            raw,
            &sa as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e).with_context(what);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: connect timed out after {timeout:?}", what());
            }
            let mut p = libc::pollfd {
                fd: raw,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).with_context(what);
            }
            if n > 0 {
                break;
            }
        }
        let mut err: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd, int out-parameter of the given size.
        cvt(unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut len,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err)).with_context(what);
        }
    }
    set_nonblocking(raw, false)?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let local = match stream.local_addr()? {
        SocketAddr::V4(a) => a,
        a => bail!("unexpected local address {a}"),
    };
    let mut reader = BufReader::new(stream);
    let greeting = read_line(&mut reader)
        .with_context(|| format!("{}: reading the pod's greeting", what()))?;
    let (pod, seen) = parse_greeting(&greeting)?;
    Ok(TcpConn {
        pod,
        seen,
        local,
        dst,
        reader,
    })
}

/// One connection made by [`tcp_many`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    pub src_port: u16,
    pub pod: String,
    pub seen: SocketAddrV4,
}

/// What [`tcp_many`] did.
#[derive(Clone, Debug, Default)]
pub struct TcpManyReport {
    pub conns: Vec<ConnRecord>,
    /// `(source port, error)` of every connection that failed.
    pub failures: Vec<(u16, String)>,
}

impl TcpManyReport {
    /// Connections per pod.
    pub fn per_pod(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in &self.conns {
            *m.entry(c.pod.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// Makes `n` connections from `host` to `dst`, one after the other, each from its own source
/// port (taken from the host's port allocator) and closed after the greeting. Bounded by
/// `n * timeout`.
pub fn tcp_many(host: &Host, dst: SocketAddrV4, n: usize, timeout: Duration) -> TcpManyReport {
    let ports: Vec<u16> = (0..n).map(|_| host.alloc_port()).collect();
    tcp_from_ports(host, dst, &ports, timeout)
}

/// Like [`tcp_many`], from the given source ports.
pub fn tcp_from_ports(
    host: &Host,
    dst: SocketAddrV4,
    ports: &[u16],
    timeout: Duration,
) -> TcpManyReport {
    let mut report = TcpManyReport::default();
    for &p in ports {
        if super::check_interrupted().is_err() {
            report.failures.push((p, "interrupted".into()));
            break;
        }
        match connect_tcp(host, dst, Some(p), timeout) {
            Ok(c) => report.conns.push(ConnRecord {
                src_port: p,
                pod: c.pod,
                seen: c.seen,
            }),
            Err(e) => report.failures.push((p, format!("{e:#}"))),
        }
    }
    report
}

/// A pod's answer to a UDP datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpReply {
    pub pod: String,
    /// The client address the pod saw.
    pub seen: SocketAddrV4,
    /// The source of the reply (the frontend, when the reply path is rewritten right).
    pub from: SocketAddrV4,
    pub local: SocketAddrV4,
}

/// Sends one datagram from `host` (source port `src_port`, or any) to `dst` and waits up to
/// `timeout` for the reply.
pub fn udp_request(
    host: &Host,
    dst: SocketAddrV4,
    src_port: Option<u16>,
    timeout: Duration,
) -> Result<UdpReply> {
    let timeout = clamp(timeout);
    let what = || {
        format!(
            "UDP {}:{} -> {dst}",
            host.name(),
            src_port.map_or("*".into(), |p| p.to_string())
        )
    };
    let fd = socket_in(host, libc::SOCK_DGRAM, src_port.unwrap_or(0)).with_context(what)?;
    let sock = UdpSocket::from(fd);
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(b"hello\n", dst).with_context(what)?;
    let local = match sock.local_addr()? {
        SocketAddr::V4(a) => a,
        a => bail!("unexpected local address {a}"),
    };
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .with_context(|| format!("{}: no reply within {timeout:?}", what()))?;
    let from = match from {
        SocketAddr::V4(a) => a,
        a => bail!("reply from unexpected address {a}"),
    };
    let (pod, seen) = parse_greeting(&String::from_utf8_lossy(&buf[..n]))?;
    Ok(UdpReply {
        pod,
        seen,
        from,
        local,
    })
}

/// The path MTU the kernel holds for a connected socket (`getsockopt(IP_MTU)`): lowered by an
/// ICMP "fragmentation needed" for its destination.
pub fn path_mtu(fd: &impl std::os::fd::AsRawFd) -> Result<u32> {
    let mut mtu: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, int out-parameter of the given size.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            &mut mtu as *mut _ as *mut libc::c_void,
            &mut len,
        )
    })
    .context("getsockopt(IP_MTU)")?;
    Ok(mtu as u32)
}

/// A UDP socket in `host`'s namespace, bound to `src_port` (0: any) and connected to `dst`,
/// that sets DF on everything it sends and never fragments (`IP_PMTUDISC_DO`): a datagram too
/// big for the path is refused (`EMSGSIZE`) once the path MTU is known. Reads time out after
/// `timeout`.
pub fn udp_connected_df(
    host: &Host,
    dst: SocketAddrV4,
    src_port: u16,
    timeout: Duration,
) -> Result<UdpSocket> {
    let fd = socket_in(host, libc::SOCK_DGRAM, src_port)?;
    let val: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: valid fd, pointer to an int of the given size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &val as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .context("setsockopt(IP_MTU_DISCOVER)")?;
    let sock = UdpSocket::from(fd);
    sock.connect(dst)
        .with_context(|| format!("connecting UDP to {dst}"))?;
    sock.set_read_timeout(Some(clamp(timeout)))?;
    Ok(sock)
}
