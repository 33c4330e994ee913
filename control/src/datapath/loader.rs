//! Loading the kernel programs, attaching them to interfaces, and adopting or removing what an
//! earlier `xlb run` left attached.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use lb_common::maps::{
    ALL_MAPS, MAP_AFFINITY, MAP_CONNTRACK, MAP_REVNAT, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP,
};

use crate::{
    datapath::capacity::Capacity,
    datapath::egress,
    datapath::maps::Maps,
    datapath::pins,
    datapath::tc_attach::{self, TcAttach},
};

/// The kernel object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-xdp"));

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin maps here (created on first load, reused afterwards). `None`: private maps, for
    /// packet tests.
    pub pin_dir: Option<PathBuf>,
    pub conntrack_size: u32,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
    /// What the maps hold: `capacity` of [`load_sized`], or the sizes of maps pinned by an
    /// earlier run, which a load reuses as they are.
    pub capacity: Capacity,
}

/// Loads both programs and opens (or creates) their maps, at the default capacities.
pub fn load(opts: &LoadOptions) -> anyhow::Result<Loaded> {
    load_sized(opts, &Capacity::default())
}

/// [`load`] with the maps user space writes created at `capacity` (`xlb run --max-*`). Maps
/// already pinned keep their size: [`Loaded::capacity`] is what they hold.
pub fn load_sized(opts: &LoadOptions, capacity: &Capacity) -> anyhow::Result<Loaded> {
    if OBJECT.is_empty() {
        bail!("this xlb binary was built without its kernel programs (AYA_BUILD_SKIP was set)");
    }
    let mut loader = EbpfLoader::new();
    if let Some(dir) = &opts.pin_dir {
        pins::require_bpffs(dir)?;
        let maps_dir = pins::maps_dir(dir);
        fs::create_dir_all(&maps_dir)
            .with_context(|| format!("creating pin directory {}", maps_dir.display()))?;
        for name in ALL_MAPS {
            loader.map_pin_path(name, pins::map_pin(dir, name));
        }
    }
    loader.map_max_entries(MAP_CONNTRACK, opts.conntrack_size);
    loader.map_max_entries(MAP_REVNAT, opts.conntrack_size);
    loader.map_max_entries(MAP_AFFINITY, opts.conntrack_size);
    for (name, entries, _) in capacity.sized_maps() {
        loader.map_max_entries(name, entries);
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| privilege_hint(e.into()))?;
    xdp_program(&mut ebpf)?
        .load()
        .context("loading the XDP program")?;
    tc_program(&mut ebpf)?
        .load()
        .context("loading the TC egress program")?;
    tc_ingress_program(&mut ebpf)?
        .load()
        .context("loading the TC ingress program")?;
    let maps = Maps::from_ebpf(&mut ebpf)?;
    let capacity = Capacity::of(&maps)?;
    Ok(Loaded {
        ebpf,
        maps,
        capacity,
    })
}

fn privilege_hint(e: anyhow::Error) -> anyhow::Error {
    let msg = format!("{e:#}");
    if msg.contains("Operation not permitted") || msg.contains("EPERM") {
        e.context("loading the kernel programs needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)")
    } else {
        e.context("loading the kernel programs")
    }
}

pub fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(PROG_XDP)
        .context("object has no XDP program")?
        .try_into()?)
}

pub fn tc_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    Ok(ebpf
        .program_mut(PROG_TC_EGRESS)
        .context("object has no TC program")?
        .try_into()?)
}

pub fn tc_ingress_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    Ok(ebpf
        .program_mut(PROG_TC_INGRESS)
        .context("object has no TC ingress program")?
        .try_into()?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Attached now, link pinned.
    Attached,
    /// A pinned link from an earlier run is still in place and was kept.
    Adopted,
}

/// Puts this build's programs into every link pinned under `pin_dir` that is attached in this
/// namespace and runs another program (an earlier build's, or an earlier load's of this one):
/// `BPF_LINK_UPDATE` swaps the program atomically, so each packet runs either the old program
/// or the new one, and the interface never goes without. Returns the links updated.
pub fn replace_programs(ebpf: &mut Ebpf, pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut updated = Vec::new();
    let Ok(entries) = fs::read_dir(pins::links_dir(pin_dir)) else {
        return Ok(updated);
    };
    let xdp_id = xdp_program(ebpf)?.info()?.id();
    let tc_id = tc_program(ebpf)?.info()?.id();
    let tc_in_id = tc_ingress_program(ebpf)?.info()?.id();
    let mut pinned: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    pinned.sort();
    for pin in pinned {
        let name = pin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (iface, want) = if let Some(i) = name.strip_prefix("xdp-") {
            (i, xdp_id)
        } else if let Some(i) = name.strip_prefix("tc-egress-") {
            (i, tc_id)
        } else if let Some(i) = name.strip_prefix("tc-ingress-") {
            (i, tc_in_id)
        } else {
            continue;
        };
        // A link of a gone interface, or of another namespace sharing an explicit --pin-dir,
        // is `attach`'s to drop, not ours to update.
        let attached_to = crate::sys::bpf::pinned_link_ifindex(&pin)
            .with_context(|| format!("inspecting pinned link {}", pin.display()))?;
        if attached_to == 0 || ifindex(iface).ok() != Some(attached_to) {
            continue;
        }
        if crate::sys::bpf::pinned_link_prog_id(&pin)? == want {
            continue;
        }
        let link: FdLink = PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?
            .into();
        let what = || {
            format!(
                "replacing the program of {} (BPF_LINK_UPDATE)",
                pin.display()
            )
        };
        if want == xdp_id {
            let link = XdpLink::try_from(link).with_context(what)?;
            let prog = xdp_program(ebpf)?;
            let id = prog.attach_to_link(link).with_context(what)?;
            // The pin keeps the link; this process's fd on it is not needed.
            drop(prog.take_link(id)?);
        } else {
            let link = SchedClassifierLink::try_from(link).with_context(what)?;
            let prog = if want == tc_id {
                tc_program(ebpf)?
            } else {
                tc_ingress_program(ebpf)?
            };
            let id = prog.attach_to_link(link).with_context(what)?;
            drop(prog.take_link(id)?);
        }
        updated.push(name);
    }
    Ok(updated)
}

pub use crate::sys::ifaddrs::ifindex;

/// Why attaching failed, when it failed because `iface` already runs an XDP program that is
/// not pinned in `pin_dir` (the kernel answers EEXIST or EBUSY). xlb never replaces a program
/// it did not attach; the message says whose it may be and how to remove it.
fn busy_interface(e: &anyhow::Error, pin_dir: &Path, iface: &str) -> Option<String> {
    let busy = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|n| n == libc::EEXIST || n == libc::EBUSY)
    });
    if !busy {
        return None;
    }
    // An xlb of another layout version pins its link next to ours: same namespace directory.
    let other = pin_dir.parent().and_then(|ns| {
        fs::read_dir(ns)
            .ok()?
            .flatten()
            .map(|d| d.path())
            .find(|d| d.as_path() != pin_dir && pins::xdp_link_pin(d, iface).exists())
    });
    Some(match other {
        Some(dir) => format!(
            "{iface} already runs the XDP program of an xlb with another map layout (pinned in \
             {}): stop it with that version's `xlb down --iface {iface}` (its connections are \
             not carried over), then start this one",
            dir.display()
        ),
        None => format!(
            "{iface} already has an XDP program attached that is not xlb's (see `ip link show \
             dev {iface}`): xlb does not replace it; detach it first (`ip link set dev {iface} \
             xdp off`)"
        ),
    })
}

/// Attaches XDP ingress, TC egress (as `tc`) and TC ingress to `iface` and pins the links, or
/// adopts what a previous run attached (the datapath and its conntrack carry on untouched; their
/// programs are this build's once [`replace_programs`] has run). Then probes how frames can leave
/// `iface` and tells the XDP program (`egress::record`).
pub fn attach(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    iface: &str,
    mode: XdpMode,
    tc: TcAttach,
) -> anyhow::Result<Attachment> {
    let index = ifindex(iface)?;
    if let Err(e) = accept_local(iface) {
        // Not fatal: in a container /proc/sys is often read-only, and nodes usually have the
        // neighbour entries of the other nodes already. Said once, with the remedy.
        tracing::warn!(
            "{e:#}: encapsulated packets to a node without a neighbour entry yet will be dropped \
             by the kernel as martians; set net.ipv4.conf.{iface}.accept_local=1 on this node"
        );
    }
    fs::create_dir_all(pins::links_dir(pin_dir))?;
    let xdp_pin = pins::xdp_link_pin(pin_dir, iface);
    let tc_pin = pins::tc_link_pin(pin_dir, iface);
    let tc_in_pin = pins::tc_ingress_link_pin(pin_dir, iface);
    drop_stale_pin(&xdp_pin, index)?;
    drop_stale_pin(&tc_pin, index)?;
    drop_stale_pin(&tc_in_pin, index)?;
    let mut outcome = Attachment::Adopted;
    if PinnedLink::from_pin(&xdp_pin).is_err() {
        let prog = xdp_program(ebpf)?;
        let id = prog.attach(iface, mode).map_err(|e| {
            let e = anyhow::Error::from(e);
            match busy_interface(&e, pin_dir, iface) {
                Some(why) => e.context(why),
                None => e.context(format!("attaching XDP to {iface} (mode {mode:?})")),
            }
        })?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("XDP link is not a bpf_link")?;
        link.pin(&xdp_pin)
            .with_context(|| format!("pinning {}", xdp_pin.display()))?;
        outcome = Attachment::Attached;
    }
    match tc {
        TcAttach::Tcx => {
            if PinnedLink::from_pin(&tc_pin).is_err() {
                attach_tcx(tc_program(ebpf)?, iface, TcAttachType::Egress, &tc_pin)?;
                outcome = Attachment::Attached;
            }
            if PinnedLink::from_pin(&tc_in_pin).is_err() {
                attach_tcx(
                    tc_ingress_program(ebpf)?,
                    iface,
                    TcAttachType::Ingress,
                    &tc_in_pin,
                )?;
                outcome = Attachment::Attached;
            }
            // An earlier run with --tc-attach legacy: one program per hook only.
            tc_attach::detach_legacy(iface)?;
        }
        TcAttach::Legacy => {
            if !tc_attach::attach_legacy(tc_program(ebpf)?, iface, TcAttachType::Egress)? {
                outcome = Attachment::Attached;
            }
            if !tc_attach::attach_legacy(tc_ingress_program(ebpf)?, iface, TcAttachType::Ingress)? {
                outcome = Attachment::Attached;
            }
            // An earlier run with TCX: unpinning its links detaches them.
            for pin in [&tc_pin, &tc_in_pin] {
                if let Ok(link) = PinnedLink::from_pin(pin) {
                    drop(
                        link.unpin()
                            .with_context(|| format!("unpinning {}", pin.display()))?,
                    );
                }
            }
        }
    }
    egress::record(pin_dir, index, iface)?;
    Ok(outcome)
}

fn attach_tcx(
    prog: &mut SchedClassifier,
    iface: &str,
    hook: TcAttachType,
    pin: &Path,
) -> anyhow::Result<()> {
    let id = prog
        .attach_with_options(iface, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching TC {hook:?} to {iface} (TCX)"))?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("TC link is not a bpf_link")?;
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// Lets the kernel accept, on `iface`, packets whose source is one of this host's addresses.
/// When the XDP program's next-hop lookup finds no neighbour entry for a backend's node yet, it
/// hands the encapsulated packet (outer source: this node) to the kernel, which must route it
/// and resolve the neighbour; without `accept_local` it drops it as a martian.
fn accept_local(iface: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    fs::write(&path, b"1").with_context(|| format!("setting {path} to 1"))
}

/// Removes a pinned link that is no longer attached to interface `index` (its interface was
/// deleted, or it is a leftover of another namespace), so that `attach` attaches afresh instead
/// of adopting a link that forwards nothing.
fn drop_stale_pin(pin: &Path, index: u32) -> anyhow::Result<()> {
    if !pin.exists() {
        return Ok(());
    }
    let attached_to = crate::sys::bpf::pinned_link_ifindex(pin)
        .with_context(|| format!("inspecting pinned link {}", pin.display()))?;
    if attached_to != index {
        fs::remove_file(pin).with_context(|| format!("removing stale pin {}", pin.display()))?;
    }
    Ok(())
}

/// Removes the pins of datapaths whose every pinned link has lost its interface (their
/// namespace was deleted without `xlb down`, e.g. a killed run). Directories without links are
/// left alone: they may belong to an `xlb run` that is starting. Returns the directories removed.
pub fn remove_dead_pin_dirs(own: &Path) -> Vec<PathBuf> {
    let root = Path::new(pins::BPFFS_ROOT).join("xlb");
    let mut removed = Vec::new();
    for ns in fs::read_dir(&root).into_iter().flatten().flatten() {
        let dir = ns.path().join(lb_common::maps::LAYOUT_VERSION);
        if dir == own {
            continue;
        }
        let links: Vec<PathBuf> = fs::read_dir(pins::links_dir(&dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        // A run waiting for its interface to come back still holds its run lock.
        let dead = !links.is_empty()
            && links
                .iter()
                .all(|l| crate::sys::bpf::pinned_link_ifindex(l).is_ok_and(|i| i == 0))
            && !pins::in_use(&dir);
        if dead && remove_pins(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// Detaches `iface` (also the cls_bpf filter of a legacy TC attachment); when no interface is left, removes the map pins too (conntrack included).
/// Returns whether anything was attached.
pub fn down(pin_dir: &Path, iface: &str) -> anyhow::Result<bool> {
    pins::require_bpffs(pin_dir)?;
    let mut found = false;
    for pin in [
        pins::xdp_link_pin(pin_dir, iface),
        pins::tc_link_pin(pin_dir, iface),
        pins::tc_ingress_link_pin(pin_dir, iface),
    ] {
        if let Ok(link) = PinnedLink::from_pin(&pin) {
            // Unpinning drops the last reference to the bpf_link, which detaches it.
            let fd: FdLink = link
                .unpin()
                .with_context(|| format!("unpinning {}", pin.display()))?;
            drop(fd);
            found = true;
        }
    }
    found |= tc_attach::detach_legacy(iface)?;
    let links_left = fs::read_dir(pins::links_dir(pin_dir))
        .map(|d| d.count())
        .unwrap_or(0);
    if links_left == 0 && pin_dir.exists() {
        remove_pins(pin_dir)?;
    }
    Ok(found)
}

/// Removes every pin under `pin_dir` and the directory itself.
pub fn remove_pins(pin_dir: &Path) -> anyhow::Result<()> {
    for sub in [pins::maps_dir(pin_dir), pins::links_dir(pin_dir)] {
        if let Ok(entries) = fs::read_dir(&sub) {
            for e in entries.flatten() {
                fs::remove_file(e.path())
                    .with_context(|| format!("removing pin {}", e.path().display()))?;
            }
            let _ = fs::remove_dir(&sub);
        }
    }
    let _ = fs::remove_dir(pin_dir);
    // Empty parents up to /sys/fs/bpf/xlb.
    let mut p = pin_dir.parent();
    while let Some(dir) = p {
        if dir == Path::new(pins::BPFFS_ROOT) || fs::remove_dir(dir).is_err() {
            break;
        }
        p = dir.parent();
    }
    let state = pins::state_file(pin_dir);
    let _ = fs::remove_file(&state);
    let _ = fs::remove_file(pins::census_file(pin_dir));
    let _ = fs::remove_file(pins::run_lock(pin_dir));
    if let Some(dir) = state.parent() {
        let _ = fs::remove_dir(dir);
    }
    Ok(())
}
