//! How the TC programs (egress: the reply rewrite; ingress: the skb path of frames a driver would
//! drop as XDP frames) are attached: TCX links where the kernel has TCX (Linux 6.6+), otherwise
//! cls_bpf filters on the interface's clsact qdisc, added over netlink as tc(8) would.
//!
//! A TCX link is pinned and adopted like the XDP link. A cls_bpf filter has no link to pin; it
//! lives at one fixed (priority, handle) of xlb's, which is its record: a restarted xlb replaces
//! the program of the filter found there in place (no gap, never a second filter), and `xlb down`
//! removes xlb's filters by the program's name.
use std::path::Path;

use anyhow::{Context as _, bail};
use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};
use lb_common::maps::{PROG_TC_EGRESS, PROG_TC_INGRESS};

use crate::datapath::pins;

/// What `xlb run --tc-attach` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttachRequest {
    /// TCX where the kernel has it, cls_bpf otherwise.
    Auto,
    Tcx,
    Legacy,
}

/// How the TC egress program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttach {
    /// A TCX link (`BPF_TCX_EGRESS`), pinned.
    Tcx,
    /// A cls_bpf filter in direct-action mode on the clsact qdisc's egress hook.
    Legacy,
}

impl TcAttach {
    pub fn name(self) -> &'static str {
        match self {
            TcAttach::Tcx => "tcx",
            TcAttach::Legacy => "legacy",
        }
    }
}

/// The filter's priority: after the filters that tc(8) and the CNIs add at their defaults (1 and
/// 49152), as the TCX link is appended after the other TCX programs.
pub const LEGACY_PRIORITY: u16 = 0xff00;
const _: () = assert!(LEGACY_PRIORITY > 49152, "after tc(8)'s default priority");
/// The filter's handle within that priority.
pub const LEGACY_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The attachment for `request` on a kernel that has TCX or not.
pub fn choose(request: TcAttachRequest, tcx_available: bool) -> anyhow::Result<TcAttach> {
    Ok(match (request, tcx_available) {
        (TcAttachRequest::Auto | TcAttachRequest::Tcx, true) => TcAttach::Tcx,
        (TcAttachRequest::Auto, false) | (TcAttachRequest::Legacy, _) => TcAttach::Legacy,
        (TcAttachRequest::Tcx, false) => bail!(
            "--tc-attach tcx: this kernel has no TCX (Linux 6.6 or newer); use --tc-attach auto \
             or legacy"
        ),
    })
}

/// Whether the kernel has TCX: a `BPF_PROG_QUERY` of the TCX egress hook of `lo`, which a kernel
/// without TCX refuses with EINVAL (it does not know the attach type).
pub fn tcx_available() -> anyhow::Result<bool> {
    match SchedClassifier::query_tcx("lo", TcAttachType::Egress) {
        Ok(_) => Ok(true),
        Err(e) if program_errno(&e) == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e).context("probing the kernel for TCX (BPF_PROG_QUERY on lo)"),
    }
}

/// xlb's program on a clsact hook, and the hook's name for messages.
fn hook_program(hook: TcAttachType) -> (&'static str, &'static str) {
    match hook {
        TcAttachType::Ingress => (PROG_TC_INGRESS, "ingress"),
        _ => (PROG_TC_EGRESS, "egress"),
    }
}

/// Attaches `prog` to `iface`'s `hook` (egress or ingress) as xlb's cls_bpf filter, or swaps it
/// into the filter an earlier run left there. Returns whether that filter was already there.
pub fn attach_legacy(
    prog: &mut SchedClassifier,
    iface: &str,
    hook: TcAttachType,
) -> anyhow::Result<bool> {
    let (_, hook_name) = hook_program(hook);
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => {}
        Err(e) if tc_errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("adding the clsact qdisc to {iface}")),
    }
    let ours = SchedClassifierLink::attached(iface, hook, LEGACY_PRIORITY, LEGACY_HANDLE, None)
        .with_context(|| format!("interface {iface}"))?;
    // Without NLM_F_CREATE the kernel only replaces: ENOENT says there is no filter to adopt.
    let (id, adopted) = match prog.attach_to_link(ours) {
        Ok(id) => (id, true),
        Err(e) if program_errno(&e) == Some(libc::ENOENT) => {
            let id = prog
                .attach_with_options(
                    iface,
                    hook,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: LEGACY_PRIORITY,
                        handle: LEGACY_HANDLE,
                        classid: None,
                    }),
                )
                .with_context(|| format!("adding the cls_bpf {hook_name} filter to {iface}"))?;
            (id, false)
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "replacing the program of {iface}'s {hook_name} filter at priority \
                     {LEGACY_PRIORITY} (handle {:#x})",
                    u32::from(LEGACY_HANDLE)
                )
            });
        }
    };
    // The filter stays when this process exits, like a pinned link: dropping the handle would
    // delete it.
    std::mem::forget(prog.take_link(id)?);
    Ok(adopted)
}

/// Removes xlb's cls_bpf filters from `iface`'s egress and ingress. Returns whether there was
/// one; an interface that is gone took its filters with it.
pub fn detach_legacy(iface: &str) -> anyhow::Result<bool> {
    if crate::sys::ifaddrs::ifindex(iface).is_err() {
        return Ok(false);
    }
    let mut found = false;
    for hook in [TcAttachType::Egress, TcAttachType::Ingress] {
        let (prog, hook_name) = hook_program(hook);
        match tc::qdisc_detach_program(iface, hook, prog) {
            Ok(()) => found = true,
            Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("removing xlb's cls_bpf {hook_name} filter from {iface}")
                });
            }
        }
    }
    Ok(found)
}

/// The interfaces the datapath at `pin_dir` is attached to (each has a pinned XDP link), with
/// how its TC program is attached: a pinned TCX link, or else the cls_bpf filter.
pub fn attached_ifaces(pin_dir: &Path) -> Vec<(String, TcAttach)> {
    let mut out: Vec<(String, TcAttach)> = std::fs::read_dir(pins::links_dir(pin_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let iface = name.strip_prefix("xdp-")?.to_string();
            let tc = if pins::tc_link_pin(pin_dir, &iface).exists() {
                TcAttach::Tcx
            } else {
                TcAttach::Legacy
            };
            Some((iface, tc))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn program_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::TcError(t) => tc_errno(t),
        ProgramError::NetlinkError(n) => n.raw_os_error(),
        _ => None,
    }
}

fn tc_errno(e: &TcError) -> Option<i32> {
    match e {
        TcError::NetlinkError(n) => n.raw_os_error(),
        TcError::IoError(io) => io.raw_os_error(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_tcx_where_the_kernel_has_it_and_cls_bpf_elsewhere() {
        assert_eq!(choose(TcAttachRequest::Auto, true).unwrap(), TcAttach::Tcx);
        assert_eq!(
            choose(TcAttachRequest::Auto, false).unwrap(),
            TcAttach::Legacy
        );
    }

    #[test]
    fn legacy_is_honoured_even_where_tcx_exists() {
        assert_eq!(
            choose(TcAttachRequest::Legacy, true).unwrap(),
            TcAttach::Legacy
        );
        assert_eq!(
            choose(TcAttachRequest::Legacy, false).unwrap(),
            TcAttach::Legacy
        );
    }

    #[test]
    fn tcx_is_refused_on_a_kernel_without_it() {
        assert_eq!(choose(TcAttachRequest::Tcx, true).unwrap(), TcAttach::Tcx);
        let e = choose(TcAttachRequest::Tcx, false).unwrap_err().to_string();
        assert!(e.contains("no TCX") && e.contains("legacy"), "{e}");
    }

    #[test]
    fn the_filter_has_handle_one() {
        assert_eq!(u32::from(LEGACY_HANDLE), 1);
    }

    #[test]
    fn attached_interfaces_are_read_from_the_link_pins() {
        let dir = std::env::temp_dir().join(format!("xlb-tc-attach-{}", std::process::id()));
        let links = pins::links_dir(&dir);
        std::fs::create_dir_all(&links).unwrap();
        for f in ["xdp-eth1", "tc-egress-eth1", "xdp-eth0"] {
            std::fs::write(links.join(f), b"").unwrap();
        }
        let got = attached_ifaces(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            vec![
                ("eth0".to_string(), TcAttach::Legacy),
                ("eth1".to_string(), TcAttach::Tcx)
            ]
        );
    }
}
