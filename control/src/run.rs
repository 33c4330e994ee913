//! `xlb run` and `xlb down`: the process that keeps the datapath programmed.
use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::XdpMode;

use crate::{
    cli::{DownArgs, RunArgs, XdpModeArg},
    cluster::{Changes, ClusterState},
    compile::Compiler,
    conntrack,
    health::{HealthServer, Readiness},
    ifaddrs, kube_source, loader, metrics, pins,
    plan::NodeIdentity,
    reconcile::{self, Reconciler},
    source::{ConfigSource, KubeConfigSource, ManifestSource, Poll},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// How often drained backends are released and idle flows expired.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How soon a state that failed to apply is tried again (Kubernetes source).
const RETRY_AFTER: Duration = Duration::from_secs(5);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    lb_common::maglev::check_table_size(args.maglev_table_size)
        .map_err(|e| anyhow::anyhow!("--maglev-table-size {}: {e}", args.maglev_table_size))?;
    if args.conntrack_size == 0 {
        bail!("--conntrack-size must be at least 1");
    }
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
    let pin_dir = pins::resolve(args.pin.pin_dir.as_deref())?;
    pins::require_bpffs(&pin_dir)?;
    // Bound before anything is attached, so a bad or busy address fails fast.
    let metrics_listener = args.metrics_addr.map(metrics::bind).transpose()?;
    let status = metrics::RunStatus::new();
    let mode = match args.xdp_mode {
        XdpModeArg::Auto => XdpMode::Default,
        XdpModeArg::Native => XdpMode::Driver,
        XdpModeArg::Generic => XdpMode::Skb,
    };

    for dir in loader::remove_dead_pin_dirs(&pin_dir) {
        tracing::info!(
            pin_dir = %dir.display(),
            "removed the pins of a datapath whose interfaces are gone"
        );
    }
    let mut loaded = loader::load(&loader::LoadOptions {
        pin_dir: Some(pin_dir.clone()),
        conntrack_size: args.conntrack_size,
    })?;
    for iface in &args.ifaces {
        match loader::attach(&mut loaded.ebpf, &pin_dir, iface, mode)? {
            loader::Attachment::Attached => {
                tracing::info!(%iface, pin_dir = %pin_dir.display(), "attached")
            }
            loader::Attachment::Adopted => tracing::info!(
                %iface,
                pin_dir = %pin_dir.display(),
                "adopted the datapath already attached"
            ),
        }
    }
    let mut reconciler = Reconciler::adopt(loaded.maps)?;
    if let Some(listener) = metrics_listener {
        // Healthy while the loop ticks; generous, a large reload may take a while.
        let healthy_within = Duration::from_secs(60).max(Duration::from_millis(args.poll_ms) * 10);
        metrics::serve(listener, pin_dir.clone(), status.clone(), healthy_within)?;
    }

    // The Kubernetes watchers and the health endpoints run on a small background runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("xlb-io")
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    let readiness = Readiness::new();
    let mut health = HealthServer::new(
        runtime.handle().clone(),
        readiness.clone(),
        std::net::Ipv4Addr::UNSPECIFIED,
    );
    if let Some(addr) = args.health_addr {
        let bound = health.serve_probes(addr)?;
        tracing::info!(addr = %bound, "serving /readyz, /healthz and /livez");
    }
    let mut source: Box<dyn ConfigSource> = match &args.manifests {
        Some(path) => Box::new(ManifestSource::new(path.clone())),
        None => Box::new(KubeConfigSource::start(
            runtime.handle(),
            &kube_source::KubeOptions {
                kubeconfig: args.kubeconfig.clone(),
                ..Default::default()
            },
        )?),
    };
    tracing::info!(source = %source.describe(), "reading the cluster");
    let mut compiler = Compiler::new();

    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    let mut last_sweep = Instant::now();
    let mut generation = 0u64;
    // Changes not yet programmed: kept across a failed attempt (even one that failed before
    // compiling), so that the compiler sees every change once an attempt succeeds.
    let mut pending = Changes::default();
    // When the last attempt failed; the Kubernetes source retries after RETRY_AFTER.
    let mut failed_at: Option<Instant> = None;
    // The plan's warnings as last logged.
    let mut warned: BTreeSet<String> = BTreeSet::new();
    while !STOP.load(Ordering::SeqCst) {
        status.heartbeat();
        let since = match source.poll(Duration::from_millis(args.poll_ms)) {
            Poll::Unchanged => match failed_at {
                Some(at) if source.retries_failures() && at.elapsed() >= RETRY_AFTER => {
                    Some(Instant::now())
                }
                _ => None,
            },
            Poll::Failed(error) => {
                status.program_failed();
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
                    tracing::warn!(source = %source.describe(), "{w}");
                }
                pending.merge(changes);
                Some(since.unwrap_or_else(Instant::now))
            }
        };
        if let Some(since) = since {
            let started = Instant::now();
            match program(
                &args,
                source.state(),
                &pending,
                &mut compiler,
                &mut reconciler,
                &pin_dir,
            ) {
                Ok(report) => {
                    generation += 1;
                    failed_at = None;
                    pending = Changes::default();
                    let took = started.elapsed();
                    let plan = compiler.plan();
                    status.programmed(generation, took, &report, reconciler.snapshot());
                    tracing::info!(
                        generation,
                        service_ports = plan.services.len(),
                        warnings = plan.warnings.len(),
                        took_ms = took.as_secs_f64() * 1e3,
                        services_compiled = compiler.last_compiled(),
                        since_change_ms = since.elapsed().as_secs_f64() * 1e3,
                        frontends_written = report.frontends_written,
                        frontends_removed = report.frontends_removed,
                        tables_swapped = report.tables_swapped,
                        backends_written = report.backends_written,
                        backends_released = report.backends_released,
                        backends_draining = report.backends_draining,
                        src_ranges_changed = report.src_ranges_changed,
                        local_addrs_changed = report.local_addrs_changed,
                        "programmed"
                    );
                    // Each warning once, when it appears (the plan repeats them every
                    // generation while the input stays wrong), and a note when it is gone.
                    let (new, resolved) = warning_changes(&mut warned, &plan.warnings);
                    for w in new {
                        tracing::warn!(generation, "{w}");
                    }
                    for w in resolved {
                        tracing::info!(generation, "resolved: {w}");
                    }
                    for message in health.update(&plan.health_check_node_ports) {
                        tracing::warn!("{message}");
                    }
                    if !readiness.is_ready() {
                        readiness.set_ready();
                        tracing::info!("ready: the first full configuration is programmed");
                    }
                }
                Err(e) => {
                    failed_at = Some(Instant::now());
                    status.program_failed();
                    tracing::error!(
                        error = format!("{e:#}"),
                        "configuration not applied; keeping the last good state"
                    );
                }
            }
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            if let Err(e) = sweep(&mut reconciler, &status) {
                tracing::error!(error = format!("{e:#}"), "sweep failed");
            }
        }
    }
    tracing::info!(
        "stopping; the datapath stays attached (remove it with `xlb down --iface {}`)",
        args.ifaces.join(" --iface ")
    );
    Ok(())
}

/// Updates `shown` to `now` and returns the warnings that are new and those that are gone.
fn warning_changes(shown: &mut BTreeSet<String>, now: &[String]) -> (Vec<String>, Vec<String>) {
    let now: BTreeSet<String> = now.iter().cloned().collect();
    let new = now.difference(shown).cloned().collect();
    let resolved = shown.difference(&now).cloned().collect();
    *shown = now;
    (new, resolved)
}

/// Compile what changed → apply → publish names for the CLI.
fn program(
    args: &RunArgs,
    state: &ClusterState,
    changes: &Changes,
    compiler: &mut Compiler,
    reconciler: &mut Reconciler,
    pin_dir: &Path,
) -> anyhow::Result<reconcile::ApplyReport> {
    let mut extra = Vec::new();
    for iface in &args.ifaces {
        extra.extend(ifaddrs::ipv4_addrs(iface)?);
    }
    let tunnel = crate::tunnel::tunnel_plan(state, &args.node_name, args.tunnel_port, &extra);
    let node = NodeIdentity {
        node_name: args.node_name.clone(),
        table_size: args.maglev_table_size,
        extra_local_addrs: extra,
    };
    let plan = compiler.update(state, &node, changes);
    reconcile::check_capacity(plan)?;
    // Tunnel settings first: the tables may point at remote backends once applied.
    reconciler.apply_tunnel(&tunnel)?;
    for w in &tunnel.warnings {
        tracing::warn!("{w}");
    }
    let touched = compiler.last_touched().cloned();
    let report = reconciler.apply_changed(compiler.plan(), touched.as_ref())?;
    write_state(pin_dir, reconciler)?;
    Ok(report)
}

fn write_state(pin_dir: &Path, reconciler: &Reconciler) -> anyhow::Result<()> {
    let path = pins::state_file(pin_dir);
    let dir = path.parent().context("state file has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    // Compact: rewritten after every change, and pretty-printing 10,000 Services doubled the
    // time; `xlb services -o json` is the readable view.
    fs::write(&tmp, serde_json::to_vec(reconciler.snapshot())?)?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn sweep(reconciler: &mut Reconciler, status: &metrics::RunStatus) -> anyhow::Result<()> {
    let expired = conntrack::expire(&mut reconciler.maps)?;
    let planned = reconciler.planned_backends();
    let (released, draining) = reconciler.release_backends(&planned)?;
    status.swept(expired, released, draining);
    if expired + released > 0 {
        tracing::info!(
            expired_flows = expired,
            released_backends = released,
            draining_backends = draining,
            "sweep"
        );
    }
    Ok(())
}

pub fn down(args: &DownArgs) -> anyhow::Result<()> {
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
