//! Running the real `xlb` binary inside a lab node, and reading what its CLI reports.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use lb_common::hash::flow_hash;
use lb_common::maglev::{MaglevBackend, MaglevTable, build_table};
pub use xlb_api::{
    BackendStatus, FlowRow, FrontendStatus, ServiceStatus, ServicesOutput, StatsOutput,
};

use super::netns::{COMMAND_TIMEOUT, describe, run_with_timeout};
use super::{Host, Lab, check_interrupted};

/// Finds the `xlb` binary: `$XLB_BIN`, else `<workspace>/target/release/xlb`, else
/// `<workspace>/target/debug/xlb` (then `$CARGO_TARGET_DIR/{release,debug}/xlb` and `xlb` next
/// to the running executable).
pub fn xlb_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("XLB_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let ws = workspace_dir();
    let candidates = [ws.join("target/release/xlb"), ws.join("target/debug/xlb")];
    if let (Ok(r), Ok(d)) = (fs::metadata(&candidates[0]), fs::metadata(&candidates[1]))
        && let (Ok(rt), Ok(dt)) = (r.modified(), d.modified())
        && dt > rt
    {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            super::netns::log(&format!(
                "lab: note: using {}, although {} is newer (set XLB_BIN to choose)",
                candidates[0].display(),
                candidates[1].display()
            ))
        });
    }
    // Fallbacks: a custom target directory, and the directory of the running executable
    // (`xlb-bench` is built next to `xlb`).
    let mut fallbacks = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        fallbacks.extend([t.join("release/xlb"), t.join("debug/xlb")]);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        fallbacks.push(dir.join("xlb"));
    }
    candidates.iter().chain(&fallbacks).find(|p| p.is_file()).cloned().ok_or_else(|| {
        anyhow!(
            "no xlb binary: looked for $XLB_BIN, {} and {}; build it with `cargo build --release -p xlb`",
            candidates[0].display(),
            candidates[1].display()
        )
    })
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs the `xlb` CLI with `args` inside `host`'s namespace (bounded by [`COMMAND_TIMEOUT`]).
pub fn xlb_cli(host: &Host, args: &[&str]) -> Result<Output> {
    let bin = xlb_binary()?;
    let mut cmd = host.netns().command(&bin);
    cmd.args(args);
    run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
}

/// Like [`xlb_cli`], but fails unless it exits 0; returns stdout.
pub fn xlb_cli_checked(host: &Host, args: &[&str]) -> Result<String> {
    let out = xlb_cli(host, args)?;
    if !out.status.success() {
        bail!(
            "`xlb {}` in {} failed ({}): {}",
            args.join(" "),
            host.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Options for [`XlbProcess::start`].
#[derive(Clone, Debug)]
pub struct XlbOptions {
    /// The lab node to run in (also `--node-name`).
    pub node: String,
    /// Interfaces to attach to (default: the node's uplink).
    pub ifaces: Vec<String>,
    pub manifests: PathBuf,
    /// `--pin-dir` for `xlb run` and every CLI call of this process (default: xlb's own,
    /// keyed by the namespace).
    pub pin_dir: Option<PathBuf>,
    /// Anything else for `xlb run` (`--xdp-mode generic`, `--maglev-table-size 251`, ...).
    pub extra_args: Vec<String>,
    /// Another `xlb` build to run (default: [`xlb_binary`]); its CLI calls and `xlb down` use
    /// the same build.
    pub bin: Option<PathBuf>,
}

impl XlbOptions {
    pub fn new(node: &str, manifests: &Path) -> XlbOptions {
        XlbOptions {
            node: node.into(),
            ifaces: vec![super::topology::UPLINK.into()],
            manifests: manifests.to_path_buf(),
            pin_dir: None,
            extra_args: vec![],
            bin: None,
        }
    }
}

/// A running `xlb run` in a lab node. Dropping it stops the process (SIGTERM, then SIGKILL)
/// and runs `xlb down --iface ...` in the namespace, so no attachment or pin outlives it.
pub struct XlbProcess<'lab> {
    host: &'lab Host,
    bin: PathBuf,
    ifaces: Vec<String>,
    pin_dir: Option<PathBuf>,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    log: PathBuf,
    down_done: bool,
}

impl<'lab> XlbProcess<'lab> {
    /// Starts `nsenter --net=<node> -- xlb run --iface ... --node-name NODE --manifests DIR`,
    /// stderr (and stdout) to `<lab workdir>/xlb-<node>.log`.
    pub fn start(lab: &'lab Lab, opts: &XlbOptions) -> Result<XlbProcess<'lab>> {
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => xlb_binary()?,
        };
        let host = lab.host(&opts.node);
        let log = (1..)
            .map(|i| match i {
                1 => lab.workdir().join(format!("xlb-{}.log", opts.node)),
                i => lab.workdir().join(format!("xlb-{}-{i}.log", opts.node)),
            })
            .find(|p| !p.exists())
            .expect("a free log name");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = host.netns().command(&bin);
        cmd.arg("run");
        for i in &opts.ifaces {
            cmd.args(["--iface", i]);
        }
        cmd.args(["--node-name", &opts.node])
            .arg("--manifests")
            .arg(&opts.manifests);
        if let Some(p) = &opts.pin_dir {
            cmd.arg("--pin-dir").arg(p);
        }
        cmd.args(&opts.extra_args);
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe; it makes the kernel stop xlb if we die.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let desc = describe(&cmd);
        let child = cmd.spawn().with_context(|| format!("starting `{desc}`"))?;
        super::netns::log(&format!(
            "lab: started `{desc}` (pid {}), log {}",
            child.id(),
            log.display()
        ));
        Ok(XlbProcess {
            host,
            bin,
            ifaces: opts.ifaces.clone(),
            pin_dir: opts.pin_dir.clone(),
            child: Some(child),
            exit: None,
            log,
            down_done: false,
        })
    }

    pub fn host(&self) -> &'lab Host {
        self.host
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id of `xlb run` (`nsenter` execs it in place), while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .filter(|_| self.exit.is_none())
    }

    /// The process's output so far (last `max` bytes).
    pub fn log_tail(&self, max: usize) -> String {
        let text = fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.exit = Some(st);
        }
        self.exit
    }

    /// Runs the `xlb` CLI in the same namespace (with this process's `--pin-dir`, if any).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut args: Vec<&str> = args.to_vec();
        let pin = self
            .pin_dir
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        if let Some(p) = &pin {
            args.extend(["--pin-dir", p.as_str()]);
        }
        let mut cmd = self.host.netns().command(&self.bin);
        cmd.args(&args);
        let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                describe(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Leaves the datapath in place when this is dropped (no `xlb down`): for restart and
    /// adoption tests, where a later `xlb run` takes over.
    pub fn keep_datapath(&mut self) {
        self.down_done = true;
    }

    /// `xlb services -o json`.
    pub fn services(&self) -> Result<Vec<ServiceStatus>> {
        let out = self.cli(&["services", "-o", "json"])?;
        let parsed: ServicesOutput = serde_json::from_str(&out)
            .with_context(|| format!("parsing `xlb services -o json` output: {out}"))?;
        Ok(parsed.services)
    }

    /// `xlb services -o json` once its connection counts come from a census that started after
    /// `after_unix` (Unix time): the census of `xlb run` walks the table every couple of
    /// seconds, and the commands never walk it themselves.
    pub fn services_counted_after(
        &self,
        after_unix: f64,
        timeout: Duration,
    ) -> Result<ServicesOutput> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.cli(&["services", "-o", "json"])?;
            let parsed: ServicesOutput = serde_json::from_str(&out)
                .with_context(|| format!("parsing `xlb services -o json` output: {out}"))?;
            let fresh = parsed.census.as_ref().is_some_and(|c| {
                c.state == "current"
                    && c.taken_unix.unwrap_or(0.0) - c.walk_s.unwrap_or(0.0) >= after_unix
            });
            if fresh {
                return Ok(parsed);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no connection census started after {after_unix} within {timeout:?}: {:?}",
                    parsed.census
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `xlb stats -o json`.
    pub fn stats(&self) -> Result<StatsOutput> {
        let out = self.cli(&["stats", "-o", "json"])?;
        serde_json::from_str(&out)
            .with_context(|| format!("parsing `xlb stats -o json` output: {out}"))
    }

    /// The global counter `name` from `xlb stats -o json` (`counters.<name>`).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let stats = self.stats()?;
        stats.counters.get(name).copied().ok_or_else(|| {
            anyhow!(
                "`xlb stats -o json` has no counters.{name}: {:?}",
                stats.counters
            )
        })
    }

    /// `xlb conntrack list -o json`.
    pub fn conntrack(&self) -> Result<Vec<FlowRow>> {
        let out = self.cli(&["conntrack", "list", "-o", "json"])?;
        serde_json::from_str(&out)
            .with_context(|| format!("parsing `xlb conntrack list -o json` output: {out}"))
    }

    /// Polls `xlb services -o json` (every 200 ms, up to `timeout`) until `ready` accepts it;
    /// fails early (with the log) if the process exits.
    pub fn wait_until<F>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut ready: F,
    ) -> Result<Vec<ServiceStatus>>
    where
        F: FnMut(&[ServiceStatus]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            check_interrupted()?;
            if let Some(st) = self.try_exit() {
                bail!(
                    "xlb run exited ({st}) while waiting for {what}; its log:\n{}",
                    self.log_tail(4000)
                );
            }
            match self.services() {
                Ok(s) if ready(&s) => return Ok(s),
                Ok(s) => {
                    last = serde_json::to_string(
                        &s.iter().map(ServiceStatus::summary).collect::<Vec<_>>(),
                    )?
                }
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; last `xlb services`: {last}\nxlb log:\n{}",
                    self.log_tail(4000)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until Service `name` shows frontends `frontends` (`(addr or None for NodePort,
    /// port)`, at least these) and exactly the ready backends `backends`; returns it.
    pub fn wait_for_service(
        &mut self,
        name: &str,
        frontends: &[(Option<Ipv4Addr>, u16)],
        backends: &[Ipv4Addr],
        timeout: Duration,
    ) -> Result<ServiceStatus> {
        let want_be: BTreeSet<Ipv4Addr> = backends.iter().copied().collect();
        let what =
            format!("service {name} with frontends {frontends:?} and ready backends {want_be:?}");
        let all = self.wait_until(timeout, &what, |svcs| {
            svcs.iter().find(|s| s.name == name).is_some_and(|s| {
                frontends
                    .iter()
                    .all(|f| s.frontends.iter().any(|x| (x.addr, x.port) == *f))
                    && s.ready_backends() == want_be
            })
        })?;
        Ok(all.into_iter().find(|s| s.name == name).expect("checked"))
    }

    /// Sends SIGTERM without waiting (see [`Self::stop`]); lets several processes stop at once.
    pub fn signal_stop(&mut self) {
        if self.try_exit().is_none()
            && let Some(c) = self.child.as_ref()
        {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Stops the process (SIGTERM, up to 10 s, then SIGKILL) and returns how it ended. The
    /// datapath stays attached until [`Self::down`] (or drop).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_exit() {
            return Ok(st);
        }
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("no xlb process"))?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                self.exit = Some(st);
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let st = child.wait()?;
                self.exit = Some(st);
                bail!("xlb run did not stop within 10 s of SIGTERM; killed");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `xlb down --iface ...` in the node.
    pub fn down(&mut self) -> Result<()> {
        self.down_done = true;
        let mut cmd = self.host.netns().command(&self.bin);
        cmd.arg("down");
        for i in &self.ifaces {
            cmd.args(["--iface", i]);
        }
        if let Some(p) = &self.pin_dir {
            cmd.arg("--pin-dir").arg(p);
        }
        let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                describe(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for XlbProcess<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            super::netns::log(&format!("lab: {e:#}"));
        }
        if thread::panicking() {
            super::netns::log(&format!(
                "lab: xlb log ({}):\n{}",
                self.log.display(),
                self.log_tail(4000)
            ));
        }
        if !self.down_done
            && let Err(e) = self.down()
        {
            super::netns::log(&format!("lab: {e:#}"));
        }
    }
}

/// `xlb run` on several nodes of one lab, all with the same manifests (every node runs the same
/// programs: edge nodes encapsulate to the backend's node, backend nodes decapsulate and
/// rewrite the replies). Dropping it stops every process (all at once) and runs `xlb down` on
/// every node.
pub struct XlbCluster<'lab> {
    procs: Vec<XlbProcess<'lab>>,
}

impl<'lab> XlbCluster<'lab> {
    /// Starts `xlb run --iface eth0 --node-name NODE --manifests DIR EXTRA...` on every node of
    /// the lab.
    pub fn start(
        lab: &'lab Lab,
        manifests: &Path,
        extra_args: &[String],
    ) -> Result<XlbCluster<'lab>> {
        let opts: Vec<XlbOptions> = lab
            .spec()
            .nodes
            .iter()
            .map(|n| {
                let mut o = XlbOptions::new(&n.name, manifests);
                o.extra_args = extra_args.to_vec();
                o
            })
            .collect();
        XlbCluster::start_with(lab, &opts)
    }

    /// Starts one `xlb run` per entry of `opts`. If one fails to start, those already started
    /// are stopped and taken down again.
    pub fn start_with(lab: &'lab Lab, opts: &[XlbOptions]) -> Result<XlbCluster<'lab>> {
        let mut cluster = XlbCluster { procs: Vec::new() };
        for o in opts {
            cluster.procs.push(XlbProcess::start(lab, o)?);
        }
        Ok(cluster)
    }

    /// Every process, in start order.
    pub fn nodes(&self) -> &[XlbProcess<'lab>] {
        &self.procs
    }

    /// The process on node `name`; panics if there is none (a bug in the caller).
    pub fn node(&self, name: &str) -> &XlbProcess<'lab> {
        self.procs
            .iter()
            .find(|p| p.host().name() == name)
            .unwrap_or_else(|| panic!("no xlb process on {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut XlbProcess<'lab> {
        self.procs
            .iter_mut()
            .find(|p| p.host().name() == name)
            .unwrap_or_else(|| panic!("no xlb process on {name}"))
    }

    /// Waits until every node shows Service `name` with at least `frontends` and exactly the
    /// ready `backends` (one deadline for all), then checks that all nodes agree on the
    /// Maglev table: the same size and the same ready backends with the same weights and slot
    /// counts. Returns each node's view, by node name.
    pub fn wait_for_service(
        &mut self,
        name: &str,
        frontends: &[(Option<Ipv4Addr>, u16)],
        backends: &[Ipv4Addr],
        timeout: Duration,
    ) -> Result<Vec<(String, ServiceStatus)>> {
        let deadline = Instant::now() + timeout;
        let mut views = Vec::new();
        for p in &mut self.procs {
            let left = deadline.saturating_duration_since(Instant::now());
            let st = p
                .wait_for_service(
                    name,
                    frontends,
                    backends,
                    left.max(Duration::from_millis(1)),
                )
                .with_context(|| format!("on {}", p.host().name()))?;
            views.push((p.host().name().to_string(), st));
        }
        let table = |s: &ServiceStatus| {
            let mut ready: Vec<(Ipv4Addr, u16, u32, u32)> = s
                .backends
                .iter()
                .filter(|b| b.is_ready())
                .map(|b| (b.addr, b.port, b.weight, b.slots))
                .collect();
            ready.sort();
            (s.table_size, ready)
        };
        if let Some((first, st)) = views.first() {
            let want = table(st);
            for (node, st) in &views[1..] {
                let got = table(st);
                if got != want {
                    bail!(
                        "nodes disagree on the Maglev table of {name}: {first} has (M, [(backend, port, weight, slots)]) {want:?}, {node} has {got:?}"
                    );
                }
            }
        }
        Ok(views)
    }

    /// The global counter `counter` on every node, by node name.
    pub fn counters(&self, counter: &str) -> Result<BTreeMap<String, u64>> {
        self.procs
            .iter()
            .map(|p| Ok((p.host().name().to_string(), p.counter(counter)?)))
            .collect()
    }

    /// Every node's non-zero global counters, one line per node (for failure messages).
    pub fn counters_summary(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                let counters = match p.stats() {
                    Ok(s) => s
                        .counters
                        .iter()
                        .filter(|(_, v)| **v > 0)
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    Err(e) => format!("({e:#})"),
                };
                format!("{}: {counters}\n", p.host().name())
            })
            .collect()
    }

    /// The last `max` bytes of every node's log, each under a heading.
    pub fn log_tails(&self, max: usize) -> String {
        self.procs
            .iter()
            .map(|p| {
                format!(
                    "--- xlb log of {} ({}) ---\n{}\n",
                    p.host().name(),
                    p.log_path().display(),
                    p.log_tail(max)
                )
            })
            .collect()
    }

    /// Stops every process: SIGTERM to all first, then waits for each. The datapaths stay
    /// attached until drop (`xlb down`). Returns each node's exit status, by node name.
    pub fn stop(&mut self) -> Vec<(String, Result<ExitStatus>)> {
        for p in &mut self.procs {
            p.signal_stop();
        }
        self.procs
            .iter_mut()
            .map(|p| (p.host().name().to_string(), p.stop()))
            .collect()
    }
}

impl Drop for XlbCluster<'_> {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.signal_stop();
        }
        // Each XlbProcess waits for its process and runs `xlb down` when dropped.
        self.procs.clear();
    }
}

/// What the lab asks of a Service port beyond what `xlb services` prints.
pub trait ServiceStatusExt {
    fn ready_backends(&self) -> BTreeSet<Ipv4Addr>;
    /// One line per frontend and backend, for error messages.
    fn summary(&self) -> serde_json::Value;
    /// The Maglev table xlb should have programmed for this Service: built from its backends
    /// (a backend that is not ready counts with weight 0) at its table size.
    fn maglev(&self) -> Result<Predictor>;
}

impl ServiceStatusExt for ServiceStatus {
    fn ready_backends(&self) -> BTreeSet<Ipv4Addr> {
        self.backends
            .iter()
            .filter(|b| b.is_ready())
            .map(|b| b.addr)
            .collect()
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "frontends": self.frontends.iter().map(|f| format!("{:?}:{} {}", f.addr, f.port, f.kind)).collect::<Vec<_>>(),
            "backends": self.backends.iter().map(|b| format!("{}:{} {} w{}", b.addr, b.port, b.state, b.weight)).collect::<Vec<_>>(),
        })
    }

    fn maglev(&self) -> Result<Predictor> {
        let backends: Vec<MaglevBackend> = self
            .backends
            .iter()
            .map(|b| {
                MaglevBackend::from_ipv4(b.addr, b.port, if b.is_ready() { b.weight } else { 0 })
            })
            .collect();
        let table = build_table(&backends, self.table_size).map_err(|e| anyhow!("{e}"))?;
        Ok(Predictor {
            table,
            proto: proto_number(&self.protocol)?,
        })
    }
}

fn proto_number(p: &str) -> Result<u8> {
    match p.to_ascii_uppercase().as_str() {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        other => bail!("unknown protocol {other:?}"),
    }
}

/// Predicts the backend of a new flow the way the datapath picks it:
/// `table[flow_hash(client, frontend, client_port, frontend_port, proto) % M]`.
#[derive(Debug)]
pub struct Predictor {
    table: MaglevTable,
    proto: u8,
}

impl Predictor {
    pub fn new(table: MaglevTable, proto: u8) -> Predictor {
        Predictor { table, proto }
    }

    /// The backend address for a flow from `client:client_port` to `frontend:frontend_port`
    /// (`frontend` is the address the client sent to: the VIP, or the node address for a
    /// NodePort).
    pub fn backend(
        &self,
        client: Ipv4Addr,
        client_port: u16,
        frontend: Ipv4Addr,
        frontend_port: u16,
    ) -> Option<Ipv4Addr> {
        let h = flow_hash(
            u32::from(client),
            u32::from(frontend),
            client_port,
            frontend_port,
            self.proto,
        );
        self.table.lookup(h).map(|b| b.ipv4())
    }

    pub fn table(&self) -> &MaglevTable {
        &self.table
    }

    /// A source port in `ports` whose flow lands on `want` (for steering a test connection).
    pub fn port_for(
        &self,
        want: Ipv4Addr,
        client: Ipv4Addr,
        frontend: Ipv4Addr,
        frontend_port: u16,
        ports: impl IntoIterator<Item = u16>,
    ) -> Option<u16> {
        ports
            .into_iter()
            .find(|&p| self.backend(client, p, frontend, frontend_port) == Some(want))
    }
}

/// Now, as Unix time in seconds: what `xlb services -o json` dates its census with.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
