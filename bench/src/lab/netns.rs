//! Network namespaces and running things inside them.
//!
//! Two ways in, neither of which is `ip netns exec` (it remounts `/sys`, hiding `/sys/fs/bpf`
//! and with it every pin):
//!
//! * subprocesses: `nsenter --net=/run/netns/NAME -- cmd ...` ([`Netns::command`]);
//! * in-process sockets: a helper thread calls `setns(2)` on `/run/netns/NAME` and creates the
//!   socket there ([`Netns::run`], [`Netns::spawn`]). A socket stays in the namespace it was
//!   created in, so it can be used from any thread afterwards.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Directory where `ip netns add` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Every namespace this module creates is named `xlblab-<pid>-<n>-<host>`.
pub const NAME_PREFIX: &str = "xlblab-";

/// Default time limit for helper commands (`ip`, `ethtool`, the `xlb` CLI).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A prefix unique to this process and call: `xlblab-<pid>-<n>`.
pub fn unique_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}-{n}", std::process::id())
}

/// A named network namespace; dropping it deletes it (`ip netns del`).
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates the namespace `name` (fails if it exists) and brings its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        if name.is_empty() || name.contains('/') || !name.starts_with(NAME_PREFIX) {
            bail!(
                "refusing to create network namespace {name:?}: lab names start with {NAME_PREFIX}"
            );
        }
        run_checked(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            name: name.to_string(),
            path: Path::new(NETNS_RUN_DIR).join(name),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n NAME args...`, checked.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(args);
        run_checked(&mut cmd)
    }

    /// A command that runs `program` inside this namespace via `nsenter --net=`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program args...` in the namespace, checked, with the default time limit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_checked(&mut cmd)
    }

    /// Runs `f` on a helper thread that has entered this namespace, and returns its result.
    /// Sockets created by `f` belong to the namespace.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send,
        T: Send,
    {
        let path = self.path.as_path();
        thread::scope(|s| {
            s.spawn(move || {
                enter(path)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "helper thread in {} panicked",
                    path.display()
                ))
            })
        })
    }

    /// Spawns a named long-running thread inside this namespace.
    pub fn spawn<F, T>(&self, thread_name: &str, f: F) -> Result<JoinHandle<Result<T>>>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path.clone();
        thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                enter(&path)?;
                f()
            })
            .context("spawning a thread")
    }

    /// Writes a sysctl under `/proc/sys/` (key with dots or slashes, e.g.
    /// `net.ipv4.ip_forward`) inside this namespace, and reads it back.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let file = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_string();
        self.run(move || {
            std::fs::write(&file, format!("{value}\n"))
                .with_context(|| format!("writing {}", file.display()))?;
            let back = std::fs::read_to_string(&file)?;
            let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
            if norm(&back) != norm(&value) {
                bail!(
                    "{} reads back {:?} after writing {:?}",
                    file.display(),
                    back.trim(),
                    value
                );
            }
            Ok(())
        })
        .with_context(|| format!("sysctl {key} in {}", self.name))
    }

    /// Process ids whose network namespace is this one (`ip netns pids`), except our own.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete_netns(&self.name) {
            log(&format!("lab: {e:#}"));
        }
    }
}

/// Enters the network namespace at `path` on the calling thread.
pub fn enter(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on an fd we own; affects only the calling thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("setns {}", path.display()));
    }
    Ok(())
}

fn pids_in(name: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    match run_checked(Command::new("ip").args(["netns", "pids", name])) {
        Ok(out) => out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != me)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Terminates the processes left in a lab namespace (only ever ones a lab started there),
/// then deletes it.
fn delete_netns(name: &str) -> Result<()> {
    if !name.starts_with(NAME_PREFIX) {
        bail!("refusing to delete network namespace {name:?}: not a lab namespace");
    }
    if !Path::new(NETNS_RUN_DIR).join(name).exists() {
        return Ok(());
    }
    let pids = pids_in(name);
    for &pid in &pids {
        // SAFETY: plain kill(2) on a pid that lives in our own lab namespace.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if !pids.is_empty() {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !pids_in(name).is_empty() {
            thread::sleep(Duration::from_millis(50));
        }
        for pid in pids_in(name) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    run_checked(Command::new("ip").args(["netns", "del", name]))
        .with_context(|| format!("deleting network namespace {name}"))?;
    Ok(())
}

/// Lab namespaces present now (names from `/run/netns`).
pub fn lab_namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(NAME_PREFIX))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe {
        libc::kill(pid, 0) == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
}

/// [`clean_stale`], at most once per process.
pub fn clean_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        clean_stale();
    });
}

/// Removes lab namespaces left behind by lab processes that no longer exist (a test run that
/// was killed). First, in every such namespace, it detaches whatever `xlb` left there
/// (`xlb down --iface IF` for each interface with an XDP program or a pinned xlb link under
/// the namespace's default pin directory, when an `xlb` binary is found), so no pins are left
/// behind; then it deletes them all.
/// (Two passes: deleting one namespace of a veth pair removes the peer in the other.)
/// Returns the names removed.
pub fn clean_stale() -> Vec<String> {
    let stale: Vec<Netns> = lab_namespaces()
        .into_iter()
        .filter(|name| {
            name.strip_prefix(NAME_PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
                .is_some_and(|pid| !pid_alive(pid))
        })
        .map(|name| Netns {
            path: Path::new(NETNS_RUN_DIR).join(&name),
            name,
        })
        .collect();
    for ns in &stale {
        log(&format!(
            "lab: removing stale namespace {} (its process is gone)",
            ns.name
        ));
        for pid in ns.pids() {
            // SAFETY: kill(2) on a leftover process living in a lab namespace.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    if let Ok(bin) = super::xlb::xlb_binary() {
        for ns in &stale {
            for iface in xlb_interfaces(ns) {
                let mut cmd = ns.command(&bin);
                cmd.args(["down", "--iface", &iface]);
                match run_with_timeout(&mut cmd, COMMAND_TIMEOUT) {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => log(&format!(
                        "lab: `{}` failed: {}",
                        describe(&cmd),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                    Err(e) => log(&format!("lab: {e:#}")),
                }
            }
        }
    }
    // Dropping a Netns deletes it.
    stale.into_iter().map(|ns| ns.name.clone()).collect()
}

/// Interfaces of `ns` that xlb may have attached to: those with an XDP program, and those with
/// a pinned xlb XDP link under the namespace's default pin directory
/// (`xlb pin-dir` run inside the namespace, then `links/xdp-<iface>`).
fn xlb_interfaces(ns: &Netns) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    if let Ok(out) = ns.ip(&["-j", "link", "show"])
        && let Ok(serde_json::Value::Array(links)) = serde_json::from_str::<serde_json::Value>(&out)
    {
        found.extend(
            links
                .iter()
                .filter(|l| l.get("xdp").is_some())
                .filter_map(|l| l.get("ifname").and_then(|n| n.as_str()).map(str::to_string)),
        );
    }
    if let Some(dir) = xlb_pin_dir(ns) {
        for link in std::fs::read_dir(dir.join("links"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(iface) = link
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("xdp-"))
            {
                found.insert(iface.to_string());
            }
        }
    }
    found
}

/// The default pin directory of `xlb` in `ns`, as `xlb pin-dir` run inside it reports (it is
/// keyed by the namespace's cookie, which only code inside the namespace can read).
pub fn xlb_pin_dir(ns: &Netns) -> Option<PathBuf> {
    let bin = super::xlb::xlb_binary().ok()?;
    let mut cmd = ns.command(&bin);
    cmd.arg("pin-dir");
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT).ok()?;
    if !out.status.success() {
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Writes a line to stderr, ignoring errors (safe in destructors even when stderr is closed).
pub fn log(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// Runs `cmd` to completion within `timeout` (killing it when it overstays), capturing output.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{desc}`"))?;
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{desc}` did not finish within {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` with the default time limit; fails (with its stderr) unless it exits 0.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = run_with_timeout(cmd, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `program arg arg ...` for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails unless the process runs as root (the lab needs CAP_NET_ADMIN and CAP_SYS_ADMIN).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and needs root (run as root or with sudo)");
    }
    for tool in ["ip", "nsenter", "ethtool"] {
        if which(tool).is_none() {
            bail!("the lab needs `{tool}` on PATH (iproute2, util-linux, ethtool)");
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
