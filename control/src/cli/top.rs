//! `xlb top`: a live view of the datapath, redrawn in place every `--interval`; `q` quits.
//!
//! Plain ANSI escapes and termios, no TUI crate: the view is a few tables redrawn whole, which
//! needs only the alternate screen, cursor home, clear-to-end-of-line and a non-canonical,
//! non-echoing stdin to read single keys. The terminal is restored on every exit path (`q`,
//! Ctrl-C, SIGTERM, an error, a panic unwinding through the guard).
use std::{
    collections::HashSet,
    io::{IsTerminal as _, Write as _},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    cli::args::TopArgs,
    cli::attached::{self, Attached},
    cli::output::{self, Table},
    datapath::reconcile::Snapshot,
    observe::census::{self, Census, Published},
    observe::counters::{self, ReasonClass, Sample},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Raw-ish terminal for the life of the view: alternate screen, hidden cursor, stdin without
/// line buffering and echo. Dropping it restores everything.
struct Terminal {
    saved: Option<libc::termios>,
}

impl Terminal {
    fn enter() -> anyhow::Result<Terminal> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
        let saved = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) == 0 {
                let saved = t;
                t.c_lflag &= !(libc::ICANON | libc::ECHO);
                t.c_cc[libc::VMIN] = 0;
                t.c_cc[libc::VTIME] = 0;
                libc::tcsetattr(0, libc::TCSANOW, &t);
                Some(saved)
            } else {
                None
            }
        };
        let mut out = std::io::stdout().lock();
        out.write_all(b"\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")?;
        out.flush()?;
        Ok(Terminal { saved })
    }

    /// (columns, rows) of the terminal.
    fn size() -> (usize, usize) {
        // SAFETY: TIOCGWINSZ fills the winsize we own.
        unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
                (ws.ws_col as usize, ws.ws_row as usize)
            } else {
                (120, 40)
            }
        }
    }

    /// Redraws the screen with `lines`, cut to the terminal's size.
    fn draw(&self, lines: &[String]) -> std::io::Result<()> {
        let (cols, rows) = Self::size();
        let mut buf = String::from("\x1b[H");
        for (i, l) in lines.iter().take(rows).enumerate() {
            if i > 0 {
                buf.push_str("\r\n");
            }
            buf.extend(l.chars().take(cols));
            buf.push_str("\x1b[K");
        }
        buf.push_str("\x1b[J");
        let mut out = std::io::stdout().lock();
        out.write_all(buf.as_bytes())?;
        out.flush()
    }

    /// Waits up to `timeout` for a key; true if it asks to quit (`q`, `Q`, Esc or Ctrl-C).
    fn wait_for_quit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if STOP.load(Ordering::SeqCst) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut p = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            // Short slices so a signal's flag is seen promptly.
            let ms = left.as_millis().clamp(1, 100) as i32;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, ms) };
            if n > 0 {
                let mut b = [0u8; 64];
                // SAFETY: reading into a buffer we own.
                let r = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
                if r == 0 {
                    // stdin closed: nobody can press q; keep refreshing until signalled.
                    std::thread::sleep(left);
                    return STOP.load(Ordering::SeqCst);
                }
                if r > 0 && b[..r as usize].iter().any(|c| matches!(c, b'q' | b'Q' | 3)) {
                    return true;
                }
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        if let Some(t) = &self.saved {
            // SAFETY: restoring the attributes read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// `xlb top`.
pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    let dp = attached::open(&args.pin)?;
    if !std::io::stdout().is_terminal() {
        bail!(
            "xlb top needs a terminal; for scripts use `xlb services -o json` or `xlb stats --interval 1 -o json`"
        );
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
    }
    let term = Terminal::enter()?;
    let mut snap = attached::read_snapshot(&dp.pin_dir)?;
    let mut prev: Option<Sample> = None;
    loop {
        if let Ok(s) = attached::read_snapshot(&dp.pin_dir) {
            snap = s;
        }
        let cur = counters::read(&dp.maps, &snap)?;
        // Connections as xlb run's census last counted them (top never walks the table).
        let flows = match census::read(&dp.pin_dir)? {
            Published::Current(c) => Some(c),
            Published::NotYet | Published::NoDaemon => None,
        };
        let lines = frame(&dp, &snap, prev.as_ref(), &cur, flows.as_ref(), args);
        term.draw(&lines)?;
        prev = Some(cur);
        if term.wait_for_quit(args.interval) {
            break;
        }
    }
    drop(term);
    Ok(())
}

fn frontend_name(addr: Option<std::net::Ipv4Addr>, port: u16) -> String {
    match addr {
        Some(a) => format!("{a}:{port}"),
        None => format!("*:{port}"),
    }
}

/// One screen: header, frontends, the busiest backends, drops.
fn frame(
    dp: &Attached,
    snap: &Snapshot,
    prev: Option<&Sample>,
    cur: &Sample,
    flows: Option<&Census>,
    args: &TopArgs,
) -> Vec<String> {
    let capacity = flows.map_or(0, |c| c.capacity);
    let total = flows.map_or(0, |c| c.entries);
    let mut lines = vec![format!(
        "xlb top  {}  every {:.1}s  {}   (q quits)",
        dp.pin_dir.display(),
        args.interval.as_secs_f64(),
        output::clock()
    )];

    // Totals over every frontend: exactly the forwarded packets and the new flows.
    let (mut fwd_pps, mut fwd_bps, mut new_fps) = (0.0, 0.0, 0.0);
    if let Some(p) = prev {
        for id in cur.frontends.keys() {
            let (pps, bps) = cur.frontend_rate(p, *id);
            new_fps += cur.frontend_new_flows_rate(p, *id);
            fwd_pps += pps;
            fwd_bps += bps * 8.0;
        }
    }
    let rates = prev.map(|p| cur.global_rates(p));
    let class_rate = |class: ReasonClass| -> Option<f64> {
        rates.as_ref().map(|r| {
            r.iter()
                .filter(|(n, _)| ReasonClass::of(n) == class)
                .map(|(_, v)| v)
                .sum()
        })
    };
    let fill = if capacity > 0 {
        total as f64 * 100.0 / capacity as f64
    } else {
        0.0
    };
    lines.push(format!(
        "forwarded {} pkt/s {} bit/s   passed {} pkt/s   dropped {} pkt/s   new flows {}/s   conntrack {}/{} ({fill:.1}%)",
        output::rate(prev.map(|_| fwd_pps)),
        output::rate(prev.map(|_| fwd_bps)),
        output::rate(class_rate(ReasonClass::Passed)),
        output::rate(class_rate(ReasonClass::Dropped)),
        output::rate(prev.map(|_| new_fps)),
        total,
        capacity,
    ));
    lines.push(String::new());

    let mut fe = Table::new(&[
        "FRONTEND", "PROTO", "KIND", "SERVICE", ">PKT/s", ">BIT/s", ">NEW/s", ">CONNS", ">PACKETS",
        ">BYTES",
    ]);
    for s in &snap.services {
        for f in &s.frontends {
            let c = cur
                .frontends
                .get(&f.frontend_id)
                .copied()
                .unwrap_or_default();
            let (pps, bps) = prev.map_or((None, None), |p| {
                let (a, b) = cur.frontend_rate(p, f.frontend_id);
                (Some(a), Some(b * 8.0))
            });
            let new = prev.map(|p| cur.frontend_new_flows_rate(p, f.frontend_id));
            fe.row(vec![
                frontend_name(f.addr, f.port),
                s.protocol.clone(),
                f.kind.clone(),
                s.name.clone(),
                output::rate(pps),
                output::rate(bps),
                output::rate(new),
                flows.map_or("-".into(), |c| c.frontend(f.frontend_id).to_string()),
                c.packets.to_string(),
                output::bytes(c.bytes),
            ]);
        }
    }
    if fe.is_empty() {
        lines.push("no services programmed".into());
    } else {
        lines.extend(fe.lines());
    }
    lines.push(String::new());

    // The busiest backends: by packets/s, then connections.
    struct Be {
        name: String,
        node: String,
        state: String,
        service: String,
        pps: Option<f64>,
        bps: Option<f64>,
        conns: u64,
        packets: u64,
    }
    let mut seen: HashSet<u32> = HashSet::new();
    let mut bes = Vec::new();
    for s in &snap.services {
        for b in &s.backends {
            if !seen.insert(b.backend_id) {
                continue;
            }
            let (pps, bps) = prev.map_or((None, None), |p| {
                let (a, x) = cur.backend_rate(p, b.backend_id);
                (Some(a), Some(x * 8.0))
            });
            bes.push(Be {
                name: format!("{}:{}", b.addr, b.port),
                node: b.node.clone().unwrap_or_else(|| "-".into()),
                state: b.state.clone(),
                service: s.name.clone(),
                pps,
                bps,
                conns: flows.map_or(0, |c| c.backend(b.backend_id)),
                packets: cur.backends.get(&b.backend_id).map_or(0, |c| c.packets),
            });
        }
    }
    bes.sort_by(|a, b| {
        b.pps
            .unwrap_or(0.0)
            .total_cmp(&a.pps.unwrap_or(0.0))
            .then(b.conns.cmp(&a.conns))
            .then(a.name.cmp(&b.name))
    });
    let shown = bes.len().min(args.backends);
    let mut bt = Table::new(&[
        "TOP BACKENDS",
        "NODE",
        "STATE",
        "SERVICE",
        ">PKT/s",
        ">BIT/s",
        ">CONNS",
        ">PACKETS",
    ]);
    for b in bes.iter().take(shown) {
        bt.row(vec![
            b.name.clone(),
            b.node.clone(),
            b.state.clone(),
            b.service.clone(),
            output::rate(b.pps),
            output::rate(b.bps),
            b.conns.to_string(),
            b.packets.to_string(),
        ]);
    }
    if !bt.is_empty() {
        lines.extend(bt.lines());
        if bes.len() > shown {
            lines.push(format!("  ... {} more (--backends N)", bes.len() - shown));
        }
        lines.push(String::new());
    }

    let mut dt_ = Table::new(&["DROPS", ">TOTAL", ">PKT/s"]);
    for (i, (name, v)) in cur.global.iter().enumerate() {
        if ReasonClass::of(name) == ReasonClass::Dropped {
            dt_.row(vec![
                name.to_string(),
                v.to_string(),
                output::rate(rates.as_ref().map(|r| r[i].1)),
            ]);
        }
    }
    lines.extend(dt_.lines());
    lines
}
