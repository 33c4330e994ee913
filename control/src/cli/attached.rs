//! Finding the datapath `xlb run` attached in this network namespace, and the names it published.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::{
    cli::args::PinArgs,
    datapath::{maps::Maps, pins, reconcile::Snapshot},
};

/// The datapath of this namespace, opened by an inspection command: its maps and where they
/// are pinned.
pub struct Attached {
    pub maps: Maps,
    pub pin_dir: PathBuf,
}

/// Opens this namespace's datapath or says, in one line, why there is none.
pub fn open(pin: &PinArgs) -> anyhow::Result<Attached> {
    let pin_dir = pins::resolve(pin.pin_dir.as_deref())?;
    pins::require_bpffs(&pin_dir)?;
    if !pins::maps_dir(&pin_dir).exists() {
        bail!(
            "no xlb datapath in this network namespace (nothing pinned at {}); start one with `xlb run`",
            pin_dir.display()
        );
    }
    let maps = Maps::from_pins(&pin_dir).with_context(|| {
        format!(
            "the datapath pinned at {} cannot be opened (left by another xlb version? remove it with `xlb down`)",
            pin_dir.display()
        )
    })?;
    Ok(Attached { maps, pin_dir })
}

/// The names `xlb run` published for the datapath at `pin_dir` (empty if it published none).
pub fn read_snapshot(pin_dir: &Path) -> anyhow::Result<Snapshot> {
    let path = pins::state_file(pin_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
        }
        // Pins without names (the node rebooted `xlb run` away): nothing to name yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Snapshot::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
