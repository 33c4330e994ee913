//! End-to-end: a new xlb build takes over from the running one under a steady request stream,
//! as a DaemonSet's rolling update does (the old process exits, the new one starts), and nothing
//! is lost: no established connection broken, no request unanswered, no TCP segment
//! retransmitted by the client or the pods.
//!
//! The second build is the same source with the `layout-next` feature (one more conntrack
//! field, layout `v5-next`): `scripts/test.sh` builds it as `xlb-layout-next` next to `xlb`
//! (or set `$XLB_NEXT_BIN`).

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use xlb_bench::lab::netns::run_checked;
use xlb_bench::lab::*;
use xlb_e2e::*;

/// Established connections kept open across the switch.
const ESTABLISHED: usize = 8;
/// A reply later than this is counted as slow (a lost segment costs a 200 ms retransmission).
const SLOW: Duration = Duration::from_millis(150);
/// Upper bound of one stream, whatever happens.
const STREAM_LIMIT: Duration = Duration::from_secs(60);

/// The build of the next map layout.
fn next_build() -> PathBuf {
    let p = match std::env::var_os("XLB_NEXT_BIN") {
        Some(p) => PathBuf::from(p),
        None => xlb_binary()
            .expect("an xlb binary")
            .with_file_name("xlb-layout-next"),
    };
    assert!(
        p.is_file(),
        "no build of the next map layout at {}: `cargo build --release -p xlb --features \
         layout-next` and copy target/release/xlb there (scripts/test.sh does), or set \
         XLB_NEXT_BIN",
        p.display()
    );
    p
}

/// What the request stream saw.
#[derive(Debug, Default)]
struct Tally {
    /// Request/reply exchanges on the established connections.
    exchanges: u64,
    /// New connections opened (and one exchange on each).
    new_conns: u64,
    /// UDP requests.
    udp: u64,
    /// Every request without its reply, with why.
    lost: Vec<String>,
    /// Replies later than [`SLOW`].
    slow: u64,
    max_latency: Duration,
}

impl Tally {
    fn took(&mut self, t: Duration) {
        self.max_latency = self.max_latency.max(t);
        if t > SLOW {
            self.slow += 1;
        }
    }
}

/// Requests, one round every 5 ms until `stop`: one exchange on each established connection,
/// one new connection (alternately to the VIP and to the NodePort) and one UDP request.
fn stream(
    client: &Host,
    conns: &mut [TcpConn],
    entries: [SocketAddrV4; 2],
    stop: &AtomicBool,
) -> Tally {
    let mut tally = Tally::default();
    let mut broken = vec![false; conns.len()];
    let start = Instant::now();
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < STREAM_LIMIT {
        for (i, c) in conns.iter_mut().enumerate() {
            if broken[i] {
                continue;
            }
            let line = format!("r{round}c{i}");
            let t = Instant::now();
            tally.exchanges += 1;
            match c.exchange(&line) {
                Ok(echo) if echo == line => tally.took(t.elapsed()),
                Ok(echo) => {
                    broken[i] = true;
                    tally
                        .lost
                        .push(format!("conn {i}: sent {line:?}, got {echo:?}"));
                }
                Err(e) => {
                    broken[i] = true;
                    tally.lost.push(format!("conn {i} broken: {e:#}"));
                }
            }
        }
        let dst = entries[(round % 2) as usize];
        let t = Instant::now();
        tally.new_conns += 1;
        match connect_tcp(client, dst, None, IO_TIMEOUT).and_then(|mut c| c.exchange("new")) {
            Ok(_) => tally.took(t.elapsed()),
            Err(e) => tally.lost.push(format!("new connection to {dst}: {e:#}")),
        }
        let t = Instant::now();
        tally.udp += 1;
        match udp_request(client, entries[0], None, IO_TIMEOUT) {
            Ok(_) => tally.took(t.elapsed()),
            Err(e) => tally.lost.push(format!("UDP to {}: {e:#}", entries[0])),
        }
        round += 1;
        thread::sleep(Duration::from_millis(5));
    }
    tally
}

/// TCP segments retransmitted so far by `host` (`RetransSegs` of its `/proc/net/snmp`).
fn retransmitted(host: &Host) -> Result<u64> {
    let mut cmd = host.netns().command("cat");
    cmd.arg("/proc/net/snmp");
    let snmp = run_checked(&mut cmd)?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Tcp lines in {}'s /proc/net/snmp", host.name());
    };
    let at = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .ok_or_else(|| anyhow!("no RetransSegs in {names}"))?;
    values
        .split_whitespace()
        .nth(at)
        .ok_or_else(|| anyhow!("short Tcp line {values}"))?
        .parse()
        .context("RetransSegs")
}

/// Retransmissions of the client and every pod.
fn retransmitted_all(lab: &Lab) -> Result<u64> {
    let mut n = retransmitted(lab.client())?;
    for (_, pod) in lab.spec().pods() {
        n += retransmitted(lab.host(&pod.name))?;
    }
    Ok(n)
}

/// `(link id, program id)` of the link pinned at `pin` (`bpftool link show pinned`).
fn pinned_link(pin: &Path) -> Result<(u32, u32)> {
    let mut cmd = std::process::Command::new("bpftool");
    cmd.args(["link", "show", "pinned"]).arg(pin);
    let out = run_checked(&mut cmd)?;
    let link = out
        .split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| anyhow!("no link id in {out:?}"))?;
    let prog = out
        .split_whitespace()
        .skip_while(|w| *w != "prog")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no program id in {out:?}"))?;
    Ok((link, prog))
}

/// The XDP and TC links of the node's uplink pinned under `dir`.
fn uplink_links(dir: &Path) -> Result<[(u32, u32); 2]> {
    Ok([
        pinned_link(&dir.join("links").join(format!("xdp-{UPLINK}")))?,
        pinned_link(&dir.join("links").join(format!("tc-egress-{UPLINK}")))?,
    ])
}

/// The running `xlb run` on node-a exits and `next` (a build) starts in its place, under the
/// request stream; checks that nothing was lost and that the links were updated in place.
/// Returns the new process and the stream's tally.
fn take_over<'lab>(t: &mut Local<'_, 'lab>, next: Option<PathBuf>) -> Result<XlbProcess<'lab>> {
    let lab: &'lab Lab = t.lab;
    let node = lab.host("node-a");
    let client = lab.client();
    let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
    let entries = [vip, SocketAddrV4::new(t.node_addr(), WEB_NODE_PORT)];
    let old_dir = PathBuf::from(t.xlb.cli(&["pin-dir"])?.trim());
    let links_before = uplink_links(&old_dir)?;

    let mut conns = (0..ESTABLISHED)
        .map(|_| connect_tcp(client, vip, None, IO_TIMEOUT))
        .collect::<Result<Vec<_>>>()?;
    let ports: Vec<u16> = conns.iter().map(|c| c.local.port()).collect();
    let retrans_before = retransmitted_all(t.lab)?;
    let stop = AtomicBool::new(false);
    let (tally, new) = thread::scope(|s| {
        let streaming = s.spawn(|| stream(client, &mut conns, entries, &stop));
        let switch = (|| {
            thread::sleep(Duration::from_secs(1));
            let status = t.xlb.stop()?;
            ensure!(status.success(), "the old xlb run exited with {status}");
            t.xlb.keep_datapath();
            let mut opts = xlb_options(t.manifests);
            opts.bin = next.clone();
            let mut new = XlbProcess::start(t.lab, &opts)?;
            let key = t.web.port_key("http");
            new.wait_for_service(&key, &t.frontends(), &t.web.ready_addrs(), PROGRAM_TIMEOUT)?;
            thread::sleep(Duration::from_secs(1));
            Ok(new)
        })();
        stop.store(true, Ordering::SeqCst);
        let tally = streaming.join().expect("the stream panicked");
        (tally, switch)
    });
    let mut new = new?;
    let retrans = retransmitted_all(t.lab)? - retrans_before;
    let lost = tally.lost.len() as u64 + retrans;
    eprintln!(
        "takeover by {}: {} exchanges on {ESTABLISHED} established connections, {} new \
         connections, {} UDP requests; unanswered {}, TCP retransmissions {retrans}, replies \
         slower than {SLOW:?} {}, slowest {:?}",
        next.as_deref()
            .unwrap_or(Path::new("the same build"))
            .display(),
        tally.exchanges,
        tally.new_conns,
        tally.udp,
        tally.lost.len(),
        tally.slow,
        tally.max_latency
    );
    ensure!(
        lost == 0,
        "lost {lost}: unanswered {:?}, {retrans} TCP retransmissions",
        tally.lost
    );
    ensure!(
        tally.exchanges > 100 && tally.udp > 20,
        "too few requests: {tally:?}"
    );

    let new_dir = PathBuf::from(new.cli(&["pin-dir"])?.trim());
    let links_after = uplink_links(&new_dir)?;
    for (before, after) in links_before.iter().zip(&links_after) {
        ensure!(
            before.0 == after.0,
            "link {} replaced by link {}: the program was not updated in place",
            before.0,
            after.0
        );
        ensure!(
            before.1 != after.1,
            "link {} still runs program {}",
            after.0,
            after.1
        );
    }
    if new_dir != old_dir {
        ensure!(
            !old_dir.exists(),
            "the old layout's pins are still in {}",
            old_dir.display()
        );
    }
    let flows = new.conntrack()?;
    for p in &ports {
        ensure!(
            flows
                .iter()
                .any(|f| f.client_port == *p && f.frontend == t.vip()),
            "the flow from port {p} is not in the new conntrack: {flows:?}"
        );
    }
    ensure!(xdp_attached(node, UPLINK)?);
    new.keep_datapath();
    Ok(new)
}

/// The rolling update across map layouts: the build of layout v5 serves, the v5-next build
/// takes over (shared maps, conntrack converted, links updated, v5's pins removed). Then the
/// way back: the v5 build does not know v5-next and refuses with the remedy, leaving the
/// running datapath untouched and serving.
#[test]
fn upgrade_across_layouts_under_traffic_loses_nothing() {
    let next = next_build();
    with_local_lab(|t| {
        let mut new = take_over(t, Some(next.clone()))?;
        let log = new.log_tail(20_000);
        ensure!(
            log.contains("took over the datapath"),
            "no takeover in the log:\n{log}"
        );

        // Back to the older build: refused, nothing touched.
        let status = new.stop()?;
        ensure!(status.success(), "xlb run exited with {status}");
        let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
        let mut conn = connect_tcp(t.lab.client(), vip, None, IO_TIMEOUT)?;
        let mut back = XlbProcess::start(t.lab, &xlb_options(t.manifests))?;
        back.keep_datapath();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = back.try_exit() {
                break st;
            }
            ensure!(Instant::now() < deadline, "the older build did not exit");
            thread::sleep(Duration::from_millis(50));
        };
        ensure!(
            !status.success(),
            "the older build started over layout v5-next"
        );
        let log = back.log_tail(4000);
        ensure!(
            log.contains("cannot take over") && log.contains("v5-next"),
            "unclear refusal:\n{log}"
        );
        ensure!(conn.exchange("still served")? == "still served");
        ensure!(
            new.conntrack()?
                .iter()
                .any(|f| f.client_port == conn.local.port())
        );
        // Cleanup with the build that owns the datapath.
        new.down()?;
        ensure!(!xdp_attached(t.lab.host("node-a"), UPLINK)?);
        Ok(())
    });
}

/// A restart with the same layout (a new build of the same layout, here the same binary)
/// replaces the programs in place too, under the same stream, losing nothing.
#[test]
fn restart_of_the_same_layout_updates_the_links_in_place() {
    with_local_lab(|t| {
        let mut new = take_over(t, None)?;
        new.down()?;
        Ok(())
    });
}
