//! The Maglev lookup-table builder (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4), with weights.
//!
//! Every node builds every table itself, so the table must be a pure function of its input and
//! identical on every node and every build. This module is the specification of that function;
//! `docs/maglev.md` says the same in prose. Changing anything below changes which backend
//! flows land on across the fleet and must be treated as a wire-format change.
//!
//! # Inputs
//!
//! * A set of backends, each `(addr, port, weight)`. `addr` is the IPv4 address as a host-order
//!   number, `u32::from_be_bytes(octets)` (198.18.0.1 is `0xC612_0001`); `port` is the numeric
//!   port. Two backends with the same `(addr, port)` are an error
//!   ([`MaglevError::DuplicateBackend`]).
//! * The table size `m`: a prime with `3 <= m <=` [`MAGLEV_MAX_TABLE_SIZE`] (131071);
//!   anything else is an error. A prime size makes every `skip` in `1..m` coprime with `m`, so
//!   every backend's preference list is a permutation of all `m` slots.
//!
//! # Canonical order
//!
//! The backends are sorted ascending by `(addr, port)` (numeric comparison of the host-order
//! numbers above; the weight takes no part). That sorted list is the *canonical order*: it
//! decides who goes first in each round, and **the table's entries are indices into it**, not
//! into the caller's slice. Callers therefore never see bare indices without the list they refer
//! to: [`build_table`] returns a [`MaglevTable`] that owns both. The order in which the caller
//! passes backends has no influence on the result.
//!
//! # Permutations
//!
//! For backend `i` (in canonical order), with [`fmix64`](crate::hash::fmix64()) (MurmurHash3's
//! 64-bit finaliser) and `key = (addr << 16) | port` as a `u64` ([`crate::hash::backend_key`]):
//!
//! ```text
//! offset_i = fmix64(key ^ MAGLEV_OFFSET_SEED) mod m          MAGLEV_OFFSET_SEED = 0x7862_6c6f_6666_7331
//! skip_i   = fmix64(key ^ MAGLEV_SKIP_SEED) mod (m - 1) + 1  MAGLEV_SKIP_SEED   = 0x7862_6c73_6b69_7031
//! permutation_i[j] = (offset_i + j * skip_i) mod m            j = 0, 1, ..., m - 1
//! ```
//!
//! ([`maglev_offset_skip`]; all arithmetic on `u64`, so nothing overflows.)
//!
//! # Population (weights)
//!
//! Let `w_max` be the largest weight. Rounds are numbered `r = 1, 2, ...`. In round `r` the
//! backends are visited in canonical order, and backend `i` *takes a turn* only if the number of
//! slots it has taken so far is `< floor(r * w_i / w_max)`. Taking a turn means: walk
//! `permutation_i` from where this backend last stopped to its first slot that is still empty,
//! and assign that slot to `i`. Population stops the moment the last empty slot is filled, even in
//! the middle of a round.
//!
//! With equal weights every backend takes a turn every round: this is exactly the Maglev paper's
//! algorithm. A backend of weight `w_i` takes `floor(r * w_i / w_max)` turns in the first `r`
//! rounds, so its share of the table is proportional to its weight (within one slot per round
//! boundary). The backend(s) of weight `w_max` take a turn every round, so each round fills at
//! least one slot and population ends after at most `m` rounds.
//!
//! A backend of weight 0 is *draining*: it stays in the canonical list (so it keeps its index
//! and its counters and open connections can be accounted for) but never takes a turn and owns no
//! slot. Because it never takes a turn, adding or removing a draining backend does not change
//! which backend *identity* owns any slot. If no backend has a weight above 0 (or there are no
//! backends), every slot is [`NO_BACKEND`] (`u32::MAX`), which the datapath treats as "drop, no
//! usable backend".
//!
//! # Use
//!
//! The datapath picks a new flow's backend as `table[flow_hash % m]` ([`crate::hash::flow_hash`]).
//!
//! # Table size
//!
//! Each Service's `m` is [`table_size_for`]: the smallest step of [`MAGLEV_LADDER`] (the largest
//! prime below each power of two from 2^7 to 2^17) at or above [`MAGLEV_SLOTS_PER_WEIGHT`] × the
//! sum of its backends' weights (divided by their greatest common divisor), capped by
//! `--maglev-table-size`. A pure function of the Service's backends and the cap, so every node
//! with the same cap picks the same `m`.
//!
//! # In the map
//!
//! [`encode`] lays a table out as its inner map holds it (header, backend ids, 16- or 32-bit
//! ordinal slots: [`crate::maps::MaglevPair`]); [`decode`] reads it back.

use std::fmt;
use std::net::Ipv4Addr;

use crate::hash::maglev_offset_skip;
use crate::maps::{
    MAGLEV_MAX_TABLE_SIZE, NO_BACKEND, NO_BACKEND16, maglev_elems, maglev_narrow, maglev_slot_base,
};

/// The table sizes a Service can get: the largest prime below each power of two from 2^7 to
/// 2^17. Steps of about 2x keep the number of distinct sizes (and so the resizes a growing
/// Service goes through) small; the top is [`MAGLEV_MAX_TABLE_SIZE`], the bottom the first step
/// at or above 100 slots (one backend).
pub const MAGLEV_LADDER: [u32; 11] = [
    127, 251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071,
];

/// Slots per unit of (normalised) weight the size rule aims at: the Maglev paper's `M >= 100 N`,
/// which keeps every backend's share within about 1% of its due.
pub const MAGLEV_SLOTS_PER_WEIGHT: u64 = 100;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The sum of the weights divided by their greatest common divisor (0 without a positive
/// weight). Scaling every weight changes no table (see the module docs), so it changes no size
/// either.
pub fn normalised_weight(backends: &[MaglevBackend]) -> u64 {
    let g = backends.iter().fold(0u64, |g, b| gcd(g, b.weight as u64));
    if g == 0 {
        return 0;
    }
    backends.iter().map(|b| b.weight as u64 / g).sum()
}

/// The table size of a Service with these backends: the smallest [`MAGLEV_LADDER`] step at or
/// above `MAGLEV_SLOTS_PER_WEIGHT * normalised_weight(backends)`, or `cap` if that is smaller
/// (`cap` is `--maglev-table-size`, a checked prime; a step above the top of the ladder is the
/// top). Order-independent and deterministic: the same on every node with the same `cap`.
pub fn table_size_for(backends: &[MaglevBackend], cap: u32) -> u32 {
    let want = MAGLEV_SLOTS_PER_WEIGHT.saturating_mul(normalised_weight(backends));
    let step = MAGLEV_LADDER
        .iter()
        .copied()
        .find(|&m| m as u64 >= want)
        .unwrap_or(MAGLEV_MAX_TABLE_SIZE);
    step.min(cap)
}

/// The smallest table size [`build_table`] accepts.
pub const MAGLEV_MIN_TABLE_SIZE: u32 = 3;

/// One backend of a Service as the Maglev builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// IPv4 address as a host-order number: `u32::from_be_bytes(octets)`.
    pub addr: u32,
    /// Port number (host order).
    pub port: u16,
    /// Relative weight; 0 means draining (kept, but given no slots).
    pub weight: u32,
}

impl MaglevBackend {
    /// A backend from a host-order address number.
    pub const fn new(addr: u32, port: u16, weight: u32) -> Self {
        Self { addr, port, weight }
    }

    /// A backend from an [`Ipv4Addr`].
    pub fn from_ipv4(addr: Ipv4Addr, port: u16, weight: u32) -> Self {
        Self::new(u32::from(addr), port, weight)
    }

    /// The address as an [`Ipv4Addr`].
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    /// The identity the canonical order sorts by: `(addr, port)`.
    pub const fn identity(&self) -> (u32, u16) {
        (self.addr, self.port)
    }
}

/// Why a table could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaglevError {
    /// `m` is below [`MAGLEV_MIN_TABLE_SIZE`] or above [`MAGLEV_MAX_TABLE_SIZE`].
    TableSizeOutOfRange { m: u32 },
    /// `m` is not prime.
    TableSizeNotPrime { m: u32 },
    /// Two backends share an `(addr, port)`.
    DuplicateBackend { addr: u32, port: u16 },
    /// More backends than a `u32` slot can index (`NO_BACKEND` is reserved).
    TooManyBackends { count: usize },
    /// An encoded table (an inner map's content) that does not follow the layout.
    Malformed { why: &'static str },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MaglevError::TableSizeOutOfRange { m } => write!(
                f,
                "Maglev table size {m} is out of range: it must be a prime between \
                 {MAGLEV_MIN_TABLE_SIZE} and {MAGLEV_MAX_TABLE_SIZE}"
            ),
            MaglevError::TableSizeNotPrime { m } => {
                write!(f, "Maglev table size {m} is not prime")
            }
            MaglevError::DuplicateBackend { addr, port } => write!(
                f,
                "duplicate Maglev backend {}:{port}",
                Ipv4Addr::from(addr)
            ),
            MaglevError::TooManyBackends { count } => {
                write!(f, "too many Maglev backends: {count}")
            }
            MaglevError::Malformed { why } => write!(f, "malformed Maglev table: {why}"),
        }
    }
}

impl std::error::Error for MaglevError {}

/// Whether `n` is prime (deterministic trial division; at most ~33,000 divisions for a `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = n as u64;
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// Checks that `m` is an acceptable table size: prime and within
/// `MAGLEV_MIN_TABLE_SIZE..=MAGLEV_MAX_TABLE_SIZE`.
pub fn check_table_size(m: u32) -> Result<(), MaglevError> {
    if !(MAGLEV_MIN_TABLE_SIZE..=MAGLEV_MAX_TABLE_SIZE).contains(&m) {
        return Err(MaglevError::TableSizeOutOfRange { m });
    }
    if !is_prime(m) {
        return Err(MaglevError::TableSizeNotPrime { m });
    }
    Ok(())
}

/// The backends in canonical order: sorted ascending by `(addr, port)`.
///
/// Fails on two backends with the same `(addr, port)` (whatever their weights) or more than
/// `u32::MAX - 1` backends. The indices in a [`MaglevTable`] refer to exactly this order.
pub fn canonical_order(backends: &[MaglevBackend]) -> Result<Vec<MaglevBackend>, MaglevError> {
    if backends.len() >= NO_BACKEND as usize {
        return Err(MaglevError::TooManyBackends {
            count: backends.len(),
        });
    }
    let mut sorted = backends.to_vec();
    sorted.sort_unstable_by_key(MaglevBackend::identity);
    if let Some(w) = sorted
        .windows(2)
        .find(|w| w[0].identity() == w[1].identity())
    {
        return Err(MaglevError::DuplicateBackend {
            addr: w[0].addr,
            port: w[0].port,
        });
    }
    Ok(sorted)
}

/// A populated Maglev table together with the backend list its entries index.
///
/// The two cannot be separated by accident: `slots()[s]` is an index into `backends()` (the
/// canonical order) or [`NO_BACKEND`].
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable {
    backends: Vec<MaglevBackend>,
    slots: Vec<u32>,
}

impl MaglevTable {
    /// The backends in canonical order (draining ones included).
    pub fn backends(&self) -> &[MaglevBackend] {
        &self.backends
    }

    /// The `m` slots: each an index into [`Self::backends`], or [`NO_BACKEND`].
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The table size `m`.
    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The backend owning slot `slot`, or `None` for [`NO_BACKEND`] (or a slot out of range).
    pub fn backend_at(&self, slot: u32) -> Option<&MaglevBackend> {
        let idx = *self.slots.get(slot as usize)?;
        self.backends.get(idx as usize)
    }

    /// The backend a flow with this [`flow_hash`](crate::hash::flow_hash) is sent to:
    /// slot `flow_hash % m`, as the datapath does it.
    pub fn lookup(&self, flow_hash: u32) -> Option<&MaglevBackend> {
        self.backend_at(flow_hash % self.size())
    }

    /// How many slots each backend (in canonical order) owns.
    pub fn slot_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.backends.len()];
        for &s in &self.slots {
            if s != NO_BACKEND {
                counts[s as usize] += 1;
            }
        }
        counts
    }

    /// The slots translated to the caller's own ids (say, datapath backend ids):
    /// `id(backend)` for each owned slot, [`NO_BACKEND`] stays [`NO_BACKEND`]. `id` is called
    /// once per backend, in canonical order.
    pub fn map_slots(&self, mut id: impl FnMut(&MaglevBackend) -> u32) -> Vec<u32> {
        let ids: Vec<u32> = self.backends.iter().map(&mut id).collect();
        self.slots
            .iter()
            .map(|&s| {
                if s == NO_BACKEND {
                    NO_BACKEND
                } else {
                    ids[s as usize]
                }
            })
            .collect()
    }

    /// The canonical backend list and the slots.
    pub fn into_parts(self) -> (Vec<MaglevBackend>, Vec<u32>) {
        (self.backends, self.slots)
    }
}

impl fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 16;
        f.debug_struct("MaglevTable")
            .field("m", &self.slots.len())
            .field("backends", &self.backends)
            .field("slot_counts", &self.slot_counts())
            .field("first_slots", &&self.slots[..self.slots.len().min(SHOWN)])
            .finish()
    }
}

/// Builds the Maglev table of size `m` for `backends` (see the module docs for the exact rules).
///
/// The result's [`slots`](MaglevTable::slots) are indices into its
/// [`backends`](MaglevTable::backends), which are the input sorted by `(addr, port)` (the
/// canonical order), **not** indices into `backends` as passed. Use
/// [`MaglevTable::map_slots`] to translate them to other ids.
///
/// Errors: `m` not prime or outside `3..=131071`, duplicate `(addr, port)`.
pub fn build_table(backends: &[MaglevBackend], m: u32) -> Result<MaglevTable, MaglevError> {
    check_table_size(m)?;
    let backends = canonical_order(backends)?;
    let slots = populate(&backends, m);
    Ok(MaglevTable { backends, slots })
}

/// `table` laid out as its inner map holds it ([`crate::maps::MaglevPair`]): the header, `ids`
/// (the caller's id of each backend of [`MaglevTable::backends`], in that order) and the
/// ordinal slots, as native-endian `u32` words, two per map element. 16-bit slots when the
/// table lists at most [`crate::maps::MAGLEV_NARROW_MAX_BACKENDS`] backends, else 32-bit.
///
/// Errors when `ids` does not have one id per backend.
pub fn encode(table: &MaglevTable, ids: &[u32]) -> Result<Vec<u32>, MaglevError> {
    if ids.len() != table.backends.len() {
        return Err(MaglevError::Malformed {
            why: "one id per backend is needed",
        });
    }
    let n =
        u32::try_from(ids.len()).map_err(|_| MaglevError::TooManyBackends { count: ids.len() })?;
    let m = table.size();
    let mut words = vec![0u32; 2 * maglev_elems(m, n) as usize];
    words[0] = m;
    words[1] = n;
    words[2..2 + ids.len()].copy_from_slice(ids);
    let base = 2 * maglev_slot_base(n) as usize;
    let slots = &mut words[base..];
    if maglev_narrow(n) {
        slots.fill(NO_BACKEND16 << 16 | NO_BACKEND16);
        for (s, &o) in table.slots.iter().enumerate() {
            let o = if o == NO_BACKEND { NO_BACKEND16 } else { o };
            let shift = 16 * (s & 1);
            let w = &mut slots[s / 2];
            *w = (*w & !(0xffff << shift)) | (o << shift);
        }
    } else {
        slots.fill(NO_BACKEND);
        slots[..table.slots.len()].copy_from_slice(&table.slots);
    }
    Ok(words)
}

/// A table read back from an inner map: what [`encode`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedTable {
    /// The table size `M` (header word 0).
    pub m: u32,
    /// The backend ids, by ordinal.
    pub ids: Vec<u32>,
    /// The `M` slots as ordinals into `ids`, or [`NO_BACKEND`] (also for a 16-bit slot's
    /// [`NO_BACKEND16`]).
    pub ordinals: Vec<u32>,
}

impl EncodedTable {
    /// The backend id of slot `slot`, as the datapath resolves it: `None` for no backend, a slot
    /// out of range or an ordinal past the list.
    pub fn id_at(&self, slot: u32) -> Option<u32> {
        let o = *self.ordinals.get(slot as usize)?;
        self.ids.get(o as usize).copied()
    }

    /// The backend id a flow with this hash is sent to (slot `hash % M`).
    pub fn lookup(&self, flow_hash: u32) -> Option<u32> {
        self.id_at(flow_hash % self.m)
    }

    /// Every slot as a backend id ([`NO_BACKEND`] for none): the table of layouts before v5.
    pub fn slot_ids(&self) -> Vec<u32> {
        (0..self.m)
            .map(|s| self.id_at(s).unwrap_or(NO_BACKEND))
            .collect()
    }
}

/// Reads an inner map's words (two per element, as [`encode`] lays them out). Checks the
/// header against the length; ordinals are returned as stored (the datapath treats one past the
/// list as no backend, so does [`EncodedTable::id_at`]).
pub fn decode(words: &[u32]) -> Result<EncodedTable, MaglevError> {
    let malformed = |why| Err(MaglevError::Malformed { why });
    let [m, n, ..] = *words else {
        return malformed("shorter than its header");
    };
    if m == 0 || m > MAGLEV_MAX_TABLE_SIZE {
        return malformed("table size out of range");
    }
    if words.len() < 2 * maglev_elems(m, n) as usize {
        return malformed("shorter than its header says");
    }
    let ids = words[2..2 + n as usize].to_vec();
    let slots = &words[2 * maglev_slot_base(n) as usize..];
    let ordinals = (0..m as usize)
        .map(|s| {
            if maglev_narrow(n) {
                let o = (slots[s / 2] >> (16 * (s & 1))) & 0xffff;
                if o == NO_BACKEND16 { NO_BACKEND } else { o }
            } else {
                slots[s]
            }
        })
        .collect();
    Ok(EncodedTable { m, ids, ordinals })
}

/// Per-backend walk state during population.
struct Walker {
    /// Current position in the permutation: `(offset + j * skip) mod m` for the next `j`.
    pos: u32,
    skip: u32,
    weight: u64,
    /// `(taken + 1) * w_max`: the backend takes a turn in round `r` iff `need <= r * weight`,
    /// which is `taken < floor(r * weight / w_max)` without a division.
    need: u64,
    /// Index in the canonical order.
    index: u32,
}

impl Walker {
    /// The round of this backend's next turn: the least `r` with `need <= r * weight`.
    fn next_round(&self) -> u64 {
        self.need.div_ceil(self.weight)
    }
}

/// Which of the two equivalent population loops to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    /// Visit every backend every round (cheap when weights are similar).
    Rounds,
    /// Visit only the backends whose turn it is, via a heap keyed by (round, index) (cheap when
    /// a few heavy backends make the many light ones idle most rounds).
    Heap,
}

/// Population over `sorted` (canonical order, validated). Returns the `m` slots.
fn populate(sorted: &[MaglevBackend], m: u32) -> Vec<u32> {
    populate_with(sorted, m, None)
}

fn populate_with(sorted: &[MaglevBackend], m: u32, force: Option<Strategy>) -> Vec<u32> {
    let mut slots = vec![NO_BACKEND; m as usize];
    let w_max = sorted.iter().map(|b| b.weight).max().unwrap_or(0) as u64;
    if w_max == 0 {
        return slots;
    }
    // Draining backends never take a turn: leave them out. `walkers` stays in canonical order.
    let mut walkers: Vec<Walker> = sorted
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| {
            let (offset, skip) = maglev_offset_skip(b.addr, b.port, m);
            Walker {
                pos: offset,
                skip,
                weight: b.weight as u64,
                need: w_max,
                index: i as u32,
            }
        })
        .collect();

    let mut filled = 0u32;
    // One turn of `w`: its next preferred empty slot. Returns whether the table is now full.
    // Terminates: `m` is prime and `1 <= skip < m`, so the walk visits every slot, and the
    // caller only calls it while at least one slot is empty.
    let mut take = |w: &mut Walker, slots: &mut [u32]| {
        loop {
            let c = w.pos;
            // pos, skip < m <= 131071: the sum cannot overflow; done in u64 anyway.
            let next = w.pos as u64 + w.skip as u64;
            w.pos = if next >= m as u64 {
                next - m as u64
            } else {
                next
            } as u32;
            if slots[c as usize] == NO_BACKEND {
                slots[c as usize] = w.index;
                w.need += w_max;
                filled += 1;
                return filled == m;
            }
        }
    };

    // Both strategies perform exactly the turns of the specification, in the same order:
    // rounds ascending, canonical order within a round. Pick the cheaper one: the round loop
    // costs about (rounds * active backends) cheap checks, rounds ~ m * w_max / sum(w); the
    // heap costs about m * log2(active backends) heap steps.
    let strategy = force.unwrap_or_else(|| {
        let n = walkers.len() as u128;
        let w_sum: u128 = walkers.iter().map(|w| w.weight as u128).sum();
        let rounds = (m as u128 * w_max as u128).div_ceil(w_sum);
        let heap_cost = m as u128 * 8 * (u128::BITS - n.leading_zeros()) as u128;
        if rounds * n <= heap_cost {
            Strategy::Rounds
        } else {
            Strategy::Heap
        }
    });

    match strategy {
        Strategy::Rounds => {
            // The max-weight backend takes a turn every round, so every round fills at least
            // one slot and this ends after at most m rounds (r * weight <= 2^17 * 2^32).
            let mut r = 0u64;
            loop {
                r += 1;
                for w in walkers.iter_mut() {
                    if w.need <= r * w.weight && take(w, &mut slots) {
                        return slots;
                    }
                }
            }
        }
        Strategy::Heap => {
            use std::cmp::Reverse;
            use std::collections::BinaryHeap;
            // `walkers` is in canonical order, so (round, position in walkers) orders turns
            // like (round, canonical index).
            let mut heap: BinaryHeap<Reverse<(u64, u32)>> = walkers
                .iter()
                .enumerate()
                .map(|(k, w)| Reverse((w.next_round(), k as u32)))
                .collect();
            while let Some(Reverse((_, k))) = heap.pop() {
                let w = &mut walkers[k as usize];
                if take(w, &mut slots) {
                    return slots;
                }
                heap.push(Reverse((w.next_round(), k)));
            }
            unreachable!("every backend is always back in the heap")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from_be_bytes([a, b, c, d])
    }

    /// The fixed 3-backend input of the golden vectors (deliberately not in canonical order).
    fn golden_backends(weights: [u32; 3]) -> [MaglevBackend; 3] {
        [
            MaglevBackend::new(ip(198, 18, 1, 3), 8080, weights[0]),
            MaglevBackend::new(ip(198, 18, 1, 1), 8080, weights[1]),
            MaglevBackend::new(ip(198, 18, 1, 2), 8443, weights[2]),
        ]
    }

    fn identities(t: &MaglevTable) -> Vec<Option<(u32, u16)>> {
        (0..t.size())
            .map(|s| t.backend_at(s).map(MaglevBackend::identity))
            .collect()
    }

    // Golden vectors: the contract between nodes of different builds. If one of these fails,
    // the table function changed and every flow in the fleet may move: do not just update them.
    // They were computed by this code and cross-checked against the independent Python
    // reference in docs/maglev.md.
    const GOLDEN_M7: [u32; 7] = [2, 1, 0, 2, 0, 0, 1];
    const GOLDEN_M16381_FIRST16: [u32; 16] = [0, 2, 0, 1, 1, 0, 2, 1, 2, 0, 0, 2, 1, 0, 0, 1];
    const GOLDEN_M16381_COUNTS: [u32; 3] = [5461, 5460, 5460];
    // Input weights (.3 -> 2, .1 -> 1, .2 -> 3), i.e. canonical weights [1, 3, 2].
    const GOLDEN_W_M7: [u32; 7] = [2, 1, 1, 2, 1, 0, 1];
    const GOLDEN_W_M16381_FIRST16: [u32; 16] = [0, 2, 2, 1, 1, 0, 2, 1, 2, 0, 0, 2, 1, 0, 1, 1];
    const GOLDEN_W_M16381_COUNTS: [u32; 3] = [2730, 8191, 5460];

    #[test]
    fn golden_canonical_order() {
        let t = build_table(&golden_backends([1, 1, 1]), 7).unwrap();
        let ids: Vec<_> = t.backends().iter().map(MaglevBackend::identity).collect();
        assert_eq!(
            ids,
            [
                (ip(198, 18, 1, 1), 8080),
                (ip(198, 18, 1, 2), 8443),
                (ip(198, 18, 1, 3), 8080)
            ]
        );
    }

    #[test]
    fn golden_m7() {
        let t = build_table(&golden_backends([1, 1, 1]), 7).unwrap();
        assert_eq!(t.slots(), GOLDEN_M7);
    }

    #[test]
    fn golden_m16381() {
        let t = build_table(&golden_backends([1, 1, 1]), 16381).unwrap();
        assert_eq!(t.slots()[..16], GOLDEN_M16381_FIRST16);
        assert_eq!(t.slot_counts(), GOLDEN_M16381_COUNTS);
    }

    #[test]
    fn golden_weighted() {
        let t = build_table(&golden_backends([2, 1, 3]), 7).unwrap();
        assert_eq!(t.slots(), GOLDEN_W_M7);
        let t = build_table(&golden_backends([2, 1, 3]), 16381).unwrap();
        assert_eq!(t.slots()[..16], GOLDEN_W_M16381_FIRST16);
        assert_eq!(t.slot_counts(), GOLDEN_W_M16381_COUNTS);
    }

    #[test]
    fn primes() {
        let sieve_max = 20_000usize;
        let mut composite = vec![false; sieve_max];
        for n in 2..sieve_max {
            if !composite[n] {
                for k in (n * n..sieve_max).step_by(n) {
                    composite[k] = true;
                }
            }
            assert_eq!(is_prime(n as u32), !composite[n], "{n}");
        }
        assert!(!is_prime(0) && !is_prime(1));
        for p in [65_537, 131_071, 2_147_483_647, 4_294_967_291] {
            assert!(is_prime(p), "{p}");
        }
        for c in [65_535, 131_073, 4_294_967_295, 65_521 * 65_519] {
            assert!(!is_prime(c), "{c}");
        }
        assert!(is_prime(crate::maps::MAGLEV_DEFAULT_TABLE_SIZE));
        assert!(is_prime(MAGLEV_MAX_TABLE_SIZE));
    }

    #[test]
    fn table_size_errors() {
        let b = golden_backends([1, 1, 1]);
        for m in [9, 16_383, 16_384, 65_536] {
            assert_eq!(
                build_table(&b, m),
                Err(MaglevError::TableSizeNotPrime { m })
            );
        }
        for m in [0, 1, 2, 131_101, u32::MAX] {
            assert_eq!(
                build_table(&b, m),
                Err(MaglevError::TableSizeOutOfRange { m })
            );
        }
        // Errors come before anything else, also with no backends.
        assert_eq!(
            build_table(&[], 4),
            Err(MaglevError::TableSizeNotPrime { m: 4 })
        );
        assert!(build_table(&b, 3).is_ok());
        assert!(build_table(&b, MAGLEV_MAX_TABLE_SIZE).is_ok());
        assert_eq!(check_table_size(16_381), Ok(()));
    }

    #[test]
    fn duplicate_backends() {
        let mut b = golden_backends([1, 1, 1]).to_vec();
        // Same address and port, different weight: still a duplicate.
        b.push(MaglevBackend::new(ip(198, 18, 1, 1), 8080, 0));
        let err = build_table(&b, 7).unwrap_err();
        assert_eq!(
            err,
            MaglevError::DuplicateBackend {
                addr: ip(198, 18, 1, 1),
                port: 8080
            }
        );
        assert_eq!(canonical_order(&b), Err(err));
        // Same address, other port; same port, other address: fine.
        b.pop();
        b.push(MaglevBackend::new(ip(198, 18, 1, 1), 8081, 1));
        b.push(MaglevBackend::new(ip(198, 18, 1, 4), 8080, 1));
        assert_eq!(build_table(&b, 7).unwrap().backends().len(), 5);
    }

    #[test]
    fn errors_display() {
        let errs: [Box<dyn std::error::Error>; 3] = [
            Box::new(MaglevError::TableSizeNotPrime { m: 9 }),
            Box::new(MaglevError::TableSizeOutOfRange { m: 131_101 }),
            Box::new(MaglevError::DuplicateBackend {
                addr: ip(198, 18, 1, 1),
                port: 8080,
            }),
        ];
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs[0], "Maglev table size 9 is not prime");
        assert!(
            msgs[1].contains("131101") && msgs[1].contains("131071"),
            "{}",
            msgs[1]
        );
        assert_eq!(msgs[2], "duplicate Maglev backend 198.18.1.1:8080");
    }

    #[test]
    fn all_draining_or_empty() {
        let t = build_table(&golden_backends([0, 0, 0]), 16_381).unwrap();
        assert_eq!(t.backends().len(), 3);
        assert!(t.slots().iter().all(|&s| s == NO_BACKEND));
        assert_eq!(t.slot_counts(), [0, 0, 0]);
        assert_eq!(t.lookup(12345), None);
        let t = build_table(&[], 7).unwrap();
        assert!(t.backends().is_empty());
        assert_eq!(t.slots(), [NO_BACKEND; 7]);
    }

    #[test]
    fn draining_backend_gets_no_slots_and_moves_nothing() {
        let active = build_table(&golden_backends([1, 1, 1]), 16_381).unwrap();
        let mut b = golden_backends([1, 1, 1]).to_vec();
        b.push(MaglevBackend::new(ip(198, 18, 0, 9), 80, 0)); // sorts first
        let with_draining = build_table(&b, 16_381).unwrap();
        assert_eq!(with_draining.backends().len(), 4);
        assert_eq!(with_draining.backends()[0].weight, 0);
        assert_eq!(with_draining.slot_counts(), [0, 5461, 5460, 5460]);
        assert_eq!(identities(&active), identities(&with_draining));
    }

    #[test]
    fn one_backend_owns_everything() {
        let t = build_table(&[MaglevBackend::new(ip(198, 18, 1, 1), 80, 5)], 251).unwrap();
        assert!(t.slots().iter().all(|&s| s == 0));
    }

    #[test]
    fn weights_two_to_one() {
        // Weight 2 takes a turn every round, weight 1 every second round: after round 2k,
        // 3k slots are filled (2k + k). 16381 = 3 * 5460 + 1, so round 10921 fills the last
        // slot with the weight-2 backend: exactly 10921 : 5460, whichever sorts first.
        for (wa, wb, expect) in [(2, 1, [10_921, 5_460]), (1, 2, [5_460, 10_921])] {
            let b = [
                MaglevBackend::new(ip(198, 18, 1, 1), 80, wa),
                MaglevBackend::new(ip(198, 18, 1, 2), 80, wb),
            ];
            let t = build_table(&b, 16_381).unwrap();
            assert_eq!(t.slot_counts(), expect);
        }
        // With a third, equal-weight-1 backend: 2 : 1 : 1.
        let b = [
            MaglevBackend::new(ip(198, 18, 1, 1), 80, 1),
            MaglevBackend::new(ip(198, 18, 1, 2), 80, 2),
            MaglevBackend::new(ip(198, 18, 1, 3), 80, 1),
        ];
        let t = build_table(&b, 16_381).unwrap();
        // 4 slots per 2 rounds; 16381 = 4 * 4095 + 1: round 8191 gives the last one to the
        // weight-2 backend.
        assert_eq!(t.slot_counts(), [4_095, 8_191, 4_095]);
    }

    #[test]
    fn scaling_weights_changes_nothing() {
        let a = build_table(&golden_backends([2, 1, 3]), 16_381).unwrap();
        let b = build_table(&golden_backends([14, 7, 21]), 16_381).unwrap();
        assert_eq!(a.slots(), b.slots());
        let a = build_table(&golden_backends([1, 1, 1]), 4_099).unwrap();
        let b = build_table(&golden_backends([9, 9, 9]), 4_099).unwrap();
        assert_eq!(a.slots(), b.slots());
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let t = build_table(&golden_backends([u32::MAX, 1, u32::MAX - 1]), 131_071).unwrap();
        let c = t.slot_counts();
        assert_eq!(c.iter().sum::<u32>(), 131_071);
        assert!(c[0] <= 1, "{c:?}");
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut b: Vec<MaglevBackend> = (0..40u32)
            .map(|i| {
                MaglevBackend::new(
                    ip(198, 18, (i % 7) as u8, i as u8),
                    8000 + (i % 3) as u16,
                    1 + i % 4,
                )
            })
            .collect();
        let reference = build_table(&b, 4_099).unwrap();
        let mut sorted = b.clone();
        sorted.sort_by_key(MaglevBackend::identity);
        assert_eq!(reference.backends(), sorted);
        // A few deterministic shuffles.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..8 {
            for i in (1..b.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.swap(i, (x % (i as u64 + 1)) as usize);
            }
            assert_eq!(build_table(&b, 4_099).unwrap(), reference);
        }
        b.reverse();
        assert_eq!(build_table(&b, 4_099).unwrap(), reference);
    }

    #[test]
    fn lookup_and_map_slots() {
        let t = build_table(&golden_backends([1, 1, 1]), 7).unwrap();
        for h in [0u32, 6, 7, 13, u32::MAX] {
            let slot = t.slots()[(h % 7) as usize];
            assert_eq!(t.lookup(h), Some(&t.backends()[slot as usize]));
        }
        assert_eq!(t.backend_at(7), None);
        let ids = t.map_slots(|b| b.addr & 0xff);
        // canonical [.1, .2, .3] -> ids [1, 2, 3]
        assert_eq!(ids, GOLDEN_M7.map(|s| s + 1));
        let t = build_table(&golden_backends([0, 0, 0]), 3).unwrap();
        assert_eq!(t.map_slots(|_| 5), [NO_BACKEND; 3]);
        let (backends, slots) = t.into_parts();
        assert_eq!((backends.len(), slots.len()), (3, 3));
    }

    // The size rule is part of the contract between nodes, like the golden vectors: every
    // node must pick the same M for the same backends and cap.
    #[test]
    fn golden_table_sizes() {
        let equal = |n: u32| -> Vec<MaglevBackend> {
            (0..n)
                .map(|i| MaglevBackend::new(0xC612_0000 + i, 80, 1))
                .collect()
        };
        for (n, cap, m) in [
            (0, 16_381, 127),
            (1, 16_381, 127),
            (2, 16_381, 251),
            (5, 16_381, 509),
            (6, 16_381, 1_021),
            (10, 16_381, 1_021),
            (11, 16_381, 2_039),
            (40, 16_381, 4_093),
            (41, 16_381, 8_191),
            (81, 16_381, 8_191),
            (82, 16_381, 16_381),
            (100, 16_381, 16_381),
            (100, 131_071, 16_381),
            (164, 131_071, 32_749),
            (1_000, 131_071, 131_071),
            (5_000, 131_071, 131_071),
            (100, 4_093, 4_093),
            (3, 7, 7),
        ] {
            assert_eq!(table_size_for(&equal(n), cap), m, "{n} backends, cap {cap}");
        }
        // Weights count, normalised by their gcd; draining backends do not.
        let b = |w: [u32; 3]| golden_backends(w);
        assert_eq!(normalised_weight(&b([2, 4, 6])), 6);
        assert_eq!(table_size_for(&b([2, 4, 6]), 16_381), 1_021);
        assert_eq!(table_size_for(&b([1, 1, 0]), 16_381), 251);
        assert_eq!(table_size_for(&b([0, 0, 0]), 16_381), 127);
        assert_eq!(
            table_size_for(&b([u32::MAX, u32::MAX - 1, 1]), 131_071),
            131_071
        );
        for m in MAGLEV_LADDER {
            assert!(is_prime(m), "{m}");
            // The largest prime below its power of two.
            let p = (m + 1).next_power_of_two();
            assert!((m + 1..p).all(|k| !is_prime(k)), "{m}");
        }
        assert_eq!(
            MAGLEV_LADDER[MAGLEV_LADDER.len() - 1],
            MAGLEV_MAX_TABLE_SIZE
        );
    }

    #[test]
    fn encode_layout() {
        // The golden table at M = 7: ordinals [2, 1, 0, 2, 0, 0, 1], three backends.
        let t = build_table(&golden_backends([1, 1, 1]), 7).unwrap();
        let words = encode(&t, &[10, 11, 12]).unwrap();
        // Header; ids (padded to an element); slots four per element, 0xFFFF after the last.
        assert_eq!(
            words,
            [
                7,
                3,
                10,
                11,
                12,
                0,
                1 << 16 | 2,
                2 << 16,
                0,
                0xFFFF << 16 | 1
            ]
        );
        assert_eq!(
            decode(&words).unwrap().slot_ids(),
            [12, 11, 10, 12, 10, 10, 11]
        );
    }

    #[test]
    fn strategies_agree() {
        let weight_sets: [&dyn Fn(u32) -> u32; 7] = [
            &|_| 1,
            &|i| 1 + i % 4,
            &|i| if i % 10 == 9 { 0 } else { 1 + i % 3 },
            &|i| if i == 17 { 1_000_000 } else { 1 },
            &|i| if i < 2 { u32::MAX } else { i },
            &|i| 1 << (i % 31),
            &|i| i.wrapping_mul(2_654_435_761) >> 8,
        ];
        for n in [1u32, 2, 5, 60, 300] {
            for (k, weight) in weight_sets.iter().enumerate() {
                let b: Vec<MaglevBackend> = (0..n)
                    .map(|i| {
                        MaglevBackend::new(0xC612_0000 + i * 3, 8080 + (i % 2) as u16, weight(i))
                    })
                    .collect();
                let sorted = canonical_order(&b).unwrap();
                for m in [3u32, 251, 4_099] {
                    let rounds = populate_with(&sorted, m, Some(Strategy::Rounds));
                    let heap = populate_with(&sorted, m, Some(Strategy::Heap));
                    assert_eq!(rounds, heap, "n={n} weights#{k} m={m}");
                    assert_eq!(populate(&sorted, m), rounds);
                }
            }
        }
    }
}
