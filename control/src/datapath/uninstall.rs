//! `xlb down --all`: removes everything xlb left in a network namespace, whatever build left
//! it: the pinned links of every interface (unpinning the last reference detaches a link), the
//! maps of every layout version under the namespace's pin directory, and the names in
//! `/run/xlb`; then any xlb program still attached to an interface of the namespace (pinned
//! elsewhere, e.g. under a `--pin-dir`) is detached by its link. Running it again finds nothing
//! and succeeds.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
};
use lb_common::maps::{PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP};

use crate::{datapath::pins, datapath::tc_attach, sys::bpf, sys::links};

/// What [`remove_all`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Pin directories (one per layout version).
    pub pin_dirs: Vec<PathBuf>,
    /// Link pins (`xdp-eth0`, `tc-egress-eth0`, ...), each a detached attachment.
    pub links: Vec<String>,
    /// State directories under `/run/xlb`.
    pub state_dirs: Vec<PathBuf>,
    /// xlb programs found attached without a pin of this scope, detached by their link
    /// (`xdp on eth1 (link 42)`).
    pub detached: Vec<String>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.pin_dirs.is_empty()
            && self.links.is_empty()
            && self.state_dirs.is_empty()
            && self.detached.is_empty()
    }
}

/// Where `down --all` looks: the directory of this namespace holding one directory per
/// layout version (`/sys/fs/bpf/xlb/ns-<cookie>`), or, with an explicit `--pin-dir`, that
/// directory alone (its parent may hold anything).
pub enum Scope {
    Namespace(PathBuf),
    PinDir(PathBuf),
}

impl Scope {
    pub fn resolve(explicit: Option<&Path>) -> anyhow::Result<Scope> {
        Ok(match explicit {
            Some(dir) => Scope::PinDir(dir.to_path_buf()),
            None => {
                let own = pins::default_pin_dir()?;
                Scope::Namespace(own.parent().context("pin dir has no parent")?.to_path_buf())
            }
        })
    }

    /// The directory that must be on bpffs.
    pub fn root(&self) -> &Path {
        match self {
            Scope::Namespace(d) | Scope::PinDir(d) => d,
        }
    }

    /// The pin directories present now.
    fn pin_dirs(&self) -> anyhow::Result<Vec<PathBuf>> {
        match self {
            Scope::PinDir(d) => Ok(if d.exists() { vec![d.clone()] } else { vec![] }),
            Scope::Namespace(ns) => match fs::read_dir(ns) {
                Ok(entries) => Ok(entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
                Err(e) => Err(e).with_context(|| format!("reading {}", ns.display())),
            },
        }
    }

    /// The state directories under `/run/xlb` of this scope, including those whose pin
    /// directory is already gone.
    fn state_dirs(&self) -> Vec<PathBuf> {
        let probe = |dir: &Path| pins::state_file(dir).parent().map(Path::to_path_buf);
        match self {
            Scope::PinDir(d) => probe(d).filter(|s| s.exists()).into_iter().collect(),
            Scope::Namespace(ns) => {
                // `state_file` flattens the pin directory's path: the namespace's directories
                // share the prefix of a layout directory named "".
                let Some(prefix) = probe(&ns.join("")).and_then(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().trim_end_matches('_').to_string())
                }) else {
                    return vec![];
                };
                let run = Path::new(RUN_DIR);
                fs::read_dir(run)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().to_string();
                        name.strip_prefix(&prefix)
                            .is_some_and(|rest| rest.starts_with('_'))
                    })
                    .map(|e| e.path())
                    .collect()
            }
        }
    }
}

const RUN_DIR: &str = "/run/xlb";

/// Removes every pin and every state file of `scope`; detaches every pinned link on the way.
pub fn remove_all(scope: &Scope) -> anyhow::Result<Removed> {
    let mut removed = Removed::default();
    for dir in scope.pin_dirs()? {
        removed.links.extend(unpin_links(&dir)?);
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        removed.pin_dirs.push(dir);
    }
    for dir in scope.state_dirs() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        removed.state_dirs.push(dir);
    }
    // Empty parents: the namespace's directory, /sys/fs/bpf/xlb, /run/xlb.
    if let Scope::Namespace(ns) = scope {
        let _ = fs::remove_dir(ns);
        if let Some(parent) = ns.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
    let _ = fs::remove_dir(RUN_DIR);
    // The kernel releases an unpinned link a moment later (deferred work): give the links just
    // unpinned that moment before taking what is still attached for another pin's.
    let settle = if removed.links.is_empty() {
        Duration::ZERO
    } else {
        Duration::from_secs(2)
    };
    removed.detached = detach_attached(settle)?;
    // cls_bpf filters (`--tc-attach legacy`) have no link and no pin: found by program names.
    for iface in links::interfaces().context("listing this namespace's interfaces")? {
        if tc_attach::detach_legacy(&iface.name)? {
            removed
                .detached
                .push(format!("tc cls_bpf filters on {}", iface.name));
        }
    }
    Ok(removed)
}

/// Whether a program's kernel name (at most 15 characters) is one of xlb's.
fn is_xlb_program(name: &str) -> bool {
    [PROG_XDP, PROG_TC_EGRESS, PROG_TC_INGRESS]
        .iter()
        .any(|p| p.get(..15).unwrap_or(p) == name)
}

/// An xlb program attached to an interface of this namespace: the interface, the hook, the
/// link type that attaches there, the program id.
type Attachment = (links::Interface, &'static str, u32, u32);

/// Every xlb program attached to an interface of this namespace. Programs are recognised by
/// name; a program id attached here is this namespace's (each `xlb run` loads its own), which
/// tells its link from those of other namespaces with the same ifindex.
fn xlb_attachments() -> anyhow::Result<Vec<Attachment>> {
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_string())))
        .collect();
    let xlb = |id: &u32| names.get(id).is_some_and(|n| is_xlb_program(n));
    // (interface, hook, program id) of every xlb program attached here.
    let mut attached = Vec::new();
    for iface in links::interfaces().context("listing this namespace's interfaces")? {
        if let Some(id) = iface.xdp_prog_id.filter(xlb) {
            attached.push((iface.clone(), "xdp", bpf::LINK_TYPE_XDP, id));
        }
        for (hook, kind) in [
            ("tc ingress", TcAttachType::Ingress),
            ("tc egress", TcAttachType::Egress),
        ] {
            // Kernels without TCX answer with an error: nothing of that kind is attached.
            let Ok((_, progs)) = SchedClassifier::query_tcx(&iface.name, kind) else {
                continue;
            };
            for p in progs.iter().filter(|p| xlb(&p.id())) {
                attached.push((iface.clone(), hook, bpf::LINK_TYPE_TCX, p.id()));
            }
        }
    }
    Ok(attached)
}

/// Detaches, by its link, every xlb program still attached to an interface of this namespace
/// once `settle` has passed (or none is left).
fn detach_attached(settle: Duration) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + settle;
    let attached = loop {
        let attached = xlb_attachments()?;
        if attached.is_empty() {
            return Ok(Vec::new());
        }
        if Instant::now() >= deadline {
            break attached;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let all = bpf::links().context("listing the kernel's BPF links")?;
    let mut detached = Vec::new();
    for (iface, hook, link_type, prog_id) in attached {
        let link = all
            .iter()
            .find(|l| l.link_type == link_type && l.prog_id == prog_id && l.ifindex == iface.index);
        let Some(link) = link else {
            bail!(
                "xlb's program {prog_id} is attached to {} ({hook}) without a BPF link; \
                 detach it with `ip link set dev {} xdp off` (XDP) or `tc filter del dev {} \
                 egress` (TC)",
                iface.name,
                iface.name,
                iface.name
            );
        };
        bpf::detach_link(link.id)
            .with_context(|| format!("detaching link {} ({hook} on {})", link.id, iface.name))?;
        detached.push(format!("{hook} on {} (link {})", iface.name, link.id));
    }
    Ok(detached)
}

/// Unpins every link of pin directory `dir` (the last reference: the link detaches); returns
/// their names.
fn unpin_links(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let links = pins::links_dir(dir);
    let entries = match fs::read_dir(&links) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).with_context(|| format!("reading {}", links.display())),
    };
    for entry in entries.flatten() {
        let pin = entry.path();
        match PinnedLink::from_pin(&pin) {
            Ok(link) => {
                let fd: FdLink = link
                    .unpin()
                    .with_context(|| format!("unpinning {}", pin.display()))?;
                drop(fd);
            }
            // Not a link (another build's pin): removing it is all there is to do.
            Err(_) => {
                fs::remove_file(&pin).with_context(|| format!("removing pin {}", pin.display()))?
            }
        }
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_recognised_by_their_kernel_names() {
        assert!(is_xlb_program(PROG_XDP));
        // The kernel keeps 15 characters of a name.
        assert!(is_xlb_program(
            &PROG_TC_EGRESS[..PROG_TC_EGRESS.len().min(15)]
        ));
        assert!(!is_xlb_program("xlb_pass"));
        assert!(!is_xlb_program("xlb"));
        assert!(!is_xlb_program(""));
    }
}
