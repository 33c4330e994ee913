//! Taking over the datapath that an xlb of an older map layout pinned in this namespace, under
//! traffic and without losing its connections (`docs/operations.md`, "Upgrade").
//!
//! The old program keeps serving until its links are updated, and every map the new program
//! reads is complete before that:
//!
//! 1. [`prepare`], before the new object is loaded: maps whose record did not change are pinned
//!    into the new directory, so the loader reuses them (the old and new programs share them);
//! 2. [`Takeover::migrate`], after the load: entries of the maps whose record changed are read
//!    in batches from the old maps, converted, and written in batches into the new ones;
//! 3. [`Takeover::move_links`]: the old directory's link pins move to the new one (the programs
//!    are then replaced in place by `loader::replace_programs`);
//! 4. [`Takeover::finish`]: entries the old program created between 2 and 3 are copied where
//!    the new program has none, and the old directory is removed.
use std::{
    fs,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use lb_common::{
    layout::{self, Carry, Conversion, PastLayout},
    maps::{ALL_MAPS, LAYOUT_VERSION},
};

use crate::{datapath::pins, sys::bpf, sys::clock};

/// Entries per batch read or write.
const CHUNK: u32 = 4096;

/// An older layout's datapath found next to ours, that this build knows how to take over.
#[derive(Debug)]
pub struct Takeover {
    old_dir: PathBuf,
    past: &'static PastLayout,
}

/// What a takeover carried over.
#[derive(Debug, Default)]
pub struct Carried {
    /// Maps now shared with the old program.
    pub shared: Vec<&'static str>,
    /// Maps that start empty (new in this layout, or not worth converting).
    pub empty: Vec<&'static str>,
}

/// Looks for a datapath of another layout in this namespace's directory and, if this build
/// knows that layout, pins the maps it carries over unchanged into `pin_dir`, ready for the
/// loader. Fails before touching anything when the layout is unknown (the running datapath
/// keeps serving). Only default pin directories (`.../ns-<cookie>/<layout>`) take part: an
/// explicit `--pin-dir` names one layout's directory and nothing next to it is ours.
pub fn prepare(pin_dir: &Path) -> anyhow::Result<Option<(Takeover, Carried)>> {
    let Some(ns) = pin_dir.parent() else {
        return Ok(None);
    };
    let default_layout = pin_dir.file_name().is_some_and(|n| n == LAYOUT_VERSION)
        && ns
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ns-"));
    if !default_layout {
        return Ok(None);
    }
    let mut others: Vec<PathBuf> = fs::read_dir(ns)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.as_path() != pin_dir && (pins::maps_dir(p).is_dir() || pins::links_dir(p).is_dir())
        })
        .collect();
    others.sort();
    let old_dir = match others.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        several => bail!(
            "found the pins of several other xlb map layouts in {}: {}; at most one can be taken \
             over: remove the stale ones with their own version's `xlb down`",
            ns.display(),
            names(several)
        ),
    };
    let version = old_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(past) = layout::past(&version) else {
        let known: Vec<&str> = layout::HISTORY.iter().map(|p| p.version).collect();
        bail!(
            "{} holds the datapath of an xlb with map layout {version:?}, which this build \
             (layout {LAYOUT_VERSION}) cannot take over: it knows how to migrate from {}. That \
             datapath is left as it is and keeps serving. Run an xlb build that knows layout \
             {version:?} (the same or a newer release), or remove it with that version's `xlb \
             down --iface ...` (its connections are lost) and start this one again",
            old_dir.display(),
            if known.is_empty() {
                "no older layout".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let maps_dir = pins::maps_dir(pin_dir);
    fs::create_dir_all(&maps_dir)
        .with_context(|| format!("creating pin directory {}", maps_dir.display()))?;
    let mut carried = Carried::default();
    for name in ALL_MAPS {
        let old = pins::map_pin(&old_dir, name);
        if !old.exists() {
            carried.empty.push(name);
            continue;
        }
        let old_fd = bpf::obj_get(&old).with_context(|| format!("opening {}", old.display()))?;
        let shape = bpf::map_shape(old_fd.as_fd())?;
        match past.carry(name) {
            Carry::Same => {
                let want = layout::record(name).context("map without a record")?;
                if (shape.key_size, shape.value_size) != want {
                    bail!(
                        "{}: records of {}/{} bytes, where layout {LAYOUT_VERSION} has {}/{} and \
                         its history lists no change for layout {version}: this build's layout \
                         history is wrong; nothing was changed",
                        old.display(),
                        shape.key_size,
                        shape.value_size,
                        want.0,
                        want.1
                    );
                }
                let new = pins::map_pin(pin_dir, name);
                if !new.exists() {
                    bpf::obj_pin(old_fd.as_fd(), &new).with_context(|| {
                        format!("pinning {} at {}", old.display(), new.display())
                    })?;
                }
                carried.shared.push(name);
            }
            Carry::Convert(c) => {
                check_convertible(&old, shape, &c)?;
            }
            Carry::Empty => carried.empty.push(name),
        }
    }
    Ok(Some((Takeover { old_dir, past }, carried)))
}

fn names(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_convertible(old: &Path, shape: bpf::MapShape, c: &Conversion) -> anyhow::Result<()> {
    if (shape.key_size, shape.value_size) != (c.key_size, c.value_size) {
        bail!(
            "{}: records of {}/{} bytes, where the layout history expects {}/{}; nothing was \
             changed",
            old.display(),
            shape.key_size,
            shape.value_size,
            c.key_size,
            c.value_size
        );
    }
    if shape.map_type != bpf::BPF_MAP_TYPE_HASH && shape.map_type != bpf::BPF_MAP_TYPE_LRU_HASH {
        bail!(
            "{}: only hash maps are converted entry by entry (map type {})",
            old.display(),
            shape.map_type
        );
    }
    Ok(())
}

impl Takeover {
    pub fn old_dir(&self) -> &Path {
        &self.old_dir
    }

    pub fn old_version(&self) -> &'static str {
        self.past.version
    }

    /// Copies every entry of the maps whose record changed from the old maps into the new ones
    /// (which the new program does not run on yet). Returns the entries per map.
    pub fn migrate(&self, pin_dir: &Path) -> anyhow::Result<Vec<(&'static str, u64)>> {
        self.each_conversion(pin_dir, |old, new, c, name| {
            let (ks, vs) = layout::record(name).context("map without a record")?;
            let (ks, vs) = (ks as usize, vs as usize);
            let mut keys = Vec::with_capacity(ks * CHUNK as usize);
            let mut values = Vec::with_capacity(vs * CHUNK as usize);
            let (mut key, mut value) = (vec![0u8; ks], vec![0u8; vs]);
            let mut written = 0u64;
            let shape = bpf::map_shape(old)?;
            let now = clock::monotonic_ns();
            bpf::map_lookup_batch(old, shape, CHUNK, |k, v| {
                key.fill(0);
                value.fill(0);
                (c.convert)(k, v, now, &mut key, &mut value);
                keys.extend_from_slice(&key);
                values.extend_from_slice(&value);
                if keys.len() == ks * CHUNK as usize {
                    bpf::map_update_batch_raw(new, &keys, &values, CHUNK)?;
                    written += CHUNK as u64;
                    keys.clear();
                    values.clear();
                }
                Ok(())
            })
            .with_context(|| format!("reading the old {name}"))?;
            let rest = (keys.len() / ks) as u32;
            if rest > 0 {
                bpf::map_update_batch_raw(new, &keys, &values, rest)?;
                written += rest as u64;
            }
            Ok(written)
        })
    }

    /// Moves the old directory's link pins into `pin_dir` (the links and their programs do not
    /// change; `loader::replace_programs` then puts this build's programs in).
    pub fn move_links(&self, pin_dir: &Path) -> anyhow::Result<usize> {
        let Ok(entries) = fs::read_dir(pins::links_dir(&self.old_dir)) else {
            return Ok(0);
        };
        let links = pins::links_dir(pin_dir);
        fs::create_dir_all(&links).with_context(|| format!("creating {}", links.display()))?;
        let mut moved = 0;
        for e in entries.flatten() {
            let old = e.path();
            let new = links.join(e.file_name());
            if !new.exists() {
                let fd =
                    bpf::obj_get(&old).with_context(|| format!("opening {}", old.display()))?;
                bpf::obj_pin(fd.as_fd(), &new)
                    .with_context(|| format!("pinning {} at {}", old.display(), new.display()))?;
            }
            fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
            moved += 1;
        }
        Ok(moved)
    }

    /// Once no link runs the old program any more: copies the entries it created after
    /// [`Self::migrate`] read its maps (and that the new program has not created since), then
    /// removes the old directory. Returns the entries copied.
    pub fn finish(self, pin_dir: &Path) -> anyhow::Result<u64> {
        let late = self.each_conversion(pin_dir, |old, new, c, name| {
            let (ks, vs) = layout::record(name).context("map without a record")?;
            let (mut key, mut value) = (vec![0u8; ks as usize], vec![0u8; vs as usize]);
            let mut written = 0u64;
            let shape = bpf::map_shape(old)?;
            let now = clock::monotonic_ns();
            bpf::map_lookup_batch(old, shape, CHUNK, |k, v| {
                key.fill(0);
                value.fill(0);
                (c.convert)(k, v, now, &mut key, &mut value);
                if bpf::map_update_raw(new, &key, &value, bpf::BPF_NOEXIST)
                    .with_context(|| format!("writing {name}"))?
                {
                    written += 1;
                }
                Ok(())
            })?;
            Ok(written)
        })?;
        crate::datapath::loader::remove_pins(&self.old_dir)
            .with_context(|| format!("removing {}", self.old_dir.display()))?;
        Ok(late.iter().map(|(_, n)| n).sum())
    }

    fn each_conversion(
        &self,
        pin_dir: &Path,
        mut copy: impl FnMut(
            BorrowedFd<'_>,
            BorrowedFd<'_>,
            &Conversion,
            &'static str,
        ) -> anyhow::Result<u64>,
    ) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let mut done = Vec::new();
        for (name, carry) in self.past.changed {
            let Carry::Convert(c) = carry else { continue };
            let old = pins::map_pin(&self.old_dir, name);
            if !old.exists() {
                continue;
            }
            let new = pins::map_pin(pin_dir, name);
            let old_fd =
                bpf::obj_get(&old).with_context(|| format!("opening {}", old.display()))?;
            let new_fd =
                bpf::obj_get(&new).with_context(|| format!("opening {}", new.display()))?;
            let n = copy(old_fd.as_fd(), new_fd.as_fd(), c, name)
                .with_context(|| format!("migrating {name} from layout {}", self.past.version))?;
            done.push((*name, n));
        }
        Ok(done)
    }
}
