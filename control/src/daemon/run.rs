//! `xlb run` and `xlb down`: the process that keeps the datapath programmed.
use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::{Path, PathBuf},
    sync::Arc,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{Ebpf, programs::XdpMode};
use tokio::runtime::Runtime;

use crate::{
    cli::args::{DownArgs, MetricsDetailArg, PodDeliveryArg, RunArgs, TcAttachArg, XdpModeArg},
    compile::Compiler,
    compile::plan::NodeIdentity,
    daemon::hops::HopWatch,
    daemon::links::LinkWatch,
    daemon::state::StateWriter,
    datapath::capacity::Capacity,
    datapath::conntrack,
    datapath::loader,
    datapath::pins,
    datapath::pods,
    datapath::reconcile::{ApplyReport, Reconciler},
    datapath::tc_attach::{self, TcAttach, TcAttachRequest},
    datapath::uninstall,
    datapath::upgrade,
    observe::census::{self, CensusOptions},
    observe::health::{HealthServer, Readiness},
    observe::metrics::{self, RunStatus},
    observe::series::{Detail, MetricsOptions},
    source::cluster::{Changes, ClusterState},
    source::kube,
    source::{ConfigSource, KubeConfigSource, ManifestSource, Poll},
    sys::ifaddrs,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// How often reverse-NAT pairs kept for a live flow are looked at again (a walk of
/// `XLB_REVNAT`, only while some are kept).
const PAIRS_EVERY: Duration = Duration::from_secs(10);

/// A generation that compiled this many Services or more gives its freed memory back to the
/// kernel afterwards (smaller ones reuse what is free).
const TRIM_AFTER_COMPILED: usize = 1000;

/// How soon a state that failed to apply is tried again (Kubernetes source).
const RETRY_AFTER: Duration = Duration::from_secs(5);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    validate(&args)?;
    raise_file_limit();
    let pin_dir = pins::resolve(args.pin.pin_dir.as_deref())?;
    pins::require_bpffs(&pin_dir)?;
    let _run_lock = pins::hold_run_lock(&pin_dir)?;
    // Bound before anything is attached, so a bad or busy address fails fast.
    let metrics_listener = args.metrics_addr.map(metrics::bind).transpose()?;
    let status = RunStatus::new(Readiness::with_live_within(live_within(args.poll_ms)));
    // The manifests are read while the datapath loads (the verifier's time), not after it.
    let early = args.manifests.clone().map(read_early).transpose()?;
    let Attached {
        reconciler,
        ebpf,
        ifaces,
        tc,
    } = attach(&args, &pin_dir)?;
    let links = LinkWatch::new(
        &ifaces,
        pin_dir.clone(),
        xdp_mode(&args),
        tc,
        pod_delivery(args.pod_delivery),
        &status,
    );
    let runtime = io_runtime()?;
    let health = start_servers(&args, &runtime, metrics_listener, &pin_dir, &status)?;
    // The connection counts every reader shows, from a paced walk of its own.
    let census_status = status.clone();
    census::spawn(
        pin_dir.clone(),
        CensusOptions {
            per_s: args.census_rate,
            interval: args.census_interval,
        },
        move |c| census_status.census_taken(c),
    )?;
    let (source, primed) = match early {
        Some(reading) => {
            let (source, first) = reading
                .join()
                .map_err(|_| anyhow::anyhow!("the thread reading the manifests panicked"))?;
            (Box::new(source) as Box<dyn ConfigSource>, Some(first))
        }
        None => (start_source(&args, &runtime)?, None),
    };
    tracing::info!(source = %source.describe(), "reading the cluster");
    stop_on_signals();

    let mut daemon = Daemon {
        args,
        pin_dir,
        source,
        primed,
        compiler: Compiler::new(),
        reconciler,
        ebpf,
        links,
        hops: HopWatch::new(),
        status,
        health,
        generation: 0,
        pending: Changes::default(),
        failed_at: None,
        warned: BTreeSet::new(),
        swept_census: 0,
        last_pairs: Instant::now(),
        state_file: StateWriter::default(),
    };
    while !STOP.load(Ordering::SeqCst) {
        daemon.tick();
    }
    tracing::info!(
        "stopping; the datapath stays attached (remove it with `xlb down --iface {}`)",
        daemon.args.ifaces.join(" --iface ")
    );
    Ok(())
}

/// What `--pod-delivery` asks for.
fn pod_delivery(arg: PodDeliveryArg) -> pods::Delivery {
    use lb_common::maps::{DELIVER_NEIGH, DELIVER_PEER, DELIVER_REDIRECT, DELIVER_XDP};
    pods::Delivery::Fixed(match arg {
        PodDeliveryArg::Auto => return pods::Delivery::Auto,
        PodDeliveryArg::Peer => Some(DELIVER_PEER),
        PodDeliveryArg::Redirect => Some(DELIVER_REDIRECT),
        PodDeliveryArg::Neigh => Some(DELIVER_NEIGH),
        PodDeliveryArg::Xdp => Some(DELIVER_XDP),
        PodDeliveryArg::Kernel => None,
    })
}

/// Refuses arguments that cannot work, before anything is touched.
fn validate(args: &RunArgs) -> anyhow::Result<()> {
    lb_common::maglev::check_table_size(args.maglev_table_size)
        .map_err(|e| anyhow::anyhow!("--maglev-table-size {}: {e}", args.maglev_table_size))?;
    if args.conntrack_size == 0 {
        bail!("--conntrack-size must be at least 1");
    }
    capacity(args).validate()?;
    if let Some(manifests) = &args.manifests
        && !manifests.exists()
    {
        bail!(
            "--manifests {}: no such file or directory",
            manifests.display()
        );
    }
    for iface in &args.ifaces {
        loader::ifindex(iface)?;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xlb run needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to load and attach XDP)");
    }
    Ok(())
}

/// Lets the process open as many files as the system allows it: each new Maglev table is an fd
/// until it is swapped in, and a full sync creates one per Service port.
fn raise_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The capacities `--max-services`, `--max-frontends` and `--max-backends` ask for.
fn capacity(args: &RunArgs) -> Capacity {
    Capacity {
        services: args.max_services,
        frontends: args.max_frontends,
        backends: args.max_backends,
    }
}

/// How long the run loop may go without a tick before `/livez` fails: generous, a large
/// reload may take a while.
fn live_within(poll_ms: u64) -> Duration {
    Duration::from_secs(60).max(Duration::from_millis(poll_ms) * 10)
}

fn xdp_mode(args: &RunArgs) -> XdpMode {
    match args.xdp_mode {
        XdpModeArg::Auto => XdpMode::Default,
        XdpModeArg::Native => XdpMode::Driver,
        XdpModeArg::Generic => XdpMode::Skb,
    }
}

/// The datapath as `xlb run` holds it: the maps behind the reconciler, the loaded programs
/// (kept to attach again to an interface that comes back), and each interface with the index
/// attached to.
struct Attached {
    reconciler: Reconciler,
    ebpf: Ebpf,
    ifaces: Vec<(String, u32)>,
    /// How the egress program is attached, chosen once at start.
    tc: TcAttach,
}

/// Loads the datapath (or adopts the pinned one) and attaches it to every interface.
fn attach(args: &RunArgs, pin_dir: &Path) -> anyhow::Result<Attached> {
    let mode = xdp_mode(args);
    let tc = tc_attach_mode(args.tc_attach)?;
    for dir in loader::remove_dead_pin_dirs(pin_dir) {
        tracing::info!(
            pin_dir = %dir.display(),
            "removed the pins of a datapath whose interfaces are gone"
        );
    }
    let takeover = upgrade::prepare(pin_dir)?;
    if let Some((t, carried)) = &takeover {
        tracing::info!(
            from = %t.old_dir().display(),
            shared = ?carried.shared,
            empty = ?carried.empty,
            "taking over the datapath of map layout {}",
            t.old_version()
        );
    }
    let mut loaded = loader::load_sized(
        &loader::LoadOptions {
            pin_dir: Some(pin_dir.to_path_buf()),
            conntrack_size: args.conntrack_size,
        },
        &capacity(args),
    )?;
    for difference in capacity(args).differences(&loaded.capacity) {
        tracing::warn!("{difference}");
    }
    let ct_size = conntrack::capacity(&loaded.maps)?;
    if ct_size != args.conntrack_size {
        tracing::warn!(
            "--conntrack-size is {}, but the running datapath's connection table was created \
             with {ct_size} entries and keeps that size (its connections are kept); the new \
             value takes effect after `xlb down` (which drops them) and a new start",
            args.conntrack_size
        );
    }
    // Every map the new programs read is complete before the first link runs them.
    if let Some((t, _)) = &takeover {
        let converted = t.migrate(pin_dir)?;
        let links = t.move_links(pin_dir)?;
        tracing::info!(
            ?converted,
            links,
            "migrated the entries whose record changed"
        );
    }
    let replaced = loader::replace_programs(&mut loaded.ebpf, pin_dir)?;
    if !replaced.is_empty() {
        tracing::info!(links = ?replaced, "replaced the programs in place (link update)");
    }
    if let Some((t, _)) = takeover {
        let old = t.old_dir().to_path_buf();
        let late = t.finish(pin_dir)?;
        tracing::info!(
            late_entries = late,
            removed = %old.display(),
            "took over the datapath; removed the old layout's pins"
        );
    }
    let mut ifaces = Vec::new();
    for iface in &args.ifaces {
        // Looked up first: an interface re-created during the attach is then seen as changed.
        ifaces.push((iface.clone(), loader::ifindex(iface)?));
        match loader::attach(&mut loaded.ebpf, pin_dir, iface, mode, tc)? {
            loader::Attachment::Attached => {
                tracing::info!(%iface, pin_dir = %pin_dir.display(), tc_attach = tc.name(), "attached")
            }
            loader::Attachment::Adopted => tracing::info!(
                %iface,
                pin_dir = %pin_dir.display(),
                tc_attach = tc.name(),
                "adopted the datapath already attached"
            ),
        }
    }
    let mut reconciler = Reconciler::adopt(loaded.maps)?;
    reconciler.set_syn_guard_rate(args.syn_guard_rate)?;
    Ok(Attached {
        reconciler,
        ebpf: loaded.ebpf,
        ifaces,
        tc,
    })
}

/// How the TC program is attached, from `--tc-attach` and what the kernel has; logged once.
fn tc_attach_mode(arg: TcAttachArg) -> anyhow::Result<TcAttach> {
    let request = match arg {
        TcAttachArg::Auto => TcAttachRequest::Auto,
        TcAttachArg::Tcx => TcAttachRequest::Tcx,
        TcAttachArg::Legacy => TcAttachRequest::Legacy,
    };
    let tcx = tc_attach::tcx_available()?;
    let kernel = kernel_release();
    let tc = tc_attach::choose(request, tcx).with_context(|| format!("kernel {kernel}"))?;
    tracing::info!(
        %kernel,
        tcx_available = tcx,
        tc_attach = tc.name(),
        "egress program attach mode"
    );
    Ok(tc)
}

/// `uname -r`.
fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The small background runtime of the Kubernetes watchers and the HTTP servers.
fn io_runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("xlb-io")
        .enable_all()
        .build()
        .context("starting the I/O runtime")
}

/// Serves the metrics (`--metrics-addr`) and the probes (`--health-addr`); returns the health
/// server, which also keeps the `healthCheckNodePort` listeners.
fn start_servers(
    args: &RunArgs,
    runtime: &Runtime,
    metrics_listener: Option<TcpListener>,
    pin_dir: &Path,
    status: &Arc<RunStatus>,
) -> anyhow::Result<HealthServer> {
    if let Some(listener) = metrics_listener {
        metrics::serve(
            runtime.handle(),
            listener,
            pin_dir.to_path_buf(),
            status.clone(),
            metrics_options(args),
        )?;
    }
    let mut health = HealthServer::new(
        runtime.handle().clone(),
        status.readiness().clone(),
        std::net::Ipv4Addr::UNSPECIFIED,
    );
    if let Some(addr) = args.health_addr {
        let bound = health.serve_probes(addr)?;
        tracing::info!(addr = %bound, "serving /readyz, /healthz and /livez");
    }
    Ok(health)
}

/// What `--metrics-detail` and `--metrics-max-series` ask of `/metrics`.
fn metrics_options(args: &RunArgs) -> MetricsOptions {
    MetricsOptions {
        detail: match args.metrics_detail {
            MetricsDetailArg::Backends => Detail::Backends,
            MetricsDetailArg::Frontends => Detail::Frontends,
            MetricsDetailArg::None => Detail::None,
        },
        max_series: args.metrics_max_series,
    }
}

/// Starts reading the manifests at `path` on a thread of its own: the source and its first poll.
fn read_early(path: PathBuf) -> anyhow::Result<std::thread::JoinHandle<(ManifestSource, Poll)>> {
    std::thread::Builder::new()
        .name("xlb-manifests".into())
        .spawn(move || {
            let mut source = ManifestSource::new(path);
            let first = source.poll(Duration::ZERO);
            (source, first)
        })
        .context("starting the thread that reads the manifests")
}

/// The manifests (`--manifests`) or the Kubernetes API.
fn start_source(args: &RunArgs, runtime: &Runtime) -> anyhow::Result<Box<dyn ConfigSource>> {
    Ok(match &args.manifests {
        Some(path) => Box::new(ManifestSource::new(path.clone())),
        None => Box::new(KubeConfigSource::start(
            runtime.handle(),
            &kube::KubeOptions {
                kubeconfig: args.kubeconfig.clone(),
                ..Default::default()
            },
        )?),
    })
}

fn stop_on_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// The run loop's state.
struct Daemon {
    args: RunArgs,
    pin_dir: PathBuf,
    source: Box<dyn ConfigSource>,
    /// The source's first poll, taken while the datapath loaded.
    primed: Option<Poll>,
    compiler: Compiler,
    reconciler: Reconciler,
    /// The loaded programs, attached again to an interface that comes back.
    ebpf: Ebpf,
    links: LinkWatch,
    /// Follows the neighbour table for the remote nodes' prepared next hops.
    hops: HopWatch,
    status: Arc<RunStatus>,
    health: HealthServer,
    generation: u64,
    /// Changes not yet programmed: kept across a failed attempt (even one that failed before
    /// compiling), so that the compiler sees every change once an attempt succeeds.
    pending: Changes,
    /// When the last attempt failed; the Kubernetes source retries after [`RETRY_AFTER`].
    failed_at: Option<Instant>,
    /// The plan's warnings as last logged.
    warned: BTreeSet<String>,
    /// The last connection census drained backends were released against.
    swept_census: u64,
    last_pairs: Instant,
    /// Writes the state file for the CLI, serialising only the changed Service ports.
    state_file: StateWriter,
}

impl Daemon {
    /// One turn: follow the interfaces → poll the source → program what changed → report →
    /// sweep when due.
    fn tick(&mut self) {
        self.status.heartbeat();
        let relinked = self.links.tick(&mut self.ebpf, &self.status);
        self.hops.tick(&mut self.reconciler);
        // After a re-attach the interface's addresses are read again (a program with no
        // change); before the first full sync there is nothing to redo.
        let redo = (relinked && self.generation > 0).then(Instant::now);
        if let Some(since) = self.poll().or(redo) {
            let started = Instant::now();
            match program(
                &self.args,
                self.source.state(),
                &self.pending,
                &mut self.compiler,
                &mut self.reconciler,
                &self.pin_dir,
                &mut self.state_file,
            ) {
                Ok((report, applied)) => {
                    let took = started.elapsed();
                    self.status
                        .observe_programming(took, applied, &self.pending.triggers);
                    self.programmed(&report, took, since)
                }
                Err(e) => {
                    self.failed_at = Some(Instant::now());
                    self.status.program_failed();
                    tracing::error!(
                        error = format!("{e:#}"),
                        "configuration not applied; keeping the last good state"
                    );
                }
            }
        }
        // The census thread walks the table and expires idle flows; what is left here is
        // proportional to the draining backends, never to the table.
        if let Some((n, census)) = self.status.census_after(self.swept_census) {
            self.swept_census = n;
            if let Err(e) = release(&mut self.reconciler, &self.status, &census) {
                tracing::error!(
                    error = format!("{e:#}"),
                    "releasing drained backends failed"
                );
            }
        }
        if self.last_pairs.elapsed() >= PAIRS_EVERY {
            self.last_pairs = Instant::now();
            match self.reconciler.release_local_backends() {
                Ok((0, _)) => {}
                Ok((released, kept)) => tracing::info!(
                    released_tunnel_pairs = released,
                    kept_tunnel_pairs = kept,
                    "released tunnel pairs no live flow uses"
                ),
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "releasing tunnel pairs failed")
                }
            }
        }
    }

    /// Waits up to `--poll-ms` for the source. Returns when the change to program happened
    /// if there is something to program: a change, or a failed state due for a retry.
    fn poll(&mut self) -> Option<Instant> {
        let polled = match self.primed.take() {
            Some(first) => first,
            None => self.source.poll(Duration::from_millis(self.args.poll_ms)),
        };
        match polled {
            Poll::Unchanged => match self.failed_at {
                Some(at) if self.source.retries_failures() && at.elapsed() >= RETRY_AFTER => {
                    Some(Instant::now())
                }
                _ => None,
            },
            Poll::Failed(error) => {
                self.status.program_failed();
                tracing::error!(
                    error,
                    "configuration not applied; keeping the last good state"
                );
                None
            }
            Poll::Changed {
                changes,
                since,
                warnings,
            } => {
                for w in &warnings {
                    tracing::warn!(source = %self.source.describe(), "{w}");
                }
                self.pending.merge(changes);
                Some(since.unwrap_or_else(Instant::now))
            }
        }
    }

    /// A generation is in the maps: metrics, the log, warnings, the health-check ports.
    fn programmed(&mut self, report: &ApplyReport, took: Duration, since: Instant) {
        self.generation += 1;
        let generation = self.generation;
        self.failed_at = None;
        self.pending = Changes::default();
        let first = self
            .status
            .programmed(generation, took, report, self.reconciler.snapshot());
        let plan = self.compiler.plan();
        tracing::info!(
            generation,
            service_ports = plan.services.len(),
            warnings = plan.warnings.len(),
            took_ms = took.as_secs_f64() * 1e3,
            services_compiled = self.compiler.last_compiled(),
            since_change_ms = since.elapsed().as_secs_f64() * 1e3,
            frontends_written = report.frontends_written,
            frontends_removed = report.frontends_removed,
            tables_swapped = report.tables_swapped,
            tables_patched = report.tables_patched,
            backends_written = report.backends_written,
            backends_released = report.backends_released,
            backends_draining = report.backends_draining,
            src_ranges_changed = report.src_ranges_changed,
            local_addrs_changed = report.local_addrs_changed,
            local_backends_changed = report.local_backends_changed,
            "programmed"
        );
        // Each warning once, when it appears (the plan repeats them every generation while the
        // input stays wrong), and a note when it is gone.
        let (new, resolved) = warning_changes(&mut self.warned, &plan.warnings);
        for w in new {
            tracing::warn!(generation, "{w}");
        }
        for w in resolved {
            tracing::info!(generation, "resolved: {w}");
        }
        for message in self.health.update(&plan.health_check_node_ports) {
            tracing::warn!("{message}");
        }
        if first {
            tracing::info!("ready: the first full configuration is programmed");
        }
        if first || self.compiler.last_compiled() >= TRIM_AFTER_COMPILED {
            crate::sys::memory::release_free_memory();
        }
    }
}

/// Updates `shown` to `now` and returns the warnings that are new and those that are gone.
fn warning_changes(shown: &mut BTreeSet<String>, now: &[String]) -> (Vec<String>, Vec<String>) {
    let now: BTreeSet<String> = now.iter().cloned().collect();
    let new = now.difference(shown).cloned().collect();
    let resolved = shown.difference(&now).cloned().collect();
    *shown = now;
    (new, resolved)
}

/// Compile what changed → apply → publish names for the CLI. Returns what the apply changed
/// and how long its map writes took.
fn program(
    args: &RunArgs,
    state: &ClusterState,
    changes: &Changes,
    compiler: &mut Compiler,
    reconciler: &mut Reconciler,
    pin_dir: &Path,
    state_file: &mut StateWriter,
) -> anyhow::Result<(ApplyReport, Duration)> {
    let mut extra = Vec::new();
    for iface in &args.ifaces {
        extra.extend(ifaddrs::ipv4_addrs(iface)?);
    }
    let tunnel =
        crate::compile::tunnel::tunnel_plan(state, &args.node_name, args.tunnel_port, &extra);
    let node = NodeIdentity {
        node_name: args.node_name.clone(),
        table_size: args.maglev_table_size,
        extra_local_addrs: extra,
    };
    compiler.update(state, &node, changes);
    let touched = compiler.last_touched().cloned();
    // A plan that does not fit changes nothing, the tunnel settings included.
    reconciler.check_capacity(compiler.plan(), touched.as_ref())?;
    // Tunnel settings first: the tables may point at remote backends once applied.
    let applying = Instant::now();
    reconciler.apply_tunnel(&tunnel)?;
    for w in &tunnel.warnings {
        tracing::warn!("{w}");
    }
    let report = reconciler.apply_changed(compiler.plan(), touched.as_ref())?;
    let applied = applying.elapsed();
    state_file.write(pin_dir, reconciler.snapshot())?;
    Ok((report, applied))
}

/// Releases the drained backends no flow of `census` points at (see
/// [`Reconciler::release_unreferenced`]), after the census expired the idle flows.
fn release(
    reconciler: &mut Reconciler,
    status: &RunStatus,
    census: &census::Census,
) -> anyhow::Result<()> {
    let (released, draining) =
        reconciler.release_unreferenced(&census.referenced, census.started_ns)?;
    status.swept(released, draining);
    if census.expired as usize + released > 0 {
        tracing::info!(
            expired_flows = census.expired,
            released_backends = released,
            draining_backends = draining,
            "sweep"
        );
    }
    Ok(())
}

pub fn down(args: &DownArgs) -> anyhow::Result<()> {
    if args.all {
        return down_all(args);
    }
    let pin_dir = pins::resolve(args.pin.pin_dir.as_deref())?;
    pins::require_bpffs(&pin_dir)?;
    let mut any = false;
    for iface in &args.ifaces {
        if loader::down(&pin_dir, iface)? {
            tracing::info!(%iface, "detached");
            any = true;
        }
    }
    if !any {
        bail!(
            "nothing attached to {} by xlb in this network namespace (pin dir {})",
            args.ifaces.join(", "),
            pin_dir.display()
        );
    }
    Ok(())
}

/// `xlb down --all`: every pin, link and state file of this namespace (or of `--pin-dir`).
fn down_all(args: &DownArgs) -> anyhow::Result<()> {
    let scope = uninstall::Scope::resolve(args.pin.pin_dir.as_deref())?;
    pins::require_bpffs(scope.root())?;
    let removed = uninstall::remove_all(&scope).map_err(|e| {
        if format!("{e:#}").contains("Permission denied") {
            e.context("xlb down --all needs root (and CAP_BPF to open the pinned links)")
        } else {
            e
        }
    })?;
    for link in &removed.links {
        tracing::info!(%link, "detached");
    }
    for dir in &removed.pin_dirs {
        tracing::info!(pin_dir = %dir.display(), "removed the pins");
    }
    for dir in &removed.state_dirs {
        tracing::info!(state = %dir.display(), "removed the state");
    }
    for what in &removed.detached {
        tracing::info!(
            attachment = %what,
            "detached an xlb program pinned outside this namespace's pin directory"
        );
    }
    if removed.is_empty() {
        tracing::info!(
            pin_dir = %scope.root().display(),
            "nothing of xlb's left in this network namespace"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_reported_once_and_their_resolution_too() {
        let mut shown = BTreeSet::new();
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            warning_changes(&mut shown, &w(&["a", "b"])),
            (w(&["a", "b"]), w(&[]))
        );
        assert_eq!(
            warning_changes(&mut shown, &w(&["b", "a"])),
            (w(&[]), w(&[]))
        );
        assert_eq!(
            warning_changes(&mut shown, &w(&["b", "c"])),
            (w(&["c"]), w(&["a"]))
        );
        assert_eq!(warning_changes(&mut shown, &[]), (w(&[]), w(&["b", "c"])));
    }
}
