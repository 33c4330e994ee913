//! Packet captures with `tcpdump` inside a lab namespace: what actually went over a link.
//!
//! A [`Capture`] runs `tcpdump -w -` on one interface of one lab host, writing a pcap file in
//! the lab's work directory; after [`Capture::stop`], [`Capture::read`] decodes it again with
//! any filter (`tcpdump -r`). Bounded: at most [`MAX_PACKETS`] packets and [`MAX_DURATION`] of
//! capture; the process is stopped when the `Capture` is dropped (and, as a process living in a
//! lab namespace, when the lab is torn down).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use super::netns::{COMMAND_TIMEOUT, describe, run_with_timeout};
use super::{Host, Lab, check_interrupted};

/// A capture stops by itself after this many packets (`tcpdump -c`).
pub const MAX_PACKETS: u32 = 200_000;
/// ... or after this long (`timeout`), whichever comes first.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
/// Bytes kept of each packet: the outer headers, a Geneve header with options and the inner
/// IPv4 and TCP headers fit.
pub const SNAPLEN: u32 = 256;

/// A running (or finished) `tcpdump` on one interface of a lab host.
pub struct Capture<'lab> {
    host: &'lab Host,
    iface: String,
    pcap: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
}

impl<'lab> Capture<'lab> {
    /// Starts `tcpdump -i IFACE -n -U --immediate-mode -s 256 -c MAX -w - FILTER` in `host`'s namespace (an
    /// empty `filter` captures everything), the pcap going to `<lab workdir>/capture-...pcap`;
    /// returns once tcpdump reports that it is listening (within 10 s).
    pub fn start(lab: &'lab Lab, host: &str, iface: &str, filter: &str) -> Result<Capture<'lab>> {
        let h = lab.host(host);
        let stem = (1..)
            .map(|i| format!("capture-{host}-{iface}-{i}"))
            .find(|s| !lab.workdir().join(format!("{s}.pcap")).exists())
            .expect("a free capture name");
        let pcap = lab.workdir().join(format!("{stem}.pcap"));
        let stderr = lab.workdir().join(format!("{stem}.log"));
        let out = File::create(&pcap).with_context(|| format!("creating {}", pcap.display()))?;
        let err =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let mut cmd = h.netns().command("timeout");
        cmd.args([
            "--signal=INT",
            "--kill-after=5",
            &MAX_DURATION.as_secs().to_string(),
            "tcpdump",
            "-i",
            iface,
            "-n",
            "-U",
            // Hand every packet over at once (TPACKET_V3 otherwise holds them in blocks, and a
            // capture stopped early writes nothing).
            "--immediate-mode",
            "-s",
            &SNAPLEN.to_string(),
            "-c",
            &MAX_PACKETS.to_string(),
            "-w",
            "-",
        ]);
        if !filter.trim().is_empty() {
            cmd.arg(filter);
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let desc = describe(&cmd);
        let child = cmd.spawn().with_context(|| format!("starting `{desc}`"))?;
        let mut cap = Capture {
            host: h,
            iface: iface.to_string(),
            pcap,
            stderr,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            check_interrupted()?;
            let text = fs::read_to_string(&cap.stderr).unwrap_or_default();
            if text.contains("listening on") {
                return Ok(cap);
            }
            if let Some(st) = cap.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("`{desc}` exited ({st}) before listening: {}", text.trim());
            }
            if Instant::now() >= deadline {
                cap.stop().ok();
                bail!(
                    "`{desc}` did not start listening within 10 s: {}",
                    text.trim()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pcap file.
    pub fn path(&self) -> &Path {
        &self.pcap
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Stops tcpdump (SIGINT, which flushes the file; SIGKILL after 5 s). Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            // SAFETY: kill(2) on our own child (`timeout`, which passes SIGINT to tcpdump).
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "tcpdump on {}/{} ignored SIGINT; killed",
                    self.host.name(),
                    self.iface
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the capture (if running) and decodes it with `tcpdump -n -r FILE [-v] FILTER`:
    /// one string per packet (tcpdump's continuation lines of `-v` output are joined).
    pub fn read(&mut self, filter: &str, verbose: bool) -> Result<Vec<String>> {
        self.stop()?;
        let mut cmd = self.host.netns().command("tcpdump");
        cmd.arg("-n").arg("-r").arg(&self.pcap);
        if verbose {
            cmd.arg("-v");
        }
        if !filter.trim().is_empty() {
            cmd.arg(filter);
        }
        let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)?;
        if !out.status.success() {
            return Err(anyhow!(
                "`{}` failed ({}): {}",
                describe(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut packets: Vec<String> = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with(char::is_whitespace)
                && let Some(last) = packets.last_mut()
            {
                last.push(' ');
                last.push_str(line.trim());
                continue;
            }
            if !line.trim().is_empty() {
                packets.push(line.to_string());
            }
        }
        Ok(packets)
    }

    /// Waits up to `timeout` until the running capture holds a packet matching `filter` (read
    /// from the file as tcpdump writes it, without stopping it).
    pub fn wait_for(&self, filter: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut cmd = self.host.netns().command("tcpdump");
            cmd.arg("-n").arg("-r").arg(&self.pcap).arg(filter);
            // A packet being written may be cut off: tcpdump then fails after printing the
            // whole ones, which are all this needs.
            let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the capture on {}/{} holds no packet matching {filter:?} after {timeout:?}",
                    self.host.name(),
                    self.iface
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many captured packets match `filter`.
    pub fn count(&mut self, filter: &str) -> Result<usize> {
        Ok(self.read(filter, false)?.len())
    }
}

impl Drop for Capture<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            super::netns::log(&format!("lab: {e:#}"));
        }
    }
}
