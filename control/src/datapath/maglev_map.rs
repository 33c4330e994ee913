//! Maglev tables as mmap-able BPF arrays: one memory copy to fill or read a whole table.
//!
//! The kernel allows the mapping because every table carries `BPF_F_MMAPABLE`.
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::Context as _;
use aya::maps::{Array, IterableMap};
use lb_common::maps::{MAGLEV_INNER_FLAGS, MaglevPair, maglev_narrow, maglev_slot_base};

use crate::{datapath::maps::MaglevInner, sys::mmap::Mapping};

/// Maps the `elems` elements (8 bytes, two words each) of a table.
fn mapping(table: &MaglevInner, elems: u32, writable: bool) -> anyhow::Result<Mapping> {
    let fd = IterableMap::map(table).fd().as_fd();
    Mapping::new(fd, elems as usize * size_of::<MaglevPair>(), writable)
        .context("mapping a Maglev table")
}

/// A new table holding `words` (a table as `lb_common::maglev::encode` lays it out: two words
/// per element), ready to be swapped into `XLB_MAGLEV`.
pub fn create(words: &[u32]) -> anyhow::Result<MaglevInner> {
    let elems = u32::try_from(words.len().div_ceil(2)).context("table too large")?;
    let table: MaglevInner =
        Array::create(elems, MAGLEV_INNER_FLAGS).context("creating a Maglev table map")?;
    let mut map = mapping(&table, elems, true)?;
    let view = map.u32s_mut(2 * elems as usize);
    view[..words.len()].copy_from_slice(words);
    drop(map);
    Ok(table)
}

/// The words of an existing table, as [`create`] wrote them.
pub fn read(table: &MaglevInner) -> anyhow::Result<Vec<u32>> {
    let elems = table.len();
    let map = mapping(table, elems, false)?;
    Ok(map.u32s(2 * elems as usize).to_vec())
}

/// The table of an existing inner map, decoded.
pub fn read_decoded(table: &MaglevInner) -> anyhow::Result<lb_common::maglev::EncodedTable> {
    Ok(lb_common::maglev::decode(&read(table)?)?)
}

/// The word stores that turn the table `old` into `new` in place, in the order they must be
/// made, or `None` when only a swap can make the change (another length, another `M`, another
/// slot width or slot base: a packet would read slots at the wrong place or modulo the wrong
/// `M`).
///
/// A running program reads a table's header, then one slot (an ordinal), then the backend id
/// at that ordinal, and drops the packet if the ordinal is not below the header's backend
/// count. Each store is one aligned 32-bit word, and a 16- or 32-bit slot lies within one word,
/// so every read gets a whole old or a whole new value; the order keeps every ordinal a packet
/// can meet below the count it read:
///
/// * the list grows: the ids first, then the count, then the slots that use the new ordinals;
/// * it shrinks: the slots first (none uses the ordinals that go), then the count, then ids;
/// * same count: the ids, then the slots.
///
/// While the stores run (microseconds), a new flow may resolve to another backend of the old
/// or new list than either table gives its slot; every such id is programmed (new backends are
/// written before any table, and the ones that left are released only by the sweep, once no
/// table lists them). Established flows follow conntrack, not the table.
pub fn patch_writes(old: &[u32], new: &[u32]) -> Option<Vec<(usize, u32)>> {
    let (&[m0, n0, ..], &[m1, n1, ..]) = (old, new) else {
        return None;
    };
    let same_layout = old.len() == new.len()
        && m0 == m1
        && maglev_slot_base(n0) == maglev_slot_base(n1)
        && maglev_narrow(n0) == maglev_narrow(n1);
    if !same_layout {
        return None;
    }
    let base = 2 * maglev_slot_base(n1) as usize;
    if base > new.len() {
        return None;
    }
    let diff = |r: std::ops::Range<usize>| {
        r.filter(|&i| old[i] != new[i])
            .map(|i| (i, new[i]))
            .collect::<Vec<_>>()
    };
    let (count, ids, slots) = (diff(1..2), diff(2..base), diff(base..new.len()));
    let order = if n1 >= n0 {
        [ids, count, slots]
    } else {
        [slots, count, ids]
    };
    Some(order.concat())
}

/// Writes `words` into `table` in place if [`patch_writes`] allows it (no RCU wait, unlike a
/// swap: the inner map stays the same). Returns the number of words stored, or `None` (nothing
/// written) when the table must be swapped instead.
pub fn patch(table: &MaglevInner, words: &[u32]) -> anyhow::Result<Option<usize>> {
    use std::sync::atomic::{Ordering, fence};
    let elems = table.len();
    if words.len() != 2 * elems as usize {
        return Ok(None);
    }
    let mut map = mapping(table, elems, true)?;
    let view = map.atomic_u32s(words.len());
    let old: Vec<u32> = view.iter().map(|w| w.load(Ordering::Relaxed)).collect();
    let Some(writes) = patch_writes(&old, words) else {
        return Ok(None);
    };
    for &(i, w) in &writes {
        // Release: a store is not made visible before the ones planned ahead of it.
        view[i].store(w, Ordering::Release);
    }
    fence(Ordering::SeqCst);
    Ok(Some(writes.len()))
}

/// Entries per `BPF_MAP_UPDATE_BATCH` call.
const BATCH: usize = 4096;

/// Points service ids at their new tables, a batch at a time: the kernel waits for running
/// programs (an RCU grace period, ~10 ms) after every update of a map of maps, so one update per
/// Service would not scale. Each element still changes atomically: a packet sees a Service's
/// old table or its new one.
pub fn swap_all(outer: &std::os::fd::OwnedFd, swaps: &[(u32, MaglevInner)]) -> anyhow::Result<()> {
    for chunk in swaps.chunks(BATCH) {
        let keys: Vec<u32> = chunk.iter().map(|(k, _)| *k).collect();
        let fds: Vec<u32> = chunk
            .iter()
            .map(|(_, t)| IterableMap::map(t).fd().as_fd().as_raw_fd() as u32)
            .collect();
        crate::sys::bpf::map_update_batch(outer.as_fd(), &keys, &fds)
            .with_context(|| format!("swapping {} Maglev tables", keys.len()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::maglev::{MaglevBackend, build_table, encode};

    fn words(addrs: &[u32], m: u32) -> Vec<u32> {
        let backends: Vec<MaglevBackend> = addrs
            .iter()
            .map(|&addr| MaglevBackend {
                addr,
                port: 80,
                weight: 1,
            })
            .collect();
        let table = build_table(&backends, m).unwrap();
        // Ids: the address's low byte, so the same pod has the same id in both tables.
        let ids: Vec<u32> = table.backends().iter().map(|b| b.addr & 0xff).collect();
        encode(&table, &ids).unwrap()
    }

    fn applied(old: &[u32], writes: &[(usize, u32)]) -> Vec<u32> {
        let mut t = old.to_vec();
        for &(i, w) in writes {
            t[i] = w;
        }
        t
    }

    /// Where in a table word `i` lies: 0 header, 1 backend ids, 2 slots.
    fn region(t: &[u32], i: usize) -> u8 {
        match i {
            0 | 1 => 0,
            _ if i < 2 * maglev_slot_base(t[1]) as usize => 1,
            _ => 2,
        }
    }

    #[test]
    fn writes_make_the_new_table_and_only_touch_changed_words() {
        let old = words(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 1021);
        for new in [
            words(&[10, 20, 30, 45, 50, 60, 70, 80, 90, 100], 1021),
            words(&[10, 20, 30, 40, 50, 60, 70, 80, 90], 1021),
            words(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110], 1021),
            old.clone(),
        ] {
            let Some(w) = patch_writes(&old, &new) else {
                // 10 → 11 backends moves the slots: a new slot base.
                assert_ne!(maglev_slot_base(old[1]), maglev_slot_base(new[1]));
                continue;
            };
            assert_eq!(applied(&old, &w), new);
            assert!(w.iter().all(|&(i, v)| old[i] != v));
            assert!(w.len() < old.len() / 2 || new[1] != old[1], "{}", w.len());
        }
    }

    #[test]
    fn the_order_keeps_every_ordinal_below_the_count() {
        let ten = words(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 1021);
        let nine = words(&[10, 20, 30, 40, 50, 60, 70, 80, 90], 1021);
        // Growing: ids, then the count, then slots; shrinking: the reverse.
        for (old, new, want) in [(&nine, &ten, [1, 0, 2]), (&ten, &nine, [2, 0, 1])] {
            let w = patch_writes(old, new).unwrap();
            let mut seen: Vec<u8> = w.iter().map(|&(i, _)| region(new, i)).collect();
            seen.dedup();
            assert_eq!(seen, want);
            // Every prefix of the writes: each slot's ordinal is below the count.
            let mut t = old.to_vec();
            for &(i, v) in &w {
                t[i] = v;
                let d = lb_common::maglev::decode(&t).unwrap();
                let n = d.ids.len() as u32;
                assert!(d.ordinals.iter().all(|&o| o < n), "after word {i}");
                assert!(
                    (0..d.m).all(|s| d.id_at(s).is_some_and(|id| id % 10 == 0)),
                    "a slot names no pod of either table"
                );
            }
        }
    }

    #[test]
    fn another_size_or_width_needs_a_swap() {
        let a = words(&[10, 20, 30], 1021);
        assert!(patch_writes(&a, &words(&[10, 20, 30], 509)).is_none());
        assert!(patch_writes(&a, &words(&[10, 20, 30], 2039)).is_none());
        assert!(patch_writes(&a, &words(&[10, 20, 30, 40, 50], 1021)).is_none());
        assert!(patch_writes(&a, &[]).is_none());
    }
}
