//! `xlb run` and `xlb down`: the process that keeps the datapath programmed.
use std::{
    fs,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::XdpMode;

use crate::{
    cli::{DownArgs, RunArgs, XdpModeArg},
    compile::compile,
    conntrack, ifaddrs, loader, manifest, pins,
    plan::NodeIdentity,
    reconcile::{self, Reconciler},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// How often drained backends are released and idle flows expired.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

fn log(msg: impl AsRef<str>) {
    eprintln!("xlb: {}", msg.as_ref());
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    lb_common::maglev::check_table_size(args.maglev_table_size)
        .map_err(|e| anyhow::anyhow!("--maglev-table-size {}: {e}", args.maglev_table_size))?;
    if args.conntrack_size == 0 {
        bail!("--conntrack-size must be at least 1");
    }
    if !args.manifests.exists() {
        bail!(
            "--manifests {}: no such file or directory",
            args.manifests.display()
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
    let mode = match args.xdp_mode {
        XdpModeArg::Auto => XdpMode::Default,
        XdpModeArg::Native => XdpMode::Driver,
        XdpModeArg::Generic => XdpMode::Skb,
    };

    for dir in loader::remove_dead_pin_dirs(&pin_dir) {
        log(format!(
            "removed the pins of a datapath whose interfaces are gone: {}",
            dir.display()
        ));
    }
    let mut loaded = loader::load(&loader::LoadOptions {
        pin_dir: Some(pin_dir.clone()),
        conntrack_size: args.conntrack_size,
    })?;
    for iface in &args.ifaces {
        match loader::attach(&mut loaded.ebpf, &pin_dir, iface, mode)? {
            loader::Attachment::Attached => log(format!("attached to {iface}")),
            loader::Attachment::Adopted => {
                log(format!("adopted the datapath already attached to {iface}"))
            }
        }
    }
    let mut reconciler = Reconciler::adopt(loaded.maps)?;

    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    let mut last_fp: Option<manifest::Fingerprint> = None;
    let mut last_plan = None;
    let mut last_sweep = Instant::now();
    let mut generation = 0u64;
    while !STOP.load(Ordering::SeqCst) {
        let fp = manifest::fingerprint(&args.manifests);
        let changed = match (&fp, &last_fp) {
            (Ok(fp), Some(last)) => fp != last,
            (Ok(_), None) => true,
            (Err(e), _) => {
                if last_fp.is_some() {
                    log(format!(
                        "cannot read manifests ({e}); keeping the last good state"
                    ));
                    last_fp = None;
                }
                false
            }
        };
        if changed {
            last_fp = fp.ok();
            match program(&args, &mut reconciler, &pin_dir) {
                Ok((plan, report)) => {
                    generation += 1;
                    log(format!(
                        "programmed generation {generation}: {} service ports, {} \
                         ({} warnings)",
                        plan.services.len(),
                        serde_json::to_string(&report)?,
                        plan.warnings.len()
                    ));
                    for w in &plan.warnings {
                        log(format!("warning: {w}"));
                    }
                    last_plan = Some(plan);
                }
                Err(e) => log(format!("{e:#}; keeping the last good state")),
            }
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            if let Err(e) = sweep(&mut reconciler) {
                log(format!("sweep failed: {e:#}"));
            }
        }
        std::thread::sleep(Duration::from_millis(args.poll_ms));
    }
    let _ = last_plan;
    log(format!(
        "stopping; the datapath stays attached (remove it with `xlb down --iface {}`)",
        args.ifaces.join(" --iface ")
    ));
    Ok(())
}

/// Load → compile → apply → publish names for the CLI.
fn program(
    args: &RunArgs,
    reconciler: &mut Reconciler,
    pin_dir: &Path,
) -> anyhow::Result<(crate::plan::DatapathPlan, reconcile::ApplyReport)> {
    let loaded = manifest::load(&args.manifests)?;
    for w in &loaded.warnings {
        log(format!("manifest: {w}"));
    }
    let mut extra = Vec::new();
    for iface in &args.ifaces {
        extra.extend(ifaddrs::ipv4_addrs(iface)?);
    }
    let tunnel =
        crate::tunnel::tunnel_plan(&loaded.state, &args.node_name, args.tunnel_port, &extra);
    let node = NodeIdentity {
        node_name: args.node_name.clone(),
        table_size: args.maglev_table_size,
        extra_local_addrs: extra,
    };
    let plan = compile(&loaded.state, &node);
    reconcile::check_capacity(&plan)?;
    // Tunnel settings first: tables may point at remote backends once applied.
    reconciler.apply_tunnel(&tunnel)?;
    for w in &tunnel.warnings {
        log(format!("warning: {w}"));
    }
    let report = reconciler.apply(&plan)?;
    write_state(pin_dir, reconciler)?;
    Ok((plan, report))
}

fn write_state(pin_dir: &Path, reconciler: &Reconciler) -> anyhow::Result<()> {
    let path = pins::state_file(pin_dir);
    let dir = path.parent().context("state file has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(reconciler.snapshot())?)?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn sweep(reconciler: &mut Reconciler) -> anyhow::Result<()> {
    let expired = conntrack::expire(&mut reconciler.maps)?;
    let planned = reconciler.planned_backends();
    let (released, draining) = reconciler.release_backends(&planned)?;
    if expired + released > 0 {
        log(format!(
            "sweep: {expired} idle flows expired, {released} drained backends released, \
             {draining} still draining"
        ));
    }
    Ok(())
}

pub fn down(args: &DownArgs) -> anyhow::Result<()> {
    let pin_dir = pins::resolve(args.pin.pin_dir.as_deref())?;
    pins::require_bpffs(&pin_dir)?;
    let mut any = false;
    for iface in &args.ifaces {
        if loader::down(&pin_dir, iface)? {
            log(format!("detached from {iface}"));
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
