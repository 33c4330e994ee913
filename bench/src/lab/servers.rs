//! Pod servers: small TCP and UDP servers running as threads of the test process, one pair per
//! pod namespace, that say which pod answered and which client address they saw.
//!
//! * TCP: on accept, writes `<pod> <client-ip>:<client-port>\n`, then echoes every further line
//!   as `<pod> <line>\n` until the client closes (so long-lived connections can be tested).
//! * UDP: answers every datagram with `<pod> <client-ip>:<client-port>\n`.
//!
//! Bounded: a connection lives at most [`MAX_CONN_LIFETIME`], at most [`MAX_OPEN_CONNS`] are
//! served at once per pod, and everything stops when the [`PodServers`] is dropped.

use std::collections::BTreeMap;
use std::io::{self, BufRead as _, BufReader, ErrorKind, Write as _};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::Lab;

/// The port pod servers listen on (TCP and UDP).
pub const POD_PORT: u16 = 8080;
/// A TCP connection is closed by the server after this long, whatever the client does.
pub const MAX_CONN_LIFETIME: Duration = Duration::from_secs(300);
/// Connections beyond this many open ones are closed right after accept.
pub const MAX_OPEN_CONNS: usize = 1024;
const POLL: Duration = Duration::from_millis(100);

/// Transport protocol of something a pod server saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// What one pod's servers observed.
#[derive(Debug, Default)]
pub struct ServerStats {
    tcp_conns: AtomicU64,
    udp_datagrams: AtomicU64,
    open: AtomicUsize,
    peers: Mutex<Vec<(Proto, SocketAddrV4)>>,
}

impl ServerStats {
    /// TCP connections accepted so far.
    pub fn tcp_connections(&self) -> u64 {
        self.tcp_conns.load(Ordering::SeqCst)
    }
    /// UDP datagrams answered so far.
    pub fn udp_datagrams(&self) -> u64 {
        self.udp_datagrams.load(Ordering::SeqCst)
    }
    /// TCP connections open right now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    /// Every client address seen, in order (one per TCP connection / UDP datagram).
    pub fn peers(&self) -> Vec<(Proto, SocketAddrV4)> {
        self.peers.lock().unwrap().clone()
    }
    fn record(&self, proto: Proto, peer: SocketAddrV4) {
        let mut p = self.peers.lock().unwrap();
        if p.len() < 1_000_000 {
            p.push((proto, peer));
        }
    }
}

/// The servers of one pod.
pub struct PodServer {
    pub pod: String,
    pub addr: Ipv4Addr,
    pub stats: Arc<ServerStats>,
}

/// All pods' servers of a lab; dropping it stops them (and must happen before the lab is torn
/// down, which the borrow enforces).
pub struct PodServers<'lab> {
    servers: Vec<PodServer>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    conn_threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _lab: PhantomData<&'lab Lab>,
}

impl<'lab> PodServers<'lab> {
    /// Starts a TCP and a UDP server on `port` in every pod namespace of `lab`.
    pub fn start(lab: &'lab Lab, port: u16) -> Result<PodServers<'lab>> {
        let mut this = PodServers {
            servers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            conn_threads: Arc::new(Mutex::new(Vec::new())),
            _lab: PhantomData,
        };
        for (_, pod) in lab.spec().pods() {
            let host = lab.host(&pod.name);
            let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            let (tcp, udp) = host
                .netns()
                .run(move || {
                    let tcp =
                        TcpListener::bind(bind).with_context(|| format!("binding TCP {bind}"))?;
                    let udp =
                        UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
                    Ok((tcp, udp))
                })
                .with_context(|| format!("starting the servers of {}", pod.name))?;
            tcp.set_nonblocking(true)?;
            udp.set_read_timeout(Some(POLL))?;
            let stats = Arc::new(ServerStats::default());
            let (name, st, stop, conns) = (
                pod.name.clone(),
                stats.clone(),
                this.stop.clone(),
                this.conn_threads.clone(),
            );
            this.threads.push(
                thread::Builder::new()
                    .name(format!("tcp-{}", pod.name))
                    .spawn(move || tcp_accept_loop(&name, tcp, &st, &stop, &conns))?,
            );
            let (name, st, stop) = (pod.name.clone(), stats.clone(), this.stop.clone());
            this.threads.push(
                thread::Builder::new()
                    .name(format!("udp-{}", pod.name))
                    .spawn(move || udp_loop(&name, udp, &st, &stop))?,
            );
            this.servers.push(PodServer {
                pod: pod.name.clone(),
                addr: pod.addr,
                stats,
            });
        }
        Ok(this)
    }

    pub fn servers(&self) -> &[PodServer] {
        &self.servers
    }

    /// The servers of pod `name`.
    pub fn pod(&self, name: &str) -> &PodServer {
        self.servers
            .iter()
            .find(|s| s.pod == name)
            .unwrap_or_else(|| panic!("no pod server named {name}"))
    }

    /// TCP connections accepted per pod.
    pub fn tcp_counts(&self) -> BTreeMap<String, u64> {
        self.servers
            .iter()
            .map(|s| (s.pod.clone(), s.stats.tcp_connections()))
            .collect()
    }

    /// UDP datagrams answered per pod.
    pub fn udp_counts(&self) -> BTreeMap<String, u64> {
        self.servers
            .iter()
            .map(|s| (s.pod.clone(), s.stats.udp_datagrams()))
            .collect()
    }

    /// Stops every server and waits for its threads (also done on drop).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => super::netns::log(&format!("lab: pod server failed: {e:#}")),
                Err(_) => super::netns::log("lab: pod server thread panicked"),
            }
        }
        let conns: Vec<_> = self.conn_threads.lock().unwrap().drain(..).collect();
        for t in conns {
            let _ = t.join();
        }
    }
}

impl Drop for PodServers<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => SocketAddrV4::new(
            a.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            a.port(),
        ),
    }
}

fn wait_readable(fd: i32, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
}

fn tcp_accept_loop(
    pod: &str,
    listener: TcpListener,
    stats: &Arc<ServerStats>,
    stop: &Arc<AtomicBool>,
    conns: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) -> Result<()> {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let peer = v4(peer);
                stats.tcp_conns.fetch_add(1, Ordering::SeqCst);
                stats.record(Proto::Tcp, peer);
                if stats.open.load(Ordering::SeqCst) >= MAX_OPEN_CONNS {
                    continue; // dropped: closed at once
                }
                stats.open.fetch_add(1, Ordering::SeqCst);
                let (pod, stats, stop) = (pod.to_string(), stats.clone(), stop.clone());
                let h = thread::Builder::new()
                    .name(format!("conn-{pod}"))
                    .spawn(move || {
                        if let Err(e) = serve_conn(&pod, stream, peer, &stop)
                            && !matches!(
                                e.kind(),
                                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                            )
                        {
                            super::netns::log(&format!("lab: {pod}: connection from {peer}: {e}"));
                        }
                        stats.open.fetch_sub(1, Ordering::SeqCst);
                    })?;
                let mut c = conns.lock().unwrap();
                c.retain(|t| !t.is_finished());
                c.push(h);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_readable(listener.as_raw_fd(), POLL)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                super::netns::log(&format!("lab: {pod}: accept: {e}"));
                thread::sleep(POLL);
            }
        }
    }
    Ok(())
}

fn serve_conn(
    pod: &str,
    stream: TcpStream,
    peer: SocketAddrV4,
    stop: &AtomicBool,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut out = stream.try_clone()?;
    out.write_all(format!("{pod} {peer}\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let started = Instant::now();
    let mut line = Vec::new();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < MAX_CONN_LIFETIME {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()), // client closed
            Ok(_) if line.ends_with(b"\n") => {
                let text = String::from_utf8_lossy(&line);
                out.write_all(
                    format!("{pod} {}\n", text.trim_end_matches(['\r', '\n'])).as_bytes(),
                )?;
                line.clear();
            }
            Ok(_) => {} // partial line; keep reading
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
        if line.len() > 64 * 1024 {
            return Err(io::Error::new(ErrorKind::InvalidData, "line too long"));
        }
    }
    Ok(())
}

fn udp_loop(pod: &str, sock: UdpSocket, stats: &ServerStats, stop: &AtomicBool) -> Result<()> {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let peer4 = v4(peer);
                stats.udp_datagrams.fetch_add(1, Ordering::SeqCst);
                stats.record(Proto::Udp, peer4);
                if let Err(e) = sock.send_to(format!("{pod} {peer4}\n").as_bytes(), peer) {
                    super::netns::log(&format!("lab: {pod}: UDP reply to {peer}: {e}"));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                super::netns::log(&format!("lab: {pod}: UDP recv: {e}"));
                thread::sleep(POLL);
            }
        }
    }
    Ok(())
}
